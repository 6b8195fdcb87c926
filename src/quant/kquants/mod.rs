//! The K-quants: Q2_K, Q3_K, Q4_K, Q5_K and Q6_K, super-blocks of 256 weights split into
//! sub-blocks of 16 or 32, each with its own small integer scale (and min) that is itself
//! quantized against one or two f16 super-block scales.
//!
//! The quantizers reproduce ggml's `quantize_row_q*_K_ref` (ggml-quants.c), which is what
//! `ggml_quantize_chunk` (and so `llama-quantize`) runs when no importance matrix is given.
//! The sub-block searches live in `search`; one module per type holds its layout, the packing
//! of its scales and quants, its dequantizer (`dequantize_row_q*_K`) and its
//! importance-weighted quantizer (`quantize_row_q*_K_impl` with `quant_weights`).
//!
//! The weighted quantizers weight every value by `qw[j]·sqrt(σ² + x[j]²)` instead of by its
//! own magnitude (σ² from the super-block: the mean square for Q2_K, twice it for
//! Q3_K/Q4_K/Q5_K; Q6_K uses `qw` alone), and then also fit the sub-block scales (and mins)
//! themselves by a weighted search (`make_qp_quants` / `make_qx_quants` with each sub-block's
//! total weight) instead of rounding them against the largest one.
//!
//! A pattern common to all five: after the scales are quantized, every weight is re-quantized
//! against the *stored* (f16-rounded, integer-scaled) sub-block scale, so the bytes decode to
//! the best grid actually representable; sub-blocks whose stored scale is zero keep the quants
//! from the search.

// Index loops over several parallel arrays mirror ggml's, so each line can be checked against
// the C it reproduces.
#![allow(clippy::needless_range_loop)]

pub mod q2_k;
pub mod q3_k;
pub mod q4_k;
pub mod q5_k;
pub mod q6_k;

use super::float::{get_f16, put_f16};
use super::search;
use super::search::weighted::{importance, make_qkx3_quants, make_qp_quants, sum_x2};

/// Weights per super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// Bytes of the packed 6-bit scales and mins of Q4_K/Q5_K (ggml's `K_SCALE_SIZE`).
pub const K_SCALE_SIZE: usize = 12;

/// Sub-block `n` of `x` as a fixed-size array (lets the searches keep their buffers on the stack
/// and the compiler drop bounds checks).
#[inline(always)]
pub(crate) fn sub<const N: usize>(x: &[f32], n: usize) -> &[f32; N] {
    x[N * n..N * (n + 1)].try_into().unwrap()
}

#[inline(always)]
pub(crate) fn sub_mut<T, const N: usize>(x: &mut [T], n: usize) -> &mut [T; N] {
    (&mut x[N * n..N * (n + 1)]).try_into().unwrap()
}

