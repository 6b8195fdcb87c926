//! Perplexity targets on the 23M-parameter small fixture (sharded, tied embeddings), which
//! lives in ../shared: these tests fail, not skip, when it is missing.

mod common;

use common::*;
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn golden_ppl(variant: &str) -> f64 {
    let g: Value = serde_json::from_str(&std::fs::read_to_string(golden("golden_small.json")).unwrap()).unwrap();
    g[variant]["wiki"]["ppl"].as_f64().unwrap()
}

fn ppl(model: &std::path::Path, windows: Option<usize>) -> Value {
    let w = windows.map(|w| w.to_string());
    let wiki_path = wiki();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"-q", &"perplexity", &model, &"--text", &wiki_path, &"--json"];
    if let Some(w) = &w {
        args.push(&"--max-windows");
        args.push(w);
    }
    json(&qforge_ok(&args))
}

/// Full WikiText-2: the f32 model within 0.01% of the golden, Q8_0 GGUF within 0.2% of the
/// golden q8_0.
#[test]
fn small_f32_and_q8_0_perplexities_match_golden() {
    let r = ppl(&small(), None);
    assert_eq!(r["tokens_scored"].as_u64(), Some(378651));
    let (got, want) = (r["ppl"].as_f64().unwrap(), golden_ppl("fp32"));
    eprintln!("small f32 ppl {got} golden {want}");
    assert!((got - want).abs() / want <= 1e-4, "f32 ppl {got} vs golden {want}");

    let dir = tempfile::tempdir().unwrap();
    let q8 = dir.path().join("small-q8_0.gguf");
    qforge_ok(&[&"-q", &"convert", &small(), &"-o", &q8, &"--outtype", &"q8_0"]);
    let r = ppl(&q8, None);
    let (got, want) = (r["ppl"].as_f64().unwrap(), golden_ppl("q8_0"));
    eprintln!("small q8_0 ppl {got} golden {want}");
    assert!((got - want).abs() / want <= 2e-3, "q8_0 ppl {got} vs golden {want}");
}

/// F16 and BF16 GGUFs against the f32 model on the first 40 windows (two more full runs
/// would double the suite's time): BF16 holds the checkpoint's exact values, F16 rounds
/// them; both must stay within 0.1%.
#[test]
fn small_f16_bf16_gguf_track_f32() {
    let base = ppl(&small(), Some(40))["ppl"].as_f64().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (t, tol) in [("bf16", 1e-6), ("f16", 1e-3)] {
        let g = dir.path().join(format!("small-{t}.gguf"));
        qforge_ok(&[&"-q", &"convert", &small(), &"-o", &g, &"--outtype", &t]);
        let got = ppl(&g, Some(40))["ppl"].as_f64().unwrap();
        eprintln!("small {t} ppl {got} (f32 {base}) on 40 windows");
        assert!((got - base).abs() / base <= tol, "{t}: {got} vs f32 {base}");
    }
}

/// llama.cpp's default Q4_0 mix of the small model over the full text within 0.5% of the
/// golden `q4_0` perplexity. The golden fake-quantizes only the 7 linears per layer; the mix
/// also stores token_embd (which, tied, is the output too) in Q6_K, llama.cpp's rule for the
/// output tensor.
#[test]
fn small_q4_0_perplexity_matches_golden() {
    let dir = tempfile::tempdir().unwrap();
    let q4 = dir.path().join("small-q4_0.gguf");
    qforge_ok(&[&"-q", &"quantize", &small(), &"-o", &q4, &"--type", &"Q4_0"]);
    let r = ppl(&q4, None);
    assert_eq!(r["tokens_scored"].as_u64(), Some(378651));
    let (got, want) = (r["ppl"].as_f64().unwrap(), golden_ppl("q4_0"));
    eprintln!("small q4_0 ppl {got} golden {want} ({:+.3}%)", 100.0 * (got - want) / want);
    assert!((got - want).abs() / want <= 5e-3, "q4_0 ppl {got} vs golden {want}");
}
