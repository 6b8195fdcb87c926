//! Fused dequantize-dot: Σᵢ wᵢ·xᵢ over one stored row of weights without writing the row out
//! as f32 — the matrix-vector product of token-by-token generation, where decoding a tile to
//! memory and multiplying it once costs more than the multiplication.
//!
//! Each block codec has one decoder, `decode_block(block, sink)`, that hands its weights to a
//! [`BlockSink`] sixteen at a time: [`Store`] writes them out (`dequantize_row_*`), [`Dot`]
//! multiplies them into running sums. Decoding and the fused dot thus cannot drift
//! apart, and sixteen-wide chunks vectorize on every x86 level `cpu::multiversion` compiles.
//! The dot sums in another order than decode-then-GEMM: results agree to f32 rounding.

use crate::cpu::multiversion;

/// Where a decoder puts its weights: `at` is the index of the first of sixteen.
pub trait BlockSink {
    fn put16(&mut self, at: usize, v: &[f32; 16]);

    /// Thirty-two weights `q[i] · scale` from `at` on (a scale shared by a block or sub-block
    /// of 32): the dot multiplies by the scale once per 32 weights instead of once per weight.
    #[inline(always)]
    fn put32_scaled(&mut self, at: usize, scale: f32, q: &[f32; 32]) {
        self.put16(at, &chunk16(|i| q[i] * scale));
        self.put16(at + 16, &chunk16(|i| q[16 + i] * scale));
    }
}

/// Thirty-two values from `f(0..32)` (see [`chunk16`]).
#[inline(always)]
pub fn chunk32(f: impl Fn(usize) -> f32) -> [f32; 32] {
    let mut v = [0f32; 32];
    for (i, o) in v.iter_mut().enumerate() {
        *o = f(i);
    }
    v
}

/// Sixteen weights from `f(0..16)`. `std::array::from_fn` does the same, but is not always
/// inlined into the CPU-specific copies, and a call per chunk costs more than the chunk.
#[inline(always)]
pub fn chunk16(f: impl Fn(usize) -> f32) -> [f32; 16] {
    let mut v = [0f32; 16];
    for (i, o) in v.iter_mut().enumerate() {
        *o = f(i);
    }
    v
}

/// Writes the weights to a block of f32.
pub struct Store<'a, const N: usize>(pub &'a mut [f32; N]);

impl<const N: usize> BlockSink for Store<'_, N> {
    #[inline(always)]
    fn put16(&mut self, at: usize, v: &[f32; 16]) {
        self.0[at..at + 16].copy_from_slice(v);
    }
}

/// Adds weight × activation into sixteen lanes (one per position within a chunk).
pub struct Dot<'a, const N: usize> {
    pub x: &'a [f32; N],
    pub lanes: &'a mut [f32; 16],
}

impl<const N: usize> BlockSink for Dot<'_, N> {
    #[inline(always)]
    fn put16(&mut self, at: usize, v: &[f32; 16]) {
        let x: &[f32; 16] = self.x[at..at + 16].try_into().unwrap();
        for l in 0..16 {
            self.lanes[l] = v[l].mul_add(x[l], self.lanes[l]);
        }
    }

    #[inline(always)]
    fn put32_scaled(&mut self, at: usize, scale: f32, q: &[f32; 32]) {
        let x: &[f32; 32] = self.x[at..at + 32].try_into().unwrap();
        for l in 0..16 {
            let t = q[16 + l].mul_add(x[16 + l], q[l] * x[l]);
            self.lanes[l] = scale.mul_add(t, self.lanes[l]);
        }
    }
}

/// Σᵢ wᵢ·xᵢ over one row: the row's bytes (whole blocks) and as many activations as weights.
pub type DotFn = fn(&[u8], &[f32]) -> f32;

