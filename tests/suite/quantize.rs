//! `qforge quantize` on the fixtures: byte-exact legacy types against gguf-py, llama.cpp's
//! per-tensor rules for the K-quant mixes, `--dry-run`, the options, GGUF inputs, the golden
//! Q4_0 perplexity and bad input.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::{dir_entries, python, qforge, qforge_err, qforge_ok};
use serde_json::Value as Json;

/// The `--pure` types gguf-py can quantize, with their `general.file_type` ids.
const LEGACY: &[(&str, u32)] = &[("Q4_0", 2), ("Q4_1", 3), ("Q5_0", 8), ("Q5_1", 9), ("Q8_0", 7)];

fn json(s: &str) -> Json {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn quantize(input: &Path, output: &Path, ty: &str, extra: &[&str]) -> String {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-q", &"quantize", &input, &"-o", &output, &"--type", &ty];
    for e in extra {
        args.push(e);
    }
    qforge_ok(&args)
}

/// `quantize --dry-run --json`: tensor name → planned type.
fn dry_run_plan(input: &Path, ty: &str, extra: &[&str]) -> (Json, BTreeMap<String, String>) {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"quantize", &input, &"--type", &ty, &"--dry-run", &"--json"];
    for e in extra {
        args.push(e);
    }
    let j = json(&qforge_ok(&args));
    let plan = j["tensors"]
        .as_array()
        .expect("tensors array")
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t["type"].as_str().unwrap().to_string()))
        .collect();
    (j, plan)
}

