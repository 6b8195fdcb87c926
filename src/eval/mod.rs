//! Running and measuring a model: generation, perplexity, and the distance of a candidate's token distributions from
//! a base model's (KL divergence, top-1 agreement, probability shifts).

pub mod compare;
pub mod generate;
pub mod imatrix;
pub mod logits_file;
pub mod perplexity;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::runtime::{KvCache, LlamaModel};

/// Split token ids into the non-overlapping windows of `ctx` tokens the protocol scores.
pub fn windows(ids: &[u32], ctx: usize, max_windows: Option<usize>) -> Result<Vec<&[u32]>> {
    if ctx < 2 {
        return Err(Error::InvalidArgument("--ctx must be at least 2".into()));
    }
    let w: Vec<&[u32]> = ids.chunks_exact(ctx).take(max_windows.unwrap_or(usize::MAX)).collect();
    if w.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the text has {} tokens, fewer than one window of {ctx}",
            ids.len()
        )));
    }
    Ok(w)
}

/// Logits (n × vocab) of one window, computed `batch` tokens at a time through the KV cache.
pub fn window_logits(model: &LlamaModel<'_>, cache: &mut KvCache, window: &[u32], batch: usize) -> Result<Vec<f32>> {
    cache.clear();
    let mut logits = Vec::with_capacity(window.len() * model.vocab_size());
    for chunk in window.chunks(batch.max(1)) {
        logits.extend(model.forward(chunk, cache)?);
    }
    Ok(logits)
}

/// Memory that windows scored side by side may add to one window's (KV caches, activations
/// and logits of the extra windows).
const LANE_MEMORY: usize = 512 << 20;

/// How many windows to score side by side. A small model's products are too small to keep
/// every thread busy within one window (on the 2-core VM, two windows side by side, each on
/// its own thread, scored the tiny and small fixtures ~30% faster than one window at a time
/// on both threads), so windows share the threads, each with its own KV cache and
/// activations, as long as the extra copies for all of `configs` (one model for `perplexity`,
/// base and candidate for `compare`) fit in [`LANE_MEMORY`]. A
/// LLaMA-7B window needs ~0.4 GB, so big models mostly score one window at a time, where
/// their large products use every thread anyway.
pub fn window_lanes(configs: &[&ModelConfig], ctx: usize, n_windows: usize) -> usize {
    let per_lane: usize = configs.iter().map(|c| window_bytes(c, ctx)).sum();
    let fit = 1 + LANE_MEMORY / per_lane.max(1);
    rayon::current_num_threads().min(fit).min(n_windows).max(1)
}

/// Bytes one window of `ctx` tokens needs beyond the weights: logits, the largest
/// activations of a layer, attention scores, and the KV cache.
pub fn window_bytes(c: &ModelConfig, ctx: usize) -> usize {
    let (h, f, v) = (c.hidden_size, c.ffn_size, c.vocab_size);
    let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let activations = 4 * ctx * (v + 2 * f + 4 * h + q + 2 * kv) + 4 * c.n_heads * ctx * ctx;
    activations + 4 * 2 * c.n_layers * ctx * kv
}

/// Score `windows` up to `states.len()` at a time: `score(state, index, window)` runs for the
/// windows of a group side by side, each with its own state (its KV caches); `take(index,
/// window, result)` then receives every result in window order, so sums and outputs are the
/// same whatever the grouping.
pub fn score_windows<'w, S: Send, T: Send>(
    windows: &[&'w [u32]],
    states: &mut [S],
    score: impl Fn(&mut S, usize, &'w [u32]) -> Result<T> + Sync,
    mut take: impl FnMut(usize, &'w [u32], T) -> Result<()>,
) -> Result<()> {
    let lanes = states.len().max(1);
    for (g, group) in windows.chunks(lanes).enumerate() {
        let first = g * lanes;
        let results: Vec<Result<T>> =
            group.par_iter().zip(states.par_iter_mut()).enumerate().map(|(i, (w, s))| score(s, first + i, w)).collect();
        for (i, (r, w)) in results.into_iter().zip(group).enumerate() {
            take(first + i, w, r?)?;
        }
    }
    Ok(())
}

pub use crate::runtime::simd::log_sum_exp;

pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}
