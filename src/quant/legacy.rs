//! The legacy GGML block codecs: Q4_0, Q4_1, Q5_0 and Q5_1, blocks of 32 weights.
//!
//! Each quantizer reproduces ggml's `quantize_row_*_ref` (ggml-quants.c) operation for
//! operation, which is also what `ggml_quantize_chunk` runs when no importance matrix is given
//! and what gguf-py's numpy quantizers copy. In particular the quantized value is
//! `(int8_t)(x·id + offset)`: a truncating cast of `x·id + 8.5` (not a rounding function), with
//! `id = 1/d` computed in f32 from the *unrounded* scale.
//!
//! Layouts (ggml-common.h), little-endian, f16 scales:
//! - `block_q4_0`: `d`, `qs[16]` (18 bytes); x ≈ d·(q − 8)
//! - `block_q4_1`: `d`, `m`, `qs[16]` (20 bytes); x ≈ d·q + m
//! - `block_q5_0`: `d`, `qh[4]`, `qs[16]` (22 bytes); x ≈ d·(q − 16)
//! - `block_q5_1`: `d`, `m`, `qh[4]`, `qs[16]` (24 bytes); x ≈ d·q + m
//!
//! In every type byte `j` of `qs` holds weight `j` in its low nibble and weight `j + 16` in its
//! high nibble; the 5-bit types keep bit 4 of weight `j` in bit `j` of the u32 `qh`.

use super::dot::{chunk16, BlockSink};
use super::float::{get_f16, put_f16};
use super::grid::{set_bit, set_nibble32, ElemGrid};
use super::search::weighted::{importance, make_qkx3_quants, make_qx_quants, sum_x2};
use super::{as_block, as_bytes_mut, c_float_to_i8, max32, min32};

/// Weights per block, for all four types.
pub const QK: usize = 32;

/// The value of largest magnitude, with its sign; the first one wins ties, as in ggml (0 when
/// every value is 0 or NaN).
#[inline(always)]
fn signed_absmax(x: &[f32; QK]) -> f32 {
    // ggml's loop (`if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`) keeps the first value
    // whose magnitude is the largest; found here as that magnitude (a tree, in any order) and
    // then the first index that has it, both of which vectorize.
    let amax = max32(&x.map(f32::abs), 0.0);
    if amax == 0.0 {
        return 0.0;
    }
    x[first_index(x, |v| v.abs() == amax)]
}

/// (min, max) as ggml's loop (`if (v < min) min = v; if (v > max) max = v;` from ±FLT_MAX)
/// finds them: NaN ignored and, among equal values (0 and −0), the first.
#[inline(always)]
fn min_max(x: &[f32; QK]) -> (f32, f32) {
    let (min, max) = (min32(x, f32::MAX), max32(x, f32::MIN));
    // A value's sign is only ambiguous for ±0 (other equal values are the same bits).
    let first = |value: f32| if value == 0.0 { x[first_index(x, |v| v == value)] } else { value };
    (first(min), first(max))
}

/// The first index whose value passes `hit` (the caller knows one does), found through a
/// bit mask so that the comparisons vectorize.
#[inline(always)]
fn first_index(x: &[f32; QK], hit: impl Fn(f32) -> bool) -> usize {
    let mut mask = 0u32;
    for (i, &v) in x.iter().enumerate() {
        mask |= (hit(v) as u32) << i;
    }
    (mask.trailing_zeros() as usize).min(QK - 1)
}

/// Blocks of a row with their importance.
fn weighted_blocks<'a>(x: &'a [f32], qw: &'a [f32]) -> impl Iterator<Item = (&'a [f32; QK], &'a [f32])> {
    x.chunks_exact(QK).zip(qw.chunks_exact(QK)).map(|(xb, w)| (xb.try_into().unwrap(), w))
}

