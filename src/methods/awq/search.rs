//! AWQ's per-group scale search: s = x̄^α over a grid of α, normalised, scored by how well the
//! inspected block computes its original output with Q(W·diag(s))·diag(s)⁻¹ in place of W.

use super::grid::{matmul_t, mse, Grid};
use super::layer::scale_columns;
use crate::error::{Error, Result};

/// α ∈ {0, 1/20, …, 19/20} as AutoAWQ's n_grid 20. α = 0 gives s = 1: plain round-to-nearest.
pub const N_GRID: usize = 20;

/// What the scales follow: the mean input magnitude of every channel, and optionally (AutoAWQ's
/// `duo_scaling`) the mean relative weight magnitude of every input column.
#[derive(Debug, Clone)]
pub struct Salience {
    pub x_mean: Vec<f32>,
    pub w_mean: Option<Vec<f32>>,
}

impl Salience {
    /// `w_mean` for duo scaling: |w| / max |w| of its (row, group), averaged over the rows of
    /// all `weights` (each rows × cols, sharing the input).
    pub fn weight_mean(weights: &[(&[f32], usize)], cols: usize, group_size: usize) -> Vec<f32> {
        let mut sum = vec![0f64; cols];
        let mut n = 0usize;
        for &(w, rows) in weights {
            for row in w.chunks_exact(cols).take(rows) {
                for (g, part) in row.chunks(group_size.max(1)).enumerate() {
                    let m = part.iter().fold(0f32, |m, v| m.max(v.abs())) + 1e-6;
                    for (j, v) in part.iter().enumerate() {
                        sum[g * group_size + j] += (v.abs() / m) as f64;
                    }
                }
            }
            n += rows;
        }
        sum.iter().map(|&s| (s / n.max(1) as f64) as f32).collect()
    }
}

