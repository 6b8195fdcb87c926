//! The integer min-max grid of the reference's `quant.py` (`Quantizer`, per channel, no MSE
//! search): per row and group, `scale = (xmax − xmin)/maxq` over the range widened to include
//! 0, `zero = round(−xmin/scale)` (symmetric: `(maxq + 1)/2`), and
//! `q = clamp(round(x/scale) + zero, 0, maxq)`, `x ≈ scale·(q − zero)`. Rounding is torch's:
//! half to even. Everything is computed in f64, as the reference does on the golden data
//! (weights whose value is exactly halfway between two levels are common with bf16 weights,
//! and an f32-rounded scale would round them the other way). The output holds the scales
//! rounded to f32 and `scale_f32 · (q − zero)` computed in f32 as the dequantized weights, so
//! the two agree exactly; the sweep propagates the f64 rounding error.

use super::solver::ColumnGrid;
use super::IntQuant;

/// Where a group's parameters come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One group per row, from the original weights (before dead columns are zeroed), as the
    /// reference finds them before anything else.
    PerRow,
    /// Groups of original columns, from the original weights with dead columns zeroed.
    Static,
    /// Groups of sweep positions, found on the current weights when the sweep reaches them.
    Dynamic,
}

pub(crate) struct IntGrid {
    bits: u8,
    maxq: u32,
    sym: bool,
    gs: usize,
    cols: usize,
    n_groups: usize,
    mode: Mode,
    perm: Vec<usize>,
    /// The group of each sweep position.
    group_of: Vec<u32>,
    /// 0..cols, to hand out contiguous position ranges as triggers.
    iota: Vec<usize>,
    /// Per original column, the importance of [`search_params`] (`None`: min-max ranges).
    importance: Option<Vec<f64>>,
}

pub(crate) struct IntState {
    rows: usize,
    codes: Vec<u8>,
    scales: Vec<f64>,
    zeros: Vec<u8>,
}

/// `Quantizer.find_params` on one row's group: (scale, zero).
pub(crate) fn find_params(x: impl Iterator<Item = f64>, maxq: u32, sym: bool) -> (f64, u8) {
    let (xmin, xmax) = min_max(x);
    params_for_range(xmin, xmax, maxq, sym)
}

