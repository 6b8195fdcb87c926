//! `quantize --method awq` on the tiny fixture: the hf-awq checkpoint loads and runs, its
//! packing matches an independent numpy unpacker, AWQ beats plain round-to-nearest on the same
//! grid (hf-awq 4-bit and GGUF Q4_0), the scale folding leaves the model's logits unchanged,
//! and broken AWQ checkpoints fail cleanly.

use crate::common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::{import_into_gguf, python, qforge_err, qforge_ok, tiny, wiki};
use qforge::methods::awq::layer::LayerF32;
use qforge::model::ModelFile;
use qforge::runtime::{KvCache, LlamaModel};
use serde_json::Value as Json;

/// A small calibration keeps each AWQ run to seconds on the tiny model.
const CALIB: &[&str] = &["--nsamples", "16", "--seqlen", "256", "--awq-sample-tokens", "1024"];
const KLD_WINDOWS: &str = "8";

fn quantize_awq(out: &Path, extra: &[&str]) {
    let input = tiny();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-q", &"quantize", &input, &"-o", &out, &"--method", &"awq"];
    for a in CALIB.iter().chain(extra) {
        args.push(a);
    }
    qforge_ok(&args);
}

/// KL divergence of `candidate` against the f32 tiny model over the first windows of wiki.
fn kld(candidate: &Path) -> f64 {
    let (base, text) = (tiny(), wiki());
    let out = qforge_ok(&[&"compare", &base, &candidate, &"--text", &text, &"--max-windows", &KLD_WINDOWS, &"--json"]);
    let j: Json = serde_json::from_str(&out).unwrap();
    j["kld_mean"].as_f64().unwrap()
}

