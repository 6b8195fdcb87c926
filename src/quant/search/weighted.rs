//! The importance-weighted scale searches of ggml-quants.c: `make_qx_quants` with a weight
//! vector (`qw`), `make_qkx3_quants` and `make_qp_quants`, for the argument combinations the
//! `quantize_row_*_impl` functions use.
//!
//! As in `search`, byte-identical output is the goal: every sum is accumulated left to
//! right in f32, products keep C's left-to-right grouping (`w*x[i]*l` is `(w*x)*l`), nothing is
//! fused into an FMA, and integer values pass through the same C conversions (a negative
//! `nearest_int` stored into a `uint8_t` wraps, and the wrapped value is what later loops read).

use super::{self as search, nearest_int, GROUP_MAX_EPS};

/// Σx² left to right, as ggml sums it (the σ² of the weighting).
pub(crate) fn sum_x2(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// llama.cpp's weight of each value in a search: its column's importance `qw[j]` times
/// `sqrt(σ² + x[j]²)` (σ² is each type's own: over the row, the super-block or the block).
#[inline(always)]
pub(crate) fn importance<const N: usize>(x: &[f32; N], qw: &[f32], sigma2: f32) -> [f32; N] {
    std::array::from_fn(|j| qw[j] * (sigma2 + x[j] * x[j]).sqrt())
}

/// `make_qx_quants(n, nmax, x, L, rmse_type = 1, qw)`: symmetric x ≈ scale·(L − nmax),
/// weighted by `qw` (the search itself: [`search::make_qx_quants_weighted`]).
pub fn make_qx_quants<const N: usize>(nmax: i32, x: &[f32; N], l: &mut [i8; N], qw: &[f32; N]) -> f32 {
    search::make_qx_quants_weighted(nmax, x, l, |i| qw[i])
}

/// `make_qkx3_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep,
/// use_mad = false)`: affine x ≈ scale·L − the_min with L ∈ [0, nmax], minimizing the weighted
/// squared error over the min/max grid and `nstep + 1` stretched grids. It is ggml's
/// `make_qkx2_quants` with squared errors but for its degenerate-range test, which gives the
/// same answer on every input (see there). Returns `(scale, the_min)`.
pub fn make_qkx3_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    weights: &[f32; N],
    l: &mut [u8; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    search::make_qkx2_quants(nmax, x, weights, l, rmin, rdelta, nstep, false)
}

/// `make_qp_quants(n, nmax, x, L, quant_weights)`: x ≈ scale·L with L ∈ [0, nmax] for
/// non-negative x (the sub-block scales or mins of a super-block), weighted. Picks the best of
/// 9 grids by weighted squared error, then up to 5 passes of coordinate descent on the weighted
/// correlation. Returns the least-squares scale; `L` holds the (C `uint8_t`) levels.
pub fn make_qp_quants<const N: usize>(nmax: i32, x: &[f32; N], l: &mut [u8; N], qw: &[f32; N]) -> f32 {
    let mut max = 0f32;
    for &v in x {
        // ggml's MAX(max, x): the second operand wins unless the first is strictly larger.
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / max;
    for i in 0..N {
        l[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..N {
        let diff = x[i] - scale * l[i] as f32;
        best_mse += qw[i] * diff * diff;
    }
    for is in -4..=4i32 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmaxf) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..N {
            let q = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * q as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..N {
        let q = nearest_int(iscale * x[i]).min(nmax);
        l[i] = q as u8;
        let (w, qf) = (qw[i], q as f32);
        sumlx += w * x[i] * qf;
        suml2 += w * qf * qf;
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..N {
            let w = qw[i];
            let li = l[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l[i] as i32 {
                    let nf = new_l as f32;
                    slx += w * x[i] * nf;
                    sl2 += w * nf * nf;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qkx3_fits_an_exact_affine_grid() {
        let x: [f32; 32] = std::array::from_fn(|i| 0.25 * (i % 16) as f32 - 1.0);
        let w: [f32; 32] = std::array::from_fn(|i| 1.0 + i as f32);
        let mut l = [0u8; 32];
        let (scale, the_min) = make_qkx3_quants(15, &x, &w, &mut l, -0.9, 0.05, 36);
        for i in 0..32 {
            assert!((scale * l[i] as f32 - the_min - x[i]).abs() < 1e-5, "{i}");
        }
    }

    #[test]
    fn qp_recovers_integer_multiples() {
        // The largest value sits on level nmax, so the first grid is exact and must be kept.
        let levels = [0u8, 15, 3, 7, 9, 1, 12, 15];
        let x: [f32; 8] = std::array::from_fn(|i| 0.5 * levels[i] as f32);
        let w = [1f32; 8];
        let mut l = [0u8; 8];
        let d = make_qp_quants(15, &x, &mut l, &w);
        assert_eq!(d, 0.5);
        for i in 0..8 {
            assert_eq!(l[i], levels[i], "{i}: d = {d}");
        }
    }

    #[test]
    fn qx_heavy_weight_pins_its_value() {
        // One weight dominates: the chosen scale must represent that value almost exactly.
        let x: [f32; 16] = std::array::from_fn(|i| ((i * 37 % 16) as f32 - 7.3) * 0.11);
        let mut w = [1e-3f32; 16];
        w[5] = 1e3;
        let mut l = [0i8; 16];
        let d = make_qx_quants(4, &x, &mut l, &w);
        let y = d * (l[5] as i32 - 4) as f32;
        assert!((y - x[5]).abs() < 1e-3 * x[5].abs().max(1.0), "{y} vs {}", x[5]);
    }
}
