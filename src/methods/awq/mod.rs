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
//! In a mixture-of-experts layer every expert's (and the shared expert's) gate and up share
//! one set of scales, searched on the whole expert block (router included, as AutoAWQ
//! inspects its Mixtral/Qwen MoE blocks), folded into post_attention_layernorm and multiplied
//! into the router's and the shared gate's columns, so the routing is unchanged (AutoAWQ
//! leaves the router reading the scaled-down input). Each expert's down_proj gets its own
//! scales from the tokens routed to it, folded into that expert's up_proj. An expert fewer
//! than [`MIN_EXPERT_TOKENS`] tokens reached gets no scales or clipping of its own, with a
//! note naming it.
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
pub(crate) mod record;
pub mod search;
mod stats;

use std::collections::HashMap;

use crate::calib::resume::LayerRecord;
use crate::calib::sequential::LayerQuantizer;
use crate::calib::states::States;
use crate::calib::Calibration;
use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::methods::MIN_EXPERT_TOKENS;
use crate::model::names;
use crate::quant;
use crate::runtime::model::AttnWeights;
use crate::runtime::{LlamaModel, Matrix};
use grid::{clip, mse, Grid, IntCodes};
use layer::{LayerF32, ATTN};
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

impl crate::methods::MatrixResult for Quantized {
    fn into_ggml_rows(self) -> Option<(GgmlType, usize, Vec<u8>)> {
        match self {
            Quantized::Ggml { ty, rows, bytes } => Some((ty, rows, bytes)),
            Quantized::Int(_) => None,
        }
    }

    fn into_int_quant(self) -> Option<crate::quant::gptq::IntQuant> {
        match self {
            Quantized::Int(c) => Some(c.into_int_quant()),
            Quantized::Ggml { .. } => None,
        }
    }
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

/// Mean |x| per input channel, the sampled token rows, and their count.
type Observed<'s> = (Vec<f32>, &'s [f32], usize);

