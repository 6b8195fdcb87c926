//! Tensor encodings: the float types and the GGML block codecs, with row-parallel
//! whole-tensor helpers used by `convert`.

pub mod float;
pub mod q8_0;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;

/// Whether qforge can decode this storage type to f32.
pub fn can_decode(t: GgmlType) -> bool {
    matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0)
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
    out.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(bytes_per_chunk))
        .try_for_each(|(o, s)| decode_slice(t, s, o))?;
    Ok(out)
}

/// Decode a slice holding a whole number of blocks.
pub fn decode_slice(t: GgmlType, src: &[u8], out: &mut [f32]) -> Result<()> {
    match t {
        GgmlType::F32 => float::decode_f32(src, out),
        GgmlType::F16 => float::decode_f16(src, out),
        GgmlType::BF16 => float::decode_bf16(src, out),
        GgmlType::Q8_0 => {
            for (b, o) in src.chunks_exact(q8_0::BLOCK_BYTES).zip(out.chunks_exact_mut(q8_0::QK)) {
                q8_0::dequantize_block(b, o);
            }
        }
        other => return Err(Error::Unsupported(format!("decoding {other} tensors is not supported yet"))),
    }
    Ok(())
}

/// Encode f32 weights as type `t`. The length must be a whole number of blocks.
pub fn encode(t: GgmlType, src: &[f32]) -> Result<Vec<u8>> {
    let size = t.row_bytes(src.len() as u64)? as usize;
    let mut out = vec![0u8; size];
    let bytes_per_chunk = CHUNK / t.block_size() * t.block_bytes();
    out.par_chunks_mut(bytes_per_chunk)
        .zip(src.par_chunks(CHUNK))
        .try_for_each(|(o, s)| encode_slice(t, s, o))?;
    Ok(out)
}

fn encode_slice(t: GgmlType, src: &[f32], out: &mut [u8]) -> Result<()> {
    match t {
        GgmlType::F32 => float::encode_f32(src, out),
        GgmlType::F16 => float::encode_f16(src, out),
        GgmlType::BF16 => float::encode_bf16(src, out),
        GgmlType::Q8_0 => {
            for (s, o) in src.chunks_exact(q8_0::QK).zip(out.chunks_exact_mut(q8_0::BLOCK_BYTES)) {
                q8_0::quantize_block(s, o);
            }
        }
        other => return Err(Error::Unsupported(format!("encoding to {other} is not supported yet"))),
    }
    Ok(())
}

/// The first non-finite value's index, if any.
pub fn find_nonfinite(x: &[f32]) -> Option<usize> {
    x.par_iter().position_first(|v| !v.is_finite())
}
