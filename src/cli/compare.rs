use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use rayon::prelude::*;

use super::session::{same_vocabulary, Loaded, WindowArgs};
use super::Ui;
use crate::eval::compare::{compare_saved, compare_window, CompareAccumulator, CompareReport, PositionStats};
use crate::eval::logits_file::LogitsFile;
use crate::eval::{score_windows, window_lanes, window_logits, windows};
use crate::runtime::{KvCache, LlamaModel};

/// Compare candidate (e.g. quantized) models with a base model on the same text: KL
/// divergence, top-1 agreement, perplexity ratio and the shift in the correct token's
/// probability. The base may be a model or a file saved by `perplexity --save-logits`; several
/// candidates are scored against one pass of the base.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    qforge compare models/tiny-llama tiny-q8_0.gguf --text wiki.test.raw --json\n  \
    qforge compare models/tiny-llama tiny-q4_k_m.gguf tiny-q5_k_m.gguf tiny-q8_0.gguf --text wiki.test.raw\n  \
    qforge perplexity models/tiny-llama --text wiki.test.raw --save-logits base.qflogits\n  \
    qforge compare base.qflogits tiny-q8_0.gguf --text wiki.test.raw\n\n\
With one candidate, --json prints one object; with several, an array of them in the order \
given, each with its \"candidate\" path.")]
pub struct CompareArgs {
    /// Base model (HF directory or GGUF) or a saved logits file.
    pub base: PathBuf,
    /// Candidate models (HF directories or GGUFs), each compared with the base.
    #[arg(required = true, num_args = 1..)]
    pub candidates: Vec<PathBuf>,
    #[command(flatten)]
    pub win: WindowArgs,
}

