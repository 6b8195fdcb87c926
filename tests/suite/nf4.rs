//! `quantize --method nf4` (bitsandbytes NF4 / FP4 Hugging Face directories) on the tiny model:
//! the layout checked by an independent numpy decoder, GGUF inputs, the options, the runtime
//! on the written checkpoints (against their dequantized weights and the golden NF4
//! perplexity), and hostile 4-bit checkpoints.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value as Json};

fn json_of(s: &str) -> Json {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn nf4(input: &Path, out: &Path, extra: &[&str]) -> Json {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"-q", &"quantize", &input, &"-o", &out, &"--method", &"nf4", &"--json"];
    for e in extra {
        args.push(e);
    }
    json_of(&qforge_ok(&args))
}

fn ppl(model: &Path, windows: usize) -> Json {
    let w = windows.to_string();
    json_of(&qforge_ok(&[&"-q", &"perplexity", &model, &"--text", &wiki(), &"--json", &"--max-windows", &w]))
}

/// A safetensors file as name → (dtype, shape, bytes).
type Tensors = BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

fn read_st(path: &Path) -> Tensors {
    let bytes = fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Json = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut out = BTreeMap::new();
    for (name, info) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let (a, b) =
            (info["data_offsets"][0].as_u64().unwrap() as usize, info["data_offsets"][1].as_u64().unwrap() as usize);
        let shape = info["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        out.insert(
            name.clone(),
            (info["dtype"].as_str().unwrap().to_string(), shape, bytes[8 + n + a..8 + n + b].to_vec()),
        );
    }
    out
}

/// Write tensors as safetensors, trusting the given shapes (so that inconsistent ones can be
/// made): offsets follow the byte lengths.
fn write_st(path: &Path, t: &Tensors) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, (dtype, shape, bytes)) in t {
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(bytes);
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    fs::write(path, out).unwrap();
}

/// A copy of a written 4-bit directory with its tensors edited.
fn edited(src: &Path, dest: &Path, edit: impl FnOnce(&mut Tensors)) -> PathBuf {
    fs::create_dir_all(dest).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "model.safetensors" {
            fs::copy(e.path(), dest.join(e.file_name())).unwrap();
        }
    }
    let mut t = read_st(&src.join("model.safetensors"));
    edit(&mut t);
    write_st(&dest.join("model.safetensors"), &t);
    dest.to_path_buf()
}

const Q: &str = "model.layers.1.self_attn.q_proj.weight";
const DOWN: &str = "model.layers.2.mlp.down_proj.weight";