/// The importance-weighted quantizers (`quantize_row_q*_impl` with `quant_weights`) search the
/// scale instead of taking it from the block's extreme value: each weight counts
/// `qw[j]·sqrt(σ² + x[j]²)`, with σ² the mean square of the *whole row*, so a column the
/// activations rarely use may be rounded coarsely in favour of the columns that matter. The
/// symmetric types use `make_qx_quants`, the affine ones `make_qkx3_quants`.
fn row_sigma2(x: &[f32]) -> f32 {
    sum_x2(x) / x.len() as f32
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

pub mod q4_0 {
    use super::*;

    pub const QK: usize = super::QK;
    pub const BLOCK_BYTES: usize = 18;

    /// d = max/−8 with `max` the signed value of largest magnitude, so that value maps to
    /// q = 0 exactly and the asymmetric range [−8, 7] is used in full on its side.
    #[inline(always)]
    pub fn quantize_block(x: &[f32], out: &mut [u8]) {
        let (x, out) = (as_block::<QK>(x), as_bytes_mut::<BLOCK_BYTES>(out));
        let d = signed_absmax(x) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(out, d);
        for j in 0..QK / 2 {
            let q0 = c_float_to_i8(x[j] * id + 8.5).min(15) as u8;
            let q1 = c_float_to_i8(x[j + QK / 2] * id + 8.5).min(15) as u8;
            out[2 + j] = q0 | (q1 << 4);
        }
    }

    #[inline(always)]
    pub fn decode_block(b: &[u8; BLOCK_BYTES], s: &mut impl BlockSink) {
        let d = get_f16(b);
        let qs = &b[2..BLOCK_BYTES];
        s.put16(0, &chunk16(|j| ((qs[j] & 0x0F) as i32 - 8) as f32 * d));
        s.put16(16, &chunk16(|j| ((qs[j] >> 4) as i32 - 8) as f32 * d));
    }

    /// Weight `j`'s grid given the header in block `b` (GPTQ rounds onto it).
    pub fn elem_grid(b: &[u8], _j: usize) -> ElemGrid {
        ElemGrid::Sym { d: get_f16(b), off: -8, qmin: 0, qmax: 15 }
    }

    /// Store weight `j`'s code `q`.
    pub fn set_code(b: &mut [u8], j: usize, q: i32) {
        set_nibble32(&mut b[2..18], j, q as u8);
    }

    /// `quantize_row_q4_0_impl`: x ≈ d·(L − 8), d from `make_qx_quants(32, 8, …, weights)`.
    pub fn quantize_row_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
        let sigma2 = row_sigma2(x);
        for ((xb, w), o) in weighted_blocks(x, qw).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
            let weight = importance(xb, w, sigma2);
            let mut l = [0i8; QK];
            let d = make_qx_quants(8, xb, &mut l, &weight);
            put_f16(o, d);
            for j in 0..QK / 2 {
                o[2 + j] = (l[j] as u8) | ((l[j + QK / 2] as u8) << 4);
            }
        }
    }
}

pub mod q4_1 {
    use super::*;

    pub const QK: usize = super::QK;
    pub const BLOCK_BYTES: usize = 20;

    /// Affine: d = (max − min)/15, m = min, q = trunc((x − min)·id + 0.5).
    #[inline(always)]
    pub fn quantize_block(x: &[f32], out: &mut [u8]) {
        let (x, out) = (as_block::<QK>(x), as_bytes_mut::<BLOCK_BYTES>(out));
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(out, d);
        put_f16(&mut out[2..], min);
        for j in 0..QK / 2 {
            let q0 = c_float_to_i8((x[j] - min) * id + 0.5).min(15) as u8;
            let q1 = c_float_to_i8((x[j + QK / 2] - min) * id + 0.5).min(15) as u8;
            out[4 + j] = q0 | (q1 << 4);
        }
    }

    #[inline(always)]
    pub fn decode_block(b: &[u8; BLOCK_BYTES], s: &mut impl BlockSink) {
        let d = get_f16(b);
        let m = get_f16(&b[2..]);
        let qs = &b[4..BLOCK_BYTES];
        s.put16(0, &chunk16(|j| (qs[j] & 0x0F) as f32 * d + m));
        s.put16(16, &chunk16(|j| (qs[j] >> 4) as f32 * d + m));
    }

