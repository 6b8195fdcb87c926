//! Tensor encodings: the float types and the GGML block codecs, with row-parallel
//! whole-tensor helpers used by `convert`.

pub mod bnb;
pub mod dot;
pub mod dot16;
pub mod float;
pub mod gptq;
pub mod grid;
pub mod iq4_nl;
pub mod kquants;
pub mod legacy;
pub mod q8_0;
pub mod search;
pub mod weighted;

#[cfg(test)]
mod test_codec;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use grid::BlockGrid;

/// One storage type qforge encodes and decodes: everything the rest of the crate asks of a
/// codec, in one row of [`CODECS`]. `encode`/`decode` take whole blocks (the block loop is
/// compiled per codec, so the block function inlines into it).
pub struct Codec {
    pub ty: GgmlType,
    /// llama.cpp's reference quantizer (`quantize_row_*_ref`; the float types' conversion).
    pub encode: fn(&[f32], &mut [u8]),
    /// `dequantize_row_*` (the float types' widening).
    pub decode: fn(&[u8], &mut [f32]),
    /// Σ wᵢ·xᵢ over one row of whole blocks without decoding it to memory (generation's
    /// matrix-vector products; see [`dot`]).
    pub dot: dot::DotFn,
    /// llama.cpp's importance-weighted quantizer over one row (`quantize_row_*_impl` with
    /// `quant_weights`: the row, one importance per column, the row's bytes). `None`: the
    /// importance is ignored, as llama.cpp does for Q8_0 and the float types.
    pub encode_weighted: Option<WeightedRowFn>,
    /// The per-weight grid GPTQ rounds onto (`None`: GPTQ does not target the type).
    pub gptq: Option<BlockGrid>,
    /// llama.cpp's `llama_ftype` for a file whose weights are mostly this type
    /// (`LLAMA_FTYPE_ALL_F32`, `LLAMA_FTYPE_MOSTLY_*`): `general.file_type`, and for a quantized
    /// type its name is a `quantize --type` (`convert::plan::FileType`). `None` where llama.cpp
    /// has none (Q3_K, Q4_K and Q5_K name its `_M` mixes instead).
    pub ftype: Option<u32>,
    /// `convert --outtype T` stores every matrix in this type, as llama.cpp's converters do;
    /// otherwise `convert` writes llama-quantize's per-tensor plan for it.
    pub convert_uniform: bool,
    /// llama-quantize's `tensor_type_fallback`: the type a matrix gets when its rows do not
    /// divide into this type's blocks (`None`: F16).
    pub fallback: Option<GgmlType>,
}

impl Codec {
    /// A float type's row: plain conversions, no grid, no weighting.
    const fn float(
        ty: GgmlType,
        encode: fn(&[f32], &mut [u8]),
        decode: fn(&[u8], &mut [f32]),
        dot: dot::DotFn,
    ) -> Codec {
        Codec {
            ty,
            encode,
            decode,
            dot,
            encode_weighted: None,
            gptq: None,
            ftype: None,
            convert_uniform: false,
            fallback: None,
        }
    }

    /// With its `llama_ftype` (see [`Codec::ftype`]).
    const fn ftype(self, id: u32) -> Codec {
        Codec { ftype: Some(id), ..self }
    }

    /// With llama-quantize's fall-back type (see [`Codec::fallback`]).
    const fn fallback(self, t: GgmlType) -> Codec {
        Codec { fallback: Some(t), ..self }
    }

    /// Written by `convert --outtype` in every matrix.
    const fn convert_uniform(self) -> Codec {
        Codec { convert_uniform: true, ..self }
    }
}

/// An importance-weighted row quantizer: the row, one importance per column, the row's bytes.
pub type WeightedRowFn = fn(&[f32], &[f32], &mut [u8]);

