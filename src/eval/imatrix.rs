//! Collecting an importance matrix: for every linear layer, the sum over calibration tokens of
//! the squared input of each column, and the number of tokens (what `llama-imatrix` measures).
//! The quantizers then weight each column's rounding error by its mean square input
//! (`crate::quant::weighted`).

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;

use crate::formats::imatrix::{Entry, Format, Imatrix};
use crate::runtime::LinearObserver;

/// The GGUF name of the output projection. llama-imatrix collects it only with
/// `--process-output`, and only under this name: a model whose output projection is the
/// embedding table (tied) reports `token_embd.weight`, which llama.cpp never collects.
pub const OUTPUT_WEIGHT: &str = "output.weight";

#[derive(Default)]
struct Sums {
    /// Σx² per column, accumulated in f64 (llama.cpp sums in f32; over hundreds of thousands
    /// of tokens f64 keeps every one counting) and stored as f32; one block of columns per
    /// matrix (an MoE tensor's experts).
    sum2: Vec<f64>,
    /// Tokens per matrix (for an expert: the tokens routed to it, as llama-imatrix counts).
    tokens: Vec<u64>,
}

/// A [`LinearObserver`] that accumulates Σx² per input column of every decoder-layer matrix
/// (`blk.*`), and of `output.weight` when `process_output` is set.
pub struct ImatrixCollector {
    process_output: bool,
    sums: BTreeMap<String, Sums>,
    /// Input columns that disagreed with an earlier call for the same matrix (a bug if ever
    /// non-empty; kept rather than panicking inside the forward pass).
    errors: Vec<String>,
    /// The runtime's part weights → the file's fused weight (Phi-3), whose entry llama-imatrix
    /// writes and llama-quantize looks up.
    fused: HashMap<String, String>,
    /// Experts per MoE tensor (1: a dense model).
    n_experts: usize,
}

impl ImatrixCollector {
    pub fn new(process_output: bool) -> ImatrixCollector {
        ImatrixCollector {
            process_output,
            sums: BTreeMap::new(),
            errors: Vec::new(),
            fused: HashMap::new(),
            n_experts: 1,
        }
    }

    /// Record the parts of `cfg`'s fused weights under the fused weight's name, and each
    /// expert's matrix as its block of its 3-D tensor's entry.
    pub fn with_fused_names(mut self, cfg: &crate::model::ModelConfig) -> ImatrixCollector {
        self.n_experts = cfg.moe.as_ref().map_or(1, |m| m.n_experts);
        for li in 0..cfg.n_layers {
            for (fused, parts) in crate::model::names::fused_linears(cfg) {
                for (p, _) in parts {
                    self.fused.insert(format!("blk.{li}.{p}"), format!("blk.{li}.{fused}"));
                }
            }
        }
        self
    }

    /// Matrices seen so far.
    pub fn len(&self) -> usize {
        self.sums.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }

    /// Tokens seen by `name` so far (an MoE tensor: by all its experts).
    pub fn tokens(&self, name: &str) -> Option<u64> {
        self.sums.get(name).map(|s| s.tokens.iter().sum())
    }

    fn wanted(&self, name: &str) -> bool {
        name.starts_with("blk.") || (self.process_output && name == OUTPUT_WEIGHT)
    }

    /// The collected statistics as an imatrix (GGUF layout: sums and token counts).
    pub fn into_imatrix(self, datasets: Vec<String>, chunk_count: u32, chunk_size: u32) -> Result<Imatrix, String> {
        if let Some(e) = self.errors.first() {
            return Err(e.clone());
        }
        let entries = self
            .sums
            .into_iter()
            .map(|(name, s)| Entry {
                name,
                n_cols: s.sum2.len() / s.tokens.len().max(1),
                sums: s.sum2.iter().map(|&v| v as f32).collect(),
                counts: s.tokens.iter().map(|&t| t as f32).collect(),
            })
            .collect();
        Ok(Imatrix { format: Format::Gguf, entries, datasets, chunk_count, chunk_size })
    }
}