/// Q4_K/Q5_K scale packing (ggml's `get_scale_min_k4`): 8 six-bit scales and 8 six-bit mins
/// in 12 bytes. Bytes 0–3 hold scales 0–3 in their low 6 bits, bytes 4–7 mins 0–3; bytes
/// 8–11 hold the low nibbles of scale/min 4–7, whose top 2 bits ride in the spare top bits
/// of bytes 0–3 (scales) and 4–7 (mins).
#[inline(always)]
pub fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Inverse of [`get_scale_min_k4`] for all eight pairs; `ls`, `lm` ≤ 63.
#[inline(always)]
pub(crate) fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8], q: &mut [u8]) {
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        } else {
            q[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            q[j - 4] |= (ls[j] >> 4) << 6;
            q[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// Each of `N` sub-blocks' (scale, min) from `fit(j)`, with their maxima tracked as ggml's
/// K-quants do (`if (scale > max_scale)`, from 0): the scales, the mins, and both maxima.
#[inline(always)]
pub(crate) fn fit_sub_blocks<const N: usize>(
    mut fit: impl FnMut(usize) -> (f32, f32),
) -> ([f32; N], [f32; N], f32, f32) {
    let mut scales = [0f32; N];
    let mut mins = [0f32; N];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..N {
        let (s, m) = fit(j);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    (scales, mins, max_scale, max_min)
}

/// The scale/min step shared by Q4_K and Q5_K: fit each 32-weight sub-block with
/// `make_qkx2_quants` (weights av_x + |x|, av_x the sub-block RMS), quantize the 8 scales and
/// 8 mins to 6 bits against their maxima, and store d = max_scale/63, dmin = max_min/63.
/// Leaves the search's quants in `l`; returns the f16-rounded (d, dmin) ggml requantizes with.
fn quantize_scales_k4(x: &[f32], nmax: i32, rmin: f32, nstep: i32, l: &mut [u8; QK_K], head: &mut [u8]) -> (f32, f32) {
    let (scales, mins, max_scale, max_min) = fit_sub_blocks::<8>(|j| {
        let xs: &[f32; 32] = sub(x, j);
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let w: [f32; 32] = std::array::from_fn(|i| av_x + xs[i].abs());
        search::make_qkx2_quants(nmax, xs, &w, sub_mut(l, j), rmin, 0.1, nstep, false)
    });
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // `as u8` truncates like C's int → uint8_t before the clamp to 63.
    let ls: [u8; 8] = std::array::from_fn(|j| (search::nearest_int(inv_scale * scales[j]) as u8).min(63));
    let lm: [u8; 8] = std::array::from_fn(|j| (search::nearest_int(inv_min * mins[j]) as u8).min(63));
    // head = d, dmin, scales[12]
    put_f16(&mut head[0..], max_scale / 63.0);
    put_f16(&mut head[2..], max_min / 63.0);
    pack_scale_min_k4(&ls, &lm, &mut head[4..4 + K_SCALE_SIZE]);
    (get_f16(&head[0..]), get_f16(&head[2..]))
}

/// Re-quantize 32-weight sub-block `j` of `x` against the stored scale and min (see the
/// module comment); quants in [0, nmax].
#[inline(always)]
pub(crate) fn requantize_k4(x: &[f32], d_all: f32, dmin_all: f32, scales: &[u8], nmax: i32, l: &mut [u8; QK_K]) {
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, scales);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        for i in 32 * j..32 * (j + 1) {
            l[i] = search::nearest_int((x[i] + dm) / d).clamp(0, nmax) as u8;
        }
    }
}

/// Pack 2-bit quants as Q2_K/Q3_K store them: each 128-weight half fills 32 bytes, byte `i`
/// holding weights i, i+32, i+64, i+96 in bit pairs 0–1, 2–3, 4–5, 6–7.
#[inline(always)]
pub(crate) fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for half in 0..2 {
        let (lh, q) = (&l[128 * half..128 * (half + 1)], &mut qs[32 * half..32 * (half + 1)]);
        for i in 0..32 {
            q[i] = lh[i] | (lh[i + 32] << 2) | (lh[i + 64] << 4) | (lh[i + 96] << 6);
        }
    }
}

/// Sub-block `j` (of `N`) of a weighted quantizer: its weights `qw[l]·sqrt(σ² + x[l]²)` and
/// their sum.
#[inline(always)]
fn sub_weights<const N: usize>(x: &[f32; QK_K], qw: &[f32], sigma2: f32, j: usize) -> ([f32; N], f32) {
    let w: [f32; N] = importance(sub(x, j), &qw[N * j..], sigma2);
    let mut sumw = 0f32;
    for &v in &w {
        sumw += v;
    }
    (w, sumw)
}

/// The super-blocks of a row with their importance, and each one's bytes.
pub(crate) fn weighted_super_blocks<'a, const BYTES: usize>(
    x: &'a [f32],
    qw: &'a [f32],
    out: &'a mut [u8],
) -> impl Iterator<Item = ((&'a [f32; QK_K], &'a [f32]), &'a mut [u8])> {
    x.chunks_exact(QK_K).map(|c| c.try_into().unwrap()).zip(qw.chunks_exact(QK_K)).zip(out.chunks_exact_mut(BYTES))
}

