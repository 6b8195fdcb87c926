//! Importance-weighted K-quants: ggml's `quantize_row_q{2,3,4,5,6}_K_impl` with
//! `quant_weights`, one 256-weight super-block at a time.
//!
//! The reference quantizers weight every weight by its own magnitude; these weight it by
//! `qw[j]·sqrt(σ² + x[j]²)` (σ² from the super-block: the mean square for Q2_K, twice it for
//! Q3_K/Q4_K/Q5_K; Q6_K uses `qw` alone), and then also fit the sub-block scales (and mins)
//! themselves by a weighted search (`make_qp_quants` / `make_qx_quants` with each sub-block's
//! total weight) instead of rounding them against the largest one. Layouts and packing are
//! those of `crate::quant::kquants`.

#![allow(clippy::needless_range_loop)]

use super::search::{make_qkx3_quants, make_qp_quants, make_qx_quants};
use crate::quant::float::{get_f16, put_f16};
use crate::quant::kquants::search::nearest_int;
use crate::quant::kquants::{
    pack_2bit, pack_scale_min_k4, q2_k, q3_k, q4_k, q5_k, q6_k, requantize_k4, sub, sub_mut, K_SCALE_SIZE, QK_K,
};

/// Σx² of a super-block, left to right.
fn sum_x2(x: &[f32; QK_K]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// Sub-block `j` (of `N`) weights `qw[l]·sqrt(σ² + x[l]²)` and their sum.
#[inline(always)]
fn sub_weights<const N: usize>(x: &[f32; QK_K], qw: &[f32], sigma2: f32, j: usize) -> ([f32; N], f32) {
    let xs: &[f32; N] = sub(x, j);
    let w: [f32; N] = std::array::from_fn(|l| qw[N * j + l] * (sigma2 + xs[l] * xs[l]).sqrt());
    let mut sumw = 0f32;
    for &v in &w {
        sumw += v;
    }
    (w, sumw)
}

fn super_blocks<'a, const BYTES: usize>(
    x: &'a [f32],
    qw: &'a [f32],
    out: &'a mut [u8],
) -> impl Iterator<Item = ((&'a [f32; QK_K], &'a [f32]), &'a mut [u8])> {
    x.chunks_exact(QK_K).map(|c| c.try_into().unwrap()).zip(qw.chunks_exact(QK_K)).zip(out.chunks_exact_mut(BYTES))
}

/// `quantize_row_q2_K_impl`.
pub fn q2_k_row(x: &[f32], qw: &[f32], out: &mut [u8]) {
    for ((x, qw), o) in super_blocks::<{ q2_k::BLOCK_BYTES }>(x, qw, out) {
        let sigma2 = sum_x2(x) / QK_K as f32;
        let mut l = [0u8; QK_K];
        let (mut scales, mut mins, mut sw) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        for j in 0..16 {
            let (weight, sumw) = sub_weights::<16>(x, qw, sigma2, j);
            sw[j] = sumw;
            let (s, m) = make_qkx3_quants(3, sub(x, j), &weight, sub_mut(&mut l, j), -0.9, 0.05, 36);
            scales[j] = s;
            mins[j] = m;
        }
        let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
        let dm = make_qp_quants(15, &scales, &mut ls, &sw);
        let mm = make_qp_quants(15, &mins, &mut lm, &sw);

        let (sc, rest) = o.split_at_mut(16);
        let (qs, dd) = rest.split_at_mut(64);
        put_f16(&mut dd[0..], dm);
        put_f16(&mut dd[2..], mm);
        let (dm, mm) = (get_f16(&dd[0..]), get_f16(&dd[2..]));
        for j in 0..16 {
            sc[j] = ls[j] | (lm[j] << 4);
        }
        for j in 0..16 {
            let d = dm * (sc[j] & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let m = mm * (sc[j] >> 4) as f32;
            for i in 16 * j..16 * (j + 1) {
                l[i] = nearest_int((x[i] + m) / d).clamp(0, 3) as u8;
            }
        }
        pack_2bit(&l, qs);
    }
}

/// `quantize_row_q3_K_impl`.
pub fn q3_k_row(x: &[f32], qw: &[f32], out: &mut [u8]) {
    for ((x, qw), o) in super_blocks::<{ q3_k::BLOCK_BYTES }>(x, qw, out) {
        let sigma2 = 2.0 * sum_x2(x) / QK_K as f32;
        let mut l = [0i8; QK_K];
        let (mut scales, mut sw) = ([0f32; 16], [0f32; 16]);
        for j in 0..16 {
            let (weight, sumw) = sub_weights::<16>(x, qw, sigma2, j);
            sw[j] = sumw;
            scales[j] = make_qx_quants(4, sub(x, j), sub_mut(&mut l, j), &weight);
        }
        let (hmask, rest) = o.split_at_mut(32);
        let (qs, rest) = rest.split_at_mut(64);
        let (sc, dd) = rest.split_at_mut(12);
        sc.fill(0);
        let mut ls = [0i8; 16];
        let d_block = make_qx_quants(32, &scales, &mut ls, &sw);
        for j in 0..16 {
            q3_k::put_scale(sc, j, ls[j] as u8);
        }
        put_f16(dd, d_block);
        q3_k::requantize_and_pack(x, &mut l, hmask, qs, sc, dd);
    }
}

/// The scale step shared by weighted Q4_K and Q5_K: per 32-weight sub-block
/// `make_qkx3_quants(32, nmax, …, −0.9, 0.05, 36)`, then the 8 scales and 8 mins fitted to 6
/// bits by `make_qp_quants(8, 63, …, sub-block weights)`. Leaves the search's levels in `l`,
/// writes d, dmin and the packed scales into `head`, and returns the f16-rounded (d, dmin).
fn scales_k4(x: &[f32; QK_K], qw: &[f32], nmax: i32, clamp63: bool, l: &mut [u8; QK_K], head: &mut [u8]) -> (f32, f32) {
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

/// `quantize_row_q4_K_impl`.
pub fn q4_k_row(x: &[f32], qw: &[f32], out: &mut [u8]) {
    for ((x, qw), o) in super_blocks::<{ q4_k::BLOCK_BYTES }>(x, qw, out) {
        let mut l = [0u8; QK_K];
        let (head, qs) = o.split_at_mut(16);
        let (d, dmin) = scales_k4(x, qw, 15, false, &mut l, head);
        requantize_k4(x, d, dmin, &head[4..16], 15, &mut l);
        q4_k::pack_levels(&l, qs);
    }
}

/// `quantize_row_q5_K_impl`.
pub fn q5_k_row(x: &[f32], qw: &[f32], out: &mut [u8]) {
    for ((x, qw), o) in super_blocks::<{ q5_k::BLOCK_BYTES }>(x, qw, out) {
        let mut l = [0u8; QK_K];
        let (head, rest) = o.split_at_mut(16);
        let (d, dmin) = scales_k4(x, qw, 31, true, &mut l, head);
        requantize_k4(x, d, dmin, &head[4..16], 31, &mut l);
        q5_k::pack_levels(&l, rest);
    }
}

/// `quantize_row_q6_K_impl`: the reference search weighted by the importance alone (ggml's
/// σ² term is commented out for this type).
pub fn q6_k_row(x: &[f32], qw: &[f32], out: &mut [u8]) {
    for ((x, qw), o) in super_blocks::<{ q6_k::BLOCK_BYTES }>(x, qw, out) {
        q6_k::quantize_block_weighted(x, |i| qw[i], o);
    }
}
