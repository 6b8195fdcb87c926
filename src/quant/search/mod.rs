//! The scale searches the block codecs share. This module: the per-sub-block searches behind
//! ggml's K-quant reference quantizers (`make_qkx2_quants`, `make_q3_quants`, `make_qx_quants`
//! in ggml-quants.c), restricted to the argument combinations the `quantize_row_q*_K_ref`
//! functions use; [`weighted`]: the importance weighting and the searches of the weighted
//! quantizers (`quantize_row_*_impl`) of the legacy types, the K-quants and IQ4_NL.
//!
//! Byte-identical output is the goal, so the float arithmetic is written in ggml's order:
//! every sum is accumulated left to right in f32 (ggml-base is built without `-ffast-math`,
//! so gcc neither reassociates nor vectorizes these reductions), products keep C's left-to-right
//! grouping (`w*l*x` is `(w*l)*x`), and nothing may be fused into an FMA. The sub-blocks are
//! 16 or 32 long, so each sum is a short chain of dependent additions; the searches that try
//! many grids (`make_qx_quants`, `make_qkx2_quants`) evaluate their grids side by side, one
//! per vector lane, each lane's sums still in ggml's order.

// Index loops over several parallel arrays mirror ggml's, so each line can be checked against
// the C it reproduces.
#![allow(clippy::needless_range_loop)]

pub mod weighted;