/// The group's range widened to include 0, as `find_params` takes it.
fn min_max(x: impl Iterator<Item = f64>) -> (f64, f64) {
    x.fold((0f64, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// `find_params` after the min/max fold: (scale, zero) for the range `xmin..=xmax`.
fn params_for_range(mut xmin: f64, mut xmax: f64, maxq: u32, sym: bool) -> (f64, u8) {
    if sym {
        xmax = xmax.max(xmin.abs());
        if xmin < 0.0 {
            xmin = -xmax;
        }
    }
    if xmin == 0.0 && xmax == 0.0 {
        xmin = -1.0;
        xmax = 1.0;
    }
    let mut scale = (xmax - xmin) / maxq as f64;
    if !(scale as f32 > 0.0 && (scale as f32).is_finite()) {
        // A range too small (or too large) for an f32 scale: the nearest usable one.
        scale = if scale > 1.0 { f32::MAX as f64 } else { f32::MIN_POSITIVE as f64 };
    }
    let zero = if sym { maxq.div_ceil(2) } else { (-xmin / scale).round_ties_even().clamp(0.0, maxq as f64) as u32 };
    (scale, zero as u8)
}

/// How many shrunken ranges [`search_params`] tries: `p = 1 − i/100` for `i < 80`, the grid
/// of `quant.py`'s `mse` search (grid 100, maxshrink 0.8).
pub(crate) const RANGE_CANDIDATES: u32 = 80;

/// A group's (scale, zero) from a search over its min-max range shrunk by `p = 1 − i/100`
/// (`quant.py`'s `mse` option), keeping the candidate with the lowest importance-weighted
/// squared rounding error `Σ imp·(x − q)²`. The importance is the Hessian's diagonal, so the
/// error is the layer output's error from this group alone when its inputs are uncorrelated
/// (`quant.py` uses `|x − q|^2.4`, unweighted). `p = 1` (min-max) is the first candidate and
/// wins ties, so the search never does worse than min-max by its own measure. Shrinking
/// clips the largest weights of the group for finer steps on all the others, which pays
/// where the largest weights meet small inputs.
pub(crate) fn search_params(x: &[f64], imp: impl Fn(usize) -> f64, maxq: u32, sym: bool) -> (f64, u8) {
    const N: usize = RANGE_CANDIDATES as usize;
    let (xmin, xmax) = min_max(x.iter().copied());
    let candidates: [(f64, u8); N] = std::array::from_fn(|i| {
        let p = 1.0 - i as f64 / 100.0;
        params_for_range(p * xmin, p * xmax, maxq, sym)
    });
    let scales = candidates.map(|c| c.0);
    let zeros = candidates.map(|c| c.1 as f64);
    let imp: Vec<f64> = (0..x.len()).map(imp).collect();
    let errors = range_errors(x, &imp, &scales, &zeros, maxq as f64);
    let mut best = (f64::INFINITY, params_for_range(xmin, xmax, maxq, sym));
    for (&err, &c) in errors.iter().zip(&candidates) {
        if err < best.0 {
            best = (err, c);
        }
    }
    best.1
}

crate::cpu::multiversion! {
    /// [`search_params`]'s error of every candidate (scale, zero): `Σ imp·(x − q)²` with
    /// [`quantize_one`]'s value of each `x`, summed in the order of `x` as one loop per
    /// candidate would. The candidates are the vector lanes (each lane's sum is its own, so
    /// the order is kept), and rounding is one instruction where the CPU has it: one
    /// candidate at a time, with the baseline build's library call for each rounding, this
    /// search was most of the solver's time on 128-column groups.
    fn range_errors(
        x: &[f64],
        imp: &[f64],
        scales: &[f64; RANGE_CANDIDATES as usize],
        zeros: &[f64; RANGE_CANDIDATES as usize],
        maxq: f64
    ) -> [f64; RANGE_CANDIDATES as usize] {
        let mut err = [0f64; RANGE_CANDIDATES as usize];
        for (&v, &w) in x.iter().zip(imp) {
            for ((e, &scale), &zero) in err.iter_mut().zip(scales).zip(zeros) {
                // quantize_one: the code is an integer in 0..=maxq, so `q − zero` is exact.
                let q = ((v / scale).round_ties_even() + zero).clamp(0.0, maxq);
                let d = v - scale * (q - zero);
                *e += w * d * d;
            }
        }
        err
    }
}

/// A group's (scale, zero): searched with the importance of each original column where there
/// is one ([`search_params`]), else min-max ([`find_params`]). `column(k)` is the original
/// column of the `k`-th value.
pub(crate) fn group_params(
    vals: &[f64],
    importance: Option<&[f64]>,
    column: impl Fn(usize) -> usize,
    maxq: u32,
    sym: bool,
) -> (f64, u8) {
    match importance {
        Some(imp) => search_params(vals, |k| imp[column(k)], maxq, sym),
        None => find_params(vals.iter().copied(), maxq, sym),
    }
}

/// `quantize(x, scale, zero, maxq)`: the code, its value in f64 (the reference's), and its
/// value as the output holds it (`scale` rounded to f32, times `q − zero`, in f32).
#[inline(always)]
pub(crate) fn quantize_one(x: f64, scale: f64, zero: u8, maxq: u32) -> (u8, f64, f32) {
    let q = ((x / scale).round_ties_even() + zero as f64).clamp(0.0, maxq as f64) as u8;
    let k = q as i32 - zero as i32;
    (q, scale * k as f64, scale as f32 * k as f32)
}

/// Round-to-nearest on the integer grid (the baseline GPTQ is held to): per row and group of
/// original columns, min-max parameters from the weights themselves, no error feedback.
/// Returns the codes and the dequantized weights (as GPTQ's output holds them).
pub fn round_to_nearest(
    w: &[f32],
    rows: usize,
    cols: usize,
    bits: u8,
    sym: bool,
    group_size: Option<usize>,
) -> crate::error::Result<(IntQuant, Vec<f32>)> {
    let gs = group_size.unwrap_or(cols);
    if gs == 0 || !cols.is_multiple_of(gs) || w.len() != rows * cols || !matches!(bits, 2 | 3 | 4 | 8) {
        return Err(crate::error::Error::InvalidArgument(format!(
            "round to nearest: {rows} × {cols} weights, {bits} bits, groups of {gs}"
        )));
    }
    let maxq = (1u32 << bits) - 1;
    let n_groups = cols / gs;
    let mut q = IntQuant {
        bits,
        group_size: gs,
        codes: vec![0; rows * cols],
        scales: Vec::with_capacity(rows * n_groups),
        zeros: Vec::with_capacity(rows * n_groups),
        g_idx: (0..cols).map(|c| (c / gs) as u32).collect(),
    };
    let mut deq = vec![0f32; rows * cols];
    for (r, row) in w.chunks_exact(cols).enumerate() {
        for (g, group) in row.chunks_exact(gs).enumerate() {
            let (scale, zero) = find_params(group.iter().map(|&v| v as f64), maxq, sym);
            q.scales.push(scale as f32);
            q.zeros.push(zero);
            for (i, &v) in group.iter().enumerate() {
                let (code, _, value) = quantize_one(v as f64, scale, zero, maxq);
                q.codes[r * cols + g * gs + i] = code;
                deq[r * cols + g * gs + i] = value;
            }
        }
    }
    Ok((q, deq))
}

impl IntGrid {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        bits: u8,
        sym: bool,
        gs: usize,
        per_row: bool,
        static_groups: bool,
        perm: &[usize],
        cols: usize,
        importance: Option<Vec<f64>>,
    ) -> Self {
        let mode = if per_row {
            Mode::PerRow
        } else if static_groups {
            Mode::Static
        } else {
            Mode::Dynamic
        };
        let gs = if per_row { cols } else { gs };
        let group_of = (0..cols)
            .map(|p| match mode {
                Mode::PerRow => 0,
                Mode::Static => (perm[p] / gs) as u32,
                Mode::Dynamic => (p / gs) as u32,
            })
            .collect();
        IntGrid {
            bits,
            maxq: (1u32 << bits) - 1,
            sym,
            gs,
            cols,
            n_groups: cols / gs,
            mode,
            perm: perm.to_vec(),
            group_of,
            iota: (0..cols).collect(),
            importance,
        }
    }

    /// A group's parameters; `column(k)` is the original column of its `k`-th value.
    fn params(&self, vals: &[f64], column: impl Fn(usize) -> usize) -> (f64, u8) {
        group_params(vals, self.importance.as_deref(), column, self.maxq, self.sym)
    }

    /// Assemble the chunks' states (consecutive rows, in order).
    pub(crate) fn finish(&self, states: Vec<IntState>) -> IntQuant {
        let rows: usize = states.iter().map(|s| s.rows).sum();
        let mut q = IntQuant {
            bits: self.bits,
            group_size: self.gs,
            codes: Vec::with_capacity(rows * self.cols),
            scales: Vec::with_capacity(rows * self.n_groups),
            zeros: Vec::with_capacity(rows * self.n_groups),
            g_idx: vec![0; self.cols],
        };
        for s in states {
            q.codes.extend_from_slice(&s.codes);
            q.scales.extend(s.scales.iter().map(|&v| v as f32));
            q.zeros.extend_from_slice(&s.zeros);
        }
        for (p, &c) in self.perm.iter().enumerate() {
            q.g_idx[c] = self.group_of[p];
        }
        q
    }
}

impl ColumnGrid for IntGrid {
    type State = IntState;

    fn new_state(&self, w: &[f32], rows: usize, dead: &[bool]) -> IntState {
        let ng = self.n_groups;
        let mut st = IntState {
            rows,
            codes: vec![0; rows * self.cols],
            scales: vec![0.0; rows * ng],
            zeros: vec![0; rows * ng],
        };
        if self.mode == Mode::Dynamic {
            return st;
        }
        let mut vals = Vec::with_capacity(self.gs);
        for (r, row) in w.chunks_exact(self.cols).enumerate() {
            for g in 0..ng {
                let cols = g * self.gs..(g + 1) * self.gs;
                vals.clear();
                vals.extend(cols.map(|c| if self.mode == Mode::Static && dead[c] { 0.0 } else { row[c] as f64 }));
                let (s, z) = self.params(&vals, |k| g * self.gs + k);
                st.scales[r * ng + g] = s;
                st.zeros[r * ng + g] = z;
            }
        }
        st
    }

    fn trigger(&self, p: usize) -> &[usize] {
        if self.mode == Mode::Dynamic && p.is_multiple_of(self.gs) {
            &self.iota[p..p + self.gs]
        } else {
            &[]
        }
    }

    fn set_params(&self, st: &mut IntState, r: usize, p: usize, vals: &[f64]) {
        let (s, z) = self.params(vals, |k| self.perm[p + k]);
        let g = r * self.n_groups + p / self.gs;
        st.scales[g] = s;
        st.zeros[g] = z;
    }

    #[inline(always)]
    fn quantize(&self, st: &mut IntState, r: usize, p: usize, w: f64) -> (f64, f32) {
        let g = r * self.n_groups + self.group_of[p] as usize;
        let (q, v, out) = quantize_one(w, st.scales[g], st.zeros[g], self.maxq);
        st.codes[r * self.cols + self.perm[p]] = q;
        (v, out)
    }
}