#[test]
fn hf_awq_runs_matches_numpy_and_beats_rtn() {
    let tmp = tempfile::tempdir().unwrap();
    let awq = tmp.path().join("awq");
    let rtn = tmp.path().join("rtn");
    let plain_scales = tmp.path().join("plain-scales");
    quantize_awq(&awq, &[]);
    quantize_awq(&rtn, &["--no-awq-scale", "--no-awq-clip"]);
    quantize_awq(&plain_scales, &["--no-awq-duo-scaling"]);

    // Loads and runs in the runtime.
    let text = wiki();
    let ppl = qforge_ok(&[&"perplexity", &awq, &"--text", &text, &"--max-windows", &"2", &"--json"]);
    let ppl: Json = serde_json::from_str(&ppl).unwrap();
    assert!(ppl["ppl"].as_f64().is_some_and(|p| p.is_finite() && p > 1.0), "{ppl}");
    let cfg: Json = serde_json::from_str(&fs::read_to_string(awq.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["quant_method"], "awq");
    assert_eq!(cfg["quantization_config"]["group_size"], 128);

    // Independent unpacking (numpy) = qforge's decode, read back through `convert`.
    let deq = tmp.path().join("deq.gguf");
    qforge_ok(&[&"-q", &"convert", &awq, &"-o", &deq, &"--outtype", &"f32"]);
    let out = python("check_awq.py", &[&awq, &deq, &"1"]);
    assert!(out.trim_end().ends_with("OK"), "{out}");

    let (k_awq, k_rtn, k_plain) = (kld(&awq), kld(&rtn), kld(&plain_scales));
    eprintln!("tiny 4-bit g128 KLD: AWQ {k_awq:.5} (without duo scaling {k_plain:.5}), RTN {k_rtn:.5}");
    assert!(k_awq < 0.95 * k_rtn, "AWQ KLD {k_awq} is not below round-to-nearest {k_rtn}");
    assert!(k_plain < 0.95 * k_rtn, "AWQ (s = x̄^α) KLD {k_plain} is not below round-to-nearest {k_rtn}");
}

#[test]
fn awq_q4_0_gguf_beats_plain_q4_0() {
    let tmp = tempfile::tempdir().unwrap();
    let awq = tmp.path().join("awq.gguf");
    let plain = tmp.path().join("plain.gguf");
    quantize_awq(&awq, &["--type", "Q4_0"]);
    let input = tiny();
    qforge_ok(&[&"-q", &"quantize", &input, &"-o", &plain, &"--type", &"Q4_0"]);
    // Same plan: the same tensors in the same types.
    let types = |p: &Path| -> Vec<(String, String)> {
        let j: Json = serde_json::from_str(&qforge_ok(&[&"inspect", &p, &"--json"])).unwrap();
        j["tensors"].as_array().unwrap().iter().map(|t| (t["name"].to_string(), t["type"].to_string())).collect()
    };
    assert_eq!(types(&awq), types(&plain));
    let (k_awq, k_plain) = (kld(&awq), kld(&plain));
    eprintln!("tiny Q4_0 KLD: AWQ {k_awq:.5}, plain {k_plain:.5}");
    assert!(k_awq < 0.95 * k_plain, "AWQ Q4_0 KLD {k_awq} is not below plain Q4_0 {k_plain}");
}

/// Deterministic positive scales spread over a decade, like AWQ's.
fn scales(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| 10f32.powf((((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 1000.0 - 0.5)).collect()
}

/// Fold random scales everywhere AWQ folds them; the logits must not move. (The models use
/// grouped-query attention, so o cannot fold into v.)
fn fold_everything_keeps_the_logits(dir: &Path, vocab: u32) {
    let file = ModelFile::open(dir).unwrap();
    let tokens: Vec<u32> = (0..64).map(|i| (i * 97 + 5) % vocab).collect();
    let logits = |m: &LlamaModel<'_>| {
        let mut cache = KvCache::new(&m.config, tokens.len());
        m.forward(&tokens, &mut cache).unwrap()
    };
    let mut model = LlamaModel::load(&file).unwrap();
    let before = logits(&model);
    for li in 0..model.n_layers() {
        let mut l = LayerF32::from_model(&model, li).unwrap();
        l.fold_attn(&scales(l.hidden, 1 + li as u32));
        l.fold_mlp(&scales(l.hidden, 7 + li as u32));
        for i in 0..l.ffns.len() {
            l.fold_down(i, &scales(l.ffns[i].width, 13 + (li + i) as u32));
        }
        assert!(!l.can_fold_o());
        assert!(l.fold_o(&scales(l.q_dim, 3)).is_err());
        l.store(&mut model).unwrap();
    }
    let after = logits(&model);
    let scale = before.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = before.iter().zip(&after).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-4 * scale, "{}: folding changed the logits by {worst} (max |logit| {scale})", dir.display());
    // And the scales did change the weights (the check is not vacuous).
    let l0 = LayerF32::from_model(&model, 0).unwrap();
    let orig = LayerF32::from_model(&LlamaModel::load(&file).unwrap(), 0).unwrap();
    assert!(l0.attn_norm.iter().zip(&orig.attn_norm).any(|(a, b)| (a - b).abs() > 1e-3 * b.abs()));
    assert!(l0.ffns.iter().zip(&orig.ffns).all(|(a, b)| a.down != b.down));
}

#[test]
fn folding_the_scales_keeps_the_logits() {
    fold_everything_keeps_the_logits(&tiny(), 8000);
}

/// In an MoE layer the gate/up scales fold into post_attention_layernorm, which the router
/// (and Qwen2-MoE's shared-expert gate) read too: their columns take the scales, so the
/// routing, and with it the logits, stay as they were.
#[test]
fn folding_the_scales_keeps_an_moe_models_logits() {
    for arch in ["mixtral", "qwen2moe"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arch").join(arch);
        fold_everything_keeps_the_logits(&dir, 8000);
        let model_file = ModelFile::open(&dir).unwrap();
        let model = LlamaModel::load(&model_file).unwrap();
        let mut l = LayerF32::from_model(&model, 0).unwrap();
        let router = l.router.clone().expect("an MoE layer has a router");
        l.fold_mlp(&scales(l.hidden, 5));
        assert_ne!(l.router.as_ref(), Some(&router), "{arch}: the router did not take the scales");
        assert_eq!(l.shared_gate.is_some(), arch == "qwen2moe");
    }
}

/// v → o folding (multi-head attention only): o·(v·x) is unchanged.
#[test]
fn folding_o_into_v_keeps_the_product() {
    let file = ModelFile::open(&tiny()).unwrap();
    let model = LlamaModel::load(&file).unwrap();
    let mut l = LayerF32::from_model(&model, 0).unwrap();
    // Make an MHA-shaped layer: v with q_dim rows, and a bias.
    l.kv_dim = l.q_dim;
    l.wv = (0..l.q_dim * l.hidden).map(|i| ((i * 31 % 61) as f32 - 30.0) / 50.0).collect();
    l.bv = Some((0..l.q_dim).map(|i| i as f32 / 100.0).collect());
    let x: Vec<f32> = (0..l.hidden).map(|i| ((i * 17 % 23) as f32 - 11.0) / 9.0).collect();
    let out = |l: &LayerF32| -> Vec<f32> {
        let v: Vec<f32> = (0..l.q_dim)
            .map(|r| {
                l.wv[r * l.hidden..(r + 1) * l.hidden].iter().zip(&x).map(|(a, b)| a * b).sum::<f32>()
                    + l.bv.as_ref().unwrap()[r]
            })
            .collect();
        (0..l.hidden).map(|r| l.wo[r * l.q_dim..(r + 1) * l.q_dim].iter().zip(&v).map(|(a, b)| a * b).sum()).collect()
    };
    let before = out(&l);
    l.fold_o(&scales(l.q_dim, 5)).unwrap();
    let after = out(&l);
    for (a, b) in before.iter().zip(&after) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "{a} vs {b}");
    }
}

