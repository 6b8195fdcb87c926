//! `perplexity`, `compare`, `verify` and `generate` end to end on the bundled tiny model.

use crate::common;

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

/// The full WikiText-2 protocol (741 windows of 512 tokens, 378,651 scored) in one `compare`
/// of the f32 model with Q8_0 on the 7 linears of every layer, the goldens' protocol
/// (`--pure`, embeddings and output BF16 as the golden leaves them): the f32 perplexity and the
/// Q8_0 perplexity, KL divergence and top-1 agreement reproduce the goldens. Measured: f32 ppl
/// 241.043368 vs 241.043363 (2e-8: summation order); Q8_0 ppl 240.96455 vs 240.97527
/// (−4.4e-5), KLD 0.00016544 vs 0.00016612 (−0.4%), top-1 0.989951 vs 0.989956 (the golden's
/// Q8_0 differs from the GGUF's in some block scales' rounding, e.g. f16 storage). Tolerances:
/// 1e-5 for f32, 2e-4 for the Q8_0 ppl (the bar is 2e-3), 2% KLD, 0.1 points top-1.
#[test]
fn tiny_f32_and_q8_0_match_golden_over_the_full_text() {
    let dir = tempfile::tempdir().unwrap();
    let q8 = dir.path().join("tiny-q8_0-linears.gguf");
    let t = tiny();
    let keep_bf16 = ["--pure", "--embedding-type", "BF16", "--output-type", "BF16"];
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-q", &"quantize", &t, &"-o", &q8, &"--type", &"Q8_0"];
    args.extend(keep_bf16.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
    qforge_ok(&args);
    let r = json(&qforge_ok(&[&"-q", &"compare", &t, &q8, &"--text", &wiki(), &"--json"]));
    eprintln!("tiny f32 vs Q8_0 (linears), full text: {r}");
    let bounds = GoldenBounds { f32_ppl: 1e-5, ppl: 2e-4, kld: 0.02, top1: 1e-3 };
    assert_full_text_compare_matches_golden(&r, "golden_tiny.json", "q8_0", bounds);
}

/// F16, BF16 and F32 GGUFs hold the checkpoint's bf16 values exactly (bf16 → f16 is exact in
/// f16's normal range), so they must score like the HF model up to float summation order (the
/// interleaved q/k layout sums each head's dot products in another order): checked on 10
/// windows to 1e-5.
#[test]
fn tiny_float_ggufs_score_like_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let b = json(&qforge_ok(&[&"-q", &"perplexity", &tiny(), &"--text", &wiki(), &"--json", &"--max-windows", &"10"]));
    for key in ["ppl", "nll_mean", "tokens_scored", "windows", "ctx", "tokens_per_sec"] {
        assert!(b.get(key).is_some(), "missing {key} in {b}");
    }
    assert_eq!(b["windows"].as_u64(), Some(10));
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

/// Several candidates in one `compare` (the base evaluated once per window) report exactly what
/// separate runs report, in the order given, against a live base and against saved logits.
#[test]
fn compare_several_candidates_equals_separate_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (t, w, n) = (tiny(), wiki(), "3");
    let (q8, bf16) = (convert(dir.path(), &t, "q8_0"), convert(dir.path(), &t, "bf16"));
    let saved = dir.path().join("base.qflogits");
    qforge_ok(&[&"-q", &"perplexity", &t, &"--text", &w, &"--max-windows", &n, &"--save-logits", &saved]);
    for base in [&t, &saved] {
        let run = |cands: &[&std::path::PathBuf]| {
            let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-q", &"compare", base];
            args.extend(cands.iter().map(|c| c as &dyn AsRef<std::ffi::OsStr>));
            args.extend([&"--text" as &dyn AsRef<std::ffi::OsStr>, &w, &"--max-windows", &n, &"--json"]);
            json(&qforge_ok(&args))
        };
        let both = run(&[&q8, &bf16]);
        let both = both.as_array().expect("an array for several candidates");
        assert_eq!(both.len(), 2);
        for (got, cand) in both.iter().zip([&q8, &bf16]) {
            let mut got = got.clone();
            assert_eq!(got["candidate"].as_str(), Some(cand.to_str().unwrap()));
            got.as_object_mut().unwrap().remove("candidate");
            let alone = run(&[cand]);
            assert!(alone.is_object(), "one candidate prints one object: {alone}");
            assert_eq!(got, alone, "{} against {}", cand.display(), base.display());
        }
    }
}