/// Tensor name → type of a written GGUF, from `inspect --json`.
fn file_types(p: &Path) -> BTreeMap<String, String> {
    let j = json(&qforge_ok(&[&"inspect", &"--json", &p]));
    j["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t["type"].as_str().unwrap().to_string()))
        .collect()
}

/// (1) `--pure` with every type gguf-py can quantize: every 2-D weight's bytes equal
/// `gguf.quants.quantize` of the source weights (after llama.cpp's q/k permutation), the
/// norms stay F32, and `general.file_type` is llama.cpp's id.
fn pure_legacy_types_match_gguf_py(model: &Path, n_tensors: usize) {
    let tmp = tempfile::tempdir().unwrap();
    for (ty, id) in LEGACY {
        let out = tmp.path().join(format!("m-{ty}.gguf"));
        quantize(model, &out, ty, &["--pure"]);
        let report = python("check_quantized.py", &[&out, &model, &id.to_string()]);
        assert!(report.contains(&format!("{n_tensors} tensors match")), "{ty}: {report}");
        assert!(report.contains(&format!("{ty}: ")) && !report.contains("Q6_K"), "{ty}: not pure: {report}");
    }
    assert_eq!(dir_entries(tmp.path()).iter().filter(|e| e.starts_with('.')).count(), 0, "temporary files left");
}

#[test]
fn tiny_pure_legacy_types_match_gguf_py() {
    pure_legacy_types_match_gguf_py(&common::tiny(), 39);
}

#[test]
fn small_pure_legacy_types_match_gguf_py() {
    pure_legacy_types_match_gguf_py(&common::small(), 56);
}

/// What llama.cpp's rules give the small fixture (6 layers, 8 heads / 4 kv heads: GQA 2,
/// tied embeddings: no output.weight; every row is 512 or 1536 wide, so no fall-backs):
///
/// - token_embd.weight doubles as the output, so it takes the output rule: Q6_K.
/// - norms: F32.
/// - Q4_K_M: attn_v and ffn_down get Q6_K where use_more_bits(i, 6) holds, i.e.
///   i < 6/8 = 0 (never), i >= 7·6/8 = 5, or (i − 0) % 3 == 2: layers 2 and 5. The rest Q4_K.
/// - Q3_K_M: attn_v Q5_K for the first two attn_v (layers 0, 1), then Q4_K; ffn_down Q5_K
///   for i < 6/16 = 0 layers, so Q4_K everywhere; attn_output Q4_K; attn_q, attn_k,
///   ffn_gate, ffn_up Q3_K.
fn expected_small(mix: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("token_embd.weight".to_string(), "Q6_K".to_string());
    m.insert("output_norm.weight".to_string(), "F32".to_string());
    for i in 0..6 {
        let (q, k, v, o, gate, up, down) = match mix {
            "Q4_K_M" => {
                let hi = if i == 2 || i == 5 { "Q6_K" } else { "Q4_K" };
                ("Q4_K", "Q4_K", hi, "Q4_K", "Q4_K", "Q4_K", hi)
            }
            "Q3_K_M" => {
                let v = if i < 2 { "Q5_K" } else { "Q4_K" };
                ("Q3_K", "Q3_K", v, "Q4_K", "Q3_K", "Q3_K", "Q4_K")
            }
            other => panic!("no expectation for {other}"),
        };
        for (name, ty) in [
            ("attn_norm", "F32"),
            ("ffn_norm", "F32"),
            ("attn_q", q),
            ("attn_k", k),
            ("attn_v", v),
            ("attn_output", o),
            ("ffn_gate", gate),
            ("ffn_up", up),
            ("ffn_down", down),
        ] {
            m.insert(format!("blk.{i}.{name}.weight"), ty.to_string());
        }
    }
    m
}

/// (2) Q4_K_M and Q3_K_M on the small fixture: the plan is llama.cpp's (pinned above), the
/// written file holds exactly the planned types and sizes, gguf-py decodes every tensor back
/// to the source weights within the type's error, and `inspect --verify` passes.
#[test]
fn small_k_quant_mixes_follow_llama_cpp_rules() {
    let small = common::small();
    let tmp = tempfile::tempdir().unwrap();
    for (mix, id) in [("Q4_K_M", 15), ("Q3_K_M", 12)] {
        let (j, plan) = dry_run_plan(&small, mix, &[]);
        assert_eq!(plan, expected_small(mix), "{mix} plan");
        assert_eq!(j["file_type"], id);
        assert_eq!(j["type"], mix);
        assert!(j["fallbacks"].as_array().unwrap().is_empty());

        let out = tmp.path().join(format!("small-{mix}.gguf"));
        let r = json(&quantize(&small, &out, mix, &["--json"]));
        assert_eq!(file_types(&out), plan, "{mix}: written types differ from the plan");
        let size = fs::metadata(&out).unwrap().len();
        assert_eq!(r["bytes"].as_u64(), Some(size));
        assert_eq!(j["bytes"].as_u64(), Some(size), "dry run predicted another size");
        let tensor_bytes: u64 = r["tensors"].as_array().unwrap().iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
        assert_eq!(r["tensor_bytes"].as_u64(), Some(tensor_bytes));
        let bpw = r["bits_per_weight"].as_f64().unwrap();
        assert!((bpw - tensor_bytes as f64 * 8.0 / 23_075_328.0).abs() < 1e-9, "{bpw}");
        assert!(r["seconds"].as_f64().is_some());
        let report = python("check_quantized.py", &[&out, &small, &id.to_string()]);
        assert!(report.contains("56 tensors match"), "{mix}: {report}");
        let v = qforge_ok(&[&"inspect", &"--verify", &out]);
        assert!(v.contains("Q4_K"), "{v}");
    }
}

/// The tiny fixture (4 layers, untied): output.weight gets Q6_K, token_embd keeps the base
/// type; use_more_bits(i, 4) holds for layers 2 and 3 (i >= 7·4/8 = 3, or i % 3 == 2).
#[test]
fn tiny_mix_plans() {
    let (j, plan) = dry_run_plan(&common::tiny(), "Q4_K_M", &[]);
    assert_eq!(plan["output.weight"], "Q6_K");
    assert_eq!(plan["token_embd.weight"], "Q4_K");
    for i in 0..4 {
        let hi = if i >= 2 { "Q6_K" } else { "Q4_K" };
        assert_eq!(plan[&format!("blk.{i}.attn_v.weight")], hi);
        assert_eq!(plan[&format!("blk.{i}.ffn_down.weight")], hi);
        assert_eq!(plan[&format!("blk.{i}.attn_q.weight")], "Q4_K");
    }
    assert_eq!(j["n_tensors"], 39);
    // Q4_0 (not pure): the output goes to Q6_K like in every mix but Q8_0.
    let (_, plan) = dry_run_plan(&common::tiny(), "q4_0", &[]);
    assert_eq!(plan["output.weight"], "Q6_K");
    assert_eq!(plan.values().filter(|t| *t == "Q4_0").count(), 29);
    let (_, plan) = dry_run_plan(&common::tiny(), "Q8_0", &[]);
    assert_eq!(plan["output.weight"], "Q8_0");
}

/// (3) `--dry-run` prints the plan (every tensor, its type, bits per weight, the sizes) and
/// writes nothing, not even with `-o`.
#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.gguf");
    let text = qforge_ok(&[&"quantize", &common::tiny(), &"-o", &out, &"--type", &"Q4_K_M", &"--dry-run"]);
    assert!(dir_entries(tmp.path()).is_empty(), "dry run wrote {:?}", dir_entries(tmp.path()));
    for needle in ["blk.3.ffn_down.weight", "Q6_K", "Q4_K", "F32", "bits per weight", "39 tensors", "output.weight"] {
        assert!(text.contains(needle), "missing {needle:?}:\n{text}");
    }
    assert_eq!(text.lines().filter(|l| l.contains(".weight")).count(), 39, "{text}");
    // The calibrated methods follow the same plan: the same listing, nothing calibrated or
    // written; a Hugging Face format has no plan to print.
    for method in ["gptq", "awq", "awq+gptq"] {
        let t = qforge_ok(&[
            &"quantize",
            &common::tiny(),
            &"-o",
            &out,
            &"--type",
            &"Q4_K_M",
            &"--method",
            &method,
            &"--dry-run",
        ]);
        assert_eq!(t, text, "--method {method} --dry-run");
        assert!(dir_entries(tmp.path()).is_empty(), "{method} dry run wrote {:?}", dir_entries(tmp.path()));
        let r = qforge(&[&"quantize", &common::tiny(), &"-o", &out, &"--method", &method, &"--dry-run"]);
        assert!(String::from_utf8_lossy(&r.stderr).contains("Hugging Face checkpoint has none"), "{method}");
    }
    // Without -o, and the predicted size is the real one.
    let (j, _) = dry_run_plan(&common::tiny(), "Q4_K_M", &[]);
    assert_eq!(j["dry_run"], true);
    quantize(&common::tiny(), &out, "Q4_K_M", &[]);
    assert_eq!(j["bytes"].as_u64(), Some(fs::metadata(&out).unwrap().len()));
    // -o is required otherwise (usage error).
    let r = qforge(&[&"quantize", &common::tiny(), &"--type", &"Q4_0"]);
    assert_eq!(r.status.code(), Some(2));
    // `-o -` is for a GGUF without --json, for every method (checked before anything loads).
    let tiny = common::tiny();
    for (method, json, why) in [
        ("nf4", false, "a bitsandbytes checkpoint is a directory"),
        ("gptq", false, "an hf-gptq checkpoint is a directory"),
        ("awq", false, "an hf-awq checkpoint is a directory"),
        ("gptq", true, "--json cannot be combined with `-o -`"),
        ("awq+gptq", true, "--json cannot be combined with `-o -`"),
    ] {
        let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"quantize", &tiny, &"-o", &"-", &"--method", &method];
        if json {
            a.extend([&"--type" as &dyn AsRef<std::ffi::OsStr>, &"Q4_0", &"--json"]);
        }
        let err = qforge_err(&a);
        assert!(err.contains(why), "{method} (json: {json}): {err}");
    }
}

