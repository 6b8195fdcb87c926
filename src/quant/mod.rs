//! Tensor encodings: the float types and the GGML block codecs, with row-parallel
//! whole-tensor helpers used by `convert`.

pub mod bnb;
pub mod float;
pub mod gptq;
pub mod iq4_nl;
pub mod kquants;
pub mod legacy;
pub mod packed;
pub mod q8_0;
pub mod weighted;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;

/// Whether qforge can decode this storage type to f32.
pub fn can_decode(t: GgmlType) -> bool {
    use GgmlType::*;
    matches!(t, F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ4_NL)
}

/// Whether qforge can encode f32 into this storage type.
pub fn can_encode(t: GgmlType) -> bool {
    can_decode(t)
}

/// Weights per parallel work item; a multiple of every block size (256).
const CHUNK: usize = 64 * 1024;

/// Decode a whole tensor's bytes to f32. `src` must hold exactly `n` weights of type `t`.
pub fn decode(t: GgmlType, src: &[u8], n: usize) -> Result<Vec<f32>> {
    let expected = t.row_bytes(n as u64)? as usize;
    if src.len() != expected {
        return Err(Error::InvalidArgument(format!(
            "{} bytes given for {n} {t} weights ({expected} expected)",
            src.len()
        )));
    }
    let mut out = vec![0f32; n];
    let bytes_per_chunk = CHUNK / t.block_size() * t.block_bytes();
    out.par_chunks_mut(CHUNK).zip(src.par_chunks(bytes_per_chunk)).try_for_each(|(o, s)| decode_slice(t, s, o))?;
    Ok(out)
}

/// Decode a slice holding a whole number of blocks into `out`, which must hold exactly the
/// weights those blocks encode.
pub fn decode_slice(t: GgmlType, src: &[u8], out: &mut [f32]) -> Result<()> {
    use kquants::{q2_k, q3_k, q4_k, q5_k, q6_k};
    use legacy::{q4_0, q4_1, q5_0, q5_1};
    // The block loops zip input and output, so a mismatch would leave outputs unwritten or
    // ignore input (the F32 copy panicked): refuse it.
    let (qk, bb) = (t.block_size(), t.block_bytes());
    if out.len() % qk != 0 || src.len() % bb != 0 || src.len() / bb != out.len() / qk {
        return Err(Error::InvalidArgument(format!(
            "{} bytes of {t} cannot decode into {} weights (blocks of {qk} weights in {bb} bytes)",
            src.len(),
            out.len()
        )));
    }
    match t {
        GgmlType::F32 => float::decode_f32(src, out),
        GgmlType::F16 => float::decode_f16(src, out),
        GgmlType::BF16 => float::decode_bf16(src, out),
        GgmlType::Q8_0 => dequantize_blocks::<{ q8_0::QK }, { q8_0::BLOCK_BYTES }>(src, out, q8_0::dequantize_block),
        GgmlType::Q4_0 => dequantize_blocks::<{ q4_0::QK }, { q4_0::BLOCK_BYTES }>(src, out, q4_0::dequantize_block),
        GgmlType::Q4_1 => dequantize_blocks::<{ q4_1::QK }, { q4_1::BLOCK_BYTES }>(src, out, q4_1::dequantize_block),
        GgmlType::Q5_0 => dequantize_blocks::<{ q5_0::QK }, { q5_0::BLOCK_BYTES }>(src, out, q5_0::dequantize_block),
        GgmlType::Q5_1 => dequantize_blocks::<{ q5_1::QK }, { q5_1::BLOCK_BYTES }>(src, out, q5_1::dequantize_block),
        GgmlType::Q2_K => dequantize_blocks::<{ q2_k::QK }, { q2_k::BLOCK_BYTES }>(src, out, q2_k::dequantize_block),
        GgmlType::Q3_K => dequantize_blocks::<{ q3_k::QK }, { q3_k::BLOCK_BYTES }>(src, out, q3_k::dequantize_block),
        GgmlType::Q4_K => dequantize_blocks::<{ q4_k::QK }, { q4_k::BLOCK_BYTES }>(src, out, q4_k::dequantize_block),
        GgmlType::Q5_K => dequantize_blocks::<{ q5_k::QK }, { q5_k::BLOCK_BYTES }>(src, out, q5_k::dequantize_block),
        GgmlType::Q6_K => dequantize_blocks::<{ q6_k::QK }, { q6_k::BLOCK_BYTES }>(src, out, q6_k::dequantize_block),
        GgmlType::IQ4_NL => {
            dequantize_blocks::<{ iq4_nl::QK }, { iq4_nl::BLOCK_BYTES }>(src, out, iq4_nl::dequantize_block)
        }
        other => return Err(Error::Unsupported(format!("decoding {other} tensors is not supported yet"))),
    }
    Ok(())
}

/// Run a block dequantizer over every block. Generic over the codec so each one is inlined
/// into its own loop.
#[inline(always)]
fn dequantize_blocks<const QK: usize, const BYTES: usize>(src: &[u8], out: &mut [f32], f: impl Fn(&[u8], &mut [f32])) {
    for (b, o) in src.chunks_exact(BYTES).zip(out.chunks_exact_mut(QK)) {
        f(b, o);
    }
}

#[inline(always)]
fn quantize_blocks<const QK: usize, const BYTES: usize>(src: &[f32], out: &mut [u8], f: impl Fn(&[f32], &mut [u8])) {
    for (s, o) in src.chunks_exact(QK).zip(out.chunks_exact_mut(BYTES)) {
        f(s, o);
    }
}

