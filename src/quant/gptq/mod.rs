//! GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
//! Pre-trained Transformers"): quantize a linear layer's weights column by column, each time
//! spreading the rounding error over the columns not yet quantized so that the layer's output
//! on the calibration activations changes as little as possible.
//!
//! This module is the solver only: it takes the weights `W` (rows × cols, one output feature
//! per row) and the layer input's Hessian `H = 2/N · Σ xᵀx` ([`Hessian`]), and returns the
//! quantized weights. Collecting activations, naming layers and writing files live elsewhere.
//!
//! The sweep follows the reference implementation (IST-DASLab `gptq.py`, `fasterquant`, also
//! what AutoGPTQ and GPTQModel run):
//! 1. Dead columns (`H[i,i] = 0`, an input that was always zero) get `H[i,i] = 1` and `W[:,i] = 0`.
//! 2. The columns are visited in the [`ColumnOrder`]: as they are, by descending `diag(H)`
//!    (`desc_act`, ties in column order), or group by group (see [`ColumnOrder::GroupAware`]).
//! 3. `damp · mean(diag H)` is added to the diagonal and `U`, the upper Cholesky factor of
//!    `H⁻¹`, is computed in f64 (if `H` is still not positive definite the damping is retried
//!    ×10, up to [`MAX_DAMP_RETRIES`] times; the result says how many retries it took).
//! 4. Columns are swept in blocks of `block_size`: column `i` is quantized on its current
//!    (error-updated) values, `err = (w − q)/U[i,i]` is subtracted from the rest of the block
//!    with row `i` of `U` at once, and the whole block's errors from the columns after the block
//!    with one GEMM (the "lazy batch" update). Rows are independent given `H`; row chunks run
//!    in parallel.
//!
//! Two kinds of quantization grid ([`Grid`]):
//! - [`Grid::Int`]: the integer min-max grid of `quant.py` (per row, or per group of columns):
//!   for hf-gptq style checkpoints. The sweep runs in f64 like the reference; the output
//!   scales are rounded to f32 and the dequantized result is exactly `scale · (code − zero)`
//!   computed in f32.
//! - [`Grid::Ggml`]: the grid *is* a GGML block type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
//!   Q6_K, IQ4_NL). When the sweep first reaches a column of a block (32 weights, or a 256-weight
//!   K-quant super-block, along a row), that block's parameters (scale, min, sub-block scales)
//!   are chosen by qforge's reference quantizer for the type on the block's current values;
//!   each weight is then rounded, when the sweep reaches it, to the nearest value its
//!   (sub-)block can represent. The encoded blocks decode (`crate::quant::decode`) to exactly
//!   [`GptqResult::dequantized`].
//!
//! Differences from the reference, all deliberate:
//! - Group parameters found inside a sweep block (a group size smaller than, or not aligned
//!   with, the block size) are computed on the fully updated weights of the group. The
//!   reference reads them from its not-yet-updated copy of the weights there; with group
//!   size 128 and block size 128 (the usual setting) both are the same thing.
//! - The activation-order sorts are stable (ties keep column order); torch's `argsort` is not.
//! - `H⁻¹`'s upper Cholesky factor is computed as the reversed inverse of the lower Cholesky
//!   factor of the reversed `H` (one factorization and one triangular inverse instead of a
//!   factorization, an inverse and a second factorization); mathematically the same matrix.

pub mod asymmetric;
#[cfg(feature = "cuda")]
pub mod cuda;
// The CUDA backend's algorithm emulated on the CPU (tests only; runs without the feature).
#[cfg(test)]
#[path = "cuda/emulate.rs"]
mod cuda_emulate;
// The CUDA backend's host sequence, generic over the device (the GPU or its emulation).
#[cfg(any(feature = "cuda", test))]
#[path = "cuda/device.rs"]
mod cuda_device;
#[cfg(any(feature = "cuda", test))]
#[path = "cuda/host.rs"]
mod cuda_host;
mod ggml_grid;
mod gram;
mod grid;
mod hessian;
mod solver;