/// A copy of an AWQ checkpoint with its config edited, or one of its tensors replaced.
fn edited(
    src: &Path,
    dest: &Path,
    config: impl FnOnce(&mut Json),
    tensor: Option<(&str, &[usize], Vec<u8>)>,
) -> PathBuf {
    fs::create_dir_all(dest).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        fs::copy(src.join(f), dest.join(f)).unwrap();
    }
    let mut cfg: Json = serde_json::from_str(&fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config(&mut cfg);
    fs::write(dest.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    let bytes = fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, t)| (n, (t.dtype(), t.shape().to_vec(), t.data().to_vec()))).collect();
    if let Some((name, shape, data)) = tensor {
        let e = tensors.get_mut(name).unwrap_or_else(|| panic!("no tensor {name}"));
        e.1 = shape.to_vec();
        e.2 = data;
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dest.join("model.safetensors")).unwrap();
    dest.to_path_buf()
}

#[test]
fn broken_awq_checkpoints_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let awq = tmp.path().join("awq");
    quantize_awq(&awq, &["--no-awq-scale"]);
    let root = tmp.path();
    let check = |dir: PathBuf, words: &[&str]| {
        let err = qforge_err(&[&"inspect", &dir, &"--verify"]);
        for w in words {
            assert!(err.contains(w), "error does not mention {w:?}: {err}");
        }
    };
    let qc = |k: &'static str, v: Json| move |c: &mut Json| c["quantization_config"][k] = v;
    check(edited(&awq, &root.join("gemv"), qc("version", "gemv".into()), None), &["gemm"]);
    check(edited(&awq, &root.join("bits"), qc("bits", 3.into()), None), &["4-bit"]);
    check(edited(&awq, &root.join("zp"), qc("zero_point", false.into()), None), &["zero_point"]);
    check(edited(&awq, &root.join("gs"), qc("group_size", 100.into()), None), &["groups of 100"]);
    check(edited(&awq, &root.join("gs0"), qc("group_size", 0.into()), None), &["group_size"]);
    let p = "model.layers.0.self_attn.q_proj";
    // scales with the wrong number of groups, qzeros too narrow, qweight for half the rows.
    let sc = format!("{p}.scales");
    check(edited(&awq, &root.join("scales"), |_| {}, Some((&sc, &[1, 256], vec![0u8; 512]))), &["scales"]);
    let qz = format!("{p}.qzeros");
    check(edited(&awq, &root.join("qzeros"), |_| {}, Some((&qz, &[2, 8], vec![0u8; 64]))), &["qzeros"]);
    let qw = format!("{p}.qweight");
    check(edited(&awq, &root.join("qweight"), |_| {}, Some((&qw, &[256, 16], vec![0u8; 256 * 16 * 4]))), &["attn_q"]);
}

