//! Q8_0: blocks of 32 weights, one f16 scale `d` and 32 signed bytes; x ≈ d·q.
//! Layout (ggml-common.h `block_q8_0`): `d: f16` then `qs: [i8; 32]`, 34 bytes.

use super::dot::{chunk32, BlockSink};
use super::float::{get_f16, put_f16};
use super::grid::ElemGrid;
use super::{as_block, c_float_to_i8, max32};

pub const QK: usize = 32;
pub const BLOCK_BYTES: usize = 34;

/// Quantize one block exactly as ggml's `quantize_row_q8_0_ref` (and gguf-py, which copies
/// it): d = amax/127, q = round-half-away(x · (1/d)). Multiplying by the reciprocal rather
/// than dividing matters: the two differ by one unit on a few weights per tensor. The store is
/// C's float → int8_t conversion, which differs from Rust's saturating `as` when a subnormal
/// block makes 1/d infinite (ggml and gguf-py then store 0, not ±127).
#[inline(always)]
pub fn quantize_block(x: &[f32], out: &mut [u8]) {
    debug_assert_eq!(x.len(), QK);
    // ggml's running max of |x| from 0 (NaN ignored; |x| has no −0, so any order).
    let amax = max32(&as_block::<QK>(x).map(f32::abs), 0.0);
    let d = amax / 127.0;
    put_f16(out, d);
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    for (q, &v) in out[2..BLOCK_BYTES].iter_mut().zip(x) {
        *q = c_float_to_i8((v * id).round()) as u8;
    }
}

/// `dequantize_row_q8_0`, into a sink (see `quant::dot`).
#[inline(always)]
pub fn decode_block(b: &[u8; BLOCK_BYTES], s: &mut impl BlockSink) {
    let q = &b[2..BLOCK_BYTES];
    s.put32_scaled(0, get_f16(b), &chunk32(|i| (q[i] as i8) as f32));
}

/// Weight `j`'s grid given the header in block `b` (GPTQ rounds onto it). ggml's quantizer
/// never writes −128, and its SIMD dot products assume it does not.
pub fn elem_grid(b: &[u8], _j: usize) -> ElemGrid {
    ElemGrid::Sym { d: get_f16(b), off: 0, qmin: -127, qmax: 127 }
}

/// Store weight `j`'s code `q`.
pub fn set_code(b: &mut [u8], j: usize, q: i32) {
    b[2 + j] = q as i8 as u8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_within_half_a_step() {
        let x: Vec<f32> = (0..32).map(|i| ((i * 37 % 64) as f32 - 31.5) * 0.013).collect();
        let mut b = [0u8; BLOCK_BYTES];
        quantize_block(&x, &mut b);
        let mut y = [0f32; 32];
        crate::quant::dot::block_decode!(crate::quant::q8_0)(&b, &mut y);
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let step = amax / 127.0;
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= 0.5 * step * 1.01 + 1e-6, "{a} vs {b}");
        }
        // The element with the largest magnitude maps to ±127.
        assert!(b[2..].iter().any(|&q| q as i8 == 127 || q as i8 == -127));
    }

    #[test]
    fn zero_block_is_all_zero() {
        let mut b = [1u8; BLOCK_BYTES];
        quantize_block(&[0.0; 32], &mut b);
        assert!(b.iter().all(|&v| v == 0));
    }
}