/// Σ over the rows of `x` (n × cols) of x², per column.
fn column_sum2(x: &[f32], n: usize) -> Vec<f64> {
    let cols = x.len() / n.max(1);
    // Rows in groups, one partial sum per group, added in group order (deterministic).
    const ROWS: usize = 32;
    let partials: Vec<Vec<f64>> = x
        .par_chunks(ROWS * cols)
        .map(|block| {
            let mut s = vec![0f64; cols];
            for row in block.chunks_exact(cols) {
                for (a, &v) in s.iter_mut().zip(row) {
                    *a += (v * v) as f64;
                }
            }
            s
        })
        .collect();
    let mut total = vec![0f64; cols];
    for p in partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

impl LinearObserver for ImatrixCollector {
    fn observe(&mut self, _layer: usize, names: &[&str], x: &[f32], n: usize) {
        if n == 0 || x.is_empty() || !names.iter().any(|name| self.wanted(name)) {
            return;
        }
        // q/k/v (and gate/up) share one input: compute its column sums once.
        let sum2 = column_sum2(x, n);
        let mut seen: Vec<&str> = Vec::with_capacity(names.len());
        for &name in names {
            // The parts of a fused weight count once, under its name.
            let name = self.fused.get(name).map_or(name, String::as_str);
            if seen.contains(&name) {
                continue;
            }
            seen.push(name);
            if !self.wanted(name) {
                continue;
            }
            // An expert's matrix is a block of its 3-D tensor's entry.
            let (entry, block, n_mat) = match crate::model::names::split_expert_part(name) {
                Some((tensor, e)) => (tensor, e, self.n_experts),
                None => (name, 0, 1),
            };
            let cols = sum2.len();
            let s = self.sums.entry(entry.to_string()).or_default();
            if s.sum2.is_empty() {
                s.sum2 = vec![0f64; cols * n_mat];
                s.tokens = vec![0; n_mat];
            }
            if s.sum2.len() != cols * s.tokens.len() || block >= s.tokens.len() {
                self.errors.push(format!("{name}: input of {cols} columns after {}", s.sum2.len() / s.tokens.len()));
                continue;
            }
            for (a, v) in s.sum2[block * cols..(block + 1) * cols].iter_mut().zip(&sum2) {
                *a += v;
            }
            s.tokens[block] += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_squares_per_column_and_counts_tokens() {
        let mut c = ImatrixCollector::new(false);
        // 3 tokens × 2 columns, shared by q and k; output.weight is ignored without
        // process_output, token_embd.weight (a tied output) always.
        let x = [1.0, 2.0, 3.0, -1.0, 0.5, 0.0];
        c.observe(0, &["blk.0.attn_q.weight", "blk.0.attn_k.weight"], &x, 3);
        c.observe(0, &["blk.0.attn_q.weight", "blk.0.attn_k.weight"], &x, 3);
        c.observe(1, &[OUTPUT_WEIGHT], &x, 3);
        c.observe(1, &["token_embd.weight"], &x, 3);
        let m = c.into_imatrix(vec!["t".into()], 2, 3).unwrap();
        assert_eq!(m.entries.len(), 2);
        let q = m.get("blk.0.attn_q.weight").unwrap();
        assert_eq!(q.sums, vec![2.0 * (1.0 + 9.0 + 0.25), 2.0 * (4.0 + 1.0)]);
        assert_eq!(q.counts, vec![6.0]);
        assert_eq!(m.importance("blk.0.attn_k.weight").unwrap(), vec![10.25 / 3.0, 5.0 / 3.0]);

        let mut c = ImatrixCollector::new(true);
        c.observe(1, &[OUTPUT_WEIGHT], &x, 3);
        c.observe(1, &["token_embd.weight"], &x, 3);
        assert_eq!(c.len(), 1);
        assert_eq!(c.tokens(OUTPUT_WEIGHT), Some(3));
    }
}