/// One report per candidate, in the order given. The base is evaluated once per window, so
/// comparing n candidates costs n + 1 passes instead of 2n.
pub fn compare(args: &CompareArgs, ui: &Ui) -> Result<Vec<CompareReport>> {
    let cands = args.candidates.iter().map(|p| Loaded::open(p)).collect::<Result<Vec<_>>>()?;
    for (c, path) in cands.iter().zip(&args.candidates).skip(1) {
        let first = args.candidates[0].display();
        same_vocabulary(&cands[0], c).with_context(|| format!("comparing {first} and {}", path.display()))?;
    }
    let ids = cands[0].tokenize_file(&args.win.text, args.win.ctx, args.win.max_windows)?;
    let windows = windows(&ids, args.win.ctx, args.win.max_windows)?;
    let models = cands
        .iter()
        .zip(&args.candidates)
        .map(|(c, path)| LlamaModel::load(&c.file).with_context(|| format!("loading {}", path.display())))
        .collect::<Result<Vec<_>>>()?;
    let vocab = models[0].vocab_size();
    let batch = args.win.batch();
    let mut accs: Vec<CompareAccumulator> = models.iter().map(|_| CompareAccumulator::default()).collect();
    let bar = ui.count_bar(windows.len() as u64, "windows");
    // Each window's statistics are added in window order, whatever the lanes.
    let mut take = |w: usize, _: &[u32], stats: Vec<Vec<PositionStats>>| {
        for (acc, s) in accs.iter_mut().zip(&stats) {
            s.iter().for_each(|s| acc.add(s));
        }
        bar.set_position(w as u64 + 1);
        bar.set_message(format!("kld {:.5}", accs[0].kld_mean()));
        Ok(())
    };
    let cand_caches = || models.iter().map(|m| KvCache::new(&m.config, args.win.ctx)).collect::<Vec<_>>();
    let from_file = if LogitsFile::is_logits_file(&args.base) {
        let base = LogitsFile::open(&args.base)?;
        if base.ctx != args.win.ctx || base.vocab != vocab {
            bail!(
                "{} was saved with ctx {} and vocab {}, but this run has ctx {} and vocab {vocab}",
                args.base.display(),
                base.ctx,
                base.vocab,
                args.win.ctx
            );
        }
        if base.windows < windows.len() {
            bail!("{} holds {} windows; {} requested", args.base.display(), base.windows, windows.len());
        }
        for (w, window) in windows.iter().enumerate() {
            if base.window_tokens(w) != *window {
                bail!(
                    "window {w} of the text tokenizes differently than when {} was saved (different text or tokenizer)",
                    args.base.display()
                );
            }
        }
        let configs: Vec<_> = models.iter().map(|m| &m.config).collect();
        let lanes = window_lanes(&configs, args.win.ctx, windows.len());
        ui.detail(format!("scoring {lanes} window(s) at a time"));
        let mut caches: Vec<_> = (0..lanes).map(|_| cand_caches()).collect();
        score_windows(
            &windows,
            &mut caches,
            |caches, w, window| {
                let mut per_candidate = Vec::with_capacity(models.len());
                for (model, cache) in models.iter().zip(caches.iter_mut()) {
                    let cl = window_logits(model, cache, window, batch)?;
                    per_candidate.push(
                        (0..window.len() - 1)
                            .into_par_iter()
                            .map(|i| {
                                let target = window[i + 1] as usize;
                                compare_saved(&base.position(w, i), &cl[i * vocab..(i + 1) * vocab], target)
                            })
                            .collect(),
                    );
                }
                base.forget_window(w);
                Ok(per_candidate)
            },
            &mut take,
        )?;
        true
    } else {
        let base = Loaded::open(&args.base)?;
        same_vocabulary(&base, &cands[0])?;
        let base_model = LlamaModel::load(&base.file).context("loading the base model")?;
        let configs: Vec<_> = std::iter::once(&base_model).chain(&models).map(|m| &m.config).collect();
        let lanes = window_lanes(&configs, args.win.ctx, windows.len());
        ui.detail(format!("scoring {lanes} window(s) at a time"));
        let new_caches = || (KvCache::new(&base_model.config, args.win.ctx), cand_caches());
        let mut caches: Vec<_> = (0..lanes).map(|_| new_caches()).collect();
        score_windows(
            &windows,
            &mut caches,
            |(base_cache, cand_caches), _, window| {
                let bl = window_logits(&base_model, base_cache, window, batch)?;
                let mut per_candidate = Vec::with_capacity(models.len());
                for (model, cache) in models.iter().zip(cand_caches.iter_mut()) {
                    let cl = window_logits(model, cache, window, batch)?;
                    per_candidate.push(compare_window(&bl, &cl, window, vocab));
                }
                Ok(per_candidate)
            },
            &mut take,
        )?;
        false
    };
    bar.finish_and_clear();
    Ok(accs.into_iter().map(|acc| acc.report(windows.len() as u64, args.win.ctx as u32, from_file)).collect())
}

pub fn run(args: &CompareArgs, ui: &Ui) -> Result<()> {
    let reports = compare(args, ui)?;
    if ui.json {
        let value = if let [r] = &reports[..] {
            serde_json::to_value(r)?
        } else {
            let mut all = Vec::new();
            for (r, path) in reports.iter().zip(&args.candidates) {
                let mut v = serde_json::to_value(r)?;
                v["candidate"] = path.display().to_string().into();
                all.push(v);
            }
            all.into()
        };
        ui.print_json(&value);
        return Ok(());
    }
    for (i, (r, path)) in reports.iter().zip(&args.candidates).enumerate() {
        if reports.len() > 1 {
            if i > 0 {
                println!();
            }
            println!("candidate     {}", path.display());
        }
        println!("base ppl      {:.4}", r.base_ppl);
        println!("candidate ppl {:.4}  (ratio {:.5})", r.ppl, r.ppl_ratio);
        println!("KLD mean      {:.6} ± {:.6}", r.kld_mean, r.kld_stderr);
        println!("KLD p50/p90/p99/max  {:.6} / {:.6} / {:.6} / {:.6}", r.kld_p50, r.kld_p90, r.kld_p99, r.kld_max);
        println!("top-1 agree   {:.4}%", r.top1_agree * 100.0);
        println!("Δp mean/rms   {:+.6} / {:.6}", r.delta_p_mean, r.delta_p_rms);
        println!("({} tokens, {} windows of {})", r.tokens_scored, r.windows, r.ctx);
        if r.base_from_file {
            println!("(base from a saved logits file: 16-bit log-probabilities)");
        }
    }
    Ok(())
}
