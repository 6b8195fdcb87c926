//! AWQ (activation-aware weight quantization, Lin et al. 2023) over a whole model, layer by
//! layer through the sequential driver (one stage per layer: all seven linears are observed
//! in one pass with the layer's original weights, as AutoAWQ collects its input features).
//!
//! Per layer, for each group of linears that share an input:
//!
//! | linears | the scales fold into | inspected block |
//! |---|---|---|
//! | q, k, v | input_layernorm weights | attention incl. o_proj |
//! | o | v_proj rows (+ bias); only without GQA | o_proj |
//! | gate, up | post_attention_layernorm weights | MLP |
//! | down | up_proj rows | down_proj |
//!
//! the scales s = x̄^α (x̄ = mean |x| per input channel over all calibration tokens) are
//! searched over α ∈ {0, 0.05, …, 0.95}, minimising the MSE between the block's output with
//! Q(W·s)/s and with W. Then AutoAWQ's clipping search shrinks each (row, group) range (q/k
//! skipped: their errors pass through the softmax), and the weights are quantized onto the
//! target grid. The folded norms (and v bias) are kept in [`AwqMethod::vectors`] for the
//! writers, and go back into the runtime model so later layers see them.
//!
//! Sample budget: the token-wise blocks (o, MLP, down) and the clipping run on an evenly
//! strided sample of `sample_tokens` tokens of the inputs; the attention block needs whole
//! windows and runs on ⌈sample_tokens / seqlen⌉ evenly spaced windows.

pub mod grid;
pub mod layer;
pub mod search;
mod stats;

use std::collections::HashMap;

use crate::calib::sequential::LayerQuantizer;
use crate::calib::Calibration;
use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::quant;
use crate::runtime::model::AttnWeights;
use crate::runtime::{LlamaModel, Matrix};
use grid::{clip, mse, Grid, IntCodes};
use layer::{LayerF32, LINEARS};
use search::{fake_quant_scaled, search, search_linear, Found, Salience};
use stats::LayerStats;

#[derive(Debug, Clone)]
pub struct AwqOptions {
    /// Search and fold the activation-aware scales (off: s = 1).
    pub scale: bool,
    /// Search the clipping ranges.
    pub clip: bool,
    /// Tokens the searches and the clipping run on (see the module notes).
    pub sample_tokens: usize,
    /// AutoAWQ's `duo_scaling`: s = x̄^α / w̄^(1−α) instead of x̄^α.
    pub duo: bool,
}

/// What the linears are quantized to.
pub enum Target {
    /// hf-awq: asymmetric 4-bit in groups of `group_size` input columns (`None`: whole rows).
    Int4 { group_size: Option<usize> },
    /// GGUF: a GGML type per tensor, as planned by llama.cpp's mix rules.
    Ggml(HashMap<String, GgmlType>),
}

/// The final form of one linear, rows in the model's layout.
pub enum Quantized {
    Int(IntCodes),
    Ggml { ty: GgmlType, rows: usize, bytes: Vec<u8> },
}

impl crate::methods::RowParts for Quantized {
    fn append(&mut self, other: Quantized) -> bool {
        match (self, other) {
            (Quantized::Int(q), Quantized::Int(p)) if (p.cols, p.group_size) == (q.cols, q.group_size) => {
                q.rows += p.rows;
                q.codes.extend(p.codes);
                q.scales.extend(p.scales);
                q.zeros.extend(p.zeros);
                true
            }
            (Quantized::Ggml { ty, rows, bytes }, Quantized::Ggml { ty: t, rows: r, bytes: b }) if *ty == t => {
                *rows += r;
                bytes.extend(b);
                true
            }
            _ => false,
        }
    }
}

/// What the scale search chose for one group of one layer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupReport {
    pub layer: usize,
    pub group: &'static str,
    pub alpha: f32,
    /// Block output MSE with plain round-to-nearest and with the chosen scales.
    pub loss_rtn: f64,
    pub loss: f64,
}

pub struct AwqMethod {
    options: AwqOptions,
    target: Target,
    stats: LayerStats,
    pub results: HashMap<String, Quantized>,
    /// Norm and bias vectors the folds changed, by GGUF name (model layout).
    pub vectors: HashMap<String, Vec<f32>>,
    pub reports: Vec<GroupReport>,
    /// (linear, output error before, after clipping).
    pub clips: Vec<(String, f64, f64)>,
}

impl AwqMethod {
    pub fn new(options: AwqOptions, target: Target, calib: &Calibration) -> AwqMethod {
        let stats = LayerStats::new(calib.tokens(), calib.seqlen, options.sample_tokens);
        AwqMethod {
            options,
            target,
            stats,
            results: HashMap::new(),
            vectors: HashMap::new(),
            reports: Vec::new(),
            clips: Vec::new(),
        }
    }

    fn grid(&self, name: &str, cols: usize) -> Result<Grid> {
        match &self.target {
            Target::Int4 { group_size } => Ok(Grid::Int4 { group_size: group_size.unwrap_or(cols) }),
            Target::Ggml(types) => {
                types.get(name).map(|&t| Grid::Ggml(t)).ok_or_else(|| Error::tensor(name, "has no planned type"))
            }
        }
    }

