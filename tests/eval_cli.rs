//! `perplexity`, `compare`, `verify` and `generate` end to end on the bundled tiny model.

mod common;

use common::*;
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn convert(dir: &std::path::Path, model: &std::path::Path, outtype: &str) -> std::path::PathBuf {
    let out = dir.join(format!("m-{outtype}.gguf"));
    qforge_ok(&[&"-q", &"convert", &model, &"-o", &out, &"--outtype", &outtype]);
    out
}

fn golden_ppl(file: &str, variant: &str) -> f64 {
    let g: Value = serde_json::from_str(&std::fs::read_to_string(golden(file)).unwrap()).unwrap();
    g[variant]["wiki"]["ppl"].as_f64().unwrap()
}

/// The full WikiText-2 protocol on the f32 model reproduces the golden perplexity to 0.01%,
/// with exactly the golden token and window counts.
#[test]
fn tiny_f32_perplexity_matches_golden() {
    let out = qforge_ok(&[&"-q", &"perplexity", &tiny(), &"--text", &wiki(), &"--json"]);
    let r = json(&out);
    for key in ["ppl", "nll_mean", "tokens_scored", "windows", "ctx", "tokens_per_sec"] {
        assert!(r.get(key).is_some(), "missing {key} in {r}");
    }
    assert_eq!(r["tokens_scored"].as_u64(), Some(378651));
    assert_eq!(r["windows"].as_u64(), Some(741));
    assert_eq!(r["ctx"].as_u64(), Some(512));
    let (got, want) = (r["ppl"].as_f64().unwrap(), golden_ppl("golden_tiny.json", "fp32"));
    let rel = (got - want).abs() / want;
    eprintln!("tiny f32 ppl {got} golden {want} rel {rel:.2e}");
    assert!(rel <= 1e-4, "ppl {got} vs golden {want}");
}

/// Q8_0 GGUF over the full text within 0.2% of the golden q8_0 value. F16, BF16 and F32
/// GGUFs hold the checkpoint's bf16 values exactly (bf16 → f16 is exact in f16's normal
/// range), so they must score like the HF model up to float summation order (the
/// interleaved q/k layout sums each head's dot products in another order): checked on 10
/// windows to 1e-5 instead of three more full runs.
#[test]
fn tiny_gguf_perplexities_match_golden() {
    let dir = tempfile::tempdir().unwrap();
    let q8 = convert(dir.path(), &tiny(), "q8_0");
    let r = json(&qforge_ok(&[&"-q", &"perplexity", &q8, &"--text", &wiki(), &"--json"]));
    let (got, want) = (r["ppl"].as_f64().unwrap(), golden_ppl("golden_tiny.json", "q8_0"));
    eprintln!("tiny q8_0 ppl {got} golden {want}");
    assert!((got - want).abs() / want <= 2e-3, "q8_0 ppl {got} vs golden {want}");

    let b = json(&qforge_ok(&[&"-q", &"perplexity", &tiny(), &"--text", &wiki(), &"--json", &"--max-windows", &"10"]));
    let y = b["nll_mean"].as_f64().unwrap();
    for t in ["f16", "bf16", "f32"] {
        let g = convert(dir.path(), &tiny(), t);
        let a = json(&qforge_ok(&[&"-q", &"perplexity", &g, &"--text", &wiki(), &"--json", &"--max-windows", &"10"]));
        let x = a["nll_mean"].as_f64().unwrap();
        eprintln!("tiny {t} GGUF nll {x} (HF {y})");
        assert!((x - y).abs() <= 1e-5 * y, "{t} GGUF nll {x} differs from the HF model's {y}");
    }
}

#[test]
fn compare_with_itself_is_zero() {
    let r =
        json(&qforge_ok(&[&"-q", &"compare", &tiny(), &tiny(), &"--text", &wiki(), &"--max-windows", &"4", &"--json"]));
    assert!(r["kld_mean"].as_f64().unwrap() < 1e-9, "{r}");
    assert_eq!(r["top1_agree"].as_f64(), Some(1.0));
    assert_eq!(r["ppl_ratio"].as_f64(), Some(1.0));
    for key in
        ["base_ppl", "ppl", "kld_stderr", "kld_p50", "kld_p90", "kld_p99", "kld_max", "delta_p_mean", "delta_p_rms"]
    {
        assert!(r.get(key).is_some(), "missing {key}");
    }
}

/// Saved base logits (16-bit log-probabilities) give the live KLD within 1%; base ppl,
/// top-1 agreement and the candidate's ppl are exact.
#[test]
fn compare_against_saved_logits() {
    let dir = tempfile::tempdir().unwrap();
    let q8 = convert(dir.path(), &tiny(), "q8_0");
    let saved = dir.path().join("base.qflogits");
    let base = json(&qforge_ok(&[
        &"-q",
        &"perplexity",
        &tiny(),
        &"--text",
        &wiki(),
        &"--max-windows",
        &"6",
        &"--json",
        &"--save-logits",
        &saved,
    ]));
    let live =
        json(&qforge_ok(&[&"-q", &"compare", &tiny(), &q8, &"--text", &wiki(), &"--max-windows", &"6", &"--json"]));
    let file =
        json(&qforge_ok(&[&"-q", &"compare", &saved, &q8, &"--text", &wiki(), &"--max-windows", &"6", &"--json"]));
    let (kl, kf) = (live["kld_mean"].as_f64().unwrap(), file["kld_mean"].as_f64().unwrap());
    eprintln!("kld live {kl} from saved logits {kf} ({:+.4}%)", 100.0 * (kf - kl) / kl);
    assert!(kl > 1e-5, "q8_0 should differ from f32");
    assert!((kf - kl).abs() <= 0.01 * kl, "live {kl} file {kf}");
    assert!((base["ppl"].as_f64().unwrap() - file["base_ppl"].as_f64().unwrap()).abs() < 1e-3);
    assert_eq!(live["top1_agree"], file["top1_agree"]);
    assert!((live["ppl"].as_f64().unwrap() - file["ppl"].as_f64().unwrap()).abs() < 1e-9);
}