/// The scale step shared by weighted Q4_K and Q5_K: per 32-weight sub-block
/// `make_qkx3_quants(32, nmax, …, −0.9, 0.05, 36)`, then the 8 scales and 8 mins fitted to 6
/// bits by `make_qp_quants(8, 63, …, sub-block weights)`. Leaves the search's levels in `l`,
/// writes d, dmin and the packed scales into `head`, and returns the f16-rounded (d, dmin).
pub(crate) fn weighted_scales_k4(
    x: &[f32; QK_K],
    qw: &[f32],
    nmax: i32,
    clamp63: bool,
    l: &mut [u8; QK_K],
    head: &mut [u8],
) -> (f32, f32) {
    let sigma2 = 2.0 * sum_x2(x) / QK_K as f32;
    let (mut scales, mut mins, mut sw) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    for j in 0..8 {
        let (weight, sumw) = sub_weights::<32>(x, qw, sigma2, j);
        sw[j] = sumw;
        let (s, m) = make_qkx3_quants(nmax, sub(x, j), &weight, sub_mut(l, j), -0.9, 0.05, 36);
        scales[j] = s;
        mins[j] = m;
    }
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    if clamp63 {
        // Q5_K clamps the levels (Q4_K does not; make_qp_quants already caps them at 63
        // except for a negative scale wrapped into a uint8_t).
        for v in ls.iter_mut().chain(lm.iter_mut()) {
            *v = (*v).min(63);
        }
    }
    head[4..4 + K_SCALE_SIZE].fill(0);
    pack_scale_min_k4(&ls, &lm, &mut head[4..4 + K_SCALE_SIZE]);
    put_f16(&mut head[0..], d_block);
    put_f16(&mut head[2..], m_block);
    (get_f16(&head[0..]), get_f16(&head[2..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Codec = (&'static str, fn(&[f32], &mut [u8]), fn(&[u8], &mut [f32]), usize);

    const CODECS: [Codec; 5] = [
        ("q2_k", q2_k::quantize_block, crate::quant::dot::block_decode!(q2_k), q2_k::BLOCK_BYTES),
        ("q3_k", q3_k::quantize_block, crate::quant::dot::block_decode!(q3_k), q3_k::BLOCK_BYTES),
        ("q4_k", q4_k::quantize_block, crate::quant::dot::block_decode!(q4_k), q4_k::BLOCK_BYTES),
        ("q5_k", q5_k::quantize_block, crate::quant::dot::block_decode!(q5_k), q5_k::BLOCK_BYTES),
        ("q6_k", q6_k::quantize_block, crate::quant::dot::block_decode!(q6_k), q6_k::BLOCK_BYTES),
    ];

    fn normal_rows(n: usize) -> Vec<Vec<f32>> {
        let mut s = 0x1234_5678u32;
        let mut u = move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32
        };
        (0..n)
            .map(|r| {
                let scale = 10f32.powi(r as i32 % 7 - 3);
                (0..QK_K).map(|_| scale * ((u() + u() + u() + u()) - 2.0) * 3f32.sqrt()).collect()
            })
            .collect()
    }

    fn round_trip(c: &Codec, x: &[f32]) -> Vec<f32> {
        let mut b = vec![0u8; c.3];
        (c.1)(x, &mut b);
        let mut y = vec![0f32; QK_K];
        (c.2)(&b, &mut y);
        y
    }

    /// Relative RMS error (vs the row RMS) and worst single-weight error (vs the super-block's
    /// largest magnitude) on Gaussian rows. ggml's own figures for Gaussian data are about
    /// 0.33 / 0.17 / 0.077 / 0.039 / 0.021; the bounds leave ~10% of margin.
    const BOUNDS: [(f32, f32); 5] = [(0.36, 0.40), (0.185, 0.20), (0.085, 0.08), (0.043, 0.06), (0.024, 0.037)];

    #[test]
    fn round_trip_error_is_within_each_types_bound() {
        for (c, &(rel_bound, el_bound)) in CODECS.iter().zip(&BOUNDS) {
            for (r, x) in normal_rows(70).iter().enumerate() {
                let y = round_trip(c, x);
                let rms = (x.iter().map(|v| v * v).sum::<f32>() / QK_K as f32).sqrt();
                let err = (x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / QK_K as f32).sqrt();
                assert!(err <= rel_bound * rms, "{} row {r}: relative RMS error {}", c.0, err / rms);
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (a, b) in x.iter().zip(&y) {
                    assert!((a - b).abs() <= el_bound * amax, "{} row {r}: {a} vs {b} (amax {amax})", c.0);
                }
            }
        }
    }

    #[test]
    fn zero_super_block_decodes_to_zero() {
        for c in &CODECS {
            let y = round_trip(c, &[0.0; QK_K]);
            assert!(y.iter().all(|&v| v == 0.0), "{}", c.0);
        }
    }

    #[test]
    fn constant_super_block_is_nearly_exact() {
        for c in &CODECS {
            for v in [0.5f32, -0.25] {
                let y = round_trip(c, &[v; QK_K]);
                for &b in &y {
                    // One f16 rounding of the super-block scale, times a 4–8 bit sub-block scale.
                    assert!((b - v).abs() <= v.abs() * 2e-2, "{}: {v} → {b}", c.0);
                }
            }
        }
    }

    #[test]
    fn scale_packing_round_trips() {
        let ls = [0u8, 63, 17, 42, 1, 62, 31, 32];
        let lm = [63u8, 0, 5, 60, 33, 2, 48, 15];
        let mut q = [0u8; K_SCALE_SIZE];
        pack_scale_min_k4(&ls, &lm, &mut q);
        for j in 0..8 {
            assert_eq!(get_scale_min_k4(j, &q), (ls[j], lm[j]));
        }
    }
}