pub use grid::round_to_nearest;
pub use hessian::Hessian;

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;

/// How many times the damping is multiplied by 10 and the factorization retried before
/// [`quantize`] gives up on a Hessian that is not positive definite.
pub const MAX_DAMP_RETRIES: u32 = 3;

/// The GPU self-test's problems and its emulation's tests: xorshift64, uniform in [-0.5, 0.5).
#[cfg(any(test, feature = "cuda"))]
pub(crate) struct XorShift(pub u64);

#[cfg(any(test, feature = "cuda"))]
impl XorShift {
    pub(crate) fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }
}

/// The damping fractions every factorization (CPU, CUDA, its emulation) tries in turn, with
/// the retry number: `damp`, then ×10 (0.01 after 0), [`MAX_DAMP_RETRIES`] more times.
pub(crate) fn damp_schedule(damp: f64) -> impl Iterator<Item = (u32, f64)> {
    let fracs = std::iter::successors(Some(damp), |&f| Some(if f > 0.0 { f * 10.0 } else { 0.01 }));
    (0..=MAX_DAMP_RETRIES).zip(fracs)
}

/// GPTQ refuses NaN/Inf weights (row-major, `cols` per row), naming the first one.
pub(crate) fn check_weights_finite(w: &[f32], cols: usize) -> Result<()> {
    match crate::quant::find_nonfinite(w) {
        Some(i) => Err(Error::InvalidArgument(format!(
            "GPTQ: weight [{}, {}] is not finite ({})",
            i / cols.max(1),
            i % cols.max(1),
            w[i]
        ))),
        None => Ok(()),
    }
}

/// The GGML types [`Grid::Ggml`] supports: those whose codec has a per-weight grid
/// (`quant::CODECS`).
pub fn ggml_types() -> impl Iterator<Item = GgmlType> {
    crate::quant::CODECS.iter().filter(|c| c.gptq.is_some()).map(|c| c.ty)
}

/// The order in which the sweep visits the columns. Columns visited early have their rounding
/// error spread over many later ones; visiting the columns with the largest inputs first
/// ("act-order") therefore lowers the output error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ColumnOrder {
    /// Column order (the reference's default).
    #[default]
    Natural,
    /// Descending `diag(H)` over all columns (`desc_act`). Groups are then formed in sweep
    /// order, so an integer grid's `g_idx` is not monotone and kernels must gather its
    /// scales column by column.
    Activation,
    /// Group-aware reordering (GAR, Gafni et al. 2025; GPTQModel's `act_group_aware`): the
    /// groups (an integer grid's groups, or a GGML type's blocks) are visited by descending
    /// largest `diag(H)` among their columns, and the columns inside each group by descending
    /// `diag(H)`. Every group is swept contiguously, so its parameters are found once all of
    /// its columns carry the errors of the groups before it, and `g_idx` stays the monotone
    /// `column / group_size` that the fast kernels assume.
    GroupAware,
}

/// Solver settings. `Default` is the reference's `fasterquant` defaults: block 128, damp 0.01,
/// natural order, no static groups, one group per row.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqOptions {
    /// Columns per lazy-batch block (128). Changes speed, not the result (up to rounding),
    /// except where group parameters are found (see the module doc).
    pub block_size: usize,
    /// Damping as a fraction of `mean(diag H)` (0.01).
    pub damp: f64,
    /// The order the sweep visits the columns in.
    pub order: ColumnOrder,
    /// Find every group's parameters up front from the original weights (groups in original
    /// column order) instead of when the sweep reaches them (meant for
    /// [`ColumnOrder::Activation`]). With [`Grid::Ggml`] the blocks
    /// are the groups and this fixes every block's parameters up front the same way.
    pub static_groups: bool,
    /// Columns per group for [`Grid::Int`] (`None`: one group per row, the reference's −1).
    /// Ignored by [`Grid::Ggml`], whose groups are its blocks.
    pub group_size: Option<usize>,
    /// Choose each group's or block's parameters by an error weighted with the Hessian's
    /// diagonal (the mean squared input of each column, what an imatrix holds):
    /// [`Grid::Ggml`] fixes each block's header (scale, min, sub-block scales) with llama.cpp's
    /// importance-weighted quantizer instead of the plain one; [`Grid::Int`] searches each
    /// group's range (`quant.py`'s `mse` grid, see `grid::search_params`) instead of taking
    /// its min-max.
    pub weighted_scales: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions {
            block_size: 128,
            damp: 0.01,
            order: ColumnOrder::Natural,
            static_groups: false,
            group_size: None,
            weighted_scales: false,
        }
    }
}

