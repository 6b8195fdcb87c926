//! Importance-weighted Q4_0, Q4_1, Q5_0, Q5_1: ggml's `quantize_row_q*_impl` with
//! `quant_weights`, one row at a time.
//!
//! Unlike the reference quantizers (scale from the block's extreme value), these search the
//! scale: each weight counts `qw[j]·sqrt(σ² + x[j]²)`, with σ² the mean square of the *whole
//! row* — so a column the activations rarely use may be rounded coarsely in favour of the
//! columns that matter. The symmetric types use `make_qx_quants`, the affine ones
//! `make_qkx3_quants`. Layouts are those of `crate::quant::legacy`.

use super::search::{make_qkx3_quants, make_qx_quants};
use crate::quant::float::put_f16;
use crate::quant::legacy::{q4_0, q4_1, q5_0, q5_1, QK};

/// σ² of a row: its mean square, summed left to right as ggml does.
fn row_sigma2(x: &[f32]) -> f32 {
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    sum_x2 / x.len() as f32
}

/// The per-weight importance of one block: `qw[j]·sqrt(σ² + x[j]²)`.
#[inline(always)]
fn block_weights(xb: &[f32; QK], qw: &[f32], sigma2: f32) -> [f32; QK] {
    std::array::from_fn(|j| qw[j] * (sigma2 + xb[j] * xb[j]).sqrt())
}

fn blocks<'a>(x: &'a [f32], qw: &'a [f32]) -> impl Iterator<Item = (&'a [f32; QK], &'a [f32])> {
    x.chunks_exact(QK).zip(qw.chunks_exact(QK)).map(|(xb, w)| (xb.try_into().unwrap(), w))
}

/// Split the 5-bit levels of a block into low nibbles (`qs`) and the u32 of fifth bits (`qh`),
/// as `block_q5_0`/`block_q5_1` store them.
fn pack_5bit(l: impl Fn(usize) -> u8, qs: &mut [u8]) -> u32 {
    let mut qh = 0u32;
    for (j, q) in qs.iter_mut().enumerate().take(QK / 2) {
        let (a, b) = (l(j), l(j + QK / 2));
        *q = (a & 0x0F) | ((b & 0x0F) << 4);
        qh |= (((a & 0x10) >> 4) as u32) << j;
        qh |= (((b & 0x10) >> 4) as u32) << (j + QK / 2);
    }
    qh
}

/// `quantize_row_q4_0_impl`: x ≈ d·(L − 8), d from `make_qx_quants(32, 8, …, weights)`.
pub fn q4_0_row(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let sigma2 = row_sigma2(x);
    for ((xb, w), o) in blocks(x, qw).zip(out.chunks_exact_mut(q4_0::BLOCK_BYTES)) {
        let weight = block_weights(xb, w, sigma2);
        let mut l = [0i8; QK];
        let d = make_qx_quants(8, xb, &mut l, &weight);
        put_f16(o, d);
        for j in 0..QK / 2 {
            o[2 + j] = (l[j] as u8) | ((l[j + QK / 2] as u8) << 4);
        }
    }
}

/// `quantize_row_q5_0_impl`: x ≈ d·(L − 16), d from `make_qx_quants(32, 16, …, weights)`.
pub fn q5_0_row(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let sigma2 = row_sigma2(x);
    for ((xb, w), o) in blocks(x, qw).zip(out.chunks_exact_mut(q5_0::BLOCK_BYTES)) {
        let weight = block_weights(xb, w, sigma2);
        let mut l = [0i8; QK];
        let d = make_qx_quants(16, xb, &mut l, &weight);
        put_f16(o, d);
        let qh = pack_5bit(|j| l[j] as u8, &mut o[6..]);
        o[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

/// `quantize_row_q4_1_impl`: x ≈ d·L + m, from `make_qkx3_quants(32, 15, …, −0.9, 0.05, 36)`.
pub fn q4_1_row(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let sigma2 = row_sigma2(x);
    for ((xb, w), o) in blocks(x, qw).zip(out.chunks_exact_mut(q4_1::BLOCK_BYTES)) {
        let weight = block_weights(xb, w, sigma2);
        let mut l = [0u8; QK];
        let (d, the_min) = make_qkx3_quants(15, xb, &weight, &mut l, -0.9, 0.05, 36);
        put_f16(o, d);
        put_f16(&mut o[2..], -the_min);
        for j in 0..QK / 2 {
            o[4 + j] = l[j] | (l[j + QK / 2] << 4);
        }
    }
}

/// `quantize_row_q5_1_impl`: x ≈ d·L + m, from `make_qkx3_quants(32, 31, …, −0.9, 0.05, 36)`.
pub fn q5_1_row(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let sigma2 = row_sigma2(x);
    for ((xb, w), o) in blocks(x, qw).zip(out.chunks_exact_mut(q5_1::BLOCK_BYTES)) {
        let weight = block_weights(xb, w, sigma2);
        let mut l = [0u8; QK];
        let (d, the_min) = make_qkx3_quants(31, xb, &weight, &mut l, -0.9, 0.05, 36);
        put_f16(o, d);
        put_f16(&mut o[2..], -the_min);
        let qh = pack_5bit(|j| l[j], &mut o[8..]);
        o[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}