/// Saved base logits (16-bit log-probabilities) give the live KLD within 1%; base ppl,
/// top-1 agreement and the candidate's ppl are exact. Reading the saved file does not keep it
/// resident: 30 windows are 240 MB of logits, and each window's pages are dropped once
/// compared, so the peak RSS is about that of the candidate alone.
#[test]
fn compare_against_saved_logits() {
    let dir = tempfile::tempdir().unwrap();
    let q8 = convert(dir.path(), &tiny(), "q8_0");
    let saved = dir.path().join("base.qflogits");
    let (t, w, n) = (tiny(), wiki(), "30");
    let base = json(&qforge_ok(&[
        &"-q",
        &"perplexity",
        &t,
        &"--text",
        &w,
        &"--max-windows",
        &n,
        &"--json",
        &"--save-logits",
        &saved,
    ]));
    let live = json(&qforge_ok(&[&"-q", &"compare", &t, &q8, &"--text", &w, &"--max-windows", &n, &"--json"]));
    let out = qforge(&[&"-v", &"compare", &saved, &q8, &"--text", &w, &"--max-windows", &n, &"--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = json(&String::from_utf8_lossy(&out.stdout));
    let (kl, kf) = (live["kld_mean"].as_f64().unwrap(), file["kld_mean"].as_f64().unwrap());
    eprintln!("kld live {kl} from saved logits {kf} ({:+.4}%)", 100.0 * (kf - kl) / kl);
    assert!(kl > 1e-5, "q8_0 should differ from f32");
    assert!((kf - kl).abs() <= 0.01 * kl, "live {kl} file {kf}");
    assert!((base["ppl"].as_f64().unwrap() - file["base_ppl"].as_f64().unwrap()).abs() < 1e-3);
    assert_eq!(live["top1_agree"], file["top1_agree"]);
    assert!((live["ppl"].as_f64().unwrap() - file["ppl"].as_f64().unwrap()).abs() < 1e-9);

    // Measured: 113 MB (337 MB before pages were dropped) against 97 MB for `perplexity` of
    // the candidate alone on the same windows: the file adds no more than a few windows' pages.
    let alone = qforge(&[&"-v", &"perplexity", &q8, &"--text", &w, &"--max-windows", &n]);
    let (mb, alone_mb) = (peak_rss_mb(&out), peak_rss_mb(&alone));
    let file_mb = std::fs::metadata(&saved).unwrap().len() as f64 / (1 << 20) as f64;
    eprintln!("compare from a {file_mb:.0} MB logits file: peak RSS {mb:.0} MB ({alone_mb:.0} MB without the file)");
    assert!(
        mb <= alone_mb + 32.0,
        "peak RSS {mb} MB vs {alone_mb} MB: the {file_mb:.0} MB logits file stayed resident"
    );
}

/// The peak RSS a `-v` run reports, in MB.
fn peak_rss_mb(out: &std::process::Output) -> f64 {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().find(|l| l.contains("peak RSS")).expect("no peak RSS line");
    line.split_whitespace().rev().nth(1).unwrap().parse().unwrap()
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
    // Nor can two candidates of one `compare`: the error names both.
    let e = qforge_err(&[&"compare", &tiny(), &tiny(), &other, &"--text", &wiki(), &"--max-windows", &"1"]);
    assert!(e.contains("different tokenizers") && e.contains(&*other.to_string_lossy()), "{e}");
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
        let mb = peak_rss_mb(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Windows scored side by side each have their activations and KV cache.
        let lanes = stderr.lines().find_map(|l| l.split("scoring ").nth(1)?.split(' ').next()?.parse::<u64>().ok());
        let lanes = lanes.expect("no 'scoring N window(s) at a time' line");
        assert!((1..=2).contains(&lanes), "{lanes} lanes for 2 windows");
        let bound = (size + lanes * (activations + kv)) as f64 / (1 << 20) as f64 + 48.0;
        eprintln!(
            "{t}: file {:.1} MB, peak RSS {mb:.1} MB, bound {bound:.1} MB ({lanes} lanes)",
            size as f64 / 1048576.0
        );
        assert!(mb <= bound, "{t}: peak RSS {mb} MB above {bound} MB");
    }
}

/// `--protocol llama.cpp` is llama-perplexity's scoring: every window starts with BOS (the
/// Gemma 2 fixture's vocabulary adds one) in place of its first token, and only positions
/// ctx/2..ctx-2 are scored. Recomputed here from the library's forward pass.
#[test]
fn llama_cpp_protocol_scores_the_second_half_after_bos() {
    use qforge::model::ModelFile;
    use qforge::runtime::{KvCache, LlamaModel, TextTokenizer};
    let model_dir = root().join("tests/fixtures/arch/gemma2");
    let (ctx, windows) = (64usize, 3usize);
    let run = |protocol: &str| {
        let out = qforge_ok(&[
            &"--json",
            &"perplexity",
            &model_dir,
            &"--text",
            &wiki(),
            &"--ctx",
            &ctx.to_string(),
            &"--max-windows",
            &windows.to_string(),
            &"--protocol",
            &protocol,
        ]);
        json(&out)
    };
    let ours = run("llama.cpp");
    assert_eq!(ours["protocol"], "llama.cpp");
    assert_eq!(ours["tokens_scored"], (windows * (ctx - 1 - ctx / 2)) as u64);

    let file = ModelFile::open(&model_dir).unwrap();
    let tok = TextTokenizer::for_model(&file).unwrap();
    let text = std::fs::read_to_string(wiki()).unwrap();
    let ids = tok.encode(&text[..20_000]).unwrap();
    let bos = tok.vocab.bos.unwrap();
    assert!(tok.vocab.adds_bos() && ids[0] == bos);
    let m = LlamaModel::load(&file).unwrap();
    let v = m.vocab_size();
    let (mut nll, mut n) = (0f64, 0usize);
    for w in ids.chunks_exact(ctx).take(windows) {
        let mut input = w.to_vec();
        input[0] = bos;
        let mut cache = KvCache::new(&m.config, ctx);
        let logits = m.forward(&input, &mut cache).unwrap();
        for p in ctx / 2..ctx - 1 {
            let row = &logits[p * v..(p + 1) * v];
            let max = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            nll += lse - row[w[p + 1] as usize] as f64;
            n += 1;
        }
    }
    let want = nll / n as f64;
    let got = ours["nll_mean"].as_f64().unwrap();
    assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
    // The default protocol scores every position: a different number.
    let all = run("qforge");
    assert_eq!(all["tokens_scored"], (windows * (ctx - 1)) as u64);
    assert!((all["nll_mean"].as_f64().unwrap() - got).abs() > 1e-4);
    // --save-logits needs every position.
    let e = qforge_err(&[
        &"perplexity",
        &model_dir,
        &"--text",
        &wiki(),
        &"--protocol",
        &"llama.cpp",
        &"--save-logits",
        &"x",
    ]);
    assert!(e.contains("--protocol qforge"), "{e}");
}