/// ggml's choice among candidate grids (`make_qx_quants`, IQ4_NL's search): the weighted
/// least-squares scale Σqx/Σq² of the candidate whose Σqx²/Σq² is largest, compared as
/// `sumqx² > best·sumq2` in ggml's order, the first candidate (scale `first`, the caller's
/// own zero test) kept on ties. Returns the candidate's index and its scale.
#[inline(always)]
pub(crate) fn best_candidate(sumqx: &[f32], sumq2: &[f32], first: f32) -> (usize, f32) {
    let (mut chosen, mut scale) = (0, first);
    let mut best = scale * sumqx[0];
    for c in 1..sumqx.len().min(sumq2.len()) {
        if sumq2[c] > 0.0 && sumqx[c] * sumqx[c] > best * sumq2[c] {
            chosen = c;
            scale = sumqx[c] / sumq2[c];
            best = scale * sumqx[c];
        }
    }
    (chosen, scale)
}

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below this is all zeros.
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: adding 1.5·2^23 pushes the fraction out of the mantissa, so the FPU's
/// round-half-to-even does the rounding (`round()` would round halves away from zero and give
/// different quants on exact ties). Written literally, so out-of-range inputs (which ggml only
/// asserts against in debug builds) give ggml's bits too.
#[inline(always)]
pub fn nearest_int(f: f32) -> i32 {
    let v = f + 12582912.0;
    (v.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// Signed value of largest magnitude (first wins ties) and that magnitude.
#[inline(always)]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (max, amax)
}

/// `make_qkx2_quants`: fit x ≈ scale·L − the_min with L ∈ [0, nmax], minimizing the weighted
/// error (squared, or absolute when `use_mad`). Starts from the min/max grid, then tries
/// `nstep + 1` slightly stretched grids, solving the weighted least-squares (scale, min) for
/// each assignment and keeping the best. The min is never allowed above zero (so the_min ≥ 0).
/// Returns `(scale, the_min)`.
#[allow(clippy::too_many_arguments)]
pub fn make_qkx2_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    w: &[f32; N],
    l: &mut [u8; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..N {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    // ggml tests `max == min` here and `max <= min` in make_qkx3_quants, which uses this
    // function: the two agree on every input (min ≤ x[0] ≤ max once x[0] is a number, and a NaN
    // x[0] fails both tests).
    if max <= min {
        l.fill(0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let err = |d: f32| if use_mad { d.abs() } else { d * d };

    let iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..N {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        best_error += w[i] * err(scale * q as f32 + min - x[i]);
    }
    if nstep < 1 {
        return (scale, -min);
    }

    // The stretched grids, QKX_LANES at a time. ggml moves `min` when a grid wins, and the
    // grids after it are computed from the new min: after a win the next batch starts there.
    let x_min = |min: f32| -> [f32; N] { std::array::from_fn(|i| x[i] - min) };
    let mut won: Option<(f32, f32)> = None; // (iscale, the min its codes were computed from)
    let mut is = 0;
    while is <= nstep {
        let count = ((nstep - is + 1) as usize).min(QKX_LANES);
        let mut iscales = [0f32; QKX_LANES];
        for (k, v) in iscales[..count].iter_mut().enumerate() {
            *v = (rmin + rdelta * (is + k as i32) as f32 + nmaxf) / (max - min);
        }
        let lanes = qkx_lanes(x, w, &x_min(min), &iscales, nmax, sum_w, sum_x, use_mad);
        let mut next = is + count as i32;
        for k in 0..count {
            if lanes.det[k] > 0.0 && lanes.error[k] < best_error {
                best_error = lanes.error[k];
                scale = lanes.scale[k];
                won = Some((iscales[k], min));
                min = lanes.min[k];
                next = is + k as i32 + 1;
                break;
            }
        }
        is = next;
    }
    if let Some((iscale, from)) = won {
        for (li, &v) in l.iter_mut().zip(x) {
            *li = nearest_int(iscale * (v - from)).clamp(0, nmax) as u8;
        }
    }
    (scale, -min)
}

/// Stretched grids [`make_qkx2_quants`] evaluates at once (vector lanes). A win restarts the
/// batch after it, so wider batches waste more: small-llama Q4_K_M took 0.61 s with 24 lanes,
/// 0.39–0.43 s with 16, 0.76–0.95 s with 8 (2 threads, AVX-512).
const QKX_LANES: usize = 16;

/// Per lane of [`qkx_lanes`]: the least-squares system's determinant, its (scale, min) and the
/// weighted error of that fit.
struct QkxLanes {
    det: [f32; QKX_LANES],
    scale: [f32; QKX_LANES],
    min: [f32; QKX_LANES],
    error: [f32; QKX_LANES],
}

crate::cpu::multiversion! {
    /// One stretched grid of `make_qkx2_quants` per lane (`iscales`; `xm[i] = x[i] − min`):
    /// the codes, the weighted sums, the least-squares (scale, min) and its error, each sum
    /// left to right over the group with ggml's products in ggml's order (no FMA). One grid at
    /// a time, each sum was a chain of dependent additions and Q4_K spent ~4/5 of its time
    /// waiting on them.
    #[allow(clippy::too_many_arguments)]
    fn qkx_lanes(
        x: &[f32],
        w: &[f32],
        xm: &[f32],
        iscales: &[f32; QKX_LANES],
        nmax: i32,
        sum_w: f32,
        sum_x: f32,
        use_mad: bool
    ) -> QkxLanes {
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; QKX_LANES], [0f32; QKX_LANES], [0f32; QKX_LANES]);
        for ((&xi, &wi), &xmi) in x.iter().zip(w).zip(xm) {
            for c in 0..QKX_LANES {
                let lf = nearest_int(iscales[c] * xmi).clamp(0, nmax) as f32;
                sum_l[c] += wi * lf;
                sum_l2[c] += wi * lf * lf;
                sum_xl[c] += wi * lf * xi;
            }
        }
        let mut r = QkxLanes {
            det: [0f32; QKX_LANES],
            scale: [0f32; QKX_LANES],
            min: [0f32; QKX_LANES],
            error: [0f32; QKX_LANES],
        };
        for c in 0..QKX_LANES {
            let det = sum_w * sum_l2[c] - sum_l[c] * sum_l[c];
            let mut this_scale = (sum_w * sum_xl[c] - sum_x * sum_l[c]) / det;
            let mut this_min = (sum_l2[c] * sum_x - sum_l[c] * sum_xl[c]) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl[c] / sum_l2[c];
            }
            (r.det[c], r.scale[c], r.min[c]) = (det, this_scale, this_min);
        }
        for ((&xi, &wi), &xmi) in x.iter().zip(w).zip(xm) {
            for c in 0..QKX_LANES {
                let lf = nearest_int(iscales[c] * xmi).clamp(0, nmax) as f32;
                let d = r.scale[c] * lf + r.min[c] - xi;
                r.error[c] += wi * if use_mad { d.abs() } else { d * d };
            }
        }
        r
    }
}

/// `make_q3_quants(n = 16, nmax, x, L, do_rmse = true)`: symmetric x ≈ scale·(L − nmax),
/// L − nmax ∈ [−nmax, nmax − 1], weights x². Starts from the grid through the signed max, then
/// up to 5 passes of coordinate descent, each moving one quant at a time to its best level
/// given the others and keeping the move if the weighted correlation improves.
/// Writes L offset by `nmax` and returns the least-squares scale.
pub fn make_q3_quants(nmax: i32, x: &[f32; 16], l: &mut [i8; 16]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..16 {
        let q = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l[i] = q as i8;
        let w = x[i] * x[i];
        let qf = q as f32;
        sumlx += w * x[i] * qf;
        suml2 += w * qf * qf;
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..16 {
            let w = x[i] * x[i];
            let li = l[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l[i] as i32 {
                    let nf = new_l as f32;
                    slx += w * x[i] * nf;
                    sl2 += w * nf * nf;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as i8;
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
    for v in l.iter_mut() {
        *v += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// `make_qx_quants(n = 16, nmax, x, L, rmse_type = 1, qw = NULL)`: symmetric
/// x ≈ scale·(L − nmax) with weights x²; see [`make_qx_quants_weighted`].
pub fn make_qx_quants(nmax: i32, x: &[f32; 16], l: &mut [i8; 16]) -> f32 {
    make_qx_quants_weighted(nmax, x, l, |i| x[i] * x[i])
}

/// `make_qx_quants(n, nmax, x, L, rmse_type = 1, qw)` with weight `weight(i)` for x[i]
/// (`qw[i]`, or x[i]² when ggml passes no `qw`): symmetric x ≈ scale·(L − nmax) with
/// L − nmax ∈ [−nmax, nmax − 1]. Tries the grid through the signed max and 18 grids stretched
/// by ±0.1..0.9 levels, keeping the one with the best weighted correlation. Writes L offset by
/// `nmax` (all zero for an all-zero group) and returns the least-squares scale of the kept grid.
#[inline(always)]
pub fn make_qx_quants_weighted<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    l: &mut [i8; N],
    weight: impl Fn(usize) -> f32,
) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    // The grid through the signed max first, then the 18 stretched ones in ggml's order; lanes
    // past the 19th are padding (iscale 0: all codes 0, never chosen).
    let mut iscales = [0f32; QX_LANES];
    iscales[0] = -nmaxf / max;
    for (slot, is) in iscales[1..].iter_mut().zip((-9..=9i32).filter(|&is| is != 0)) {
        *slot = -(nmaxf + 0.1 * is as f32) / max;
    }
    let w: [f32; N] = std::array::from_fn(weight);
    let (sumlx, suml2) = qx_sums(x, &w, &iscales, nmax);
    // ggml's choice, made in its order on the sums it would have computed.
    // C tests `suml2 ?`, which a NaN passes: `!= 0.0` does the same.
    let first = if suml2[0] != 0.0 { sumlx[0] / suml2[0] } else { 0.0 };
    let (chosen, scale) = best_candidate(&sumlx[..QX_CANDIDATES], &suml2[..QX_CANDIDATES], first);
    for (li, &v) in l.iter_mut().zip(x) {
        *li = (nmax + nearest_int(iscales[chosen] * v).clamp(-nmax, nmax - 1)) as i8;
    }
    scale
}

/// The grids [`make_qx_quants_weighted`] tries, and the vector lanes its sums use (a multiple
/// of 8).
const QX_CANDIDATES: usize = 19;
const QX_LANES: usize = 24;

crate::cpu::multiversion! {
    /// Σ w·x·q and Σ w·q² of every candidate grid, each summed left to right over the group as
    /// ggml's loop per candidate does (same products, same order, no FMA), but with the
    /// candidates as vector lanes: one candidate at a time, each sum is a chain of dependent
    /// additions 16 or 32 long, and Q6_K quantized at ~75 cycles per weight.
    fn qx_sums(x: &[f32], w: &[f32], iscales: &[f32; QX_LANES], nmax: i32) -> ([f32; QX_LANES], [f32; QX_LANES]) {
        let (mut sumlx, mut suml2) = ([0f32; QX_LANES], [0f32; QX_LANES]);
        for (&v, &wi) in x.iter().zip(w) {
            for c in 0..QX_LANES {
                let q = nearest_int(iscales[c] * v).clamp(-nmax, nmax - 1) as f32;
                sumlx[c] += wi * v * q;
                suml2[c] += wi * q * q;
            }
        }
        (sumlx, suml2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.4999), -2);
        assert_eq!(nearest_int(3.7), 4);
        assert_eq!(nearest_int(-63.2), -63);
    }

    #[test]
    fn qkx2_fits_an_exact_affine_grid() {
        // x = 0.25·q − 1 for q in 0..=15 is representable exactly.
        let x: [f32; 32] = std::array::from_fn(|i| 0.25 * (i % 16) as f32 - 1.0);
        let w = [1f32; 32];
        let mut l = [0u8; 32];
        let (scale, the_min) = make_qkx2_quants(15, &x, &w, &mut l, -1.0, 0.1, 20, false);
        for i in 0..32 {
            assert!((scale * l[i] as f32 - the_min - x[i]).abs() < 1e-6);
        }
    }
}
