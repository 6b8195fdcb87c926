//! `qforge convert` and `qforge inspect` on the fixtures, cross-checked with gguf-py, numpy and
//! the Hugging Face `tokenizers` package, and against dumps of llama.cpp's own converter.

use crate::common;

use std::path::{Path, PathBuf};

use common::{dir_entries, python, qforge, qforge_ok};
use serde_json::Value as Json;

const OUTTYPES: &[&str] = &["f32", "f16", "bf16", "q8_0"];

struct Fixture {
    dir: PathBuf,
    /// general.name llama.cpp derives from the directory name.
    name: &'static str,
    reference: &'static str,
    /// Tensors in the GGUF (a tied model has no output.weight).
    gguf_tensors: usize,
}

fn tiny() -> Fixture {
    Fixture {
        dir: common::tiny(),
        name: "Tiny",
        reference: "reference/llamacpp-convert-tiny-llama-f32.txt",
        gguf_tensors: 39,
    }
}

fn small() -> Fixture {
    Fixture {
        dir: common::small(),
        name: "Small",
        reference: "reference/llamacpp-convert-small-llama-bf16.txt",
        gguf_tensors: 56,
    }
}

fn convert(input: &Path, output: &Path, extra: &[&str]) -> String {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-q", &"convert", &input, &"-o", &output];
    for e in extra {
        args.push(e);
    }
    qforge_ok(&args)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn convert_all_types_and_check(f: &Fixture) {
    let tmp = tempfile::tempdir().unwrap();
    for ty in OUTTYPES {
        let out = tmp.path().join(format!("model-{ty}.gguf"));
        convert(&f.dir, &out, &["--outtype", ty]);
        // Nothing but the output is left in the directory (no temporary file).
        assert_eq!(dir_entries(tmp.path()).iter().filter(|e| e.starts_with('.')).count(), 0);
        let report = python("check_gguf.py", &[&out, &f.dir, ty, &common::golden(f.reference)]);
        assert!(report.contains(&format!("{} tensors match", f.gguf_tensors)), "{report}");
    }
}

#[test]
fn tiny_converts_to_every_type_like_llama_cpp() {
    convert_all_types_and_check(&tiny());
}

#[test]
fn small_converts_to_every_type_like_llama_cpp() {
    convert_all_types_and_check(&small());
}

/// HF → GGUF → HF → GGUF: the two GGUF files are byte-identical; the exported directory's
/// tokenizer tokenizes like the original and (for bf16, the fixtures' own type) its weights
/// equal the original ones, dtype included.
fn round_trip(f: &Fixture) {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    for ty in ["f32", "bf16"] {
        let first = t.join(format!("first-{ty}.gguf"));
        let hf = t.join(format!("hf-{ty}"));
        let second = t.join(format!("second-{ty}.gguf"));
        convert(&f.dir, &first, &["--outtype", ty]);
        convert(&first, &hf, &["--to", "hf"]);
        convert(&hf, &second, &["--outtype", ty, "--name", f.name]);
        let (a, b) = (read(&first), read(&second));
        assert_eq!(a.len(), b.len(), "{ty}: round trip changed the file size");
        assert!(
            a == b,
            "{ty}: round trip changed bytes (first difference at {:?})",
            a.iter().zip(&b).position(|(x, y)| x != y)
        );

        assert_eq!(dir_entries(&hf), ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
        let cfg: Json = serde_json::from_slice(&read(&hf.join("config.json"))).unwrap();
        let orig: Json = serde_json::from_slice(&read(&f.dir.join("config.json"))).unwrap();
        for key in [
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "vocab_size",
            "max_position_embeddings",
            "tie_word_embeddings",
            "rms_norm_eps",
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
            "architectures",
        ] {
            assert_eq!(cfg[key], orig[key], "config.json {key}");
        }
        assert_eq!(cfg["torch_dtype"], if ty == "f32" { "float32" } else { "bfloat16" });

        // Values always equal the original (bf16 is exact in f32); dtypes only for bf16.
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&f.dir, &hf];
        if ty == "bf16" {
            args.push(&"--same-dtype");
        }
        python("compare_weights.py", &args);
        if ty == "bf16" {
            let out = python(
                "check_tokenizer.py",
                &[&f.dir.join("tokenizer.json"), &hf.join("tokenizer.json"), &common::wiki(), &"100000"],
            );
            assert!(out.starts_with("OK"), "{out}");
        }
    }
    assert_eq!(dir_entries(t).iter().filter(|e| e.starts_with('.')).count(), 0, "temporary files left");
}

#[test]
fn tiny_round_trips_through_hf() {
    round_trip(&tiny());
}

#[test]
fn small_round_trips_through_hf() {
    round_trip(&small());
}

fn inspect_json(p: &Path) -> Json {
    let out = qforge_ok(&[&"inspect", &"--json", &p]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("inspect --json {}: not JSON ({e}):\n{out}", p.display()))
}

/// Each tensor entry has a name, a type, a shape and a byte count consistent with them.
fn check_listing(j: &Json, n: usize, what: &str) -> Vec<String> {
    let tensors = j["tensors"].as_array().unwrap_or_else(|| panic!("{what}: no tensors array"));
    assert_eq!(tensors.len(), n, "{what}: tensor count");
    let mut names = Vec::new();
    for t in tensors {
        let name = t["name"].as_str().unwrap_or_else(|| panic!("{what}: tensor without name: {t}"));
        let ty = t["type"].as_str().unwrap_or_else(|| panic!("{what}: {name} has no type"));
        let shape: Vec<u64> = t["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim")).collect();
        let bytes = t["bytes"].as_u64().unwrap_or_else(|| panic!("{what}: {name} has no bytes"));
        let elems: u64 = shape.iter().product();
        let expect = match ty {
            "F32" => elems * 4,
            "F16" | "BF16" => elems * 2,
            "Q8_0" => elems / 32 * 34,
            other => panic!("{what}: {name}: unexpected type {other}"),
        };
        assert_eq!(bytes, expect, "{what}: {name} {ty} {shape:?}");
        names.push(name.to_string());
    }
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "{what}: duplicate names");
    names
}

