use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value as Json};

use super::compare::{compare, CompareArgs};
use super::session::{Loaded, WindowArgs};
use super::Ui;
use crate::eval::perplexity::perplexity;
use crate::eval::{window_lanes, windows};
use crate::formats::safetensors::SafetensorsFile;
use crate::runtime::{KvCache, LlamaModel};

/// Recompute golden quantities and fail, with a readable diff, when any is out of tolerance.
///
/// A golden JSON (`golden_<model>.json`) gives perplexity (and, for quantized variants, KLD
/// and top-1 agreement against the f32 base) on a text; a golden logits file
/// (`golden_<model>_logits.safetensors`, with `input_ids` and `logits`) gives exact logits.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    qforge verify models/tiny-llama --golden golden/golden_tiny_logits.safetensors\n  \
    qforge verify models/tiny-llama --golden golden/golden_tiny.json --text wiki.test.raw\n  \
    qforge verify tiny-q8_0.gguf --golden golden/golden_tiny.json --variant q8_0 --text wiki.test.raw --base models/tiny-llama")]
pub struct VerifyArgs {
    pub model: PathBuf,
    #[arg(long)]
    pub golden: PathBuf,
    /// Entry of the golden JSON to check against (fp32, q8_0, q4_0, ...).
    #[arg(long, default_value = "fp32")]
    pub variant: String,
    /// Text the golden perplexities were measured on (JSON goldens).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Dataset key inside the variant (default: the only one).
    #[arg(long)]
    pub dataset: Option<String>,
    /// The unquantized model, to check kld_mean and top1_agree when the variant has them.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Relative perplexity tolerance (default 1e-4 for fp32, 2e-3 otherwise).
    #[arg(long)]
    pub ppl_tol: Option<f64>,
    /// Relative tolerance on kld_mean.
    #[arg(long, default_value_t = 0.25)]
    pub kld_tol: f64,
    /// Absolute tolerance on top1_agree.
    #[arg(long, default_value_t = 0.02)]
    pub top1_tol: f64,
    /// Relative tolerance on logits (max |Δ| / max |logit|).
    #[arg(long, default_value_t = 1e-5)]
    pub logits_tol: f64,
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
}

struct Check {
    name: String,
    expected: f64,
    got: f64,
    tol: String,
    ok: bool,
}

fn rel(name: &str, expected: f64, got: f64, tol: f64) -> Check {
    let err = (got - expected).abs() / expected.abs().max(1e-300);
    Check { name: name.into(), expected, got, tol: format!("rel {tol:e}"), ok: err <= tol }
}

fn abs(name: &str, expected: f64, got: f64, tol: f64) -> Check {
    Check { name: name.into(), expected, got, tol: format!("abs {tol}"), ok: (got - expected).abs() <= tol }
}

pub fn run(args: &VerifyArgs, ui: &Ui) -> Result<()> {
    let checks = if args.golden.extension().is_some_and(|e| e == "safetensors") {
        verify_logits(args)?
    } else {
        verify_json(args, ui)?
    };
    let ok = checks.iter().all(|c| c.ok);
    if ui.json {
        let list: Vec<Json> = checks
            .iter()
            .map(|c| json!({"name": c.name, "expected": c.expected, "got": c.got, "tolerance": c.tol, "ok": c.ok}))
            .collect();
        ui.print_json(&json!({"ok": ok, "golden": args.golden, "variant": args.variant, "checks": list}));
    } else {
        println!(
            "{:<16} {:>16} {:>16} {:>12} {:>14}  result",
            "quantity", "golden", "qforge", "rel. diff", "tolerance"
        );
        for c in &checks {
            let diff = (c.got - c.expected) / c.expected.abs().max(1e-300);
            println!(
                "{:<16} {:>16.8} {:>16.8} {:>12.3e} {:>14}  {}",
                c.name,
                c.expected,
                c.got,
                diff,
                c.tol,
                if c.ok { "ok" } else { "FAIL" }
            );
        }
    }
    if !ok {
        let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
        bail!("verification failed: {}", failed.join(", "));
    }
    Ok(())
}