/// A block codec's row of [`CODECS`] from its module (`QK`, `BLOCK_BYTES`, `quantize_block`,
/// `decode_block`; with `gptq`, also `elem_grid` and `set_code`; with `weighted`, also
/// `quantize_row_weighted`, llama.cpp's importance-weighted row quantizer).
macro_rules! block_codec {
    ($ty:ident, $($m:ident)::+, gptq, weighted) => {
        Codec { encode_weighted: Some($($m)::+::quantize_row_weighted), ..block_codec!($ty, $($m)::+, gptq) }
    };
    ($ty:ident, $($m:ident)::+, weighted) => {
        Codec { encode_weighted: Some($($m)::+::quantize_row_weighted), ..block_codec!($ty, $($m)::+) }
    };
    ($ty:ident, $($m:ident)::+, gptq) => {
        Codec {
            gptq: Some(BlockGrid { elem: $($m)::+::elem_grid, set_code: $($m)::+::set_code }),
            ..block_codec!($ty, $($m)::+)
        }
    };
    ($ty:ident, $($m:ident)::+) => {
        Codec {
            ty: GgmlType::$ty,
            encode: {
                // Compiled per CPU level (the codecs' element loops vectorize; their sums stay
                // in C's order, so the bytes do not depend on the CPU).
                crate::cpu::multiversion! {
                    fn encode_blocks(src: &[f32], out: &mut [u8]) {
                        for (s, o) in src.chunks_exact($($m)::+::QK).zip(out.chunks_exact_mut($($m)::+::BLOCK_BYTES)) {
                            // The weights stream from memory (see `cpu::PREFETCH_AHEAD`).
                            crate::cpu::prefetch_ahead(s.as_ptr() as *const u8, 4 * $($m)::+::QK);
                            $($m)::+::quantize_block(s, o);
                        }
                    }
                }
                encode_blocks
            },
            decode: dot::block_decode!($($m)::+),
            dot: dot::block_dot!($($m)::+),
            encode_weighted: None,
            gptq: None,
            ftype: None,
            convert_uniform: false,
            fallback: None,
        }
    };
}

/// Every storage type qforge encodes and decodes (GGML's other types are read as metadata
/// only: a tensor of one is refused with a clear error). Adding a block type: its module
/// (quantizer, decoder, weighted quantizer, GPTQ grid) and a row here; everything else is
/// derived from the row: `quantize --type` and `--tensor-type`, `convert --outtype` and their
/// help, the GPTQ targets, the fused dot of generation, GGUF reading and writing. The GGUF
/// id, name and block geometry are `ggml_type`'s (ggml lists every type already),
/// llama-quantize's `_S/_M/_L` mixes and their rules `convert::plan`'s. `TEST_Q3_0`
/// (`test_codec.rs`, tests only) is such a type, made up, with tests of each derived use.
pub static CODECS: &[Codec] = &[
    Codec::float(GgmlType::F32, float::encode_f32, float::decode_f32, dot::dot_f32).ftype(0).convert_uniform(),
    Codec::float(GgmlType::F16, float::encode_f16, float::decode_f16, dot::dot_f16).ftype(1).convert_uniform(),
    Codec::float(GgmlType::BF16, float::encode_bf16, float::decode_bf16, dot::dot_bf16).ftype(32).convert_uniform(),
    // llama.cpp ignores an importance matrix for Q8_0.
    block_codec!(Q8_0, q8_0, gptq).ftype(7).convert_uniform(),
    block_codec!(Q4_0, legacy::q4_0, gptq, weighted).ftype(2).convert_uniform(),
    block_codec!(Q4_1, legacy::q4_1, gptq, weighted).ftype(3).convert_uniform(),
    block_codec!(Q5_0, legacy::q5_0, gptq, weighted).ftype(8).convert_uniform(),
    block_codec!(Q5_1, legacy::q5_1, gptq, weighted).ftype(9).convert_uniform(),
    block_codec!(Q2_K, kquants::q2_k, weighted).ftype(10).fallback(GgmlType::Q4_0),
    block_codec!(Q3_K, kquants::q3_k, weighted).fallback(GgmlType::Q4_0),
    block_codec!(Q4_K, kquants::q4_k, gptq, weighted).fallback(GgmlType::Q5_0),
    block_codec!(Q5_K, kquants::q5_k, gptq, weighted).fallback(GgmlType::Q5_1),
    block_codec!(Q6_K, kquants::q6_k, gptq, weighted).ftype(18).fallback(GgmlType::Q8_0),
    block_codec!(IQ4_NL, iq4_nl, gptq, weighted).ftype(25),
    #[cfg(test)]
    block_codec!(TEST_Q3_0, test_codec, gptq).ftype(1000),
];