    /// Weight `j`'s grid given the header in block `b` (GPTQ rounds onto it).
    pub fn elem_grid(b: &[u8], _j: usize) -> ElemGrid {
        ElemGrid::Affine { d: get_f16(b), m: get_f16(&b[2..]), qmax: 15 }
    }

    /// Store weight `j`'s code `q`.
    pub fn set_code(b: &mut [u8], j: usize, q: i32) {
        set_nibble32(&mut b[4..20], j, q as u8);
    }

    /// `quantize_row_q4_1_impl`: x ≈ d·L + m, from `make_qkx3_quants(32, 15, …, −0.9, 0.05, 36)`.
    pub fn quantize_row_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
        let sigma2 = row_sigma2(x);
        for ((xb, w), o) in weighted_blocks(x, qw).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
            let weight = importance(xb, w, sigma2);
            let mut l = [0u8; QK];
            let (d, the_min) = make_qkx3_quants(15, xb, &weight, &mut l, -0.9, 0.05, 36);
            put_f16(o, d);
            put_f16(&mut o[2..], -the_min);
            for j in 0..QK / 2 {
                o[4 + j] = l[j] | (l[j + QK / 2] << 4);
            }
        }
    }
}

pub mod q5_0 {
    use super::*;

    pub const QK: usize = super::QK;
    pub const BLOCK_BYTES: usize = 22;

    /// As Q4_0 with 32 levels: d = max/−16, q = min(31, trunc(x·id + 16.5)).
    #[inline(always)]
    pub fn quantize_block(x: &[f32], out: &mut [u8]) {
        let (x, out) = (as_block::<QK>(x), as_bytes_mut::<BLOCK_BYTES>(out));
        let d = signed_absmax(x) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(out, d);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let q0 = c_float_to_i8(x[j] * id + 16.5).min(31) as u8;
            let q1 = c_float_to_i8(x[j + QK / 2] * id + 16.5).min(31) as u8;
            out[6 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
        out[2..6].copy_from_slice(&qh.to_le_bytes());
    }

    #[inline(always)]
    pub fn decode_block(b: &[u8; BLOCK_BYTES], s: &mut impl BlockSink) {
        let d = get_f16(b);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..BLOCK_BYTES];
        s.put16(0, &chunk16(|j| (((qs[j] & 0x0F) as u32 | (((qh >> j) << 4) & 0x10)) as i32 - 16) as f32 * d));
        s.put16(16, &chunk16(|j| (((qs[j] >> 4) as u32 | ((qh >> (j + 12)) & 0x10)) as i32 - 16) as f32 * d));
    }

    /// Weight `j`'s grid given the header in block `b` (GPTQ rounds onto it).
    pub fn elem_grid(b: &[u8], _j: usize) -> ElemGrid {
        ElemGrid::Sym { d: get_f16(b), off: -16, qmin: 0, qmax: 31 }
    }

    /// Store weight `j`'s code `q`: low nibble in qs, fifth bit in qh.
    pub fn set_code(b: &mut [u8], j: usize, q: i32) {
        set_nibble32(&mut b[6..22], j, (q & 0xF) as u8);
        set_bit(&mut b[2 + j / 8], j % 8, q & 0x10 != 0);
    }

    /// `quantize_row_q5_0_impl`: x ≈ d·(L − 16), d from `make_qx_quants(32, 16, …, weights)`.
    pub fn quantize_row_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
        let sigma2 = row_sigma2(x);
        for ((xb, w), o) in weighted_blocks(x, qw).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
            let weight = importance(xb, w, sigma2);
            let mut l = [0i8; QK];
            let d = make_qx_quants(16, xb, &mut l, &weight);
            put_f16(o, d);
            let qh = pack_5bit(|j| l[j] as u8, &mut o[6..]);
            o[2..6].copy_from_slice(&qh.to_le_bytes());
        }
    }
}