/// NF4, NF4 with double quantization, and FP4 with blocks that straddle rows (512 weights,
/// rows of 768 in ffn_down): the directory holds what transformers + bitsandbytes write, and
/// `check_bnb.py` decodes every quantized tensor by hand from the bytes and quant_state JSON,
/// checks the codes and absmax against its own quantizer, the values against the source
/// weights, and qforge's decode (through `convert --outtype f32`) against its own, exactly.
#[test]
fn bnb_layout_checked_by_an_independent_decoder() {
    let dir = tempfile::tempdir().unwrap();
    for (name, extra, bpw) in [
        ("nf4", &[][..], 4.5),
        ("nf4-dq", &["--double-quant"][..], 4.127),
        ("fp4-b512", &["--type", "fp4", "--block-size", "512"][..], 4.0625),
    ] {
        let out = dir.path().join(name);
        let r = nf4(&tiny(), &out, extra);
        assert_eq!(r["quantized_tensors"], 28, "{r}");
        assert_eq!(r["dtype"], "bfloat16");
        let got = r["linear_bits_per_weight"].as_f64().unwrap();
        // Codes and absmax, plus the small per-tensor tables and JSON.
        assert!(got > bpw && got < bpw + 0.1, "{name}: {got} bits per weight, expected about {bpw}");
        assert_eq!(
            dir_entries(&out),
            ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
        );
        let cfg: Json = serde_json::from_slice(&fs::read(out.join("config.json")).unwrap()).unwrap();
        let q = &cfg["quantization_config"];
        assert_eq!(q["quant_method"], "bitsandbytes");
        assert_eq!(q["bnb_4bit_quant_type"], if name.starts_with("fp4") { "fp4" } else { "nf4" });
        assert_eq!(q["bnb_4bit_use_double_quant"], name == "nf4-dq");
        assert_eq!(q["bnb_4bit_compute_dtype"], "bfloat16");

        let decoded = dir.path().join(format!("{name}.gguf"));
        qforge_ok(&[&"-q", &"convert", &out, &"-o", &decoded, &"--outtype", &"f32"]);
        let report = python("check_bnb.py", &[&out, &tiny(), &decoded]);
        eprintln!("{name}:\n{report}");
        assert!(report.contains("OK: 28 quantized linears"), "{report}");
        qforge_ok(&[&"-q", &"inspect", &"--verify", &out]);
    }
    // Nothing but the outputs was left beside them.
    let left: Vec<String> = dir_entries(dir.path()).into_iter().filter(|n| n.starts_with('.')).collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// A GGUF input (q/k rows interleaved, llama.cpp's layout) gives the same quantized tensors as
/// the Hugging Face directory it came from; options that do not apply are refused.
#[test]
fn gguf_input_and_options() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bf16 = d.join("tiny-bf16.gguf");
    qforge_ok(&[&"-q", &"convert", &tiny(), &"-o", &bf16, &"--outtype", &"bf16"]);
    nf4(&tiny(), &d.join("from-hf"), &["--double-quant"]);
    nf4(&bf16, &d.join("from-gguf"), &["--double-quant"]);
    let a = read_st(&d.join("from-hf/model.safetensors"));
    let b = read_st(&d.join("from-gguf/model.safetensors"));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, t) in &a {
        assert!(b[name] == *t, "{name} differs between HF and GGUF input");
    }
    assert!(dir_entries(&d.join("from-gguf")).contains(&"tokenizer.json".to_string()));

    let out = d.join("x");
    let gguf_err = qforge_err(&[&"quantize", &tiny(), &"-o", &out, &"--method", &"nf4", &"--format", &"gguf"]);
    assert!(gguf_err.contains("IQ4_NL"), "{gguf_err}");
    for bad in [
        &["--type", "q4_0"][..],
        &["--block-size", "100"],
        &["--block-size", "32"],
        &["--pure"],
        &["--format", "hf-gptq"],
    ] {
        let t = tiny();
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"quantize", &t, &"-o", &out, &"--method", &"nf4"];
        for b in bad {
            args.push(b);
        }
        qforge_err(&args);
    }
    // An existing, non-empty output directory is left alone.
    let e = qforge_err(&[&"quantize", &tiny(), &"-o", &d.join("from-hf"), &"--method", &"nf4"]);
    assert!(e.contains("already exists"), "{e}");
    // A 4-bit input is only requantized on request.
    let e = qforge_err(&[&"quantize", &d.join("from-hf"), &"-o", &out, &"--method", &"nf4"]);
    assert!(e.contains("--allow-requantize"), "{e}");
    nf4(&d.join("from-hf"), &out, &["--allow-requantize"]);
}

/// The runtime on 4-bit checkpoints: NF4 scores exactly like its own weights dequantized to
/// an f32 GGUF (an independent path: `convert` → plain f32 matrices); over the full text it is
/// within 0.2% of the golden `nf4_b64` perplexity (the golden quantizes the same 7 linears
/// with absmax blocks of 64 over the flattened weight); double quantization and FP4 stay
/// close to f32 on a few windows.
#[test]
fn runtime_on_4bit_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = d.join("nf4");
    nf4(&tiny(), &m, &[]);
    let deq = d.join("nf4-f32.gguf");
    qforge_ok(&[&"-q", &"convert", &m, &"-o", &deq, &"--outtype", &"f32"]);
    let (a, b) = (ppl(&m, 6)["nll_mean"].as_f64().unwrap(), ppl(&deq, 6)["nll_mean"].as_f64().unwrap());
    assert!((a - b).abs() <= 1e-5 * b, "nf4 {a} vs its dequantized weights {b}");

    let full = json_of(&qforge_ok(&[&"-q", &"perplexity", &m, &"--text", &wiki(), &"--json"]));
    let g: Json = serde_json::from_str(&fs::read_to_string(golden("golden_tiny.json")).unwrap()).unwrap();
    let (got, want) = (full["ppl"].as_f64().unwrap(), g["nf4_b64"]["wiki"]["ppl"].as_f64().unwrap());
    eprintln!("tiny nf4 ppl {got}, golden nf4_b64 {want}");
    assert_eq!(full["tokens_scored"], 378651);
    assert!((got - want).abs() / want <= 2e-3, "nf4 ppl {got} vs golden {want}");

    let base = ppl(&tiny(), 6)["ppl"].as_f64().unwrap();
    let nf4_6 = (a).exp();
    for (name, extra) in [("dq", &["--double-quant"][..]), ("fp4", &["--type", "fp4"][..])] {
        let p = d.join(name);
        nf4(&tiny(), &p, extra);
        let x = ppl(&p, 6)["ppl"].as_f64().unwrap();
        eprintln!("tiny {name} ppl {x} on 6 windows (f32 {base}, nf4 {nf4_6})");
        assert!(x > base * 0.99 && x < base * 1.08, "{name} ppl {x} vs f32 {base}");
    }
    let dq = ppl(&d.join("dq"), 6)["ppl"].as_f64().unwrap();
    assert!((dq - nf4_6).abs() / nf4_6 < 5e-3, "double quantization moved ppl from {nf4_6} to {dq}");
    let c =
        json_of(&qforge_ok(&[&"-q", &"compare", &tiny(), &m, &"--text", &wiki(), &"--json", &"--max-windows", &"2"]));
    let kld = c["kld_mean"].as_f64().unwrap_or_else(|| panic!("no kld_mean in {c}"));
    assert!(kld > 0.0 && kld < 0.2, "kld {kld}");
}