/// The dot of a block codec from its `decode_block`; a macro so that each codec gets its own
/// copy compiled per CPU level, with the decoder inlined into the loop.
macro_rules! block_dot {
    ($($m:ident)::+) => {{
        $crate::cpu::multiversion! {
            fn dot(row: &[u8], x: &[f32]) -> f32 {
                use $($m)::+ as codec;
                let mut lanes = [0f32; 16];
                for (b, xs) in row.chunks_exact(codec::BLOCK_BYTES).zip(x.chunks_exact(codec::QK)) {
                    // Each block sums into lanes of its own, added to the row's at its end: the
                    // blocks' chains of additions are independent and overlap in the CPU. −0.0
                    // is the additive identity the compiler may drop (+0.0 would turn a −0.0
                    // product into +0.0).
                    let mut block = [-0.0f32; 16];
                    $crate::cpu::prefetch_ahead(b.as_ptr(), codec::BLOCK_BYTES);
                    let sink = &mut $crate::quant::dot::Dot { x: $crate::quant::as_block::<{ codec::QK }>(xs), lanes: &mut block };
                    codec::decode_block($crate::quant::as_bytes::<{ codec::BLOCK_BYTES }>(b), sink);
                    for l in 0..16 {
                        lanes[l] += block[l];
                    }
                }
                lanes.iter().sum()
            }
        }
        dot
    }};
}
pub(crate) use block_dot;

/// The decode of a block codec from its `decode_block` (`dequantize_row_*`).
/// Compiled per CPU level like the dot: the runtime decodes weight tiles with it for every
/// batched product (the values are the same on every level: no operation is fused).
macro_rules! block_decode {
    ($($m:ident)::+) => {{
        $crate::cpu::multiversion! {
            fn decode(src: &[u8], out: &mut [f32]) {
                use $($m)::+ as codec;
                for (b, o) in src.chunks_exact(codec::BLOCK_BYTES).zip(out.chunks_exact_mut(codec::QK)) {
                    let sink = &mut $crate::quant::dot::Store($crate::quant::as_block_mut::<{ codec::QK }>(o));
                    codec::decode_block($crate::quant::as_bytes::<{ codec::BLOCK_BYTES }>(b), sink);
                }
            }
        }
        decode
    }};
}
pub(crate) use block_decode;

/// Σ widen(wᵢ)·xᵢ for the float types, sixteen lanes at a time; `CB` is the bytes of sixteen
/// weights and `widen` reads one weight from its little-endian bytes.
#[inline(always)]
fn float_dot<const CB: usize>(row: &[u8], x: &[f32], widen: impl Fn(&[u8]) -> f32) -> f32 {
    let bw = CB / 16;
    let mut lanes = [0f32; 16];
    let (mut rows, mut xs) = (row.chunks_exact(CB), x.chunks_exact(16));
    for (b, xv) in (&mut rows).zip(&mut xs) {
        crate::cpu::prefetch_ahead(b.as_ptr(), CB);
        let b: &[u8; CB] = b.try_into().unwrap();
        for l in 0..16 {
            lanes[l] += widen(&b[bw * l..bw * (l + 1)]) * xv[l];
        }
    }
    let tail: f32 = rows.remainder().chunks_exact(bw).zip(xs.remainder()).map(|(b, &xi)| widen(b) * xi).sum();
    lanes.iter().sum::<f32>() + tail
}

multiversion! {
    pub fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
        float_dot::<64>(row, x, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

multiversion! {
    pub fn dot_bf16(row: &[u8], x: &[f32]) -> f32 {
        half_dot(row, x, super::float::bf16_bits_to_f32)
    }
}

/// F16 rows: with F16C, eight weights per conversion instruction (examples/bench_dot: 10.4 G
/// weights/s against 4.5 for the portable widening, which costs ~10 integer instructions per
/// eight).
pub fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let cpu = has!("f16c") && has!("avx2") && has!("fma");
        if let (true, Ok(bits)) = (cpu, bytemuck::try_cast_slice::<u8, u16>(row)) {
            // SAFETY: the features were detected on this CPU.
            return unsafe { f16c::dot(bits, x) };
        }
    }
    dot_f16_portable(row, x)
}

multiversion! {
    fn dot_f16_portable(row: &[u8], x: &[f32]) -> f32 {
        half_dot(row, x, super::float::f16_to_f32_branchless)
    }
}

#[cfg(target_arch = "x86_64")]
mod f16c {
    use std::arch::x86_64::*;

