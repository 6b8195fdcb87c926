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

/// Compare a candidate (e.g. quantized) model with a base model on the same text: KL
/// divergence, top-1 agreement, perplexity ratio and the shift in the correct token's
/// probability. The base may be a model or a file saved by `perplexity --save-logits`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    qforge compare models/tiny-llama tiny-q8_0.gguf --text wiki.test.raw --json\n  \
    qforge perplexity models/tiny-llama --text wiki.test.raw --save-logits base.qflogits\n  \
    qforge compare base.qflogits tiny-q8_0.gguf --text wiki.test.raw")]
pub struct CompareArgs {
    /// Base model (HF directory or GGUF) or a saved logits file.
    pub base: PathBuf,
    /// Candidate model (HF directory or GGUF).
    pub candidate: PathBuf,
    #[command(flatten)]
    pub win: WindowArgs,
}

pub fn compare(args: &CompareArgs, ui: &Ui) -> Result<CompareReport> {
    let cand = Loaded::open(&args.candidate)?;
    let ids = cand.tokenize_file(&args.win.text, args.win.ctx, args.win.max_windows)?;
    let windows = windows(&ids, args.win.ctx, args.win.max_windows)?;
    let cand_model = LlamaModel::load(&cand.file)?;
    let vocab = cand_model.vocab_size();
    let batch = args.win.batch();
    let mut acc = CompareAccumulator::default();
    let bar = ui.count_bar(windows.len() as u64, "windows");
    // Each window's statistics are added in window order, whatever the lanes.
    let mut take = |w: usize, _: &[u32], stats: Vec<PositionStats>| {
        stats.iter().for_each(|s| acc.add(s));
        bar.set_position(w as u64 + 1);
        bar.set_message(format!("kld {:.5}", acc.kld_mean()));
        Ok(())
    };
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
        let lanes = window_lanes(&[&cand_model.config], args.win.ctx, windows.len());
        ui.detail(format!("scoring {lanes} window(s) at a time"));
        let mut caches: Vec<_> = (0..lanes).map(|_| KvCache::new(&cand_model.config, args.win.ctx)).collect();
        score_windows(
            &windows,
            &mut caches,
            |cache, w, window| {
                let cl = window_logits(&cand_model, cache, window, batch)?;
                let stats = (0..window.len() - 1)
                    .into_par_iter()
                    .map(|i| {
                        compare_saved(&base.position(w, i), &cl[i * vocab..(i + 1) * vocab], window[i + 1] as usize)
                    })
                    .collect();
                base.forget_window(w);
                Ok(stats)
            },
            &mut take,
        )?;
        true
    } else {
        let base = Loaded::open(&args.base)?;
        same_vocabulary(&base, &cand)?;
        let base_model = LlamaModel::load(&base.file).context("loading the base model")?;
        let lanes = window_lanes(&[&base_model.config, &cand_model.config], args.win.ctx, windows.len());
        ui.detail(format!("scoring {lanes} window(s) at a time"));
        let new_caches =
            || (KvCache::new(&base_model.config, args.win.ctx), KvCache::new(&cand_model.config, args.win.ctx));
        let mut caches: Vec<_> = (0..lanes).map(|_| new_caches()).collect();
        score_windows(
            &windows,
            &mut caches,
            |(base_cache, cand_cache), _, window| {
                let bl = window_logits(&base_model, base_cache, window, batch)?;
                let cl = window_logits(&cand_model, cand_cache, window, batch)?;
                Ok(compare_window(&bl, &cl, window, vocab))
            },
            &mut take,
        )?;
        false
    };
    bar.finish_and_clear();
    Ok(acc.report(windows.len() as u64, args.win.ctx as u32, from_file))
}

pub fn run(args: &CompareArgs, ui: &Ui) -> Result<()> {
    let r = compare(args, ui)?;
    if ui.json {
        ui.print_json(&serde_json::to_value(&r)?);
    } else {
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