#[test]
fn inspect_json_lists_every_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    for f in [tiny(), small()] {
        // HF directories: every safetensors tensor (tiny: 39, with lm_head; small: 56, tied,
        // stores no lm_head), under its HF name.
        let j = inspect_json(&f.dir);
        assert_eq!(j["format"], "hf");
        assert_eq!(j["architecture"], "LlamaForCausalLM");
        let names = check_listing(&j, f.gguf_tensors, &f.dir.display().to_string());
        assert!(names.iter().all(|n| n.starts_with("model.") || n == "lm_head.weight"));
        assert!(j["tensors"].as_array().unwrap().iter().all(|t| t["gguf_name"].is_string()));

        for ty in ["q8_0", "f16"] {
            let out = tmp.path().join(format!("{}-{ty}.gguf", f.name));
            convert(&f.dir, &out, &["--outtype", ty]);
            let j = inspect_json(&out);
            assert_eq!(j["format"], "gguf");
            assert_eq!(j["architecture"], "llama");
            assert_eq!(j["version"], 3);
            assert_eq!(j["metadata"]["general.name"], f.name);
            assert_eq!(j["metadata_types"]["tokenizer.ggml.tokens"], "ARRAY");
            assert_eq!(j["file_bytes"].as_u64(), Some(std::fs::metadata(&out).unwrap().len()));
            let names = check_listing(&j, f.gguf_tensors, &out.display().to_string());
            assert!(names.contains(&"token_embd.weight".to_string()));
            assert_eq!(names.contains(&"output.weight".to_string()), f.name == "Tiny");
            // Offsets: aligned, increasing, inside the file.
            let mut end = 0;
            for t in j["tensors"].as_array().unwrap() {
                let off = t["offset"].as_u64().unwrap();
                assert_eq!(off % 32, 0);
                assert!(off >= end);
                end = off + t["bytes"].as_u64().unwrap();
            }
            assert!(end <= j["file_bytes"].as_u64().unwrap());
        }
    }
    // A single shard.
    let shard = common::small().join("model-00004-of-00004.safetensors");
    let j = inspect_json(&shard);
    assert_eq!(j["format"], "safetensors");
    let n = j["tensors"].as_array().unwrap().len();
    assert!(n > 0);
    check_listing(&j, n, "shard");
    // The text form works too and names every tensor.
    let text = qforge_ok(&[&"inspect", &common::tiny()]);
    assert!(text.contains("tensors (39)") && text.contains("model.layers.3.mlp.up_proj.weight"), "{text}");
}

