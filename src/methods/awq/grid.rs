//! The grids AWQ quantizes onto: AutoAWQ's asymmetric 4-bit groups (hf-awq output) or a GGML
//! block type (GGUF output), as quantize→dequantize for the searches and as final codes.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::quant;

/// Largest 4-bit code.
const MAX_Q: f32 = 15.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Grid {
    /// Asymmetric 4-bit, min-max per group of `group_size` input columns, f16 scales.
    Int4 { group_size: usize },
    /// A GGML storage type, quantized with qforge's reference codecs.
    Ggml(GgmlType),
}

/// Integer codes of one matrix on the [`Grid::Int4`] grid.
#[derive(Debug, Clone)]
pub struct IntCodes {
    pub rows: usize,
    pub cols: usize,
    pub group_size: usize,
    /// rows × cols, 0…15
    pub codes: Vec<u8>,
    /// rows × groups, already rounded to f16
    pub scales: Vec<f32>,
    /// rows × groups, 0…15
    pub zeros: Vec<u8>,
}

impl IntCodes {
    /// The same codes as the methods' neutral integer result (4 bits, groups in column order),
    /// which the checkpoint writers take.
    pub fn into_int_quant(self) -> crate::quant::gptq::IntQuant {
        let g_idx = (0..self.cols).map(|c| (c / self.group_size) as u32).collect();
        crate::quant::gptq::IntQuant {
            bits: 4,
            group_size: self.group_size,
            codes: self.codes,
            scales: self.scales,
            zeros: self.zeros,
            g_idx,
        }
    }

    pub fn dequantize(&self) -> Vec<f32> {
        let groups = self.cols / self.group_size;
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols).enumerate().for_each(|(r, o)| {
            for (c, v) in o.iter_mut().enumerate() {
                let g = r * groups + c / self.group_size;
                *v = self.scales[g] * (self.codes[r * self.cols + c] as f32 - self.zeros[g] as f32);
            }
        });
        out
    }
}

/// A scale as f16 stores it, kept positive and finite (a zero or infinite scale would turn
/// the whole group into NaN).
fn f16_scale(s: f32) -> f32 {
    let h = half::f16::from_f32(s).to_f32();
    if h.is_finite() && h > 0.0 {
        h
    } else if h > 0.0 {
        half::f16::MAX.to_f32()
    } else {
        half::f16::MIN_POSITIVE_SUBNORMAL.to_f32()
    }
}

/// AutoAWQ's zero-point quantization of each group: scale = (max − min)/15 (≥ 1e-5/15),
/// zero = −round(min/scale) clamped to 0…15, q = clamp(round(w/scale) + zero). Rounding is
/// half-to-even like torch.round; the scale is rounded to f16 first, since that is what the
/// checkpoint stores and the decoder multiplies by.
pub fn int4_quantize(w: &[f32], rows: usize, cols: usize, group_size: usize) -> Result<IntCodes> {
    if group_size == 0 || !cols.is_multiple_of(group_size) || w.len() != rows * cols {
        return Err(Error::InvalidArgument(format!("{rows}×{cols} weights do not split into groups of {group_size}")));
    }
    let groups = cols / group_size;
    let mut codes = vec![0u8; rows * cols];
    let mut scales = vec![0f32; rows * groups];
    let mut zeros = vec![0u8; rows * groups];
    codes
        .par_chunks_mut(cols)
        .zip(scales.par_chunks_mut(groups))
        .zip(zeros.par_chunks_mut(groups))
        .zip(w.par_chunks(cols))
        .for_each(|(((codes, scales), zeros), w)| {
            for g in 0..groups {
                let part = &w[g * group_size..(g + 1) * group_size];
                let (lo, hi) =
                    part.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                let s = f16_scale((hi - lo).max(1e-5) / MAX_Q);
                let z = (-(lo / s).round_ties_even()).clamp(0.0, MAX_Q);
                scales[g] = s;
                zeros[g] = z as u8;
                for (q, &v) in codes[g * group_size..(g + 1) * group_size].iter_mut().zip(part) {
                    *q = ((v / s).round_ties_even() + z).clamp(0.0, MAX_Q) as u8;
                }
            }
        });
    Ok(IntCodes { rows, cols, group_size, codes, scales, zeros })
}

