//! GPTQ over a whole model: one Hessian per distinct linear input (q/k/v share one, gate/up
//! share one), accumulated from the calibration activations, then the solver
//! (`quant::gptq`) for each matrix of the stage. With a CUDA backend (feature `cuda`) the
//! Hessians are accumulated on the GPU and integer grids are solved there; GGML grids are
//! solved by the CPU solver on the downloaded Hessian.

pub(crate) mod record;

use std::collections::HashMap;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use super::MIN_EXPERT_TOKENS;
use crate::calib::resume::LayerRecord;
use crate::calib::sequential::LayerQuantizer;
use crate::calib::states::States;
use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::model::names;
use crate::quant;
use crate::quant::gptq::asymmetric::{self, InputDrift};
#[cfg(feature = "cuda")]
use crate::quant::gptq::cuda::{CudaBackend, CudaHessian};
use crate::quant::gptq::{self, ColumnOrder, GptqOptions, Grid, Hessian, IntQuant};
use crate::runtime::LlamaModel;

/// What each matrix is quantized to.
pub enum Target {
    /// An integer grid for hf-gptq checkpoints.
    Int { bits: u8, sym: bool },
    /// A GGML block type per tensor (GGUF output; planned by llama.cpp's mix rules).
    Ggml(HashMap<String, GgmlType>),
}

/// The result for one matrix, in the model's row layout.
pub enum Solved {
    Int(IntQuant),
    /// Encoded rows of a GGML type.
    Ggml {
        ty: GgmlType,
        rows: usize,
        bytes: Vec<u8>,
    },
}

impl super::MatrixResult for Solved {
    fn into_ggml_rows(self) -> Option<(GgmlType, usize, Vec<u8>)> {
        match self {
            Solved::Ggml { ty, rows, bytes } => Some((ty, rows, bytes)),
            Solved::Int(_) => None,
        }
    }

    fn into_int_quant(self) -> Option<IntQuant> {
        match self {
            Solved::Int(q) => Some(q),
            Solved::Ggml { .. } => None,
        }
    }
}

impl super::RowParts for Solved {
    fn append(&mut self, other: Solved) -> bool {
        match (self, other) {
            (Solved::Int(q), Solved::Int(p))
                if (p.bits, p.group_size, &p.g_idx) == (q.bits, q.group_size, &q.g_idx) =>
            {
                q.codes.extend(p.codes);
                q.scales.extend(p.scales);
                q.zeros.extend(p.zeros);
                true
            }
            (Solved::Ggml { ty, rows, bytes }, Solved::Ggml { ty: t, rows: r, bytes: b }) if *ty == t => {
                *rows += r;
                bytes.extend(b);
                true
            }
            _ => false,
        }
    }
}

/// A Hessian in host memory or on the GPU.
enum Hess {
    Cpu(Hessian),
    #[cfg(feature = "cuda")]
    Cuda(CudaHessian),
}

pub struct GptqMethod {
    pub options: GptqOptions,
    pub target: Target,
    /// Hessians of the current stage, keyed by the first name of the linears sharing an input.
    hessians: HashMap<String, (Vec<String>, Hess)>,
    /// Where new Hessians go and integer grids are solved (`None`: the CPU).
    #[cfg(feature = "cuda")]
    cuda: Option<CudaBackend>,
    pub results: HashMap<String, Solved>,
    /// Lines for the user (damping retries, dead columns, fall-backs), in order.
    pub notes: Vec<String>,
    /// Per-matrix loss reported by the solver, for -v.
    pub losses: Vec<(String, f64)>,
    /// Calibration tokens behind each Hessian (by its key): an MoE expert sees only the
    /// tokens routed to it.
    tokens: HashMap<String, usize>,
    /// Compare every solution with round-to-nearest on the same grid and keep the better
    /// (see [`Guarded`]).
    pub guard: bool,
    pub guarded: Vec<Guarded>,
    /// Asymmetric calibration (`quant::gptq::asymmetric`) with this fraction α of the
    /// correction: fit each linear to the unquantized model's outputs, with the input drift of
    /// each Hessian's linears (same keys). `None`: plain GPTQ.
    pub asymmetric: Option<f64>,
    drifts: HashMap<String, InputDrift>,
    /// Whether an integer result released from memory has a group with zero point 0 (the
    /// hf-gptq writer must then choose the v2 format before it reads any back).
    pub zero_point_zero: bool,
}