    /// Σ wᵢ·xᵢ with four 8-wide accumulators (FMA latency × throughput) and a scalar tail.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(w: &[u16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            crate::cpu::prefetch_ahead(w.as_ptr().wrapping_add(i) as *const u8, 64);
            for (k, a) in acc.iter_mut().enumerate() {
                let j = i + 8 * k;
                // SAFETY: j + 8 ≤ n ≤ both lengths; unaligned loads.
                let wv = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(j) as *const __m128i)) };
                let xv = unsafe { _mm256_loadu_ps(x.as_ptr().add(j)) };
                *a = _mm256_fmadd_ps(wv, xv, *a);
            }
            i += 32;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0f32; 8];
        // SAFETY: 8 floats of room.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        let tail: f32 = (i..n).map(|j| super::super::float::f16_bits_to_f32(w[j]) * x[j]).sum();
        lanes.iter().sum::<f32>() + tail
    }
}

/// The 16-bit float types' dot: over aligned u16 when the row is (GGUF aligns tensor data),
/// so the widening vectorizes; through bytes otherwise.
#[inline(always)]
fn half_dot(row: &[u8], x: &[f32], widen: impl Fn(u16) -> f32) -> f32 {
    let (true, Ok(bits)) = (cfg!(target_endian = "little"), bytemuck::try_cast_slice::<u8, u16>(row)) else {
        return float_dot::<32>(row, x, |b| widen(u16::from_le_bytes([b[0], b[1]])));
    };
    let mut lanes = [0f32; 16];
    let (mut ws, mut xs) = (bits.chunks_exact(64), x.chunks_exact(64));
    for (w, xv) in (&mut ws).zip(&mut xs) {
        crate::cpu::prefetch_ahead(w.as_ptr() as *const u8, 128);
        // Sixty-four weights into a block of lanes of their own (see `block_dot!`).
        let mut block = [-0.0f32; 16];
        for c in 0..4 {
            let (w, xv): (&[u16; 16], &[f32; 16]) =
                (w[16 * c..16 * (c + 1)].try_into().unwrap(), xv[16 * c..16 * (c + 1)].try_into().unwrap());
            for l in 0..16 {
                block[l] += widen(w[l]) * xv[l];
            }
        }
        for l in 0..16 {
            lanes[l] += block[l];
        }
    }
    let tail: f32 = ws.remainder().iter().zip(xs.remainder()).map(|(&w, &xi)| widen(w) * xi).sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ggml_type::GgmlType;
    use crate::quant::{codec, CODECS};

    /// Uniform values in [−0.5, 0.5) from a xorshift32 seeded with `seed` (test data).
    pub(crate) fn uniform(mut s: u32) -> impl FnMut() -> f32 {
        move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        }
    }

    #[test]
    fn branchless_f16_matches_half_on_every_value() {
        use crate::quant::float::{f16_to_f32_branchless, get_f16};
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32().to_bits();
            assert_eq!(f16_to_f32_branchless(h).to_bits(), want, "{h:#06x}");
            assert_eq!(get_f16(&h.to_le_bytes()).to_bits(), want, "{h:#06x} (table)");
        }
    }

    /// Every codec's fused dot equals decoding the row and summing in f64, to f32 rounding of
    /// the terms' magnitudes (the dot sums in sixteen lanes, in f32).
    #[test]
    fn fused_dot_matches_decode_then_dot_for_every_codec() {
        let n = 512 + 256;
        let mut rnd = uniform(0x2545_F491);
        let w: Vec<f32> = (0..n).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..n).map(|_| rnd() * 3.0).collect();
        for c in CODECS {
            let bytes = crate::quant::encode(c.ty, &w).unwrap();
            let decoded = crate::quant::decode(c.ty, &bytes, n).unwrap();
            let exact: f64 = decoded.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
            let scale: f64 = decoded.iter().zip(&x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
            let got = (codec(c.ty).unwrap().dot)(&bytes, &x) as f64;
            assert!((got - exact).abs() <= 1e-6 * scale, "{}: {got} vs {exact} (scale {scale})", c.ty);
            if c.ty == GgmlType::F16 {
                // The portable widening (CPUs without F16C), and rows at odd addresses.
                let got = dot_f16_portable(&bytes, &x) as f64;
                assert!((got - exact).abs() <= 1e-6 * scale, "portable F16: {got} vs {exact}");
                let shifted: Vec<u8> = std::iter::once(0).chain(bytes.iter().copied()).collect();
                let got = dot_f16(&shifted[1..], &x) as f64;
                assert!((got - exact).abs() <= 1e-6 * scale, "unaligned F16: {got} vs {exact}");
            }
        }
    }
}
