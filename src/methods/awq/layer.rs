//! One decoder layer's weights as f32, and the folds that move AWQ's per-channel scales s
//! from a linear's input into the operation before it. A fold changes no output (up to float
//! rounding): the linear's columns are multiplied by s and its input divided by s, either
//! through the RMSNorm weights (q/k/v after input_layernorm, gate/up after
//! post_attention_layernorm) or through the rows of the previous linear (o after v, down after
//! up: dividing v's or up's output channels by s divides o's or down's input).

use crate::error::{Error, Result};
use crate::model::names;
use crate::runtime::{LlamaModel, Matrix};

/// One gated feed-forward (the dense block, an expert, the shared expert): GGUF names of its
/// gate, up and down matrices and their weights.
#[derive(Debug, Clone)]
pub struct FfnF32 {
    pub names: [String; 3],
    /// Its width (gate/up rows, down columns).
    pub width: usize,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

impl FfnF32 {
    /// An MoE expert (not the dense block or the shared expert).
    pub fn is_expert(&self) -> bool {
        names::split_expert_part(&self.names[0]).is_some()
    }
}

/// All weights of a decoder layer in the model's row layout (q/k rows as the file stores them).
#[derive(Debug, Clone)]
pub struct LayerF32 {
    pub index: usize,
    pub hidden: usize,
    pub q_dim: usize,
    pub kv_dim: usize,
    pub attn_norm: Vec<f32>,
    pub wq: Vec<f32>,
    pub wk: Vec<f32>,
    pub wv: Vec<f32>,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub wo: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    /// The dense feed-forward, or an MoE layer's experts followed by its shared expert.
    pub ffns: Vec<FfnF32>,
    /// An MoE layer's router ([n_experts, hidden]) and shared-expert gate ([hidden]): they
    /// read post_attention_layernorm's output too, so a scale folded into that norm is
    /// multiplied into their columns, which leaves the routing exactly as it was.
    pub router: Option<Vec<f32>>,
    pub shared_gate: Option<Vec<f32>>,
}

/// Suffixes of the attention linears, in [`LayerF32::linears`] order.
pub const ATTN: [&str; 4] = ["attn_q", "attn_k", "attn_v", "attn_output"];

impl LayerF32 {
    pub fn from_model(model: &LlamaModel<'_>, li: usize) -> Result<LayerF32> {
        let w = |name: &str| -> Result<Vec<f32>> {
            model.weight(name).map(Matrix::to_f32).ok_or_else(|| Error::InvalidModel(format!("{name} is missing")))
        };
        let a = |s: &str| w(&format!("blk.{li}.{s}.weight"));
        let v = |s: &str| model.vector(&format!("blk.{li}.{s}")).map(<[f32]>::to_vec);
        let cfg = &model.config;
        // The layer's linears after the four of attention come as (gate, up, down) triples.
        let linears = model.layer_linear_names(li);
        let ffn_names = linears.get(ATTN.len()..).unwrap_or_default();
        if ffn_names.is_empty() || ffn_names.len() % 3 != 0 {
            return Err(Error::InvalidModel(format!(
                "layer {li}: its feed-forward linears are not gate/up/down triples"
            )));
        }
        let ffns = ffn_names
            .chunks_exact(3)
            .map(|t| {
                let width = model.weight(&t[0]).map_or(0, |m| m.rows);
                Ok(FfnF32 {
                    names: [t[0].clone(), t[1].clone(), t[2].clone()],
                    width,
                    gate: w(&t[0])?,
                    up: w(&t[1])?,
                    down: w(&t[2])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LayerF32 {
            index: li,
            hidden: cfg.hidden_size,
            q_dim: cfg.q_dim(),
            kv_dim: cfg.kv_dim(),
            attn_norm: v("attn_norm.weight")
                .ok_or_else(|| Error::InvalidModel(format!("layer {li} has no attn_norm")))?,
            wq: a("attn_q")?,
            wk: a("attn_k")?,
            wv: a("attn_v")?,
            bq: v("attn_q.bias"),
            bk: v("attn_k.bias"),
            bv: v("attn_v.bias"),
            wo: a("attn_output")?,
            ffn_norm: v("ffn_norm.weight").ok_or_else(|| Error::InvalidModel(format!("layer {li} has no ffn_norm")))?,
            ffns,
            router: model.router(li),
            shared_gate: v("ffn_gate_inp_shexp.weight"),
        })
    }

    /// (GGUF name, rows, cols, weights) of every linear: q, k, v, o, then gate, up, down of
    /// each feed-forward in [`ffns`](Self::ffns) order.
    pub fn linears(&self) -> Vec<(String, usize, usize, &Vec<f32>)> {
        let n = |s: &str| format!("blk.{}.{s}.weight", self.index);
        let mut v = vec![
            (n(ATTN[0]), self.q_dim, self.hidden, &self.wq),
            (n(ATTN[1]), self.kv_dim, self.hidden, &self.wk),
            (n(ATTN[2]), self.kv_dim, self.hidden, &self.wv),
            (n(ATTN[3]), self.hidden, self.q_dim, &self.wo),
        ];
        for f in &self.ffns {
            v.push((f.names[0].clone(), f.width, self.hidden, &f.gate));
            v.push((f.names[1].clone(), f.width, self.hidden, &f.up));
            v.push((f.names[2].clone(), self.hidden, f.width, &f.down));
        }
        v
    }

    /// The weights of linear `i` in [`linears`](Self::linears) order.
    pub fn linear_mut(&mut self, i: usize) -> Option<&mut Vec<f32>> {
        Some(match i {
            0 => &mut self.wq,
            1 => &mut self.wk,
            2 => &mut self.wv,
            3 => &mut self.wo,
            _ => {
                let f = self.ffns.get_mut((i - ATTN.len()) / 3)?;
                [&mut f.gate, &mut f.up, &mut f.down].into_iter().nth((i - ATTN.len()) % 3)?
            }
        })
    }

    /// The norm, bias, router and shared-gate values by GGUF name (what a fold may change).
    pub fn vectors(&self) -> Vec<(String, Vec<f32>)> {
        let n = |s: &str| format!("blk.{}.{s}", self.index);
        let mut v =
            vec![(n("attn_norm.weight"), self.attn_norm.clone()), (n("ffn_norm.weight"), self.ffn_norm.clone())];
        if let Some(b) = &self.bv {
            v.push((n("attn_v.bias"), b.clone()));
        }
        if let Some(r) = &self.router {
            v.push((n("ffn_gate_inp.weight"), r.clone()));
        }
        if let Some(g) = &self.shared_gate {
            v.push((n("ffn_gate_inp_shexp.weight"), g.clone()));
        }
        v
    }

    /// Whether o_proj's input channels are v_proj's output channels one to one, so that o's
    /// scales can fold into v. With grouped-query attention v has fewer output rows
    /// (kv_dim) than o has input columns (q_dim): each v channel feeds several heads, and
    /// o's per-column scales cannot be undone by one division per v row.
    pub fn can_fold_o(&self) -> bool {
        self.kv_dim == self.q_dim
    }

    /// q/k/v input scales → input_layernorm.
    pub fn fold_attn(&mut self, s: &[f32]) {
        divide(&mut self.attn_norm, s);
        for w in [&mut self.wq, &mut self.wk, &mut self.wv] {
            scale_columns(w, s);
        }
    }

    /// o_proj input scales → v_proj rows (and bias). Only when [`can_fold_o`](Self::can_fold_o).
    pub fn fold_o(&mut self, s: &[f32]) -> Result<()> {
        if !self.can_fold_o() || s.len() != self.q_dim {
            return Err(Error::InvalidArgument(
                "o_proj scales cannot fold into v_proj (grouped-query attention)".into(),
            ));
        }
        divide_rows(&mut self.wv, s);
        if let Some(b) = &mut self.bv {
            divide(b, s);
        }
        scale_columns(&mut self.wo, s);
        Ok(())
    }

    /// gate/up input scales (of every expert at once) → post_attention_layernorm, with the
    /// router's and the shared gate's columns multiplied by the same scales.
    pub fn fold_mlp(&mut self, s: &[f32]) {
        divide(&mut self.ffn_norm, s);
        for f in &mut self.ffns {
            scale_columns(&mut f.gate, s);
            scale_columns(&mut f.up, s);
        }
        if let Some(r) = &mut self.router {
            scale_columns(r, s);
        }
        if let Some(g) = &mut self.shared_gate {
            scale_columns(g, s);
        }
    }

    /// Feed-forward `i`'s down_proj input scales → its up_proj rows
    /// (silu(gate)·(up/s) = (silu(gate)·up)/s).
    pub fn fold_down(&mut self, i: usize, s: &[f32]) {
        let f = &mut self.ffns[i];
        divide_rows(&mut f.up, s);
        scale_columns(&mut f.down, s);
    }

    /// Put every weight and vector of this layer into `model`.
    pub fn store(&self, model: &mut LlamaModel<'_>) -> Result<()> {
        for (name, _, _, w) in self.linears() {
            model.set_tensor(&name, w.clone())?;
        }
        for (name, v) in self.vectors() {
            model.set_tensor(&name, v)?;
        }
        Ok(())
    }
}

/// w[r, c] *= s[c]
pub fn scale_columns(w: &mut [f32], s: &[f32]) {
    for row in w.chunks_exact_mut(s.len()) {
        for (v, &f) in row.iter_mut().zip(s) {
            *v *= f;
        }
    }
}

/// w[r, :] /= s[r]
pub fn divide_rows(w: &mut [f32], s: &[f32]) {
    let cols = w.len() / s.len().max(1);
    for (row, &f) in w.chunks_exact_mut(cols).zip(s) {
        for v in row {
            *v /= f;
        }
    }
}

fn divide(v: &mut [f32], s: &[f32]) {
    for (x, &f) in v.iter_mut().zip(s) {
        *x /= f;
    }
}