/// The never-worse-than-rounding guard's verdict on one matrix: the calibration inputs'
/// output error tr(ΔHΔᵀ) (Δ = W − Q, H the Hessian GPTQ solved against) of GPTQ's solution
/// and of round-to-nearest on the same grid. GPTQ minimizes this error greedily, column by
/// column, so it can lose: on weights that already sit on the grid (a checkpoint dequantized
/// from a quantized one) rounding reproduces them exactly and GPTQ's error feedback only
/// moves them. The smaller one is kept.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Guarded {
    pub name: String,
    pub gptq: f64,
    pub rtn: f64,
    pub kept_rtn: bool,
}

impl GptqMethod {
    pub fn new(options: GptqOptions, target: Target) -> GptqMethod {
        GptqMethod {
            options,
            target,
            hessians: HashMap::new(),
            #[cfg(feature = "cuda")]
            cuda: None,
            results: HashMap::new(),
            notes: Vec::new(),
            losses: Vec::new(),
            tokens: HashMap::new(),
            guard: true,
            guarded: Vec::new(),
            asymmetric: None,
            drifts: HashMap::new(),
            zero_point_zero: false,
        }
    }

    /// Run on a CUDA device: Hessians on the GPU, integer grids solved there.
    #[cfg(feature = "cuda")]
    pub fn with_cuda(mut self, backend: Option<CudaBackend>) -> GptqMethod {
        self.cuda = backend;
        self
    }

    fn new_hessian(&self, cols: usize) -> Result<Hess> {
        #[cfg(feature = "cuda")]
        if let Some(be) = &self.cuda {
            return Ok(Hess::Cuda(be.new_hessian(cols)?));
        }
        Ok(Hess::Cpu(Hessian::new(cols)))
    }

    /// Solve one matrix against its Hessian (wherever that is).
    fn solve(&self, w: &[f32], rows: usize, cols: usize, hess: &Hess, grid: &Grid) -> Result<Option<gptq::GptqResult>> {
        Ok(Some(match hess {
            Hess::Cpu(h) => {
                if h.has_nonfinite() {
                    return Ok(None);
                }
                gptq::quantize(w, rows, cols, h, grid, &self.options)?
            }
            #[cfg(feature = "cuda")]
            Hess::Cuda(h) => {
                if h.has_nonfinite()? {
                    return Ok(None);
                }
                h.backend().quantize_dev(w, rows, cols, h, grid, &self.options)?
            }
        }))
    }

    fn grid_for(&self, name: &str) -> Result<Option<Grid>> {
        Ok(match &self.target {
            Target::Int { bits, sym } => Some(Grid::Int { bits: *bits, sym: *sym }),
            Target::Ggml(types) => {
                let ty = *types.get(name).ok_or_else(|| Error::tensor(name, "has no planned type"))?;
                if ggml_grid_supported(ty) {
                    Some(Grid::Ggml(ty))
                } else {
                    None
                }
            }
        })
    }
}

impl LayerQuantizer for GptqMethod {
    fn observe(&mut self, layer: usize, names: &[&str], x: &[f32], n: usize) -> Result<()> {
        let cols = x.len().checked_div(n).unwrap_or(0);
        if !self.hessians.contains_key(names[0]) {
            let h = self.new_hessian(cols)?;
            self.hessians.insert(names[0].to_string(), (names.iter().map(|s| s.to_string()).collect(), h));
        }
        *self.tokens.entry(names[0].to_string()).or_default() += n;
        let Some((_, h)) = self.hessians.get_mut(names[0]) else {
            return Err(Error::InvalidModel(format!("layer {layer}: no Hessian for {}", names[0])));
        };
        match h {
            Hess::Cpu(h) => h.add(x, n),
            #[cfg(feature = "cuda")]
            Hess::Cuda(h) => h.add(x, n)?,
        }
        Ok(())
    }

    fn wants_reference_inputs(&self) -> bool {
        self.asymmetric.is_some()
    }