    /// Mean |x| and the token sample of the input of `blk.{li}.{first}.weight`.
    fn input(&self, li: usize, first: &str) -> Result<(Vec<f32>, &[f32], usize)> {
        let key = format!("blk.{li}.{first}.weight");
        let st = self
            .stats
            .inputs
            .get(&key)
            .ok_or_else(|| Error::InvalidArgument(format!("AWQ: the input of {key} was never observed")))?;
        Ok((st.mean_abs(), &st.sample, st.sample_tokens()))
    }

    fn salience(&self, x_mean: Vec<f32>, weights: &[(&[f32], usize)], cols: usize, grid: Grid) -> Salience {
        let w_mean = self.options.duo.then(|| Salience::weight_mean(weights, cols, grid.clip_group(cols)));
        Salience { x_mean, w_mean }
    }

    fn report(&mut self, layer: usize, group: &'static str, f: &Found) {
        self.reports.push(GroupReport { layer, group, alpha: f.alpha, loss_rtn: f.loss_plain, loss: f.loss });
    }

    /// q/k/v: the attention block over whole windows.
    fn search_attn(
        &mut self,
        model: &LlamaModel<'_>,
        l: &mut LayerF32,
        grids: &[Grid; 7],
        inputs: &[Vec<f32>],
    ) -> Result<Vec<f32>> {
        let (x_mean, _, _) = self.input(l.index, LINEARS[0])?;
        let n = inputs[0].len() / l.hidden;
        let count = self.options.sample_tokens.div_ceil(n).clamp(1, inputs.len());
        let xns: Vec<Vec<f32>> =
            (0..count).map(|i| model.rms_norm_rows(&inputs[i * inputs.len() / count], &l.attn_norm)).collect();
        let rope = model.rope_tables(0, n);
        let m = |w: &[f32], rows, cols| Matrix::from_f32("awq", rows, cols, w.to_vec());
        let (q, k, v, o) = (
            m(&l.wq, l.q_dim, l.hidden)?,
            m(&l.wk, l.kv_dim, l.hidden)?,
            m(&l.wv, l.kv_dim, l.hidden)?,
            m(&l.wo, l.hidden, l.q_dim)?,
        );
        let (q_norm, k_norm) = model.qk_norms(l.index);
        let run = |q: &Matrix<'_>, k: &Matrix<'_>, v: &Matrix<'_>, xn: &[f32]| {
            let (bq, bk, bv) = (l.bq.as_deref(), l.bk.as_deref(), l.bv.as_deref());
            let w = AttnWeights { q, k, v, o: &o, bq, bk, bv, q_norm, k_norm };
            model.attention_block(l.index, xn, n, &w, &rope)
        };
        let reference: Vec<Vec<f32>> = xns.iter().map(|x| run(&q, &k, &v, x)).collect::<Result<_>>()?;
        let sal = self.salience(x_mean, &[(&l.wq, l.q_dim), (&l.wk, l.kv_dim), (&l.wv, l.kv_dim)], l.hidden, grids[0]);
        let found = search(&sal, |s| {
            let fq =
                |w: &[f32], rows, g| fake_quant_scaled(w, rows, l.hidden, s, g).and_then(|w| m(&w, rows, l.hidden));
            let (q, k, v) =
                (fq(&l.wq, l.q_dim, grids[0])?, fq(&l.wk, l.kv_dim, grids[1])?, fq(&l.wv, l.kv_dim, grids[2])?);
            let mut total = 0.0;
            for (x, r) in xns.iter().zip(&reference) {
                total += mse(&run(&q, &k, &v, x)?, r);
            }
            Ok(total / count as f64)
        })?;
        l.fold_attn(&found.scales);
        self.report(l.index, "qkv", &found);
        Ok(found.scales)
    }

    /// gate/up: the MLP block on the sample tokens.
    fn search_mlp(&mut self, model: &LlamaModel<'_>, l: &mut LayerF32, grids: &[Grid; 7]) -> Result<Vec<f32>> {
        let (x_mean, x, t) = self.input(l.index, LINEARS[4])?;
        let m = |w: &[f32], rows, cols| Matrix::from_f32("awq", rows, cols, w.to_vec());
        let (gate, up, down) =
            (m(&l.w_gate, l.ffn, l.hidden)?, m(&l.w_up, l.ffn, l.hidden)?, m(&l.w_down, l.hidden, l.ffn)?);
        let reference = model.mlp_block(x, t, &gate, &up, &down);
        let sal = self.salience(x_mean, &[(&l.w_gate, l.ffn), (&l.w_up, l.ffn)], l.hidden, grids[4]);
        let found = search(&sal, |s| {
            let fq = |w: &[f32], g| fake_quant_scaled(w, l.ffn, l.hidden, s, g).and_then(|w| m(&w, l.ffn, l.hidden));
            let (g, u) = (fq(&l.w_gate, grids[4])?, fq(&l.w_up, grids[5])?);
            Ok(mse(&model.mlp_block(x, t, &g, &u, &down), &reference))
        })?;
        l.fold_mlp(&found.scales);
        self.report(l.index, "gate_up", &found);
        Ok(found.scales)
    }

    fn quantize_layer(
        &mut self,
        model: &LlamaModel<'_>,
        li: usize,
        inputs: &[Vec<f32>],
    ) -> Result<Vec<(String, Vec<f32>)>> {
        let mut l = LayerF32::from_model(model, li)?;
        let mut grids = [Grid::Ggml(GgmlType::F32); 7];
        for (g, (name, _, cols, _)) in grids.iter_mut().zip(l.linears()) {
            *g = self.grid(&name, cols)?;
        }
        // Scales of each group's input (1 where none were folded).
        let ones = |n: usize| vec![1f32; n];
        let (mut s_attn, mut s_o, mut s_mlp, mut s_down) = (ones(l.hidden), ones(l.q_dim), ones(l.hidden), ones(l.ffn));
        if self.options.scale {
            if grids[..3].iter().any(Grid::is_lossy) {
                s_attn = self.search_attn(model, &mut l, &grids, inputs)?;
            }
            if l.can_fold_o() && grids[3].is_lossy() {
                let (x_mean, x, t) = self.input(li, LINEARS[3])?;
                let sal = self.salience(x_mean, &[(&l.wo, l.hidden)], l.q_dim, grids[3]);
                let found = search_linear(x, t, &l.wo, l.hidden, l.q_dim, &sal, grids[3])?;
                l.fold_o(&found.scales)?;
                s_o = found.scales.clone();
                self.report(li, "o", &found);
            }
            if grids[4..6].iter().any(Grid::is_lossy) {
                s_mlp = self.search_mlp(model, &mut l, &grids)?;
            }
            if grids[6].is_lossy() {
                let (x_mean, x, t) = self.input(li, LINEARS[6])?;
                let sal = self.salience(x_mean, &[(&l.w_down, l.hidden)], l.ffn, grids[6]);
                let found = search_linear(x, t, &l.w_down, l.hidden, l.ffn, &sal, grids[6])?;
                l.fold_down(&found.scales);
                s_down = found.scales.clone();
                self.report(li, "down", &found);
            }
        }
        if self.options.clip {
            // Each linear with its (scaled) weights and its input divided by the same scales.
            let plan: [(usize, &str, &Vec<f32>); 5] = [
                (2, LINEARS[0], &s_attn),
                (3, LINEARS[3], &s_o),
                (4, LINEARS[4], &s_mlp),
                (5, LINEARS[4], &s_mlp),
                (6, LINEARS[6], &s_down),
            ];
            for (i, input, s) in plan {
                if !grids[i].is_lossy() {
                    continue;
                }
                let (_, x, t) = self.input(li, input)?;
                let mut xs = x.to_vec();
                let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
                layer::scale_columns(&mut xs, &inv);
                let (name, rows, cols, _) = l.linears()[i].clone();
                let w = match i {
                    2 => &mut l.wv,
                    3 => &mut l.wo,
                    4 => &mut l.w_gate,
                    5 => &mut l.w_up,
                    _ => &mut l.w_down,
                };
                let (before, after) = clip(w, rows, cols, &xs, t, grids[i])?;
                self.clips.push((name, before, after));
            }
        }
        let mut out = Vec::with_capacity(10);
        for ((name, rows, cols, w), grid) in l.linears().into_iter().zip(grids) {
            let (values, q) = match grid {
                Grid::Int4 { group_size } => {
                    let codes = grid::int4_quantize(w, rows, cols, group_size)?;
                    (codes.dequantize(), Quantized::Int(codes))
                }
                Grid::Ggml(ty) => {
                    let bytes = quant::encode(ty, w).map_err(|e| Error::tensor(&name, e.to_string()))?;
                    (quant::decode(ty, &bytes, w.len())?, Quantized::Ggml { ty, rows, bytes })
                }
            };
            self.results.insert(name.clone(), q);
            out.push((name, values));
        }
        for (name, v) in l.vectors() {
            self.vectors.insert(name.clone(), v.clone());
            out.push((name, v));
        }
        Ok(out)
    }
}

impl LayerQuantizer for AwqMethod {
    fn observe(&mut self, _layer: usize, names: &[&str], x: &[f32], n: usize) -> Result<()> {
        if let Some(first) = names.first() {
            self.stats.observe(first, x, n);
        }
        Ok(())
    }

    fn quantize(
        &mut self,
        model: &LlamaModel<'_>,
        layer: usize,
        names: &[String],
        inputs: &[Vec<f32>],
    ) -> Result<Vec<(String, Vec<f32>)>> {
        if names.len() != LINEARS.len() || inputs.is_empty() {
            return Err(Error::InvalidArgument("AWQ quantizes all seven linears of a layer in one stage".into()));
        }
        let out = self.quantize_layer(model, layer, inputs);
        self.stats.clear();
        out
    }
}