pub mod q5_1 {
    use super::*;

    pub const QK: usize = super::QK;
    pub const BLOCK_BYTES: usize = 24;

    /// As Q4_1 with 32 levels. ggml casts with `(uint8_t)` and no clamp here (the value cannot
    /// exceed 31.5); the low byte of the truncated value is the same thing.
    #[inline(always)]
    pub fn quantize_block(x: &[f32], out: &mut [u8]) {
        let (x, out) = (as_block::<QK>(x), as_bytes_mut::<BLOCK_BYTES>(out));
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(out, d);
        put_f16(&mut out[2..], min);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let q0 = c_float_to_i8((x[j] - min) * id + 0.5) as u8;
            let q1 = c_float_to_i8((x[j + QK / 2] - min) * id + 0.5) as u8;
            out[8 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
        out[4..8].copy_from_slice(&qh.to_le_bytes());
    }

    #[inline(always)]
    pub fn decode_block(b: &[u8; BLOCK_BYTES], s: &mut impl BlockSink) {
        let d = get_f16(b);
        let m = get_f16(&b[2..]);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let qs = &b[8..BLOCK_BYTES];
        s.put16(0, &chunk16(|j| ((qs[j] & 0x0F) as u32 | (((qh >> j) << 4) & 0x10)) as f32 * d + m));
        s.put16(16, &chunk16(|j| ((qs[j] >> 4) as u32 | ((qh >> (j + 12)) & 0x10)) as f32 * d + m));
    }

    /// Weight `j`'s grid given the header in block `b` (GPTQ rounds onto it).
    pub fn elem_grid(b: &[u8], _j: usize) -> ElemGrid {
        ElemGrid::Affine { d: get_f16(b), m: get_f16(&b[2..]), qmax: 31 }
    }

    /// Store weight `j`'s code `q`: low nibble in qs, fifth bit in qh.
    pub fn set_code(b: &mut [u8], j: usize, q: i32) {
        set_nibble32(&mut b[8..24], j, (q & 0xF) as u8);
        set_bit(&mut b[4 + j / 8], j % 8, q & 0x10 != 0);
    }

    /// `quantize_row_q5_1_impl`: x ≈ d·L + m, from `make_qkx3_quants(32, 31, …, −0.9, 0.05, 36)`.
    pub fn quantize_row_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
        let sigma2 = row_sigma2(x);
        for ((xb, w), o) in weighted_blocks(x, qw).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
            let weight = importance(xb, w, sigma2);
            let mut l = [0u8; QK];
            let (d, the_min) = make_qkx3_quants(31, xb, &weight, &mut l, -0.9, 0.05, 36);
            put_f16(o, d);
            put_f16(&mut o[2..], -the_min);
            let qh = pack_5bit(|j| l[j], &mut o[8..]);
            o[4..8].copy_from_slice(&qh.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seed: u32) -> Vec<f32> {
        // A deterministic, lopsided block: mostly small values plus one larger one.
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..QK)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let u = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                if i == 7 {
                    3.0 * u
                } else {
                    u * 0.4
                }
            })
            .collect()
    }

    type Codec = (fn(&[f32], &mut [u8]), fn(&[u8], &mut [f32]), usize, f32);

    // (quantize, dequantize, bytes, levels − 1 across the range covered by the step)
    const CODECS: [(&str, Codec); 4] = [
        ("q4_0", (q4_0::quantize_block, crate::quant::dot::block_decode!(q4_0), q4_0::BLOCK_BYTES, 0.0)),
        ("q4_1", (q4_1::quantize_block, crate::quant::dot::block_decode!(q4_1), q4_1::BLOCK_BYTES, 15.0)),
        ("q5_0", (q5_0::quantize_block, crate::quant::dot::block_decode!(q5_0), q5_0::BLOCK_BYTES, 0.0)),
        ("q5_1", (q5_1::quantize_block, crate::quant::dot::block_decode!(q5_1), q5_1::BLOCK_BYTES, 31.0)),
    ];

    /// The vectorized extremes are ggml's sequential loops bit for bit, on blocks built to
    /// catch an order that leaks through: ±0 mixed, equal magnitudes of both signs, NaN, all NaN.
    #[test]
    fn extremes_are_ggmls_sequential_loops() {
        let ggml_signed_absmax = |x: &[f32; QK]| {
            let (mut amax, mut max) = (0f32, 0f32);
            for &v in x {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            max
        };
        let ggml_min_max = |x: &[f32; QK]| {
            let (mut min, mut max) = (f32::MAX, f32::MIN);
            for &v in x {
                if v < min {
                    min = v;
                }
                if v > max {
                    max = v;
                }
            }
            (min, max)
        };
        let palette = [0.0f32, -0.0, 0.5, -0.5, 0.25, -0.25, 1e-40, -1e-40, f32::NAN, 3.0, -3.0];
        let mut state = 0x9e37_79b9u32;
        for case in 0..20_000 {
            let x: [f32; QK] = std::array::from_fn(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                // Few distinct values per block so that ties and zeros are common.
                palette[(state as usize >> 3) % (2 + case % (palette.len() - 1))]
            });
            let all_nan = [f32::NAN; QK];
            for x in [x, all_nan] {
                assert_eq!(signed_absmax(&x).to_bits(), ggml_signed_absmax(&x).to_bits(), "{x:?}");
                let ((a, b), (c, d)) = (min_max(&x), ggml_min_max(&x));
                assert_eq!((a.to_bits(), b.to_bits()), (c.to_bits(), d.to_bits()), "{x:?}");
            }
        }
    }

    #[test]
    fn round_trip_error_is_within_half_a_step_plus_scale_rounding() {
        for (name, (q, dq, bytes, levels)) in CODECS {
            for seed in 0..50 {
                let x = sample(seed);
                let mut b = vec![0u8; bytes];
                q(&x, &mut b);
                let mut y = vec![0f32; QK];
                dq(&b, &mut y);
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let (min, max) = min_max(as_block(&x));
                // Symmetric types: step = amax/8 (Q4_0) or amax/16 (Q5_0), and the side opposite
                // the signed max only reaches 7 (15) steps, so weights beyond that are clipped.
                // Affine types: step = range/levels.
                let (step, reach) = match name {
                    "q4_0" => (amax / 8.0, 7.0 * amax / 8.0),
                    "q5_0" => (amax / 16.0, 15.0 * amax / 16.0),
                    _ => ((max - min) / levels, f32::INFINITY),
                };
                for (a, b) in x.iter().zip(&y) {
                    // Half a step (or the clipping), plus the f16 rounding of d and m.
                    let bound = (0.5 * step).max(a.abs() - reach) + amax * 2f32.powi(-10) + 1e-6;
                    assert!((a - b).abs() <= bound, "{name} seed {seed}: {a} vs {b} (bound {bound})");
                }
            }
        }
    }

    #[test]
    fn zero_block_round_trips_to_zero() {
        for (name, (q, dq, bytes, _)) in CODECS {
            let mut b = vec![0xAAu8; bytes];
            q(&[0.0; QK], &mut b);
            let mut y = vec![1f32; QK];
            dq(&b, &mut y);
            assert!(y.iter().all(|&v| v == 0.0), "{name}");
        }
    }

    #[test]
    fn extreme_value_maps_to_the_end_of_the_range() {
        let mut x = [0.1f32; QK];
        x[3] = -2.0;
        let mut b = [0u8; q4_0::BLOCK_BYTES];
        q4_0::quantize_block(&x, &mut b);
        assert_eq!(b[2 + 3] & 0x0F, 0, "the signed max maps to q = 0, i.e. −8");
        let mut y = [0f32; QK];
        crate::quant::dot::block_decode!(q4_0)(&b, &mut y);
        assert_eq!(y[3], -2.0);
    }
}