    fn observe_with_reference(
        &mut self,
        layer: usize,
        names: &[&str],
        x: &[f32],
        x_ref: &[f32],
        n: usize,
    ) -> Result<()> {
        self.observe(layer, names, x, n)?;
        let cols = x.len().checked_div(n).unwrap_or(0);
        self.drifts.entry(names[0].to_string()).or_insert_with(|| InputDrift::new(cols)).add(x, x_ref, n)
    }

    fn quantize(
        &mut self,
        model: &LlamaModel<'_>,
        layer: usize,
        names: &[String],
        _inputs: &States,
    ) -> Result<Vec<(String, Vec<f32>)>> {
        // Decoded one at a time as the solver reaches them: a 7B layer's seven matrices are
        // 800 MB in f32.
        let weights = names.iter().map(|name| {
            let m = model.weight(name).ok_or_else(|| Error::tensor(name, "is not a linear of the model"))?;
            Ok(Linear { name: name.clone(), rows: m.rows, cols: m.cols, w: m.to_f32(), input_scales: None })
        });
        self.quantize_linears(layer, weights)
    }

    fn save_layer(&self, layer: usize, rec: &mut LayerRecord) -> Result<()> {
        record::save_gptq(self, layer, rec);
        Ok(())
    }

    fn load_layer(&mut self, _layer: usize, rec: &LayerRecord) -> Result<()> {
        record::load_gptq(self, rec)
    }

    fn release_layer(&mut self, layer: usize) {
        let prefix = format!("blk.{layer}.");
        self.results.retain(|name, solved| {
            let keep = !name.starts_with(&prefix);
            if !keep {
                self.zero_point_zero |= matches!(solved, Solved::Int(q) if q.zeros.contains(&0));
            }
            keep
        });
    }
}

/// One matrix for [`GptqMethod::quantize_linears`].
pub struct Linear {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    /// rows × cols.
    pub w: Vec<f32>,
    /// Scales `s` the observed inputs were divided by before they reach `w` (AWQ's folded
    /// scales, with `w`'s columns multiplied by them): the Hessian solved against is then
    /// `S⁻¹ H S⁻¹`, `S = diag(s)`, the Hessian of the scaled inputs.
    pub input_scales: Option<Vec<f32>>,
}