/// The codec of `t`, if qforge has one.
pub fn codec(t: GgmlType) -> Option<&'static Codec> {
    CODECS.iter().find(|c| c.ty == t)
}

/// Whether qforge can decode this storage type to f32.
pub fn can_decode(t: GgmlType) -> bool {
    codec(t).is_some()
}

/// Whether qforge can encode f32 into this storage type.
pub fn can_encode(t: GgmlType) -> bool {
    codec(t).is_some()
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
    // The block loops zip input and output, so a mismatch would leave outputs unwritten or
    // ignore input (the F32 copy panicked): refuse it.
    let (qk, bb) = (t.block_size(), t.block_bytes());
    if !out.len().is_multiple_of(qk) || !src.len().is_multiple_of(bb) || src.len() / bb != out.len() / qk {
        return Err(Error::InvalidArgument(format!(
            "{} bytes of {t} cannot decode into {} weights (blocks of {qk} weights in {bb} bytes)",
            src.len(),
            out.len()
        )));
    }
    let c = codec(t).ok_or_else(|| Error::Unsupported(format!("decoding {t} tensors is not supported yet")))?;
    (c.decode)(src, out);
    Ok(())
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
    let c = codec(t).ok_or_else(|| Error::Unsupported(format!("encoding to {t} is not supported yet")))?;
    (c.encode)(src, out);
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

/// The largest of `x` and `init`, NaN ignored: ggml's `if (v > max) max = v` loop, in a tree
/// of 16 lanes that vectorizes. `if v > m { v } else { m }` is x86's `maxps` (which keeps `m`
/// for a NaN `v`), so no lane is ever NaN and the order cannot change the value — except that
/// 0 and −0 compare equal; callers that care find the first one.
#[inline(always)]
pub(crate) fn max32(x: &[f32; 32], init: f32) -> f32 {
    reduce32(x, init, |m, v| if v > m { v } else { m })
}

/// The smallest of `x` and `init`, NaN ignored (see [`max32`]).
#[inline(always)]
pub(crate) fn min32(x: &[f32; 32], init: f32) -> f32 {
    reduce32(x, init, |m, v| if v < m { v } else { m })
}

#[inline(always)]
fn reduce32(x: &[f32; 32], init: f32, step: impl Fn(f32, f32) -> f32) -> f32 {
    let m: [f32; 16] = std::array::from_fn(|i| step(step(init, x[i]), x[i + 16]));
    let m: [f32; 8] = std::array::from_fn(|i| step(m[i], m[i + 8]));
    let m: [f32; 4] = std::array::from_fn(|i| step(m[i], m[i + 4]));
    let m: [f32; 2] = std::array::from_fn(|i| step(m[i], m[i + 2]));
    step(m[0], m[1])
}

/// C's `(int8_t)f` as gcc compiles it for x86-64: a truncating `cvttss2si` to 32 bits (NaN and
/// out-of-range values give `INT32_MIN`, whose low byte is 0) and the low byte kept. The
/// out-of-range cases happen when a subnormal block scale makes `1/d` infinite, where we still
/// want ggml's bytes. Rust's `as i32` saturates, which LLVM compiles one element at a time
/// (convert, two compares, two moves: most of Q8_0's encoding time); a select of the in-range
/// values followed by the plain conversion vectorizes.
#[inline(always)]
pub(crate) fn c_float_to_i8(v: f32) -> i8 {
    let w = if v.abs() < 2147483648.0 { v } else { 0.0 };
    // SAFETY: |w| < 2^31, so its truncation is an i32.
    unsafe { w.to_int_unchecked::<i32>() as i8 }
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