/// The quantization grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grid {
    /// Integer codes in `[0, 2^bits − 1]` with a scale and an integer zero point per group:
    /// `x ≈ scale · (code − zero)`. `sym` fixes the zero point at `2^(bits−1)` (and makes the
    /// range symmetric around zero), as `quant.py` does. Bits: 2, 3, 4 or 8.
    Int { bits: u8, sym: bool },
    /// A GGML block type (one of [`ggml_types`]).
    Ggml(GgmlType),
}

/// The integer grid's output, in the reference's terms (hf-gptq / AutoGPTQ layout before
/// packing).
#[derive(Clone, Debug, PartialEq)]
pub struct IntQuant {
    pub bits: u8,
    /// Columns per group (`cols` when there is one group per row).
    pub group_size: usize,
    /// rows × cols codes in `[0, 2^bits − 1]`, in the ORIGINAL column order.
    pub codes: Vec<u8>,
    /// rows × n_groups scales (`n_groups = cols / group_size`), f32.
    pub scales: Vec<f32>,
    /// rows × n_groups integer zero points, the true ones (AutoGPTQ's packing stores
    /// `zero − 1` for its old kernels: the writer's business).
    pub zeros: Vec<u8>,
    /// For each original column, the group whose scale and zero it uses: `col / group_size`,
    /// or with [`ColumnOrder::Activation`] (without static groups) `i / group_size` for the
    /// column visited `i`-th.
    pub g_idx: Vec<u32>,
}

impl IntQuant {
    /// Groups per row (`cols / group_size`).
    pub fn n_groups(&self) -> usize {
        self.g_idx.len() / self.group_size
    }

    /// Renumber the groups so that `g_idx[c] = c / group_size`, moving each row's scales and
    /// zeros along. Only valid where every sweep group is one column group (the sweep of
    /// [`ColumnOrder::GroupAware`] numbers them in visiting order).
    pub(crate) fn number_groups_by_column(&mut self) {
        let (gs, ng) = (self.group_size, self.n_groups());
        // new_of[g]: the column group that sweep group g is.
        let mut new_of = vec![0usize; ng];
        for (c, &g) in self.g_idx.iter().enumerate() {
            new_of[g as usize] = c / gs;
        }
        for (scales, zeros) in self.scales.chunks_exact_mut(ng).zip(self.zeros.chunks_exact_mut(ng)) {
            let (s, z) = (scales.to_vec(), zeros.to_vec());
            for g in 0..ng {
                scales[new_of[g]] = s[g];
                zeros[new_of[g]] = z[g];
            }
        }
        for (c, g) in self.g_idx.iter_mut().enumerate() {
            *g = (c / gs) as u32;
        }
    }
}

/// What [`quantize`] returns.
#[derive(Clone, Debug)]
pub struct GptqResult {
    /// rows × cols quantized weights (dequantized to f32), original column order.
    pub dequantized: Vec<f32>,
    /// Codes, scales, zeros and g_idx for [`Grid::Int`].
    pub int: Option<IntQuant>,
    /// The rows encoded as the GGML type, for [`Grid::Ggml`] (rows × cols/block_size blocks).
    pub ggml: Option<Vec<u8>>,
    /// The damping actually used, as a fraction of `mean(diag H)` (`opts.damp · 10^retries`).
    pub damp_used: f64,
    /// How many times the damping had to be increased (0 normally).
    pub damp_retries: u32,
    /// The reference's `Losses` total: Σ (w − q)² / U[i,i]² / 2 over all weights, w the
    /// error-updated weight when it was quantized. For logging and comparisons.
    pub loss: f64,
    /// Columns whose `H[i,i]` was 0 (weights set to 0 before quantizing).
    pub dead_columns: usize,
    /// Wall time of the damped factorization (`U`), and of the column sweep, in seconds.
    pub factor_seconds: f64,
    pub sweep_seconds: f64,
}