/// The error `quantize tiny --method METHOD EXTRA…` stops with; it must write nothing.
fn option_error(method: &str, extra: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let (input, out) = (tiny(), tmp.path().join("x"));
    let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"quantize", &input, &"-o", &out, &"--method", &method];
    a.extend(extra.iter().map(|e| e as &dyn AsRef<std::ffi::OsStr>));
    let e = qforge_err(&a);
    assert!(!out.exists(), "--method {method} {extra:?} wrote {}", out.display());
    e
}

#[test]
fn awq_option_errors() {
    let with = |extra: &[&str]| option_error("awq", extra);
    assert!(with(&["--bits", "3"]).contains("4-bit"));
    assert!(with(&["--sym"]).contains("asymmetric"));
    assert!(with(&["--format", "hf-gptq"]).contains("hf-awq or gguf"));
    assert!(with(&["--group-size", "96"]).contains("--group-size 96"));
    assert!(with(&["--type", "Q9_9"]).contains("Q9_9"));
}

/// Importing an AWQ checkpoint into GGUF: 4-bit asymmetric groups of 128 re-pack into Q4_1
/// without re-quantization (only m = −d·zero is rounded to f16), any other type re-quantizes
/// with a warning; the KL divergence against the checkpoint says what each costs.
#[test]
fn awq_checkpoint_imports_into_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("awq");
    quantize_awq(&ck, &[]);
    let (j, _, k) = import_into_gguf(&ck, &tmp.path().join("q4_1.gguf"), &[], 8);
    assert_eq!(j["outtype"], "Q4_1");
    assert_eq!(j["repacked"].as_array().unwrap().len(), 28);
    assert!(j["requantized"].as_array().unwrap().is_empty());
    eprintln!("AWQ → Q4_1 re-packed: kld vs checkpoint {k:.3e}");
    assert!(k <= 1e-4, "{k}");
    let (j, stderr, k2) = import_into_gguf(&ck, &tmp.path().join("q5_0.gguf"), &["--type", "q5_0"], 8);
    assert_eq!(j["requantized"].as_array().unwrap().len(), 28);
    assert!(stderr.contains("quantized again"), "{stderr}");
    eprintln!("AWQ → Q5_0 re-quantized: kld vs checkpoint {k2:.3e}");
    assert!(k2 > k && k2 < 0.05, "{k2}");
}

fn quantize_with(method: &str, out: &Path, extra: &[&str]) {
    let input = tiny();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"-q", &"quantize", &input, &"-o", &out, &"--method", &method];
    for a in CALIB.iter().chain(extra) {
        args.push(a);
    }
    qforge_ok(&args);
}