/// --pure, --output-type, --embedding-type, --tensor-type and --leave-output, as plans; then
/// one written file with overrides, checked against the source by gguf-py; `-o -` streams
/// the same bytes.
#[test]
fn options_change_the_plan() {
    let tiny = common::tiny();
    let (_, plan) = dry_run_plan(&tiny, "Q4_K", &["--pure"]);
    for (name, ty) in &plan {
        assert_eq!(ty, if name.ends_with("norm.weight") { "F32" } else { "Q4_K" }, "{name}");
    }
    let (_, plan) = dry_run_plan(
        &tiny,
        "Q4_K_M",
        &[
            "--output-type",
            "q8_0",
            "--embedding-type",
            "F16",
            "--tensor-type",
            "blk\\.[01]\\.attn_v=Q8_0",
            "--tensor-type",
            "ffn_up=Q5_0",
        ],
    );
    assert_eq!(plan["output.weight"], "Q8_0");
    assert_eq!(plan["token_embd.weight"], "F16");
    assert_eq!(plan["blk.0.attn_v.weight"], "Q8_0");
    assert_eq!(plan["blk.1.attn_v.weight"], "Q8_0");
    // Manual choices do not advance llama.cpp's attn_v counter: layers 2 and 3 are counted
    // as attn_v number 0 and 1 of 4, and use_more_bits(·, 4) only holds for 2 and 3, so both
    // stay Q4_K (without the overrides they are Q6_K).
    assert_eq!(plan["blk.2.attn_v.weight"], "Q4_K");
    assert_eq!(plan["blk.3.attn_v.weight"], "Q4_K");
    assert!((0..4).all(|i| plan[&format!("blk.{i}.ffn_up.weight")] == "Q5_0"));
    let (_, plan) = dry_run_plan(&tiny, "Q4_K_M", &["--leave-output"]);
    assert_eq!(plan["output.weight"], "BF16");
    // Tied model: --output-type decides token_embd.
    let (_, plan) = dry_run_plan(&common::small(), "Q4_K_M", &["--output-type", "Q8_0"]);
    assert_eq!(plan["token_embd.weight"], "Q8_0");

    // Written with legacy overrides over a pure Q8_0 base: all bytes are gguf-py's.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mixed.gguf");
    quantize(&tiny, &out, "Q8_0", &["--pure", "--tensor-type", "attn=Q4_1", "--tensor-type", "ffn_(up|gate)=Q5_0"]);
    let types = file_types(&out);
    assert_eq!(types["blk.1.attn_output.weight"], "Q4_1");
    assert_eq!(types["blk.1.ffn_gate.weight"], "Q5_0");
    assert_eq!(types["blk.1.ffn_down.weight"], "Q8_0");
    let report = python("check_quantized.py", &[&out, &tiny, &"7"]);
    assert!(report.contains("39 tensors match"), "{report}");
    // --leave-output copies the source's bf16 values.
    let out = tmp.path().join("leave.gguf");
    quantize(&tiny, &out, "Q5_1", &["--pure", "--leave-output"]);
    let report = python("check_quantized.py", &[&out, &tiny, &"9"]);
    assert!(report.contains("BF16: 1 tensors") && report.contains("39 tensors match"), "{report}");

    // Standard output carries the same bytes as the file.
    let streamed = qforge(&[&"quantize", &tiny, &"-o", &"-", &"--type", &"Q4_K_M"]);
    assert!(streamed.status.success(), "{}", String::from_utf8_lossy(&streamed.stderr));
    let file = tmp.path().join("file.gguf");
    quantize(&tiny, &file, "Q4_K_M", &[]);
    assert!(streamed.stdout == fs::read(&file).unwrap(), "stdout differs from the file");
}