/// How closely an integer-grid result matches a reference quantization of the same matrix
/// (the golden layers' float64 GPTQ), measured in quantization steps (a weight's group scale).
#[derive(Clone, Copy, Debug)]
pub struct Agreement {
    /// Weights within 1e-5 of a step of the reference, of `total`.
    pub identical: usize,
    pub total: usize,
    /// The largest difference, in steps and absolute.
    pub worst_steps: f64,
    pub max_abs: f32,
}

impl Agreement {
    pub fn fraction(&self) -> f64 {
        self.identical as f64 / self.total.max(1) as f64
    }
}

impl GptqResult {
    /// The agreement of the dequantized weights with `reference` (same shape); `None` for a
    /// GGML-grid result (no integer scales to measure steps by).
    pub fn agreement_with(&self, reference: &[f32]) -> Option<Agreement> {
        let int = self.int.as_ref()?;
        let (cols, ng) = (int.g_idx.len(), int.n_groups());
        let mut a = Agreement { identical: 0, total: self.dequantized.len(), worst_steps: 0.0, max_abs: 0.0 };
        for (i, (&q, &r)) in self.dequantized.iter().zip(reference).enumerate() {
            let scale = int.scales[(i / cols) * ng + int.g_idx[i % cols] as usize];
            let d = (q - r).abs();
            if d < 1e-5 * scale {
                a.identical += 1;
            }
            a.worst_steps = a.worst_steps.max(d as f64 / scale as f64);
            a.max_abs = a.max_abs.max(d);
        }
        Some(a)
    }
}

/// Quantize `w` (rows × cols, row-major, one output feature per row) with GPTQ against the
/// Hessian `h` of the layer's inputs (`h.n() == cols`). See the module doc.
///
/// Errors: inconsistent shapes, a Hessian that has seen no activations, a group size that does not divide `cols`, a GGML block size
/// that does not divide `cols`, unsupported bits or GGML types, non-finite weights or Hessian,
/// and a Hessian that is not positive definite even after [`MAX_DAMP_RETRIES`] ×10 retries of
/// the damping.
pub fn quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &Hessian,
    grid: &Grid,
    opts: &GptqOptions,
) -> Result<GptqResult> {
    check_args(w, rows, cols, h.n(), grid, opts)?;
    check_weights_finite(w, cols)?;
    check_hessian(h.is_empty(), || Ok(h.has_nonfinite()))?;
    let t0 = std::time::Instant::now();
    let perm = solver::sweep_order(&h.diagonal(), opts.order, order_group(grid, opts, cols));
    let f = solver::factor(h, &perm, opts.damp)?;
    let t1 = std::time::Instant::now();
    let (dequantized, int, ggml, loss) = match *grid {
        Grid::Int { bits, sym } => {
            let gs = opts.group_size.unwrap_or(cols);
            let importance =
                opts.weighted_scales.then(|| importance(&h.diagonal()).iter().map(|&v| v as f64).collect());
            let g = grid::IntGrid::new(
                bits,
                sym,
                gs,
                opts.group_size.is_none(),
                opts.static_groups,
                &f.perm,
                cols,
                importance,
            );
            let (deq, states, loss) = solver::sweep(w, rows, cols, &f, opts.block_size, &g);
            let mut q = g.finish(states);
            if opts.order == ColumnOrder::GroupAware {
                q.number_groups_by_column();
            }
            (deq, Some(q), None, loss)
        }
        Grid::Ggml(t) => {
            let importance = opts.weighted_scales.then(|| importance(&h.diagonal()));
            let g = ggml_grid::GgmlGrid::new(t, opts.static_groups, &f.perm, cols, importance)?;
            let (deq, states, loss) = solver::sweep(w, rows, cols, &f, opts.block_size, &g);
            (deq, None, Some(g.finish(states)), loss)
        }
    };
    Ok(GptqResult {
        dequantized,
        int,
        ggml,
        damp_used: f.damp_used,
        damp_retries: f.retries,
        loss,
        dead_columns: f.dead_columns,
        factor_seconds: (t1 - t0).as_secs_f64(),
        sweep_seconds: t1.elapsed().as_secs_f64(),
    })
}