fn verify_logits(args: &VerifyArgs) -> Result<Vec<Check>> {
    let g = SafetensorsFile::open(&args.golden)?;
    let ids_t = g.tensor("input_ids").context("golden file has no input_ids")?;
    let ids: Vec<u32> = match ids_t.dtype {
        safetensors::Dtype::I64 => {
            ids_t.data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as u32).collect()
        }
        safetensors::Dtype::I32 => {
            ids_t.data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as u32).collect()
        }
        d => bail!("input_ids has dtype {d:?}; expected I64 or I32"),
    };
    let lt = g.tensor("logits").context("golden file has no logits")?;
    if lt.dtype != safetensors::Dtype::F32 {
        bail!("golden logits must be F32");
    }
    let expected: Vec<f32> = lt.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let loaded = Loaded::open(&args.model)?;
    let model = LlamaModel::load(&loaded.file)?;
    if expected.len() != ids.len() * model.vocab_size() {
        bail!(
            "golden logits hold {} values; {} tokens × vocab {} expected",
            expected.len(),
            ids.len(),
            model.vocab_size()
        );
    }
    let mut cache = KvCache::new(&model.config, ids.len());
    let got = model.forward(&ids, &mut cache)?;
    let max_ref = expected.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
    let max_diff = got.iter().zip(&expected).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    let rel_err = max_diff / max_ref;
    let mut checks = vec![Check {
        name: "logits".into(),
        expected: 0.0,
        got: rel_err,
        tol: format!("rel {:e}", args.logits_tol),
        ok: rel_err <= args.logits_tol,
    }];
    if let Some(text) = &args.text {
        let ours = loaded.tokenize_file(text, 2, None)?;
        let same = ours.len() >= ids.len() && ours[..ids.len()] == ids[..];
        checks.push(Check {
            name: "input_ids".into(),
            expected: 1.0,
            got: same as u8 as f64,
            tol: "exact".into(),
            ok: same,
        });
    }
    Ok(checks)
}

fn verify_json(args: &VerifyArgs, ui: &Ui) -> Result<Vec<Check>> {
    let text = args.text.as_ref().context("--text is required with a JSON golden")?;
    let golden = crate::formats::safetensors::read_json(&args.golden)?;
    let variant = golden.get(&args.variant).with_context(|| {
        let names: Vec<&String> = golden.as_object().map(|o| o.keys().collect()).unwrap_or_default();
        format!("variant {:?} is not in {} (it has {names:?})", args.variant, args.golden.display())
    })?;
    let (dataset, g) = match &args.dataset {
        Some(d) => (d.clone(), variant.get(d).with_context(|| format!("dataset {d:?} not in variant"))?),
        None => variant
            .as_object()
            .and_then(|o| o.iter().find(|(_, v)| v.get("ppl").is_some()))
            .map(|(k, v)| (k.clone(), v))
            .context("the variant holds no dataset with a ppl")?,
    };
    ui.detail(format!("checking {} / {dataset}", args.variant));
    let num = |k: &str| g.get(k).and_then(Json::as_f64);
    let mut checks = Vec::new();
    let ppl_tol = args.ppl_tol.unwrap_or(if args.variant == "fp32" { 1e-4 } else { 2e-3 });
    let (base_ppl, cand_ppl, scored, nwin);
    if let (Some(base), Some(_)) = (&args.base, num("kld_mean")) {
        let reports = compare(
            &CompareArgs {
                base: base.clone(),
                candidates: vec![args.model.clone()],
                win: WindowArgs { text: text.clone(), ctx: args.ctx, batch: None, max_windows: None },
            },
            ui,
        )?;
        let r = &reports[0];
        checks.push(rel("kld_mean", num("kld_mean").unwrap_or(0.0), r.kld_mean, args.kld_tol));
        if let Some(t) = num("top1_agree") {
            checks.push(abs("top1_agree", t, r.top1_agree, args.top1_tol));
        }
        (base_ppl, cand_ppl, scored, nwin) = (Some(r.base_ppl), r.ppl, r.tokens_scored, r.windows);
    } else {
        let loaded = Loaded::open(&args.model)?;
        let ids = loaded.tokenize_file(text, args.ctx, None)?;
        let windows = windows(&ids, args.ctx, None)?;
        let model = LlamaModel::load(&loaded.file)?;
        let bar = ui.count_bar(windows.len() as u64, "windows");
        let lanes = window_lanes(&[&model.config], args.ctx, windows.len());
        let r = perplexity(&model, &windows, 0, args.ctx, lanes, |w, _, _, _| {
            bar.set_position(w as u64 + 1);
            Ok(())
        })?;
        bar.finish_and_clear();
        (base_ppl, cand_ppl, scored, nwin) = (None, r.ppl, r.tokens_scored, r.windows);
    }
    if let Some(p) = num("ppl") {
        checks.insert(0, rel("ppl", p, cand_ppl, ppl_tol));
    }
    if let (Some(bp), Some(gbp)) = (base_ppl, num("base_ppl")) {
        checks.push(rel("base_ppl", gbp, bp, 1e-4));
    }
    if let Some(t) = num("tokens_scored") {
        checks.push(abs("tokens_scored", t, scored as f64, 0.0));
    }
    if let Some(w) = num("windows") {
        checks.push(abs("windows", w, nwin as f64, 0.0));
    }
    Ok(checks)
}