/// GGUF input: a bf16-exact F16 GGUF quantizes to exactly the file the checkpoint gives; a
/// Q8_0 GGUF is requantized only with --allow-requantize (by every method), and with a warning; the results load in `convert --to hf` and
/// `inspect --verify`.
#[test]
fn gguf_inputs() {
    let tiny = common::tiny();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let f16 = t.join("tiny-f16.gguf");
    qforge_ok(&[&"-q", &"convert", &tiny, &"-o", &f16, &"--outtype", &"f16"]);
    let from_hf = t.join("from-hf.gguf");
    let from_gguf = t.join("from-gguf.gguf");
    quantize(&tiny, &from_hf, "Q4_K_M", &[]);
    let out = qforge(&[&"quantize", &f16, &"-o", &from_gguf, &"--type", &"Q4_K_M"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("already quantized"));
    assert!(fs::read(&from_hf).unwrap() == fs::read(&from_gguf).unwrap(), "F16 GGUF input gave another file");

    let q8 = t.join("tiny-q8.gguf");
    qforge_ok(&[&"-q", &"convert", &tiny, &"-o", &q8, &"--outtype", &"q8_0"]);
    let requant = t.join("requant.gguf");
    let e = qforge_err(&[&"quantize", &q8, &"-o", &requant, &"--type", &"Q4_0"]);
    assert!(e.contains("--allow-requantize") && !requant.exists(), "{e}");
    let out = qforge(&[&"quantize", &q8, &"-o", &requant, &"--type", &"Q4_0", &"--allow-requantize"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("warning") && stderr.contains("already quantized (Q8_0)"), "{stderr}");
    // Every method shares the guard.
    for method in ["gptq", "awq", "awq+gptq", "nf4"] {
        let out = t.join(format!("requant-{method}"));
        let e = qforge_err(&[&"quantize", &q8, &"-o", &out, &"--method", &method, &"--nsamples", &"2"]);
        assert!(e.contains("already quantized (Q8_0)") && e.contains("--allow-requantize"), "{method}: {e}");
        assert!(!out.exists(), "{method}");
    }
    // The quantized GGUFs go on through the rest of the toolchain.
    for g in [&requant, &from_hf] {
        qforge_ok(&[&"-q", &"inspect", &"--verify", g]);
        let hf = t.join(format!("{}-hf", g.file_stem().unwrap().to_string_lossy()));
        qforge_ok(&[&"-q", &"convert", g, &"-o", &hf, &"--to", &"hf"]);
        assert!(hf.join("model.safetensors").exists());
    }
    // Same type in and out (Q8_0 → Q8_0 pure): tensors are copied, not re-encoded, without a
    // warning; the file is the one convert wrote.
    let same = t.join("same.gguf");
    let out = qforge(&[&"quantize", &q8, &"-o", &same, &"--type", &"Q8_0", &"--pure"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
    assert!(fs::read(&same).unwrap() == fs::read(&q8).unwrap(), "Q8_0 → Q8_0 changed the file");
}

/// (4) The default Q4_0 mix of the tiny model over the full WikiText-2 text scores within
/// 0.5% of the golden `q4_0` perplexity. The golden fake-quantizes only the 7 linears per
/// layer with ggml's Q4_0 rounding; llama.cpp's Q4_0 file also stores token_embd in Q4_0 and
/// the output in Q6_K (measured: 246.62 vs 246.50, +0.05%).
#[test]
fn tiny_q4_0_perplexity_matches_golden() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny-q4_0.gguf");
    quantize(&common::tiny(), &out, "Q4_0", &[]);
    let r = json(&qforge_ok(&[&"-q", &"perplexity", &out, &"--text", &common::wiki(), &"--json"]));
    assert_eq!(r["tokens_scored"].as_u64(), Some(378651));
    let g: Json = serde_json::from_str(&fs::read_to_string(common::golden("golden_tiny.json")).unwrap()).unwrap();
    let want = g["q4_0"]["wiki"]["ppl"].as_f64().unwrap();
    let got = r["ppl"].as_f64().unwrap();
    eprintln!("tiny Q4_0 GGUF ppl {got}, golden q4_0 {want} ({:+.3}%)", 100.0 * (got - want) / want);
    assert!((got - want).abs() <= 0.005 * want, "ppl {got} vs golden {want}");
}

/// (5) Bad options and outputs: one clean error line, exit 1, nothing written.
#[test]
fn bad_input_fails_cleanly() {
    let tiny = common::tiny();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.gguf");
    let fails = |args: &[&dyn AsRef<std::ffi::OsStr>]| -> String {
        let err = qforge_err(args);
        assert_eq!(err.lines().filter(|l| !l.trim().is_empty()).count(), 1, "not one line:\n{err}");
        assert!(dir_entries(tmp.path()).is_empty(), "left {:?}", dir_entries(tmp.path()));
        err
    };
    let e = fails(&[&"quantize", &tiny, &"-o", &out, &"--type", &"Q4_K_X"]);
    for valid in ["Q4_0", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_L", "Q4_K_M", "Q5_K_S", "Q6_K", "IQ4_NL"] {
        assert!(e.contains(valid), "valid type {valid} not listed: {e}");
    }
    assert!(e.contains("Q4_K_X"), "{e}");
    let e = fails(&[&"quantize", &tiny, &"-o", &out, &"--type", &"Q4_0", &"--tensor-type", &"attn_(v=Q8_0"]);
    assert!(e.contains("regular expression") && e.contains("attn_(v"), "{e}");
    let e = fails(&[&"quantize", &tiny, &"-o", &out, &"--type", &"Q4_0", &"--tensor-type", &"attn_v=Q7_0"]);
    assert!(e.contains("Q7_0") && e.contains("IQ4_NL"), "{e}");
    let e = fails(&[&"quantize", &tiny, &"-o", &out, &"--type", &"Q4_0", &"--tensor-type", &"attn_v"]);
    assert!(e.contains("REGEX=TYPE"), "{e}");
    let e = fails(&[&"quantize", &tiny, &"-o", &out, &"--type", &"Q4_0", &"--output-type", &"Q4_K_M"]);
    assert!(e.contains("--output-type") && e.contains("Q4_K_M"), "{e}");
    let missing: PathBuf = tmp.path().join("no/such/dir/x.gguf");
    let e = fails(&[&"quantize", &tiny, &"-o", &missing, &"--type", &"Q4_0"]);
    assert!(e.contains("does not exist"), "{e}");
    let e = fails(&[&"quantize", &tmp.path().join("nothing"), &"-o", &out, &"--type", &"Q4_0"]);
    assert!(e.contains("nothing"), "{e}");
    let e = fails(&[&"quantize", &tiny, &"-o", &"-", &"--type", &"Q4_0", &"--json"]);
    assert!(e.contains("--json"), "{e}");

    // A NaN in the weights is refused like in convert, naming the tensor; nothing is left.
    let src = tempfile::tempdir().unwrap();
    let nan = src.path().join("nan");
    fs::create_dir(&nan).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::os::unix::fs::symlink(fs::canonicalize(tiny.join(f)).unwrap(), nan.join(f)).unwrap();
    }
    let mut bytes = fs::read(tiny.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Json = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let name = "model.layers.2.mlp.down_proj.weight";
    let at = 8 + n + header[name]["data_offsets"][0].as_u64().unwrap() as usize + 2 * 100;
    bytes[at..at + 2].copy_from_slice(&0x7fc0u16.to_le_bytes());
    fs::write(nan.join("model.safetensors"), bytes).unwrap();
    let e = fails(&[&"quantize", &nan, &"-o", &out, &"--type", &"Q4_K_M"]);
    assert!(e.contains("blk.2.ffn_down.weight") && e.contains("--allow-nonfinite"), "{e}");
}

/// The `--help` texts list the types from the codec table and the mixes (nothing typed by
/// hand to drift): every `quantize --type`, in llama.cpp's id order, aliases beside their mix;
/// `convert --outtype` the types it writes whole and the planned ones.
#[test]
fn help_lists_the_types_the_codec_table_has() {
    let q = qforge_ok(&[&"quantize", &"--help"]);
    let flat = q.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(
            "Types: Q4_0, Q4_1, Q8_0, Q5_0, Q5_1, Q2_K, Q3_K_S, Q3_K_M (Q3_K), Q3_K_L, Q4_K_S, Q4_K_M (Q4_K), \
             Q5_K_S, Q5_K_M (Q5_K), Q6_K, IQ4_NL."
        ),
        "{q}"
    );
    assert!(!flat.contains("TEST_Q3_0"), "the tests' made-up type is not in the product");
    let c = qforge_ok(&[&"convert", &"--help"]);
    let flat = c.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1 (every matrix in that type)"), "{c}");
    assert!(flat.contains("(Q2_K, Q3_K_S, Q3_K_M (Q3_K), Q3_K_L,"), "{c}");
    assert!(flat.contains("Q6_K, IQ4_NL: llama-quantize's per-tensor plan"), "{c}");
}
