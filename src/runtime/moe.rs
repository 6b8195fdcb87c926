//! Mixture-of-experts feed-forward blocks (Mixtral, Qwen2-MoE, Qwen3-MoE), as llama.cpp's
//! `build_moe_ffn` and transformers compute them: a router scores the experts per token
//! (softmax over all of them, in f32), the `n_used` best are run on that token and their
//! outputs summed with the router's weights (renormalized to 1 where the architecture says
//! so); Qwen2-MoE adds a shared expert scaled by sigmoid(gate·x).

use super::matrix::Matrix;
use crate::error::{Error, Result};
use crate::model::config::MoeConfig;
use crate::model::TensorRef;

/// One expert's (or the shared expert's) gated feed-forward weights.
pub struct ExpertWeights<'a> {
    pub gate: Matrix<'a>,
    pub up: Matrix<'a>,
    pub down: Matrix<'a>,
}

/// Runs one expert's gated feed-forward on `rows` rows of input.
pub type ExpertFn<'f, 'a> = dyn FnMut(&ExpertWeights<'a>, &[f32], usize) -> Vec<f32> + 'f;

pub struct MoeFfn<'a> {
    /// [n_experts, hidden]
    pub router: Matrix<'a>,
    pub experts: Vec<ExpertWeights<'a>>,
    /// The shared expert and its gate vector ([hidden]).
    pub shared: Option<(ExpertWeights<'a>, Vec<f32>)>,
    n_used: usize,
    norm_topk: bool,
}

/// The experts of a 3-D tensor [experts, rows, cols] as matrices of their own (rows borrowed
/// from the stored tensor: every expert's rows are whole blocks).
fn split_experts<'a>(t: &TensorRef<'a>, n_experts: usize) -> Result<Vec<Matrix<'a>>> {
    let [e, rows, cols] = t.shape[..] else {
        return Err(Error::tensor(&t.name, format!("expected [experts, rows, cols], got {:?}", t.shape)));
    };
    if e != n_experts {
        return Err(Error::tensor(&t.name, format!("{e} experts, the model has {n_experts}")));
    }
    let flat = TensorRef {
        name: t.name.clone(),
        ggml_type: t.ggml_type,
        shape: vec![e * rows, cols],
        data: t.data,
        packed: None,
    };
    let parts: Vec<(String, usize)> = (0..e).map(|i| (crate::model::names::expert_part(&t.name, i), rows)).collect();
    Matrix::from_tensor(&flat)?.split_rows(&parts)
}

impl<'a> ExpertWeights<'a> {
    fn all(&self) -> [&Matrix<'a>; 3] {
        [&self.gate, &self.up, &self.down]
    }

    fn all_mut(&mut self) -> [&mut Matrix<'a>; 3] {
        [&mut self.gate, &mut self.up, &mut self.down]
    }
}

impl<'a> MoeFfn<'a> {
    /// The experts' and the shared expert's matrices (what GPTQ quantizes), expert by expert.
    pub fn linears(&self) -> impl Iterator<Item = &Matrix<'a>> {
        self.experts.iter().chain(self.shared.iter().map(|(w, _)| w)).flat_map(ExpertWeights::all)
    }

    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut Matrix<'a>> {
        self.experts.iter_mut().chain(self.shared.iter_mut().map(|(w, _)| w)).flat_map(ExpertWeights::all_mut)
    }

    /// Layer `li`'s block from the model's tensors.
    pub fn load(li: usize, moe: &MoeConfig, tensors: &[TensorRef<'a>]) -> Result<MoeFfn<'a>> {
        let get = |s: &str| -> Result<&TensorRef<'a>> {
            let name = format!("blk.{li}.{s}");
            tensors
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| Error::InvalidModel(format!("tensor {name} is missing")))
        };
        let router = Matrix::from_tensor(get("ffn_gate_inp.weight")?)?;
        let split = |s: &str| split_experts(get(s)?, moe.n_experts);
        let (gates, ups, downs) =
            (split("ffn_gate_exps.weight")?, split("ffn_up_exps.weight")?, split("ffn_down_exps.weight")?);
        let experts =
            gates.into_iter().zip(ups).zip(downs).map(|((gate, up), down)| ExpertWeights { gate, up, down }).collect();
        let shared = if moe.shared_ffn > 0 {
            let m = |s: &str| Matrix::from_tensor(get(s)?);
            let w = ExpertWeights {
                gate: m("ffn_gate_shexp.weight")?,
                up: m("ffn_up_shexp.weight")?,
                down: m("ffn_down_shexp.weight")?,
            };
            let t = get("ffn_gate_inp_shexp.weight")?;
            let gate = t.to_f32()?;
            Some((w, gate))
        } else {
            None
        };
        Ok(MoeFfn { router, experts, shared, n_used: moe.n_used, norm_topk: moe.norm_topk })
    }

    /// The block's output for the normed input `xn` (n × hidden), the residual not added.
    /// `ffn` runs one expert's gated feed-forward on some rows.
    pub fn forward(&self, xn: &[f32], n: usize, ffn: &mut ExpertFn<'_, 'a>) -> Vec<f32> {
        let h = xn.len() / n.max(1);
        let n_experts = self.experts.len();
        let logits = self.router.matmul(xn, n);
        // Per expert: the tokens routed to it and their weights.
        let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_experts];
        for (t, row) in logits.chunks_exact(n_experts).enumerate() {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let exp: Vec<f32> = row.iter().map(|&v| (v - max).exp()).collect();
            let sum: f32 = exp.iter().sum();
            let probs: Vec<f32> = exp.iter().map(|&e| e / sum).collect();
            // The n_used most probable (ties to the lower index).
            let mut order: Vec<usize> = (0..n_experts).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            let chosen = &order[..self.n_used];
            let total: f32 = chosen.iter().map(|&e| probs[e]).sum();
            // llama.cpp clamps the sum from below (6.1e-5) before dividing.
            let scale = if self.norm_topk { 1.0 / total.max(6.103_515_6e-5) } else { 1.0 };
            for &e in chosen {
                routed[e].push((t, probs[e] * scale));
            }
        }
        let mut out = vec![0f32; n * h];
        for (expert, tokens) in self.experts.iter().zip(&routed) {
            if tokens.is_empty() {
                continue;
            }
            let mut x = Vec::with_capacity(tokens.len() * h);
            for &(t, _) in tokens {
                x.extend_from_slice(&xn[t * h..(t + 1) * h]);
            }
            let y = ffn(expert, &x, tokens.len());
            for (&(t, w), row) in tokens.iter().zip(y.chunks_exact(h)) {
                for (o, v) in out[t * h..(t + 1) * h].iter_mut().zip(row) {
                    *o += w * v;
                }
            }
        }
        if let Some((shared, gate)) = &self.shared {
            let y = ffn(shared, xn, n);
            for (t, (row, x)) in y.chunks_exact(h).zip(xn.chunks_exact(h)).enumerate() {
                let g: f32 = x.iter().zip(gate).map(|(a, b)| a * b).sum();
                let s = 1.0 / (1.0 + (-g).exp());
                for (o, v) in out[t * h..(t + 1) * h].iter_mut().zip(row) {
                    *o += s * v;
                }
            }
        }
        out
    }
}