impl GptqMethod {
    /// Quantize the given matrices of `layer` against the Hessians observed for their names,
    /// taking each from `linears` only when its turn comes. Returns each one's
    /// quantized-then-dequantized values.
    pub fn quantize_linears(
        &mut self,
        layer: usize,
        linears: impl IntoIterator<Item = Result<Linear>>,
    ) -> Result<Vec<(String, Vec<f32>)>> {
        let mut done: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for linear in linears {
            // A Hessian is done once every linear sharing it is quantized: free it then.
            self.hessians.retain(|_, (group, _)| !group.iter().all(|g| done.contains(g)));
            self.tokens.retain(|k, _| self.hessians.contains_key(k));
            self.drifts.retain(|k, _| self.hessians.contains_key(k));
            let Linear { name, rows, cols, w, input_scales } = linear?;
            done.push(name.clone());
            let name = &name;
            let Some(grid) = self.grid_for(name)? else {
                // A GGML type GPTQ has no grid for (e.g. Q2_K, Q3_K, F16): llama.cpp's
                // reference quantizer, and the next layers calibrate on its result.
                let ty = match &self.target {
                    Target::Ggml(types) => types.get(name).copied(),
                    Target::Int { .. } => None,
                }
                .ok_or_else(|| Error::tensor(name, "has no grid"))?;
                let bytes = quant::encode(ty, &w).map_err(|e| Error::tensor(name, e.to_string()))?;
                let deq = quant::decode(ty, &bytes, w.len()).map_err(|e| Error::tensor(name, e.to_string()))?;
                if !ty.is_float() {
                    self.notes.push(format!("{name}: GPTQ has no {ty} grid; used round-to-nearest"));
                }
                self.results.insert(name.clone(), Solved::Ggml { ty, rows, bytes });
                out.push((name.clone(), deq));
                continue;
            };
            let key = self.hessians.iter().find(|(_, (group, _))| group.contains(name)).map(|(k, _)| k.clone());
            let drift = key.as_ref().and_then(|k| self.drifts.get(k));
            // The drift is only needed for the targets: freed after its group's last one.
            let drift_done = key.clone().filter(|k| self.hessians[k].0.iter().all(|g| done.contains(g)));
            let seen = key.as_ref().and_then(|k| self.tokens.get(k)).copied().unwrap_or(0);
            let mut rounded_anyway = false;
            let identity;
            let h = match key {
                Some(k) if seen >= MIN_EXPERT_TOKENS || names::split_expert_part(name).is_none() => {
                    &self.hessians[&k].1
                }
                None if names::split_expert_part(name).is_none() => {
                    return Err(Error::tensor(name, "no calibration activations reached it"));
                }
                _ => {
                    self.notes.push(format!(
                        "{name}: {seen} calibration tokens were routed to this expert (fewer than \
                         {MIN_EXPERT_TOKENS}); rounded to nearest on the same grid"
                    ));
                    let mut eye = vec![0f64; cols * cols];
                    eye.iter_mut().step_by(cols + 1).for_each(|d| *d = 1.0);
                    identity = Hess::Cpu(Hessian::from_dense(eye, cols));
                    rounded_anyway = true;
                    &identity
                }
            };
            let scaled;
            let h = match &input_scales {
                Some(s) if !rounded_anyway => {
                    scaled = Hess::Cpu(scaled_hessian(h, s)?);
                    &scaled
                }
                _ => h,
            };
            // The weights GPTQ fits: the original ones, or (asymmetric calibration) those that
            // best reproduce the unquantized model's outputs from the quantized model's inputs.
            let rhs = match (drift, h, self.asymmetric) {
                (Some(d), Hess::Cpu(_), Some(alpha)) if !rounded_anyway => {
                    if d.has_nonfinite() {
                        return Err(Error::InvalidModel(format!(
                            "layer {layer}: the input drift of {name} holds NaN or Inf"
                        )));
                    }
                    // Folded AWQ scales: the drift of the scaled inputs, as for the Hessian.
                    let scaled_drift;
                    let d = match &input_scales {
                        Some(s) => {
                            scaled_drift = d.scaled(s)?;
                            &scaled_drift
                        }
                        None => d,
                    };
                    asymmetric::drift_product(&w, rows, cols, d, alpha)
                        .map_err(|e| Error::InvalidModel(format!("layer {layer}, {name}: {e}")))?
                }
                (Some(_), _, _) if !rounded_anyway => {
                    return Err(Error::Unsupported(format!("{name}: asymmetric calibration needs a CPU Hessian")))
                }
                _ => None,
            };
            if let Some(k) = drift_done {
                self.drifts.remove(&k);
            }
            let target: std::borrow::Cow<[f32]> = match (rhs, h) {
                (Some(rhs), Hess::Cpu(hc)) => asymmetric::target_weights(&w, rows, cols, hc, rhs, self.options.damp)
                    .map_err(|e| Error::InvalidModel(format!("layer {layer}, {name}: {e}")))?
                    .into(),
                _ => (&w[..]).into(),
            };
            let r = self
                .solve(&target, rows, cols, h, &grid)
                .map_err(|e| Error::InvalidModel(format!("layer {layer}, {name}: {e}")))?
                .ok_or_else(|| Error::InvalidModel(format!("layer {layer}: the Hessian of {name} holds NaN or Inf")))?;
            if r.damp_retries > 0 {
                self.notes.push(format!(
                    "{name}: Hessian not positive definite; succeeded with damping {:.3} after {} retries",
                    r.damp_used, r.damp_retries
                ));
            }
            if r.dead_columns > 0 {
                self.notes.push(format!("{name}: {} input columns never active in calibration", r.dead_columns));
            }
            self.losses.push((name.clone(), r.loss));
            let mut solved = match (&grid, r.int, r.ggml) {
                (Grid::Int { .. }, Some(int), _) => Solved::Int(int),
                (Grid::Ggml(ty), _, Some(bytes)) => Solved::Ggml { ty: *ty, rows, bytes },
                _ => return Err(Error::tensor(name, "the GPTQ solver returned no codes")),
            };
            let mut values = r.dequantized;
            // With desc_act on an integer grid (no static groups) the groups follow the
            // Hessian's order, which rounding in column order cannot share (g_idx).
            let permuted = matches!(grid, Grid::Int { .. })
                && self.options.order == ColumnOrder::Activation
                && !self.options.static_groups;
            if self.guard && !rounded_anyway && !permuted {
                let h = match h {
                    Hess::Cpu(h) => h.to_dense(),
                    #[cfg(feature = "cuda")]
                    Hess::Cuda(h) => h.to_host()?.to_dense(),
                };
                let (rtn_values, rtn) = self.round_to_nearest(name, &w, rows, cols, &grid)?;
                // Both measured against the weights GPTQ fitted; rounding is of the original ones.
                let (e_gptq, e_rtn) = (
                    output_error(&target, &values, rows, cols, &h),
                    output_error(&target, &rtn_values, rows, cols, &h),
                );
                let kept_rtn = e_rtn < e_gptq;
                self.guarded.push(Guarded { name: name.clone(), gptq: e_gptq, rtn: e_rtn, kept_rtn });
                if kept_rtn {
                    (values, solved) = (rtn_values, rtn);
                }
            }
            self.results.insert(name.clone(), solved);
            out.push((name.clone(), values));
        }
        self.hessians.retain(|_, (group, _)| !group.iter().all(|g| done.contains(g)));
        self.tokens.retain(|k, _| self.hessians.contains_key(k));
        self.drifts.retain(|k, _| self.hessians.contains_key(k));
        Ok(out)
    }
}