/// `--method awq+gptq` (llm-compressor's recipe): AWQ's scales folded in, then GPTQ's rounding
/// against the Hessian of the scaled inputs. Onto Q4_0 it beats both plain rounding and AWQ's
/// rounding of the same folded weights; without scales it is exactly GPTQ (same bytes: the
/// combined driver changes nothing else); its hf-gptq checkpoint carries the folded norms.
#[test]
fn awq_then_gptq_beats_awq_alone_and_folds_its_scales() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let q4 = ["--type", "Q4_0", "--pure"];
    quantize_with("awq+gptq", &p("awq_gptq.gguf"), &q4);
    quantize_with("awq", &p("awq.gguf"), &q4);
    quantize_with("rtn", &p("rtn.gguf"), &q4);
    let (k_both, k_awq, k_rtn) = (kld(&p("awq_gptq.gguf")), kld(&p("awq.gguf")), kld(&p("rtn.gguf")));
    eprintln!("tiny Q4_0 KLD: AWQ+GPTQ {k_both:.5}, AWQ {k_awq:.5}, RTN {k_rtn:.5}");
    assert!(k_both < 0.95 * k_awq, "AWQ+GPTQ KLD {k_both} is not below AWQ's {k_awq}");
    assert!(k_both < 0.9 * k_rtn, "AWQ+GPTQ KLD {k_both} is not below round-to-nearest {k_rtn}");

    quantize_with("awq+gptq", &p("unscaled.gguf"), &[&q4[..], &["--no-awq-scale"]].concat());
    quantize_with("gptq", &p("gptq.gguf"), &q4);
    assert!(fs::read(p("unscaled.gguf")).unwrap() == fs::read(p("gptq.gguf")).unwrap(), "s = 1 is not plain GPTQ");

    // hf-gptq: a GPTQ checkpoint whose norms hold AWQ's scales (as f32, not rounded to bf16).
    let hf = p("awq_gptq_hf");
    let hf_rtn = p("rtn_hf");
    quantize_with("awq+gptq", &hf, &["--group-size", "64"]);
    quantize_with("awq", &hf_rtn, &["--group-size", "64", "--no-awq-scale", "--no-awq-clip"]);
    let cfg: Json = serde_json::from_str(&fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    let qc = &cfg["quantization_config"];
    assert_eq!(
        (qc["quant_method"].as_str(), qc["bits"].as_u64(), qc["sym"].as_bool()),
        (Some("gptq"), Some(4), Some(false))
    );
    let norm = "model.layers.0.input_layernorm.weight";
    let read = |dir: &Path| -> Vec<f32> {
        let bytes = fs::read(dir.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor(norm).unwrap();
        match t.dtype() {
            safetensors::Dtype::F32 => t.data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            safetensors::Dtype::BF16 => {
                t.data().chunks(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            d => panic!("{norm}: {d:?}"),
        }
    };
    let (folded, original) = (read(&hf), read(&tiny()));
    assert_eq!(folded.len(), original.len());
    let moved = folded.iter().zip(&original).filter(|(a, b)| (*a - *b).abs() > 1e-3 * b.abs().max(1e-3)).count();
    assert!(moved > folded.len() / 2, "only {moved} of {} norm weights carry AWQ's scales", folded.len());
    let k_hf = kld(&hf);
    let k_hf_rtn = kld(&hf_rtn);
    eprintln!("tiny 4-bit g64 KLD: AWQ+GPTQ {k_hf:.5}, RTN {k_hf_rtn:.5}");
    assert!(k_hf < 0.9 * k_hf_rtn, "AWQ+GPTQ hf-gptq KLD {k_hf} is not below round-to-nearest {k_hf_rtn}");
    // The same codes in AutoAWQ's layout decode to the same weights.
    let hf_awq = p("awq_gptq_hf_awq");
    quantize_with("awq+gptq", &hf_awq, &["--group-size", "64", "--format", "hf-awq"]);
    let cfg: Json = serde_json::from_str(&fs::read_to_string(hf_awq.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["quant_method"], "awq");
    assert_eq!(kld(&hf_awq), k_hf, "hf-awq and hf-gptq of the same AWQ+GPTQ run differ");
}

#[test]
fn awq_then_gptq_option_errors() {
    let with = |extra: &[&str]| option_error("awq+gptq", extra);
    assert!(with(&["--bits", "3"]).contains("4-bit asymmetric"));
    assert!(with(&["--sym"]).contains("4-bit asymmetric"));
    assert!(with(&["--format", "hf-bnb"]).contains("hf-gptq, hf-awq or gguf"));
    assert!(with(&["--format", "hf-awq", "--order", "act"]).contains("g_idx"));
    assert!(with(&["--true-sequential"]).contains("--true-sequential"));
}
