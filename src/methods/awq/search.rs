//! AWQ's per-group scale search: s = x̄^α over a grid of α, normalised, scored by how well the
//! inspected block computes its original output with Q(W·diag(s))·diag(s)⁻¹ in place of W.

use super::grid::{matmul_t, mse, Grid};
use super::layer::scale_columns;
use crate::error::{Error, Result};

/// α ∈ {0, 1/20, …, 19/20} as AutoAWQ's n_grid 20. α = 0 gives s = 1: plain round-to-nearest.
pub const N_GRID: usize = 20;

/// The scales for exponent `alpha` of the mean input magnitudes `x_mean`: x̄^α clamped to
/// ≥ 1e-4 (dead channels), divided by √(max·min) so that they straddle 1 and the folded
/// weights keep their magnitude; any non-finite scale becomes 1.
pub fn scales_for(x_mean: &[f32], alpha: f32) -> Vec<f32> {
    let mut s: Vec<f32> = x_mean.iter().map(|&m| m.powf(alpha).max(1e-4)).collect();
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

/// Try every α and keep the one with the lowest `loss(scales)`.
pub fn search(x_mean: &[f32], mut loss: impl FnMut(&[f32]) -> Result<f64>) -> Result<Found> {
    let mut best: Option<Found> = None;
    let mut loss_plain = f64::NAN;
    for i in 0..N_GRID {
        let alpha = i as f32 / N_GRID as f32;
        let scales = scales_for(x_mean, alpha);
        let l = loss(&scales)?;
        if i == 0 {
            loss_plain = l;
        }
        if l.is_finite() && best.as_ref().map_or(true, |b| l < b.loss) {
            best = Some(Found { alpha, scales, loss_plain, loss: l });
        }
    }
    let mut found = best.ok_or_else(|| Error::InvalidModel("AWQ scale search: every candidate gave NaN".into()))?;
    found.loss_plain = loss_plain;
    Ok(found)
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
    x_mean: &[f32],
    grid: Grid,
) -> Result<Found> {
    let reference = matmul_t(x, t, w, rows, cols);
    search(x_mean, |s| {
        let q = fake_quant_scaled(w, rows, cols, s, grid)?;
        Ok(mse(&matmul_t(x, t, &q, rows, cols), &reference))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_zero_is_identity_and_scales_are_normalised() {
        let m = [0.0, 0.5, 2.0, 8.0];
        assert_eq!(scales_for(&m, 0.0), vec![1.0; 4]);
        let s = scales_for(&m, 0.5);
        let (lo, hi) = s.iter().fold((f32::INFINITY, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        assert!((lo * hi - 1.0).abs() < 1e-5, "{s:?}");
        assert!(s.iter().all(|v| v.is_finite() && *v > 0.0));
    }
}