/// The scales for exponent `alpha`: x̄^α (or x̄^α / (w̄^(1−α) + 1e-4) with duo scaling) clamped
/// to ≥ 1e-4 (dead channels), divided by √(max·min) so that they straddle 1 and the folded
/// weights keep their magnitude; any non-finite scale becomes 1.
pub fn scales_for(sal: &Salience, alpha: f32) -> Vec<f32> {
    let mut s: Vec<f32> = match &sal.w_mean {
        None => sal.x_mean.iter().map(|&m| m.powf(alpha).max(1e-4)).collect(),
        Some(w) => {
            sal.x_mean.iter().zip(w).map(|(&m, &w)| (m.powf(alpha) / (w.powf(1.0 - alpha) + 1e-4)).max(1e-4)).collect()
        }
    };
    let (lo, hi) = s.iter().fold((f32::INFINITY, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let norm = (hi * lo).sqrt();
    for v in &mut s {
        *v /= norm;
        if !v.is_finite() || *v <= 0.0 {
            *v = 1.0;
        }
    }
    s
}

/// The chosen scales of one group of linears.
#[derive(Debug, Clone)]
pub struct Found {
    pub alpha: f32,
    pub scales: Vec<f32>,
    /// Block output MSE with plain round-to-nearest (α = 0) and with the chosen scales.
    pub loss_plain: f64,
    pub loss: f64,
}

/// Try every α and keep the one with the lowest `loss(scales)`. s = 1 (plain round-to-nearest)
/// is always a candidate: it is α = 0 without duo scaling, and tried first with it (reported
/// as α = −1 if it wins).
pub fn search(sal: &Salience, mut loss: impl FnMut(&[f32]) -> Result<f64>) -> Result<Found> {
    let ones = vec![1f32; sal.x_mean.len()];
    let loss_plain = loss(&ones)?;
    let mut best: Option<Found> = None;
    if loss_plain.is_finite() {
        best = Some(Found { alpha: -1.0, scales: ones, loss_plain, loss: loss_plain });
    }
    // Without duo scaling α = 0 gives s = 1 again.
    let first = if sal.w_mean.is_none() { 1 } else { 0 };
    for i in first..N_GRID {
        let alpha = i as f32 / N_GRID as f32;
        let scales = scales_for(sal, alpha);
        let l = loss(&scales)?;
        if l.is_finite() && best.as_ref().is_none_or(|b| l < b.loss) {
            best = Some(Found { alpha, scales, loss_plain, loss: l });
        }
    }
    if let Some(b) = best.as_mut().filter(|b| b.alpha < 0.0 && sal.w_mean.is_none()) {
        b.alpha = 0.0;
    }
    best.ok_or_else(|| Error::InvalidModel("AWQ scale search: every candidate gave NaN".into()))
}

/// Q(W·diag(s))·diag(s)⁻¹: what the block computes with the scaled, quantized weights while
/// its input is still unscaled.
pub fn fake_quant_scaled(w: &[f32], rows: usize, cols: usize, s: &[f32], grid: Grid) -> Result<Vec<f32>> {
    let mut ws = w.to_vec();
    scale_columns(&mut ws, s);
    let mut q = grid.qdq(&ws, rows, cols)?;
    let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
    scale_columns(&mut q, &inv);
    Ok(q)
}

/// The scale search for one linear inspected alone (o_proj, down_proj): MSE of x·Wᵀ over the
/// sample tokens `x` (t × cols).
pub fn search_linear(
    x: &[f32],
    t: usize,
    w: &[f32],
    rows: usize,
    cols: usize,
    sal: &Salience,
    grid: Grid,
) -> Result<Found> {
    let reference = matmul_t(x, t, w, rows, cols);
    search(sal, |s| {
        let q = fake_quant_scaled(w, rows, cols, s, grid)?;
        Ok(mse(&matmul_t(x, t, &q, rows, cols), &reference))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_zero_is_identity_and_scales_are_normalised() {
        let m = Salience { x_mean: vec![0.0, 0.5, 2.0, 8.0], w_mean: None };
        assert_eq!(scales_for(&m, 0.0), vec![1.0; 4]);
        let s = scales_for(&m, 0.5);
        let (lo, hi) = s.iter().fold((f32::INFINITY, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        assert!((lo * hi - 1.0).abs() < 1e-5, "{s:?}");
        assert!(s.iter().all(|v| v.is_finite() && *v > 0.0));
    }

    /// Duo scaling's w̄: |w| relative to its (row, group) max, averaged over every row of
    /// every weight sharing the input; and the search always tries s = 1 first.
    #[test]
    fn duo_weight_mean_and_plain_candidate() {
        // Two rows × 4 columns, groups of 2; a second weight with one row.
        let a = [1.0f32, -2.0, 4.0, 0.0, -1.0, 1.0, 0.0, 8.0];
        let b = [2.0f32, 2.0, -1.0, 4.0];
        let w = Salience::weight_mean(&[(&a, 2), (&b, 1)], 4, 2);
        let m = |v: f32, max: f32| v / (max + 1e-6);
        let want = [
            (m(1.0, 2.0) + m(1.0, 1.0) + m(2.0, 2.0)) / 3.0,
            (m(2.0, 2.0) + m(1.0, 1.0) + m(2.0, 2.0)) / 3.0,
            (m(4.0, 4.0) + m(0.0, 8.0) + m(1.0, 4.0)) / 3.0,
            (m(0.0, 4.0) + m(8.0, 8.0) + m(4.0, 4.0)) / 3.0,
        ];
        for (g, w) in w.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
        let sal = Salience { x_mean: vec![1.0, 2.0, 3.0, 4.0], w_mean: Some(vec![0.5; 4]) };
        let mut tried = Vec::new();
        let f = search(&sal, |s| {
            tried.push(s.to_vec());
            Ok(if tried.len() == 1 { 0.0 } else { 1.0 })
        })
        .unwrap();
        assert_eq!(tried[0], vec![1.0; 4]);
        assert_eq!(tried.len(), 1 + N_GRID);
        assert_eq!((f.alpha, f.scales.clone()), (-1.0, vec![1.0; 4]));
    }
}