#[test]
fn stdout_output_equals_file_output() {
    let tmp = tempfile::tempdir().unwrap();
    for ty in ["f16", "q8_0"] {
        let file = tmp.path().join(format!("tiny-{ty}.gguf"));
        convert(&common::tiny(), &file, &["--outtype", ty]);
        let out = qforge(&[&"convert", &common::tiny(), &"-o", &"-", &"--outtype", &ty]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let expect = read(&file);
        assert_eq!(out.stdout.len(), expect.len());
        assert!(out.stdout == expect, "{ty}: stdout differs from the file");
    }
    // Nothing was written beside the one file per type.
    assert_eq!(dir_entries(tmp.path()), ["tiny-f16.gguf", "tiny-q8_0.gguf"]);
}

#[test]
fn convert_json_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny.gguf");
    let stdout = qforge_ok(&[&"convert", &common::tiny(), &"-o", &out, &"--outtype", &"q8_0", &"--json"]);
    let j: Json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(j["tensors"], 39);
    assert_eq!(j["bytes"].as_u64(), Some(std::fs::metadata(&out).unwrap().len()));
    assert_eq!(j["format"], "gguf");
    assert_eq!(j["outtype"], "Q8_0");
    assert_eq!(j["file_type"], 7);
    assert!(j["fallbacks"].as_array().is_some_and(|a| a.is_empty()));
    assert!(j["seconds"].as_f64().is_some());
    assert_eq!(j["stages"][0]["stage"], "convert");
    assert!(j["stages"][0]["peak_rss_bytes"].as_u64().is_some_and(|b| b > 1 << 20), "{j}");

    let hf = tmp.path().join("hf");
    let stdout = qforge_ok(&[&"convert", &out, &"-o", &hf, &"--to", &"hf", &"--json"]);
    let j: Json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(j["tensors"], 39);
    assert_eq!(j["format"], "hf");
    assert_eq!(j["dtype"], "float32");
    let st = std::fs::metadata(hf.join("model.safetensors")).unwrap().len();
    assert!(j["bytes"].as_u64().is_some_and(|b| b > 0 && b < st), "{j}");

    // `--json` with `-o -` would mix the report into the GGUF: refused.
    let err = common::qforge_err(&[&"convert", &common::tiny(), &"-o", &"-", &"--json"]);
    assert!(err.contains("--json"), "{err}");
}

/// Every tensor of a Hugging Face output directory, by file: one model.safetensors, or the
/// shards its index names (checked: every index entry is in its shard and nothing else is).
fn st_files(dir: &Path) -> Vec<(String, Vec<(String, usize)>)> {
    let read = |f: &str| -> Vec<(String, usize)> {
        let bytes = std::fs::read(dir.join(f)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensors().into_iter().map(|(n, v)| (n, v.data().len())).collect()
    };
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return vec![("model.safetensors".into(), read("model.safetensors"))];
    }
    let idx: Json = serde_json::from_slice(&read_bytes(&index)).unwrap();
    let map = idx["weight_map"].as_object().unwrap();
    let mut files: Vec<String> = map.values().map(|v| v.as_str().unwrap().to_string()).collect();
    files.sort();
    files.dedup();
    let out: Vec<(String, Vec<(String, usize)>)> = files.iter().map(|f| (f.clone(), read(f))).collect();
    let mut total = 0;
    for (f, tensors) in &out {
        for (n, len) in tensors {
            assert_eq!(map[n].as_str(), Some(f.as_str()), "{n} is in {f}, the index says {}", map[n]);
            total += len;
        }
    }
    assert_eq!(out.iter().map(|(_, t)| t.len()).sum::<usize>(), map.len(), "index and shards list other tensors");
    assert_eq!(idx["metadata"]["total_size"].as_u64(), Some(total as u64));
    out
}

fn read_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

fn ppl(model: &Path) -> f64 {
    let text = common::wiki();
    let out = qforge_ok(&[&"perplexity", &model, &"--text", &text, &"--max-windows", &"2", &"--json"]);
    serde_json::from_str::<Json>(&out).unwrap()["ppl"].as_f64().unwrap()
}