impl Grid {
    /// Quantize then dequantize `w` (rows × cols).
    pub fn qdq(&self, w: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
        match *self {
            Grid::Int4 { group_size } => Ok(int4_quantize(w, rows, cols, group_size)?.dequantize()),
            Grid::Ggml(t) if t.is_float() && t != GgmlType::F16 && t != GgmlType::BF16 => Ok(w.to_vec()),
            Grid::Ggml(t) => quant::decode(t, &quant::encode(t, w)?, w.len()),
        }
    }

    /// Whether quantizing onto this grid loses anything worth searching for (F32/F16/BF16
    /// targets are left alone).
    pub fn is_lossy(&self) -> bool {
        !matches!(self, Grid::Ggml(t) if t.is_float())
    }

    /// Input columns per clipping group: the quantization group, or 32 for GGML types (the
    /// legacy types' block, and the K-quants' sub-block whose scale the clipping moves).
    pub fn clip_group(&self, cols: usize) -> usize {
        match *self {
            Grid::Int4 { group_size } => group_size,
            Grid::Ggml(_) => 32.min(cols),
        }
    }
}

/// y = x · wᵀ: `x` is n × k, `w` rows × k, the result n × rows (all row-major).
pub fn matmul_t(x: &[f32], n: usize, w: &[f32], rows: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; n * rows];
    matmul(
        MatMut::from_row_major_slice_mut(&mut y, n, rows),
        Accum::Replace,
        MatRef::from_row_major_slice(x, n, k),
        MatRef::from_row_major_slice(w, rows, k).transpose(),
        1.0f32,
        Par::rayon(0),
    );
    y
}

/// Mean squared difference (f64 accumulation).
pub fn mse(a: &[f32], b: &[f32]) -> f64 {
    let sum: f64 = a
        .par_chunks(4096)
        .zip(b.par_chunks(4096))
        .map(|(a, b)| a.iter().zip(b).map(|(&x, &y)| ((x - y) as f64).powi(2)).sum::<f64>())
        .sum();
    sum / a.len().max(1) as f64
}

/// Shrink steps of the clipping search: max |w| of a group × (1 − i/20), i = 0…9 (down to
/// 0.55 of the original range, as AutoAWQ's n_grid 20 / max_shrink 0.5).
const CLIP_GRID: usize = 20;
const CLIP_STEPS: usize = 10;