/// Encode f32 weights as type `t`. The length must be a whole number of blocks.
pub fn encode(t: GgmlType, src: &[f32]) -> Result<Vec<u8>> {
    let size = t.row_bytes(src.len() as u64)? as usize;
    let mut out = vec![0u8; size];
    let bytes_per_chunk = CHUNK / t.block_size() * t.block_bytes();
    out.par_chunks_mut(bytes_per_chunk).zip(src.par_chunks(CHUNK)).try_for_each(|(o, s)| encode_slice(t, s, o))?;
    Ok(out)
}

fn encode_slice(t: GgmlType, src: &[f32], out: &mut [u8]) -> Result<()> {
    use kquants::{q2_k, q3_k, q4_k, q5_k, q6_k};
    use legacy::{q4_0, q4_1, q5_0, q5_1};
    match t {
        GgmlType::F32 => float::encode_f32(src, out),
        GgmlType::F16 => float::encode_f16(src, out),
        GgmlType::BF16 => float::encode_bf16(src, out),
        GgmlType::Q8_0 => quantize_blocks::<{ q8_0::QK }, { q8_0::BLOCK_BYTES }>(src, out, q8_0::quantize_block),
        GgmlType::Q4_0 => quantize_blocks::<{ q4_0::QK }, { q4_0::BLOCK_BYTES }>(src, out, q4_0::quantize_block),
        GgmlType::Q4_1 => quantize_blocks::<{ q4_1::QK }, { q4_1::BLOCK_BYTES }>(src, out, q4_1::quantize_block),
        GgmlType::Q5_0 => quantize_blocks::<{ q5_0::QK }, { q5_0::BLOCK_BYTES }>(src, out, q5_0::quantize_block),
        GgmlType::Q5_1 => quantize_blocks::<{ q5_1::QK }, { q5_1::BLOCK_BYTES }>(src, out, q5_1::quantize_block),
        GgmlType::Q2_K => quantize_blocks::<{ q2_k::QK }, { q2_k::BLOCK_BYTES }>(src, out, q2_k::quantize_block),
        GgmlType::Q3_K => quantize_blocks::<{ q3_k::QK }, { q3_k::BLOCK_BYTES }>(src, out, q3_k::quantize_block),
        GgmlType::Q4_K => quantize_blocks::<{ q4_k::QK }, { q4_k::BLOCK_BYTES }>(src, out, q4_k::quantize_block),
        GgmlType::Q5_K => quantize_blocks::<{ q5_k::QK }, { q5_k::BLOCK_BYTES }>(src, out, q5_k::quantize_block),
        GgmlType::Q6_K => quantize_blocks::<{ q6_k::QK }, { q6_k::BLOCK_BYTES }>(src, out, q6_k::quantize_block),
        GgmlType::IQ4_NL => {
            quantize_blocks::<{ iq4_nl::QK }, { iq4_nl::BLOCK_BYTES }>(src, out, iq4_nl::quantize_block)
        }
        other => return Err(Error::Unsupported(format!("encoding to {other} is not supported yet"))),
    }
    Ok(())
}

/// Fixed-size views of one block: the codecs index through these so that the compiler sees the
/// lengths, drops the bounds checks and can vectorize the loops.
#[inline(always)]
pub(crate) fn as_block<const N: usize>(x: &[f32]) -> &[f32; N] {
    x[..N].try_into().unwrap()
}

#[inline(always)]
pub(crate) fn as_block_mut<const N: usize>(x: &mut [f32]) -> &mut [f32; N] {
    (&mut x[..N]).try_into().unwrap()
}

#[inline(always)]
pub(crate) fn as_bytes<const N: usize>(b: &[u8]) -> &[u8; N] {
    b[..N].try_into().unwrap()
}

#[inline(always)]
pub(crate) fn as_bytes_mut<const N: usize>(b: &mut [u8]) -> &mut [u8; N] {
    (&mut b[..N]).try_into().unwrap()
}

/// C's `(int8_t)f` as gcc compiles it for x86-64: a truncating `cvttss2si` to 32 bits (NaN and
/// out-of-range values give `INT32_MIN`) and the low byte kept. Rust's `as i32` saturates
/// instead, which has the same low byte except at and above 2^31 (0xFF, not 0x00), so only that
/// case needs fixing; in-range values agree with a plain `as i8`. The out-of-range cases happen
/// when a subnormal block scale makes `1/d` infinite, where we still want ggml's bytes. Written
/// as a select so the quantizer loops still vectorize.
#[inline(always)]
pub(crate) fn c_float_to_i8(v: f32) -> i8 {
    let i = if v >= 2147483648.0 { 0 } else { v as i32 };
    i as i8
}

/// The first non-finite value's index, if any.
pub fn find_nonfinite(x: &[f32]) -> Option<usize> {
    // Whole chunks are scanned with a branch-free reduction that vectorizes (a per-element
    // rayon `position_first` checked a shared flag per weight and was the slowest pass of a
    // conversion); only a chunk that holds one is searched for the index.
    const C: usize = 1 << 16;
    let chunk = x.par_chunks(C).position_first(|c| c.iter().fold(false, |bad, v| bad | !v.is_finite()))?;
    let c = &x[chunk * C..((chunk + 1) * C).min(x.len())];
    c.iter().position(|v| !v.is_finite()).map(|i| chunk * C + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_cast_matches_x86() {
        assert_eq!(c_float_to_i8(8.99), 8);
        assert_eq!(c_float_to_i8(-0.7), 0);
        assert_eq!(c_float_to_i8(200.0), -56);
        assert_eq!(c_float_to_i8(f32::INFINITY), 0);
        assert_eq!(c_float_to_i8(f32::NAN), 0);
    }
}
