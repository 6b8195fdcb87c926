//! Measuring a model: perplexity, and the distance of a candidate's token distributions from
//! a base model's (KL divergence, top-1 agreement, probability shifts).

pub mod compare;
pub mod imatrix;
pub mod logits_file;
pub mod perplexity;

use crate::error::{Error, Result};
use crate::runtime::{KvCache, LlamaModel};

/// Read a text file as UTF-8 (its bytes unchanged: no newline normalization).
pub fn read_text(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        Error::InvalidArgument(format!("{}: not UTF-8 text (byte {})", path.display(), e.utf8_error().valid_up_to()))
    })
}

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