/// `--max-shard-size` on every Hugging Face writer (convert --to hf, hf-gptq, hf-awq via
/// awq+gptq, NF4): files named and indexed as transformers' save_pretrained writes them, each
/// at most the size (a bigger tensor alone), read back to the same model; one shard is a plain
/// model.safetensors without an index.
#[test]
fn hf_outputs_shard_like_save_pretrained() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let tiny = common::tiny();
    let gguf = p("tiny.gguf");
    qforge_ok(&[&"-q", &"convert", &tiny, &"-o", &gguf, &"--outtype", &"f32"]);
    let cal = ["--nsamples", "4", "--seqlen", "64", "--awq-sample-tokens", "256"];
    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("hf", vec!["convert", "--to", "hf"]),
        ("nf4", vec!["quantize", "--method", "nf4"]),
        ("gptq", [&["quantize", "--method", "gptq", "--group-size", "64"][..], &cal].concat()),
        ("awq", [&["quantize", "--method", "awq+gptq", "--format", "hf-awq", "--group-size", "64"][..], &cal].concat()),
    ];
    for (name, args) in runs {
        let input: &Path = if name == "hf" { &gguf } else { &tiny };
        let (one, sharded) = (p(&format!("{name}-one")), p(&format!("{name}-sharded")));
        for (out, size) in [(&one, "5GB"), (&sharded, "2MB")] {
            let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> =
                vec![&"-q", &args[0], &input, &"-o", out, &"--max-shard-size", &size];
            a.extend(args[1..].iter().map(|s| s as &dyn AsRef<std::ffi::OsStr>));
            qforge_ok(&a);
        }
        assert!(!one.join("model.safetensors.index.json").exists(), "{name}: one file needs no index");
        assert_eq!(st_files(&one).len(), 1);
        let files = st_files(&sharded);
        let n = files.len();
        assert!(n > 2, "{name}: {n} shards of 2 MB");
        for (i, (f, tensors)) in files.iter().enumerate() {
            assert_eq!(f, &format!("model-{:05}-of-{n:05}.safetensors", i + 1));
            let size: usize = tensors.iter().map(|(_, l)| l).sum();
            assert!(
                size <= 2_000_000 || tensors.len() == 1,
                "{name}: {f} holds {size} bytes in {} tensors",
                tensors.len()
            );
        }
        let (a, b) = (ppl(&one), ppl(&sharded));
        assert!(a == b, "{name}: perplexity {a} unsharded vs {b} sharded");
    }
    let bad = qforge(&[&"convert", &gguf, &"-o", &p("x"), &"--to", &"hf", &"--max-shard-size", &"5XB"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("unknown unit"));
}

/// `convert --outtype` takes every `quantize --type` (issue 17): the K-quants, IQ4_NL and the
/// mixes follow llama-quantize's per-tensor plan, so the file is byte for byte the one
/// `quantize --type` writes; an unknown name lists the valid ones.
#[test]
fn convert_outtype_takes_every_quantize_type() {
    let tmp = tempfile::tempdir().unwrap();
    for (ty, file_type) in [("Q4_K_M", 15), ("q3_k_s", 11), ("Q6_K", 18), ("IQ4_NL", 25), ("Q2_K", 10)] {
        let (c, q) = (tmp.path().join(format!("c-{ty}.gguf")), tmp.path().join(format!("q-{ty}.gguf")));
        let j: Json =
            serde_json::from_str(&qforge_ok(&[&"convert", &common::tiny(), &"-o", &c, &"--outtype", &ty, &"--json"]))
                .unwrap();
        assert_eq!(j["file_type"], file_type, "{ty}: {j}");
        assert_eq!(j["outtype"].as_str().unwrap(), ty.to_ascii_uppercase());
        qforge_ok(&[&"-q", &"quantize", &common::tiny(), &"-o", &q, &"--type", &ty]);
        assert!(read(&c) == read(&q), "{ty}: convert and quantize wrote different files");
    }
    let r = qforge(&[&"convert", &common::tiny(), &"-o", &tmp.path().join("x.gguf"), &"--outtype", &"q4_k_x"]);
    let e = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "a usage error: {e}");
    assert!(e.contains("unknown output type") && e.contains("Q4_K_M") && e.contains("bf16"), "{e}");
    assert!(!tmp.path().join("x.gguf").exists());
}