/// AutoAWQ's clipping search: for every (output row, group), the clamp ±max·ratio of the
/// weights that minimises the error of the group's contribution to the output,
/// E[(x_g · (Q(clamp(w_g)) − w_g))²] over the sample tokens `x` (t × cols). The expectation is
/// computed as Δ H_g Δᵀ with H_g = x_gᵀx_g / t, which costs gs² per (row, group) and step
/// instead of t·gs, so every sampled token can be used. Clamps `w` in place; returns the
/// relative output error before and after (for reports).
pub fn clip(w: &mut [f32], rows: usize, cols: usize, x: &[f32], t: usize, grid: Grid) -> Result<(f64, f64)> {
    let gs = grid.clip_group(cols);
    if gs == 0 || !cols.is_multiple_of(gs) || x.len() != t * cols || t == 0 {
        return Err(Error::InvalidArgument(format!("clipping {rows}×{cols} in groups of {gs} over {t} tokens")));
    }
    let groups = cols / gs;
    // H_g for every group: gs × gs each.
    let hs: Vec<Vec<f32>> = (0..groups)
        .into_par_iter()
        .map(|g| {
            let xg = MatRef::from_row_major_slice_with_stride(&x[g * gs..], t, gs, cols);
            let mut h = vec![0f32; gs * gs];
            matmul(
                MatMut::from_row_major_slice_mut(&mut h, gs, gs),
                Accum::Replace,
                xg.transpose(),
                xg,
                1.0 / t as f32,
                Par::Seq,
            );
            h
        })
        .collect();
    // err[r·groups + g] for a candidate.
    let errors = |q: &[f32]| -> Vec<f32> {
        let delta: Vec<f32> = q.par_iter().zip(w.par_iter()).map(|(&a, &b)| a - b).collect();
        let per_group: Vec<Vec<f32>> = (0..groups)
            .into_par_iter()
            .map(|g| {
                let d = MatRef::from_row_major_slice_with_stride(&delta[g * gs..], rows, gs, cols);
                let mut m = vec![0f32; rows * gs];
                let h = MatRef::from_row_major_slice(&hs[g], gs, gs);
                matmul(MatMut::from_row_major_slice_mut(&mut m, rows, gs), Accum::Replace, d, h, 1.0f32, Par::Seq);
                (0..rows)
                    .map(|r| {
                        let dr = &delta[r * cols + g * gs..r * cols + (g + 1) * gs];
                        m[r * gs..(r + 1) * gs].iter().zip(dr).map(|(a, b)| a * b).sum::<f32>()
                    })
                    .collect()
            })
            .collect();
        let mut e = vec![0f32; rows * groups];
        for (g, pg) in per_group.iter().enumerate() {
            for r in 0..rows {
                e[r * groups + g] = pg[r];
            }
        }
        e
    };
    let org_max: Vec<f32> = (0..rows * groups)
        .map(|i| {
            let (r, g) = (i / groups, i % groups);
            w[r * cols + g * gs..r * cols + (g + 1) * gs].iter().fold(0f32, |m, v| m.max(v.abs()))
        })
        .collect();
    let clamped = |limits: &[f32]| -> Vec<f32> {
        let mut c = w.to_vec();
        c.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
            for (j, v) in row.iter_mut().enumerate() {
                let m = limits[r * groups + j / gs];
                *v = v.clamp(-m, m);
            }
        });
        c
    };
    let mut best_err = vec![f32::INFINITY; rows * groups];
    let mut best_max = org_max.clone();
    let mut unclipped = 0f64;
    for step in 0..CLIP_STEPS {
        let ratio = 1.0 - step as f32 / CLIP_GRID as f32;
        let limits: Vec<f32> = org_max.iter().map(|m| m * ratio).collect();
        let err = errors(&grid.qdq(&clamped(&limits), rows, cols)?);
        if step == 0 {
            unclipped = err.iter().map(|&e| e as f64).sum();
        }
        for i in 0..rows * groups {
            if err[i] < best_err[i] {
                best_err[i] = err[i];
                best_max[i] = limits[i];
            }
        }
    }
    // Each group's choice is exact for independent groups; K-quant super-blocks share scales
    // across groups, so check the combined choice and keep the unclipped weights if it lost.
    let candidate = clamped(&best_max);
    let clipped: f64 = errors(&grid.qdq(&candidate, rows, cols)?).iter().map(|&e| e as f64).sum();
    if clipped < unclipped {
        w.copy_from_slice(&candidate);
        Ok((unclipped, clipped))
    } else {
        Ok((unclipped, unclipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int4_round_trip_is_within_half_a_step() {
        let (rows, cols) = (4, 64);
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 31.0).collect();
        let q = int4_quantize(&w, rows, cols, 32).unwrap();
        let d = q.dequantize();
        for r in 0..rows {
            for c in 0..cols {
                let s = q.scales[r * 2 + c / 32];
                // Half a step, plus the f16 rounding of the stored scale: ≤ 15 steps × 2⁻¹¹.
                assert!((d[r * cols + c] - w[r * cols + c]).abs() <= 0.51 * s + 1e-6);
            }
        }
    }

    #[test]
    fn clipping_never_increases_the_error() {
        let (rows, cols, t) = (8, 64, 50);
        // One outlier per row: clipping it should help the other weights.
        let w: Vec<f32> =
            (0..rows * cols).map(|i| if i % cols == 3 { 4.0 } else { ((i * 13 % 17) as f32 - 8.0) / 10.0 }).collect();
        let x: Vec<f32> = (0..t * cols).map(|i| ((i * 7 % 23) as f32 - 11.0) / 7.0).collect();
        for grid in [Grid::Int4 { group_size: 32 }, Grid::Ggml(GgmlType::Q4_0)] {
            let mut wc = w.clone();
            let (before, after) = clip(&mut wc, rows, cols, &x, t, grid).unwrap();
            assert!(after <= before, "{grid:?}: {after} > {before}");
        }
    }
}
