//! The plain float storage types: F32, F16 and BF16, little-endian.

/// bf16 → f32 is a shift: bf16 is the top half of an f32. (Faster than `half`'s slice
/// conversion, which is not vectorized for bf16; see the crate survey.)
#[inline]
pub fn bf16_bits_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 → bf16 with round-to-nearest-even, as numpy/gguf-py and PyTorch do; NaN stays NaN.
#[inline]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

#[inline]
pub fn f16_bits_to_f32(b: u16) -> f32 {
    half::f16::from_bits(b).to_f32()
}

#[inline]
pub fn f32_to_f16_bits(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

// The fast paths reinterpret the bytes as native f32/u16 slices (no per-byte shuffling,
// vectorized conversions); they apply on little-endian targets when the data is aligned,
// which it is for GGUF tensors (32-byte alignment) and qforge's own buffers. Otherwise the
// byte-wise loops below do the same work portably.
const LE: bool = cfg!(target_endian = "little");

/// Store `v` as a little-endian f16 in the first two bytes of `out` (block scales).
#[inline(always)]
pub fn put_f16(out: &mut [u8], v: f32) {
    out[..2].copy_from_slice(&f32_to_f16_bits(v).to_le_bytes());
}

/// Read a little-endian f16 from the first two bytes of `b`.
#[inline(always)]
pub fn get_f16(b: &[u8]) -> f32 {
    f32::from_bits(F16_TO_F32_BITS[u16::from_le_bytes([b[0], b[1]]) as usize])
}

/// Every f16 as f32, built at compile time: the block codecs read one or two f16 scales per
/// block in their hottest loops, where `half`'s conversion is a call that checks the CPU for
/// F16C each time (the fused Q8_0 and Q4_0 dots run 9% and 16% faster with the table).
static F16_TO_F32_BITS: [u32; 65536] = {
    let mut t = [0u32; 65536];
    let mut i = 0;
    while i < 65536 {
        t[i] = f16_to_f32_bits(i as u16);
        i += 1;
    }
    t
};

/// IEEE half → single, exact for every input (NaNs come out quiet, as F16C and `half` make
/// them), without branches so that it vectorizes (`half`'s per-value conversion checks the CPU
/// for F16C on every call). Integer operations only, so that `get_f16`'s table is built at
/// compile time.
#[inline(always)]
pub fn f16_to_f32_branchless(h: u16) -> f32 {
    f32::from_bits(f16_to_f32_bits(h))
}

const fn f16_to_f32_bits(h: u16) -> u32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7FFF;
    // Normal: exponent rebiased by 127 − 15 = 112, mantissa moved into place.
    let normal = (em << 13) + 0x3800_0000;
    // Subnormal: em·2⁻²⁴ with em's leading one at bit p becomes exponent p − 24 (biased
    // p + 103) and the bits below it the mantissa.
    let p = 31u32.wrapping_sub(em.leading_zeros());
    let subnormal = if em == 0 { 0 } else { ((p + 103) << 23) | ((em << (23 - (p & 31))) & 0x7F_FFFF) };
    let inf_nan = (em << 13) | 0x7F80_0000 | if em > 0x7C00 { 0x0040_0000 } else { 0 };
    let v = if em < 0x0400 {
        subnormal
    } else if em >= 0x7C00 {
        inf_nan
    } else {
        normal
    };
    v | sign
}

pub fn decode_f32(src: &[u8], out: &mut [f32]) {
    if let (true, Ok(s)) = (LE, bytemuck::try_cast_slice::<u8, f32>(src)) {
        out.copy_from_slice(s);
        return;
    }
    for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

pub fn decode_f16(src: &[u8], out: &mut [f32]) {
    if let (true, Ok(s)) = (LE, bytemuck::try_cast_slice::<u8, half::f16>(src)) {
        // `half`'s slice conversion checks for F16C once and converts eight values per
        // instruction (its per-value conversion checks on every call).
        use half::slice::HalfFloatSliceExt;
        let n = s.len().min(out.len());
        s[..n].convert_to_f32_slice(&mut out[..n]);
        return;
    }
    for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]]));
    }
}

pub fn decode_bf16(src: &[u8], out: &mut [f32]) {
    if let (true, Ok(s)) = (LE, bytemuck::try_cast_slice::<u8, u16>(src)) {
        for (o, &b) in out.iter_mut().zip(s) {
            *o = bf16_bits_to_f32(b);
        }
        return;
    }
    for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = bf16_bits_to_f32(u16::from_le_bytes([c[0], c[1]]));
    }
}

pub fn encode_f32(src: &[f32], out: &mut [u8]) {
    if LE {
        out.copy_from_slice(bytemuck::cast_slice(src));
        return;
    }
    for (x, c) in src.iter().zip(out.chunks_exact_mut(4)) {
        c.copy_from_slice(&x.to_le_bytes());
    }
}

pub fn encode_f16(src: &[f32], out: &mut [u8]) {
    if let (true, Ok(o)) = (LE, bytemuck::try_cast_slice_mut::<u8, half::f16>(out)) {
        // As `decode_f16`: F16C checked once, eight values per instruction, the same
        // round-to-nearest-even as the per-value conversion.
        use half::slice::HalfFloatSliceExt;
        let n = o.len().min(src.len());
        o[..n].convert_from_f32_slice(&src[..n]);
        return;
    }
    for (x, c) in src.iter().zip(out.chunks_exact_mut(2)) {
        c.copy_from_slice(&f32_to_f16_bits(*x).to_le_bytes());
    }
}

pub fn encode_bf16(src: &[f32], out: &mut [u8]) {
    if let (true, Ok(o)) = (LE, bytemuck::try_cast_slice_mut::<u8, u16>(out)) {
        for (d, &x) in o.iter_mut().zip(src) {
            *d = f32_to_bf16_bits(x);
        }
        return;
    }
    for (x, c) in src.iter().zip(out.chunks_exact_mut(2)) {
        c.copy_from_slice(&f32_to_bf16_bits(*x).to_le_bytes());
    }
}
