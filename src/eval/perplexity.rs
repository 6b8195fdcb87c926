//! Perplexity: non-overlapping windows of `ctx` tokens, logits at positions first..ctx-2
//! scored against tokens first+1..ctx-1 (qforge's golden protocol: first = 0; llama.cpp's
//! llama-perplexity: first = ctx/2, each window starting with BOS, see [`Protocol`]).

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::{log_sum_exp, score_windows, window_logits};
use crate::error::Result;
use crate::runtime::{KvCache, LlamaModel};

#[derive(Debug, Clone, Serialize)]
pub struct PplReport {
    pub ppl: f64,
    pub nll_mean: f64,
    /// Standard error of `nll_mean`; ppl's ±1σ interval is exp(nll_mean ± nll_stderr).
    pub nll_stderr: f64,
    pub tokens_scored: u64,
    pub windows: u64,
    pub ctx: u32,
    pub tokens_per_sec: f64,
}

/// How windows are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Every position after the first of each window (qforge's goldens, transformers').
    Qforge,
    /// llama-perplexity's: the first token of every window replaced by BOS when the
    /// vocabulary adds one, only the second half of each window scored (its positions have
    /// at least ctx/2 tokens of context), so results compare with published llama.cpp numbers.
    #[value(name = "llama.cpp")]
    LlamaCpp,
}

impl Protocol {
    /// The first scored logit position of a window of `ctx`.
    pub fn first_scored(self, ctx: usize) -> usize {
        match self {
            Protocol::Qforge => 0,
            Protocol::LlamaCpp => ctx / 2,
        }
    }
}

/// Running sums of negative log-likelihoods.
#[derive(Default, Clone, Copy)]
pub struct NllAccumulator {
    sum: f64,
    sum_sq: f64,
    n: u64,
}

impl NllAccumulator {
    pub fn add(&mut self, nll: f64) {
        self.sum += nll;
        self.sum_sq += nll * nll;
        self.n += 1;
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.n.max(1) as f64
    }

    pub fn ppl(&self) -> f64 {
        self.mean().exp()
    }

    pub fn stderr(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let n = self.n as f64;
        let var = (self.sum_sq / n - self.mean().powi(2)).max(0.0) * n / (n - 1.0);
        (var / n).sqrt()
    }
}

/// −log p(target) for each scored position of a window.
pub fn window_nll(logits: &[f32], window: &[u32], vocab: usize) -> Vec<f64> {
    (0..window.len() - 1)
        .into_par_iter()
        .map(|i| {
            let row = &logits[i * vocab..(i + 1) * vocab];
            log_sum_exp(row) - row[window[i + 1] as usize] as f64
        })
        .collect()
}

/// Score `windows`, `lanes` of them side by side (see [`super::window_lanes`]). After each
/// window, in order, `on_window(index, window, logits, running)` sees its logits (progress
/// display, saving the distributions); an error from it stops the run.
pub fn perplexity(
    model: &LlamaModel<'_>,
    windows: &[&[u32]],
    first: usize,
    batch: usize,
    lanes: usize,
    mut on_window: impl FnMut(usize, &[u32], &[f32], &NllAccumulator) -> Result<()>,
) -> Result<PplReport> {
    let start = Instant::now();
    let ctx = windows[0].len();
    let vocab = model.vocab_size();
    let mut caches: Vec<KvCache> = (0..lanes.max(1)).map(|_| KvCache::new(&model.config, ctx)).collect();
    let mut acc = NllAccumulator::default();
    score_windows(
        windows,
        &mut caches,
        |cache, _, window| {
            let logits = window_logits(model, cache, window, batch)?;
            let first = first.min(window.len() - 1);
            let nll = window_nll(&logits[first * vocab..], &window[first..], vocab);
            Ok((logits, nll))
        },
        |w, window, (logits, nll)| {
            nll.into_iter().for_each(|x| acc.add(x));
            on_window(w, window, &logits, &acc)
        },
    )?;
    let secs = start.elapsed().as_secs_f64();
    Ok(PplReport {
        ppl: acc.ppl(),
        nll_mean: acc.mean(),
        nll_stderr: acc.stderr(),
        tokens_scored: acc.count(),
        windows: windows.len() as u64,
        ctx: ctx as u32,
        tokens_per_sec: (windows.len() * ctx) as f64 / secs.max(1e-9),
    })
}
