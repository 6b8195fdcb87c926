//! Base vs candidate: what llama.cpp's `--kl-divergence` mode reports, computed from f32
//! log-probabilities (no 16-bit quantization of the base logits).

use rayon::prelude::*;
use serde::Serialize;

use super::logits_file::SavedPosition;
use super::perplexity::NllAccumulator;
use super::{argmax, log_sum_exp};
use crate::runtime::simd::kl_from_logits;

/// Per-position comparison.
#[derive(Debug, Clone, Copy)]
pub struct PositionStats {
    pub kld: f64,
    pub base_nll: f64,
    pub cand_nll: f64,
    pub top1_same: bool,
    /// p_candidate(target) − p_base(target)
    pub delta_p: f64,
}

/// Compare full distributions (live base model).
pub fn compare_rows(base: &[f32], cand: &[f32], target: usize) -> PositionStats {
    let (lse_b, lse_c) = (log_sum_exp(base), log_sum_exp(cand));
    let kld = kl_from_logits(base, cand, lse_b, lse_c);
    let (lb, lc) = (base[target] as f64 - lse_b, cand[target] as f64 - lse_c);
    PositionStats {
        kld: kld.max(0.0),
        base_nll: -lb,
        cand_nll: -lc,
        top1_same: argmax(base) == argmax(cand),
        delta_p: lc.exp() - lb.exp(),
    }
}

/// Compare against a saved base distribution (see `logits_file` for its precision).
pub fn compare_saved(base: &SavedPosition, cand: &[f32], target: usize) -> PositionStats {
    // The 16-bit codes are renormalized before use, so the base is an exact distribution.
    let (lse_b, lse_c) = (log_sum_exp(&base.log_probs), log_sum_exp(cand));
    let kld = kl_from_logits(&base.log_probs, cand, lse_b, lse_c);
    let base_nll = base.nll_target as f64;
    let lc = cand[target] as f64 - lse_c;
    PositionStats {
        kld: kld.max(0.0),
        base_nll,
        cand_nll: -lc,
        top1_same: base.argmax as usize == argmax(cand),
        delta_p: lc.exp() - (-base_nll).exp(),
    }
}

/// Compare every scored position of one window of live logits.
pub fn compare_window(base: &[f32], cand: &[f32], window: &[u32], vocab: usize) -> Vec<PositionStats> {
    (0..window.len() - 1)
        .into_par_iter()
        .map(|i| {
            compare_rows(&base[i * vocab..(i + 1) * vocab], &cand[i * vocab..(i + 1) * vocab], window[i + 1] as usize)
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub base_ppl: f64,
    pub ppl: f64,
    pub ppl_ratio: f64,
    pub kld_mean: f64,
    pub kld_stderr: f64,
    pub kld_p50: f64,
    pub kld_p90: f64,
    pub kld_p99: f64,
    pub kld_max: f64,
    pub top1_agree: f64,
    pub delta_p_mean: f64,
    pub delta_p_rms: f64,
    pub tokens_scored: u64,
    pub windows: u64,
    pub ctx: u32,
    /// Whether the base came from a saved logits file (16-bit log-probabilities).
    pub base_from_file: bool,
}

#[derive(Default)]
pub struct CompareAccumulator {
    kld: Vec<f64>,
    base: NllAccumulator,
    cand: NllAccumulator,
    top1: u64,
    dp_sum: f64,
    dp_sq: f64,
}

impl CompareAccumulator {
    pub fn add(&mut self, s: &PositionStats) {
        self.kld.push(s.kld);
        self.base.add(s.base_nll);
        self.cand.add(s.cand_nll);
        self.top1 += s.top1_same as u64;
        self.dp_sum += s.delta_p;
        self.dp_sq += s.delta_p * s.delta_p;
    }

    pub fn kld_mean(&self) -> f64 {
        self.kld.iter().sum::<f64>() / self.kld.len().max(1) as f64
    }

    pub fn report(mut self, windows: u64, ctx: u32, base_from_file: bool) -> CompareReport {
        let n = self.kld.len().max(1) as f64;
        let mean = self.kld_mean();
        let var = self.kld.iter().map(|k| (k - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        self.kld.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            self.kld.get(((self.kld.len().saturating_sub(1)) as f64 * p).round() as usize).copied().unwrap_or(0.0)
        };
        CompareReport {
            base_ppl: self.base.ppl(),
            ppl: self.cand.ppl(),
            ppl_ratio: self.cand.ppl() / self.base.ppl(),
            kld_mean: mean,
            kld_stderr: (var / n).sqrt(),
            kld_p50: pct(0.5),
            kld_p90: pct(0.9),
            kld_p99: pct(0.99),
            kld_max: self.kld.last().copied().unwrap_or(0.0),
            top1_agree: self.top1 as f64 / n,
            delta_p_mean: self.dp_sum / n,
            delta_p_rms: (self.dp_sq / n).sqrt(),
            tokens_scored: self.kld.len() as u64,
            windows,
            ctx,
            base_from_file,
        }
    }
}