/// Importance weights from the Hessian's diagonal, floored at 1e-6 of its mean so that a
/// group or block of dead columns (diagonal 0) still gets a scale.
pub(crate) fn importance(diag: &[f64]) -> Vec<f32> {
    let mean = diag.iter().sum::<f64>() / diag.len().max(1) as f64;
    diag.iter().map(|&d| d.max(mean * 1e-6).max(f64::MIN_POSITIVE) as f32).collect()
}

/// The columns [`ColumnOrder::GroupAware`] keeps together: the integer grid's groups (the
/// whole row without groups, which makes it [`ColumnOrder::Activation`]), a GGML type's blocks.
pub fn order_group(grid: &Grid, opts: &GptqOptions, cols: usize) -> usize {
    match *grid {
        Grid::Int { .. } => opts.group_size.unwrap_or(cols),
        Grid::Ggml(t) => t.block_size(),
    }
}

/// `h_n`: the Hessian's size (the CUDA backend's Hessians are not [`Hessian`]s).
/// The Hessian's own checks (every backend's): it has seen activations, and (asked only then)
/// its entries are finite.
pub(crate) fn check_hessian(empty: bool, nonfinite: impl FnOnce() -> Result<bool>) -> Result<()> {
    if empty {
        return Err(Error::InvalidArgument(
            "GPTQ: the Hessian has seen no activations (no calibration rows were added)".into(),
        ));
    }
    if nonfinite()? {
        return Err(Error::InvalidArgument(
            "GPTQ: the Hessian has non-finite entries (NaN or infinite calibration activations?)".into(),
        ));
    }
    Ok(())
}

fn check_args(w: &[f32], rows: usize, cols: usize, h_n: usize, grid: &Grid, opts: &GptqOptions) -> Result<()> {
    let bad = |msg: String| Err(Error::InvalidArgument(format!("GPTQ: {msg}")));
    if rows == 0 || cols == 0 {
        return bad(format!("empty weight matrix ({rows} × {cols})"));
    }
    if rows.checked_mul(cols) != Some(w.len()) {
        return bad(format!("{} weights given for a {rows} × {cols} matrix", w.len()));
    }
    if h_n != cols {
        return bad(format!("the Hessian is {h_n} × {h_n} but the weights have {cols} columns"));
    }
    if opts.block_size == 0 {
        return bad("block size 0".into());
    }
    if !(opts.damp.is_finite() && opts.damp >= 0.0) {
        return bad(format!("damping {} is not a non-negative number", opts.damp));
    }
    match *grid {
        Grid::Int { bits, .. } => {
            if !matches!(bits, 2 | 3 | 4 | 8) {
                return Err(Error::Unsupported(format!(
                    "GPTQ: {bits}-bit integer grids are not supported (2, 3, 4, 8)"
                )));
            }
            if let Some(g) = opts.group_size {
                if g == 0 || !cols.is_multiple_of(g) {
                    return bad(format!("group size {g} does not divide the {cols} columns"));
                }
            }
        }
        Grid::Ggml(t) => {
            if !ggml_types().any(|g| g == t) {
                let names: Vec<&str> = ggml_types().map(|t| t.name()).collect();
                return Err(Error::Unsupported(format!(
                    "GPTQ with a {t} grid is not supported (supported: {})",
                    names.join(", ")
                )));
            }
            if !cols.is_multiple_of(t.block_size()) {
                return bad(format!("{t} blocks of {} weights do not divide the {cols} columns", t.block_size()));
            }
        }
    }
    Ok(())
}
