//! TEST_Q3_0, a block type made up for the tests (not a ggml type): Q4_0's scheme with three
//! bits, blocks of 32 weights as one f16 scale `d` and 32 three-bit codes packed little-endian
//! (code j at bit 3j of the 12 code bytes), 14 bytes; x ≈ d·(q − 4).
//!
//! It exists to show (and keep true) that a block type is one file plus a row of
//! `quant::CODECS`: this module and that row are all it took, beside the `#[cfg(test)]` id in
//! `ggml_type`'s list. The tests below and in `made_up_codec_tests.rs` (the uses outside
//! `quant`: CLI names, plans, GGUF files, the runtime) reach it only through what the crate
//! derives from the table; the table-wide unit tests (the GPTQ grid's
//! `codes_and_values_match_the_decoder`, the weighted and decode checks) iterate over it too.

use super::dot::{chunk32, BlockSink};
use super::float::{get_f16, put_f16};
use super::grid::ElemGrid;

pub const QK: usize = 32;
pub const BLOCK_BYTES: usize = 14;

fn code(b: &[u8], j: usize) -> i32 {
    let bit = 3 * j;
    let pair = b[2 + bit / 8] as u16 | (*b.get(2 + bit / 8 + 1).unwrap_or(&0) as u16) << 8;
    ((pair >> (bit % 8)) & 7) as i32
}

/// Signed absmax as Q4_0 does it: the weight of largest magnitude maps to code 0 (−4·d).
#[inline(always)]
pub fn quantize_block(x: &[f32], out: &mut [u8]) {
    let mut max = 0f32;
    for &v in x {
        if v.abs() > max.abs() {
            max = v;
        }
    }
    let d = max / -4.0;
    put_f16(out, d);
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    out[2..BLOCK_BYTES].fill(0);
    for (j, &v) in x.iter().enumerate() {
        set_code(out, j, ((v * id + 4.5) as i32).min(7));
    }
}

#[inline(always)]
pub fn decode_block(b: &[u8; BLOCK_BYTES], s: &mut impl BlockSink) {
    s.put32_scaled(0, get_f16(b), &chunk32(|j| (code(b, j) - 4) as f32));
}

pub fn elem_grid(b: &[u8], _j: usize) -> ElemGrid {
    ElemGrid::Sym { d: get_f16(b), off: -4, qmin: 0, qmax: 7 }
}

pub fn set_code(b: &mut [u8], j: usize, q: i32) {
    let bit = 3 * j;
    for k in 0..3 {
        let (byte, shift) = (2 + (bit + k) / 8, (bit + k) % 8);
        b[byte] = (b[byte] & !(1 << shift)) | ((((q >> k) & 1) as u8) << shift);
    }
}

#[cfg(test)]
mod tests {
    use crate::ggml_type::GgmlType;
    use crate::quant::{self, gptq};

    const T: GgmlType = GgmlType::TEST_Q3_0;

    fn weights(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1.0 + (i / 32) as f32 * 0.1)).collect()
    }

    #[test]
    fn encodes_and_decodes_through_the_table() {
        let x = weights(32 * 40);
        let bytes = quant::encode(T, &x).unwrap();
        assert_eq!(bytes.len(), 40 * super::BLOCK_BYTES);
        let y = quant::decode(T, &bytes, x.len()).unwrap();
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = amax / 4.0;
            for (a, b) in xb.iter().zip(yb) {
                assert!((a - b).abs() <= step * 1.001, "{a} vs {b} (step {step})");
            }
        }
        // The fused dot of generation is the decoded row's dot.
        let act: Vec<f32> = (0..x.len()).map(|i| (i % 17) as f32 - 8.0).collect();
        let want: f32 = y.iter().zip(&act).map(|(a, b)| a * b).sum();
        let got = (quant::codec(T).unwrap().dot)(&bytes, &act);
        assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{got} vs {want}");
    }

    #[test]
    fn gptq_targets_it() {
        assert!(gptq::ggml_types().any(|t| t == T));
        let (rows, cols) = (4, 64);
        let w = weights(rows * cols);
        let mut h = gptq::Hessian::new(cols);
        h.add(&weights(16 * cols), 16);
        let res = gptq::quantize(&w, rows, cols, &h, &gptq::Grid::Ggml(T), &Default::default()).unwrap();
        let dec = quant::decode(T, res.ggml.as_ref().unwrap(), w.len()).unwrap();
        assert_eq!(dec, res.dequantized);
    }
}