/// Broken 4-bit checkpoints: one clean error naming the problem, never a panic.
#[test]
fn hostile_bnb_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = d.join("good");
    nf4(&tiny(), &good, &[]);
    let good_dq = d.join("good-dq");
    nf4(&tiny(), &good_dq, &["--double-quant"]);
    let state = |t: &mut Tensors, name: &str, text: &str| {
        let k = format!("{name}.quant_state.bitsandbytes__nf4");
        let bytes = text.as_bytes().to_vec();
        t.insert(k, ("U8".into(), vec![bytes.len()], bytes));
    };
    type Edit = Box<dyn Fn(&mut Tensors)>;
    let cases: Vec<(&str, &Path, Edit, &[&str])> = vec![
        (
            "absmax-short",
            &good,
            Box::new(|t| {
                let e = t.get_mut(&format!("{DOWN}.absmax")).unwrap();
                e.1 = vec![e.1[0] - 1];
                e.2.truncate(e.2.len() - 4);
            }),
            &["absmax", "shape"],
        ),
        (
            "absmax-dtype",
            &good,
            Box::new(|t| {
                let e = t.get_mut(&format!("{DOWN}.absmax")).unwrap();
                e.0 = "I32".into();
            }),
            &["absmax", "dtype"],
        ),
        (
            "absmax-nan",
            &good,
            Box::new(|t| {
                let e = t.get_mut(&format!("{Q}.absmax")).unwrap();
                e.2[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
            }),
            &["absmax[2]", "NaN"],
        ),
        ("bad-json", &good, Box::new(move |t| state(t, DOWN, "{\"quant_type\": \"nf4\", ")), &["quant_state", "JSON"]),
        ("json-not-object", &good, Box::new(move |t| state(t, DOWN, "[1, 2]")), &["quant_state"]),
        (
            "json-shape",
            &good,
            Box::new(move |t| {
                state(
                    t,
                    DOWN,
                    "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [768, 256]}",
                )
            }),
            &["weight", "shape"],
        ),
        (
            "json-huge-shape",
            &good,
            Box::new(move |t| {
                state(t, DOWN,
            "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [4000000000, 4000000000]}")
            }),
            &["shape"],
        ),
        (
            "json-blocksize",
            &good,
            Box::new(move |t| {
                state(
                    t,
                    DOWN,
                    "{\"quant_type\": \"nf4\", \"blocksize\": 0, \"dtype\": \"bfloat16\", \"shape\": [256, 768]}",
                )
            }),
            &["blocksize"],
        ),
        (
            "json-type",
            &good,
            Box::new(move |t| {
                state(
                    t,
                    DOWN,
                    "{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [256, 768]}",
                )
            }),
            &["fp4"],
        ),
        (
            "weight-shape",
            &good,
            Box::new(|t| {
                let e = t.get_mut(Q).unwrap();
                e.1 = vec![e.1[0] / 2, 2];
            }),
            &["weight", "shape"],
        ),
        (
            "weight-float",
            &good,
            Box::new(|t| {
                let e = t.get_mut(Q).unwrap();
                e.0 = "F16".into();
                e.1 = vec![e.1[0] / 2, 1];
            }),
            &["weight", "dtype"],
        ),
        (
            "no-state",
            &good,
            Box::new(|t| {
                t.remove(&format!("{Q}.quant_state.bitsandbytes__nf4"));
            }),
            &["quant_state"],
        ),
        (
            "no-absmax",
            &good,
            Box::new(|t| {
                t.remove(&format!("{Q}.absmax"));
            }),
            &["absmax"],
        ),
        (
            "quant-map",
            &good,
            Box::new(|t| {
                let e = t.get_mut(&format!("{Q}.quant_map")).unwrap();
                e.2[0..4].copy_from_slice(&0.5f32.to_le_bytes());
            }),
            &["quant_map"],
        ),
        (
            "nested-missing",
            &good_dq,
            Box::new(|t| {
                t.remove(&format!("{Q}.nested_absmax"));
            }),
            &["nested_absmax"],
        ),
        (
            "nested-unexpected",
            &good,
            Box::new(|t| {
                t.insert(format!("{Q}.nested_absmax"), ("F32".into(), vec![1], vec![0; 4]));
            }),
            &["nested_absmax"],
        ),
        (
            "nested-map-short",
            &good_dq,
            Box::new(|t| {
                let e = t.get_mut(&format!("{Q}.nested_quant_map")).unwrap();
                e.1 = vec![255];
                e.2.truncate(255 * 4);
            }),
            &["nested_quant_map"],
        ),
    ];
    for (name, src, edit, words) in cases {
        let m = edited(src, &d.join(name), edit);
        for args in [
            vec![&"perplexity" as &dyn AsRef<std::ffi::OsStr>, &m, &"--text", &wiki(), &"--max-windows", &"1"],
            vec![&"convert", &m, &"-o", &d.join(format!("{name}.gguf"))],
        ] {
            let e = qforge_err(&args);
            for w in words {
                assert!(e.contains(w), "{name}: error does not mention {w:?}: {e}");
            }
        }
        assert!(!d.join(format!("{name}.gguf")).exists());
    }

    // Configs bitsandbytes can describe but qforge does not read.
    for (name, edit, word) in [
        ("int8", json!({"quant_method": "bitsandbytes", "load_in_8bit": true}), "8-bit"),
        (
            "storage",
            json!({"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_storage": "bfloat16"}),
            "storage",
        ),
        ("neither", json!({"quant_method": "bitsandbytes"}), "load_in_4bit"),
    ] {
        let m = edited(&good, &d.join(name), |_| {});
        let mut cfg: Json = serde_json::from_slice(&fs::read(m.join("config.json")).unwrap()).unwrap();
        cfg["quantization_config"] = edit;
        fs::write(m.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        let e = qforge_err(&[&"inspect", &m]);
        assert!(e.contains(word), "{name}: {e}");
    }
}

/// Importing a bitsandbytes NF4 checkpoint into GGUF: no GGML type shares NF4's grid, so the
/// weights are dequantized, by default to F16 (whose rounding adds almost nothing), or
/// quantized again to the requested type; both warn, and the KL divergence against the
/// checkpoint says what each costs.
#[test]
fn nf4_checkpoint_imports_into_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("nf4");
    nf4(&tiny(), &ck, &[]);
    let (j, stderr, k) = import_into_gguf(&ck, &tmp.path().join("f16.gguf"), &[], 8);
    assert_eq!(j["outtype"], "F16");
    assert_eq!(j["requantized"].as_array().unwrap().len(), 28);
    assert!(stderr.contains("quantized again"), "{stderr}");
    eprintln!("NF4 → F16: kld vs checkpoint {k:.3e}");
    assert!(k <= 1e-4, "{k}");
    let (_, stderr, k2) = import_into_gguf(&ck, &tmp.path().join("q4_0.gguf"), &["--type", "q4_0"], 8);
    assert!(stderr.contains("quantized again"), "{stderr}");
    eprintln!("NF4 → Q4_0 re-quantized: kld vs checkpoint {k2:.3e}");
    assert!(k2 > k && k2 < 0.1, "{k2}");
}
