//! Text generation: the prompt in one batch, then one token per step through the KV cache
//! (each step multiplies one activation row, where the codecs' fused dot products take over
//! from the tiled GEMM), sampled greedily or with temperature, top-k and top-p.

use std::time::Instant;

use crate::error::Result;
use crate::runtime::{KvCache, LlamaModel};

/// How the next token is picked from the logits.
#[derive(Clone, Debug)]
pub struct Sampling {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Sample among the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Nucleus: the smallest set of tokens whose probability reaches p.
    pub top_p: f32,
    pub seed: u64,
}

/// What a generation produced, and how long its two phases took.
#[derive(Debug, serde::Serialize)]
pub struct Generated {
    /// The new tokens, without the stop token if one ended the generation.
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    /// The prompt's forward pass (llama.cpp's "prompt eval").
    pub prompt_seconds: f64,
    /// Single-token forward passes after the prompt (llama.cpp's "eval"), with the sampling.
    pub decode_steps: usize,
    pub decode_seconds: f64,
}

impl Generated {
    pub fn prompt_tokens_per_sec(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_seconds.max(1e-9)
    }

    pub fn decode_tokens_per_sec(&self) -> f64 {
        self.decode_steps as f64 / self.decode_seconds.max(1e-9)
    }
}

/// Generate up to `max_new` tokens after `prompt` (which must fit the model's context with
/// them). `stop(token)` ends the generation before the token is kept; `on_token` sees the
/// tokens so far after each new one (to stream them).
pub fn generate(
    model: &LlamaModel,
    prompt: &[u32],
    max_new: usize,
    sampling: &Sampling,
    stop: impl Fn(u32) -> bool,
    mut on_token: impl FnMut(&[u32]) -> Result<()>,
) -> Result<Generated> {
    let vocab = model.vocab_size();
    let mut cache = KvCache::new(&model.config, prompt.len() + max_new);
    let mut rng = SplitMix64(sampling.seed);
    let t0 = Instant::now();
    let logits = on_pool(|| model.forward(prompt, &mut cache))?;
    let mut next = sample(&logits[(prompt.len() - 1) * vocab..], sampling, &mut rng);
    let prompt_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut tokens = Vec::new();
    let mut decode_steps = 0;
    for step in 0..max_new {
        if stop(next) {
            break;
        }
        tokens.push(next);
        on_token(&tokens)?;
        if step + 1 == max_new {
            break;
        }
        let logits = on_pool(|| model.forward(&[next], &mut cache))?;
        next = sample(&logits, sampling, &mut rng);
        decode_steps += 1;
    }
    let decode_seconds = t1.elapsed().as_secs_f64();
    Ok(Generated { tokens, prompt_tokens: prompt.len(), prompt_seconds, decode_steps, decode_seconds })
}

/// Run `f` on a thread of rayon's pool. A step makes ~8 parallel products per layer; called
/// from outside the pool, each would hand its work over and put this thread to sleep until it
/// is done (two context switches per product, more than the product itself on a small model).
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// SplitMix64: a tiny, well-mixed generator, enough for sampling.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn sample(logits: &[f32], s: &Sampling, rng: &mut SplitMix64) -> u32 {
    if s.temperature <= 0.0 {
        return super::argmax(logits) as u32;
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if s.top_k > 0 {
        idx.truncate(s.top_k);
    }
    let max = logits[idx[0]];
    let mut probs: Vec<f32> = idx.iter().map(|&i| ((logits[i] - max) / s.temperature).exp()).collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    let mut cum = 0.0;
    let mut keep = probs.len();
    for (i, p) in probs.iter().enumerate() {
        cum += p;
        if cum >= s.top_p {
            keep = i + 1;
            break;
        }
    }
    let total: f32 = probs[..keep].iter().sum();
    let mut r = rng.next_f32() * total;
    for (i, p) in probs[..keep].iter().enumerate() {
        r -= p;
        if r <= 0.0 {
            return idx[i] as u32;
        }
    }
    idx[keep - 1] as u32
}