/// What the scale search chose for one group of one layer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GroupReport {
    pub layer: usize,
    /// `qkv`, `o`, `gate_up`, `down`, or an expert's down (`down[3]`, `down_shexp`).
    pub group: String,
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
    /// Lines for the user (experts too few tokens reached).
    pub notes: Vec<String>,
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
            notes: Vec::new(),
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

    /// Mean |x| and the token sample of the input of the linear `key` (the first of those
    /// sharing it; an MoE router's for the whole expert block). `None` for an expert that
    /// fewer than [`MIN_EXPERT_TOKENS`] tokens reached.
    fn input(&self, key: &str) -> Result<Option<Observed<'_>>> {
        let expert = names::split_expert_part(key).is_some();
        match self.stats.inputs.get(key) {
            Some(st) if !expert || st.tokens() >= MIN_EXPERT_TOKENS => {
                Ok(Some((st.mean_abs(), &st.sample, st.sample_tokens())))
            }
            _ if expert => Ok(None),
            _ => Err(Error::InvalidArgument(format!("AWQ: the input of {key} was never observed"))),
        }
    }

    /// [`input`](Self::input) of a linear that is not an expert's.
    fn input_of(&self, key: &str) -> Result<Observed<'_>> {
        self.input(key)?.ok_or_else(|| Error::InvalidArgument(format!("AWQ: too few tokens reached {key}")))
    }

    fn salience(&self, x_mean: Vec<f32>, weights: &[(&[f32], usize)], cols: usize, grid: Grid) -> Salience {
        let w_mean = self.options.duo.then(|| Salience::weight_mean(weights, cols, grid.clip_group(cols)));
        Salience { x_mean, w_mean }
    }

    fn report(&mut self, layer: usize, group: String, f: &Found) {
        self.reports.push(GroupReport { layer, group, alpha: f.alpha, loss_rtn: f.loss_plain, loss: f.loss });
    }

    /// q/k/v: the attention block over whole windows.
    fn search_attn(
        &mut self,
        model: &LlamaModel<'_>,
        l: &mut LayerF32,
        grids: &[Grid],
        inputs: &States,
    ) -> Result<Vec<f32>> {
        let (x_mean, _, _) = self.input_of(&format!("blk.{}.{}.weight", l.index, ATTN[0]))?;
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
        self.report(l.index, "qkv".into(), &found);
        Ok(found.scales)
    }

    /// gate/up of the dense block, or of every expert at once: the whole feed-forward block
    /// (router and shared expert included) on the sample tokens.
    fn search_ffn(&mut self, model: &LlamaModel<'_>, l: &mut LayerF32, grids: &[Grid]) -> Result<Vec<f32>> {
        let key = match l.router {
            Some(_) => format!("blk.{}.ffn_gate_inp.weight", l.index),
            None => l.ffns[0].names[0].clone(),
        };
        let (x_mean, x, t) = self.input_of(&key)?;
        let reference = model.ffn_block(l.index, x, t, &HashMap::new())?;
        let weights: Vec<(&[f32], usize)> =
            l.ffns.iter().flat_map(|f| [(f.gate.as_slice(), f.width), (f.up.as_slice(), f.width)]).collect();
        let sal = self.salience(x_mean, &weights, l.hidden, grids[ATTN.len()]);
        let found = search(&sal, |s| {
            let mut subs = HashMap::new();
            for (i, f) in l.ffns.iter().enumerate() {
                for (k, w) in [&f.gate, &f.up].into_iter().enumerate() {
                    let q = fake_quant_scaled(w, f.width, l.hidden, s, grids[ATTN.len() + 3 * i + k])?;
                    subs.insert(f.names[k].clone(), Matrix::from_f32(&f.names[k], f.width, l.hidden, q)?);
                }
            }
            Ok(mse(&model.ffn_block(l.index, x, t, &subs)?, &reference))
        })?;
        l.fold_mlp(&found.scales);
        self.report(l.index, "gate_up".into(), &found);
        Ok(found.scales)
    }

    /// Search the layer's scales and fold them (and, with `clip`, clip its weights). Returns
    /// the layer with its folded weights, each linear's grid, and the scales each linear's
    /// input is divided by (1 where none were folded), both in [`LayerF32::linears`] order.
    /// The folded vectors are recorded in [`AwqMethod::vectors`].
    pub fn fold_layer(
        &mut self,
        model: &LlamaModel<'_>,
        li: usize,
        inputs: &States,
        clip_weights: bool,
    ) -> Result<(LayerF32, Vec<Grid>, Vec<Vec<f32>>)> {
        let mut l = LayerF32::from_model(model, li)?;
        let grids: Vec<Grid> =
            l.linears().iter().map(|(name, _, cols, _)| self.grid(name, *cols)).collect::<Result<_>>()?;
        let attn_key = |i: usize| format!("blk.{li}.{}.weight", ATTN[i]);
        // Feed-forward i's gate, up and down are linears 4 + 3i, 5 + 3i, 6 + 3i.
        let ffn_linear = |i: usize, k: usize| ATTN.len() + 3 * i + k;
        for f in l.ffns.iter().filter(|f| f.is_expert()) {
            if self.input(&f.names[0])?.is_none() {
                let seen = self.stats.inputs.get(&f.names[0]).map_or(0, |s| s.tokens());
                self.notes.push(format!(
                    "{}: {seen} calibration tokens were routed to this expert (fewer than {MIN_EXPERT_TOKENS}); \
                     no scales or clipping of its own, rounded to nearest",
                    f.names[0]
                ));
            }
        }
        // Scales of each group's input (1 where none were folded).
        let ones = |n: usize| vec![1f32; n];
        let (mut s_attn, mut s_o, mut s_mlp) = (ones(l.hidden), ones(l.q_dim), ones(l.hidden));
        let mut s_down: Vec<Vec<f32>> = l.ffns.iter().map(|f| ones(f.width)).collect();
        if self.options.scale {
            if grids[..3].iter().any(Grid::is_lossy) {
                s_attn = self.search_attn(model, &mut l, &grids, inputs)?;
            }
            if l.can_fold_o() && grids[3].is_lossy() {
                let (x_mean, x, t) = self.input_of(&attn_key(3))?;
                let sal = self.salience(x_mean, &[(&l.wo, l.hidden)], l.q_dim, grids[3]);
                let found = search_linear(x, t, &l.wo, l.hidden, l.q_dim, &sal, grids[3])?;
                l.fold_o(&found.scales)?;
                s_o = found.scales.clone();
                self.report(li, "o".into(), &found);
            }
            if (0..l.ffns.len()).any(|i| grids[ffn_linear(i, 0)].is_lossy() || grids[ffn_linear(i, 1)].is_lossy()) {
                s_mlp = self.search_ffn(model, &mut l, &grids)?;
            }
            for i in 0..l.ffns.len() {
                let grid = grids[ffn_linear(i, 2)];
                let f = &l.ffns[i];
                if !grid.is_lossy() {
                    continue;
                }
                let Some((x_mean, x, t)) = self.input(&f.names[2])? else { continue };
                let sal = self.salience(x_mean, &[(&f.down, l.hidden)], f.width, grid);
                let found = search_linear(x, t, &f.down, l.hidden, f.width, &sal, grid)?;
                let group = match names::split_expert_part(&f.names[2]) {
                    Some((_, e)) => format!("down[{e}]"),
                    None if l.router.is_some() => "down_shexp".into(),
                    None => "down".into(),
                };
                l.fold_down(i, &found.scales);
                s_down[i] = found.scales.clone();
                self.report(li, group, &found);
            }
        }
        // Each linear's input key (whose sample the clipping runs on) and input scales.
        let mut inputs_of: Vec<(String, Vec<f32>)> = vec![
            (attn_key(0), s_attn.clone()),
            (attn_key(0), s_attn.clone()),
            (attn_key(0), s_attn),
            (attn_key(3), s_o),
        ];
        for (i, f) in l.ffns.iter().enumerate() {
            inputs_of.push((f.names[0].clone(), s_mlp.clone()));
            inputs_of.push((f.names[0].clone(), s_mlp.clone()));
            inputs_of.push((f.names[2].clone(), s_down[i].clone()));
        }
        if clip_weights {
            // Each linear with its (scaled) weights and its input divided by the same scales
            // (q/k skipped: their errors pass through the softmax).
            let shapes: Vec<(String, usize, usize)> = l.linears().into_iter().map(|(n, r, c, _)| (n, r, c)).collect();
            for (i, (input, s)) in inputs_of.iter().enumerate().skip(2) {
                if !grids[i].is_lossy() {
                    continue;
                }
                let Some((_, x, t)) = self.input(input)? else { continue };
                let mut xs = x.to_vec();
                let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
                layer::scale_columns(&mut xs, &inv);
                let (name, rows, cols) = shapes[i].clone();
                let w = l.linear_mut(i).ok_or_else(|| Error::tensor(&name, "is not a linear of the layer"))?;
                let (before, after) = clip(w, rows, cols, &xs, t, grids[i])?;
                self.clips.push((name, before, after));
            }
        }
        self.vectors.extend(l.vectors());
        Ok((l, grids, inputs_of.into_iter().map(|(_, s)| s).collect()))
    }

    /// [`fold_layer`](Self::fold_layer) as a stage of the sequential driver: `names` must be
    /// all of the layer's linears (AWQ observes and folds a whole layer at once); the layer's
    /// observations are dropped afterwards, whatever the outcome.
    pub fn fold_stage(
        &mut self,
        model: &LlamaModel<'_>,
        layer: usize,
        names: &[String],
        inputs: &States,
        clip_weights: bool,
    ) -> Result<(LayerF32, Vec<Grid>, Vec<Vec<f32>>)> {
        if names != model.layer_linear_names(layer).as_slice() || inputs.is_empty() {
            return Err(Error::InvalidArgument("AWQ quantizes all linears of a layer in one stage".into()));
        }
        let folded = self.fold_layer(model, layer, inputs, clip_weights);
        self.stats.clear();
        folded
    }

    /// Round the folded layer's linears onto their grids; the results and the folded vectors.
    fn round_layer(&mut self, l: LayerF32, grids: Vec<Grid>) -> Result<Vec<(String, Vec<f32>)>> {
        let mut out = Vec::with_capacity(grids.len() + 5);
        for ((name, rows, _, w), grid) in l.linears().into_iter().zip(grids) {
            let (values, q) = match grid {
                Grid::Int4 { group_size } => {
                    let codes = grid::int4_quantize(w, rows, w.len() / rows.max(1), group_size)?;
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
        out.extend(l.vectors());
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

    fn observe_block(&mut self, _layer: usize, router: &str, x: &[f32], n: usize) -> Result<()> {
        self.stats.observe(router, x, n);
        Ok(())
    }

    fn quantize(
        &mut self,
        model: &LlamaModel<'_>,
        layer: usize,
        names: &[String],
        inputs: &States,
    ) -> Result<Vec<(String, Vec<f32>)>> {
        let (l, grids, _) = self.fold_stage(model, layer, names, inputs, self.options.clip)?;
        self.round_layer(l, grids)
    }

    fn save_layer(&self, layer: usize, rec: &mut LayerRecord) -> Result<()> {
        record::save_awq(self, layer, rec);
        Ok(())
    }

    fn load_layer(&mut self, _layer: usize, rec: &LayerRecord) -> Result<()> {
        record::load_awq(self, rec)
    }

    /// The folded vectors stay (one per norm: small, and the writer wants them all at hand).
    fn release_layer(&mut self, layer: usize) {
        let prefix = format!("blk.{layer}.");
        self.results.retain(|name, _| !name.starts_with(&prefix));
    }
}
