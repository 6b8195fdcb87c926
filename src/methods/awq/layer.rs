//! One decoder layer's weights as f32, and the folds that move AWQ's per-channel scales s
//! from a linear's input into the operation before it. A fold changes no output (up to float
//! rounding): the linear's columns are multiplied by s and its input divided by s, either
//! through the RMSNorm weights (q/k/v after input_layernorm, gate/up after
//! post_attention_layernorm) or through the rows of the previous linear (o after v, down after
//! up: dividing v's or up's output channels by s divides o's or down's input).

use crate::error::{Error, Result};
use crate::runtime::{LlamaModel, Matrix};

/// All weights of a decoder layer in the model's row layout (q/k rows as the file stores them).
#[derive(Debug, Clone)]
pub struct LayerF32 {
    pub index: usize,
    pub hidden: usize,
    pub ffn: usize,
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
    pub w_gate: Vec<f32>,
    pub w_up: Vec<f32>,
    pub w_down: Vec<f32>,
}

/// Suffixes of a layer's linears, in [`LayerF32::linears`] order.
pub const LINEARS: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

impl LayerF32 {
    pub fn from_model(model: &LlamaModel<'_>, li: usize) -> Result<LayerF32> {
        let w = |s: &str| -> Result<Vec<f32>> {
            let name = format!("blk.{li}.{s}.weight");
            model.weight(&name).map(Matrix::to_f32).ok_or_else(|| Error::InvalidModel(format!("{name} is missing")))
        };
        let v = |s: &str| model.vector(&format!("blk.{li}.{s}")).map(<[f32]>::to_vec);
        let cfg = &model.config;
        Ok(LayerF32 {
            index: li,
            hidden: cfg.hidden_size,
            ffn: cfg.ffn_size,
            q_dim: cfg.q_dim(),
            kv_dim: cfg.kv_dim(),
            attn_norm: v("attn_norm.weight")
                .ok_or_else(|| Error::InvalidModel(format!("layer {li} has no attn_norm")))?,
            wq: w("attn_q")?,
            wk: w("attn_k")?,
            wv: w("attn_v")?,
            bq: v("attn_q.bias"),
            bk: v("attn_k.bias"),
            bv: v("attn_v.bias"),
            wo: w("attn_output")?,
            ffn_norm: v("ffn_norm.weight").ok_or_else(|| Error::InvalidModel(format!("layer {li} has no ffn_norm")))?,
            w_gate: w("ffn_gate")?,
            w_up: w("ffn_up")?,
            w_down: w("ffn_down")?,
        })
    }

    /// (GGUF name, rows, cols, weights) of the seven linears.
    pub fn linears(&self) -> [(String, usize, usize, &Vec<f32>); 7] {
        let n = |s: &str| format!("blk.{}.{s}.weight", self.index);
        [
            (n(LINEARS[0]), self.q_dim, self.hidden, &self.wq),
            (n(LINEARS[1]), self.kv_dim, self.hidden, &self.wk),
            (n(LINEARS[2]), self.kv_dim, self.hidden, &self.wv),
            (n(LINEARS[3]), self.hidden, self.q_dim, &self.wo),
            (n(LINEARS[4]), self.ffn, self.hidden, &self.w_gate),
            (n(LINEARS[5]), self.ffn, self.hidden, &self.w_up),
            (n(LINEARS[6]), self.hidden, self.ffn, &self.w_down),
        ]
    }

    /// The norm and bias vectors by GGUF name (what a fold may change).
    pub fn vectors(&self) -> Vec<(String, Vec<f32>)> {
        let n = |s: &str| format!("blk.{}.{s}", self.index);
        let mut v =
            vec![(n("attn_norm.weight"), self.attn_norm.clone()), (n("ffn_norm.weight"), self.ffn_norm.clone())];
        if let Some(b) = &self.bv {
            v.push((n("attn_v.bias"), b.clone()));
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

    /// gate/up input scales → post_attention_layernorm.
    pub fn fold_mlp(&mut self, s: &[f32]) {
        divide(&mut self.ffn_norm, s);
        scale_columns(&mut self.w_gate, s);
        scale_columns(&mut self.w_up, s);
    }

    /// down_proj input scales → up_proj rows (silu(gate)·(up/s) = (silu(gate)·up)/s).
    pub fn fold_down(&mut self, s: &[f32]) {
        divide_rows(&mut self.w_up, s);
        scale_columns(&mut self.w_down, s);
    }

    /// Put every weight and vector of this layer into `model`.
    pub fn store(&self, model: &mut LlamaModel<'_>) -> Result<()> {
        for (name, rows, cols, w) in self.linears() {
            model.set_weight(Matrix::from_f32(&name, rows, cols, w.clone())?)?;
        }
        for (name, v) in self.vectors() {
            model.set_vector(&name, v)?;
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