#[test]
fn verify_logits_golden_passes_and_a_wrong_golden_fails() {
    let out =
        qforge_ok(&[&"verify", &tiny(), &"--golden", &golden("golden_tiny_logits.safetensors"), &"--text", &wiki()]);
    assert!(out.contains("logits") && out.contains("ok"), "{out}");
    // The small model's logits are not the tiny model's: a readable diff and exit code 1.
    let out = qforge(&[&"verify", &tiny(), &"--golden", &golden("golden_small_logits.safetensors")]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("verification failed"));
}

#[test]
fn generate_greedy_is_deterministic_and_sampling_is_seeded() {
    let a = qforge_ok(&[&"generate", &tiny(), &"--prompt", &"The history of", &"-n", &"20"]);
    let b = qforge_ok(&[&"generate", &tiny(), &"--prompt", &"The history of", &"-n", &"20"]);
    assert_eq!(a, b);
    assert!(a.starts_with("The history of") && a.len() > "The history of".len() + 10, "{a:?}");
    let s1 = qforge_ok(&[
        &"generate",
        &tiny(),
        &"--prompt",
        &"The",
        &"-n",
        &"20",
        &"--temperature",
        &"0.9",
        &"--seed",
        &"3",
    ]);
    let s2 = qforge_ok(&[
        &"generate",
        &tiny(),
        &"--prompt",
        &"The",
        &"-n",
        &"20",
        &"--temperature",
        &"0.9",
        &"--seed",
        &"3",
    ]);
    assert_eq!(s1, s2);
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Too short for a window.").unwrap();
    let e = qforge_err(&[&"perplexity", &tiny(), &"--text", &short]);
    assert!(e.contains("fewer than one window"), "{e}");
    let e = qforge_err(&[&"perplexity", &tiny(), &"--text", &wiki(), &"--ctx", &"4096"]);
    assert!(e.contains("context length"), "{e}");

    // A model directory without tokenizer.json.
    let notok = dir.path().join("notok");
    std::fs::create_dir(&notok).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny().join(f), notok.join(f)).unwrap();
    }
    let e = qforge_err(&[&"perplexity", &notok, &"--text", &wiki()]);
    assert!(e.contains("tokenizer"), "{e}");

    // Different vocabularies cannot be compared.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(tiny().join(f), other.join(f)).unwrap();
    }
    let tj = std::fs::read_to_string(tiny().join("tokenizer.json")).unwrap();
    std::fs::write(other.join("tokenizer.json"), tj.replace("<pad>", "<unk>")).unwrap();
    let e = qforge_err(&[&"compare", &tiny(), &other, &"--text", &wiki(), &"--max-windows", &"1"]);
    assert!(e.contains("different tokenizers"), "{e}");
}

/// Peak RSS while scoring stays under the model file's size plus the context's activations
/// and KV cache (memory-mapped weights, no dequantized copy of the model), with a fixed
/// 48 MB allowance for code, the tokenizer and allocator slack.
#[test]
fn peak_memory_is_file_size_plus_activations() {
    let dir = tempfile::tempdir().unwrap();
    let small = small();
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(small.join("config.json")).unwrap()).unwrap();
    let g = |k: &str| cfg[k].as_u64().unwrap();
    let (h, f, v, l, nh, nkv, hd) = (
        g("hidden_size"),
        g("intermediate_size"),
        g("vocab_size"),
        g("num_hidden_layers"),
        g("num_attention_heads"),
        g("num_key_value_heads"),
        g("head_dim"),
    );
    let ctx = 512u64;
    let activations = 4 * ctx * (v + 2 * f + 4 * h + nh * hd + 2 * nkv * hd) + 4 * nh * ctx * ctx;
    let kv = 4 * 2 * l * ctx * nkv * hd;
    for t in ["q8_0", "f32"] {
        let m = convert(dir.path(), &small, t);
        let size = std::fs::metadata(&m).unwrap().len();
        let out = qforge(&[&"-v", &"perplexity", &m, &"--text", &wiki(), &"--max-windows", &"2"]);
        assert!(out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr.lines().find(|l| l.contains("peak RSS")).expect("no peak RSS line");
        let mb: f64 = line.split_whitespace().rev().nth(1).unwrap().parse().unwrap();
        let bound = (size + activations + kv) as f64 / (1 << 20) as f64 + 48.0;
        eprintln!("{t}: file {:.1} MB, peak RSS {mb:.1} MB, bound {bound:.1} MB", size as f64 / 1048576.0);
        assert!(mb <= bound, "{t}: peak RSS {mb} MB above {bound} MB");
    }
}