impl GptqMethod {
    /// Round-to-nearest on `grid`: integer min-max groups, or llama.cpp's quantizer for a
    /// GGML type (what `--method rtn` writes). Its dequantized values and codes.
    fn round_to_nearest(
        &self,
        name: &str,
        w: &[f32],
        rows: usize,
        cols: usize,
        grid: &Grid,
    ) -> Result<(Vec<f32>, Solved)> {
        Ok(match *grid {
            Grid::Int { bits, sym } => {
                let (q, values) = gptq::round_to_nearest(w, rows, cols, bits, sym, self.options.group_size)?;
                (values, Solved::Int(q))
            }
            Grid::Ggml(ty) => {
                let bytes = quant::encode(ty, w).map_err(|e| Error::tensor(name, e.to_string()))?;
                let values = quant::decode(ty, &bytes, w.len()).map_err(|e| Error::tensor(name, e.to_string()))?;
                (values, Solved::Ggml { ty, rows, bytes })
            }
        })
    }
}

/// `S⁻¹ H S⁻¹` (`S = diag(s)`): the Hessian of inputs whose columns were divided by `s`.
fn scaled_hessian(h: &Hess, s: &[f32]) -> Result<Hessian> {
    let mut dense = match h {
        Hess::Cpu(h) => h.to_dense(),
        #[cfg(feature = "cuda")]
        Hess::Cuda(h) => h.to_host()?.to_dense(),
    };
    let n = s.len();
    if dense.len() != n * n {
        return Err(Error::InvalidArgument(format!("{n} input scales for a Hessian of {} entries", dense.len())));
    }
    asymmetric::unscale_both_sides(&mut dense, s);
    Ok(Hessian::from_dense(dense, n))
}

/// tr(ΔHΔᵀ) with Δ = w − q (rows × cols) and H dense (cols × cols, symmetric): the
/// calibration inputs' squared output error of using q for w (H's scale aside). Rows in
/// slices, to bound the f64 copies.
fn output_error(w: &[f32], q: &[f32], rows: usize, cols: usize, h: &[f64]) -> f64 {
    const ROWS: usize = 256;
    let hm = MatRef::from_row_major_slice(h, cols, cols);
    let mut total = 0.0;
    for r0 in (0..rows).step_by(ROWS) {
        let n = ROWS.min(rows - r0);
        let span = r0 * cols..(r0 + n) * cols;
        let d: Vec<f64> = w[span.clone()].iter().zip(&q[span]).map(|(a, b)| (a - b) as f64).collect();
        let mut dh = vec![0f64; n * cols];
        let dm = MatRef::from_row_major_slice(&d, n, cols);
        matmul(MatMut::from_row_major_slice_mut(&mut dh, n, cols), Accum::Replace, dm, hm, 1.0, Par::rayon(0));
        total += d.iter().zip(&dh).map(|(a, b)| a * b).sum::<f64>();
    }
    total
}

/// GGML types GPTQ has a block grid for (`quant::gptq::Grid::Ggml`).
pub fn ggml_grid_supported(ty: GgmlType) -> bool {
    gptq::ggml_types().any(|t| t == ty)
}
