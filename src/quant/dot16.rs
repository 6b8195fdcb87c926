//! Matrix-vector products against activations rounded to 16-bit integers: generation's
//! one-token steps on CPUs with AVX-512BW.
//!
//! The f32 fused dots ([`super::dot`]) widen every weight to f32 and spend an FMA per sixteen
//! weights plus the unpacking. Here the activation row is rounded once per product to i16 with
//! one f32 scale per 32 values, each weight stays an integer, and `vpmaddwd` multiplies 32
//! weight–activation pairs and adds them pairwise into 32-bit lanes in one instruction; the
//! integer sums are exact, and each block of 32 costs one conversion and one FMA by its two
//! scales. llama.cpp rounds activations to 8 bits for the same purpose (`q8_0`/`q8_K`);
//! 16 bits keep the products within ~1e-5 of the f32 ones (2⁻¹⁶ of a block's largest
//! activation per value), well inside what the generation test allows between a step and the
//! batched pass, so greedy tokens stay those of the f32 path.
//!
//! Kernels exist for the types the quantize mixes write most (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K);
//! the other types, and CPUs without AVX-512BW, keep the f32 fused dots.
//!
//! Deliberately, each kernel reads its block layout a second time (the codec's
//! `decode_block` is the first): the integer lanes need the codes before scaling, which the
//! shared sink interface hands over already multiplied. `kernels_match_decode_then_dot` holds
//! the two readings equal for every kernel.

/// An activation row rounded to i16, one scale per 32 values: `x[i] ≈ d[i / 32] · q[i]`, and
/// the exact f32 sum of each block of 32 (for the types whose weights carry an offset).
pub struct Acts16 {
    q: Vec<i16>,
    d: Vec<f32>,
    sum: Vec<f32>,
}

/// Σᵢ wᵢ·xᵢ over one stored row (whole blocks) against an [`Acts16`] as long as the row.
pub type Dot16Fn = fn(&[u8], &Acts16) -> f32;

/// The largest |q|: 2¹⁵ − 1, so that a pair of products of an 8-bit weight (|w| ≤ 128, Q8_0's
/// −128 included) fits `vpmaddwd`'s i32 lanes.
const QMAX: f32 = 32767.0;

impl Acts16 {
    /// Rounds `x` (a length a multiple of 32, every value finite), else `None`: the caller
    /// keeps the f32 path.
    pub fn quantize(x: &[f32]) -> Option<Acts16> {
        if !x.len().is_multiple_of(32) || !x.iter().all(|v| v.is_finite()) {
            return None;
        }
        let blocks = x.len() / 32;
        let mut a = Acts16 { q: vec![0; x.len()], d: vec![0.0; blocks], sum: vec![0.0; blocks] };
        quantize_blocks(x, &mut a.q, &mut a.d, &mut a.sum);
        Some(a)
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}

crate::cpu::multiversion! {
    fn quantize_blocks(x: &[f32], q: &mut [i16], d: &mut [f32], sum: &mut [f32]) {
        for (((x, q), d), s) in x.chunks_exact(32).zip(q.chunks_exact_mut(32)).zip(d.iter_mut()).zip(sum.iter_mut()) {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            *d = amax / QMAX;
            let id = if amax > 0.0 { QMAX / amax } else { 0.0 };
            for (q, &v) in q.iter_mut().zip(x) {
                *q = (v * id).round() as i16;
            }
            *s = x.iter().sum();
        }
    }
}

/// Whether this CPU runs the kernels (AVX-512 with its byte/word instructions). Asked once
/// per product and once per row, so the answer is kept (five feature tests cost 1% of a
/// generation run).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE
            .get_or_init(|| has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("fma") && has!("f16c"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The kernel for a storage type, if there is one and this CPU runs it.
pub fn kernel(ty: crate::ggml_type::GgmlType) -> Option<Dot16Fn> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::ggml_type::GgmlType::*;
        if !available() {
            return None;
        }
        let k: Dot16Fn = match ty {
            Q8_0 => kernels::q8_0,
            Q4_0 => kernels::q4_0,
            Q4_K => kernels::q4_k,
            Q5_K => kernels::q5_k,
            Q6_K => kernels::q6_k,
            _ => return None,
        };
        Some(k)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ty;
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod kernels {
    //! One safe entry per type (it checks the row against the activations and the CPU), one
    //! `target_feature` body. Every body sums a block of 32 weights × activations exactly in
    //! i32 lanes, converts the lanes to f32 and adds them, times the block's weight scale and
    //! activation scale, into f32 accumulators.
    use std::arch::x86_64::*;

    use super::Acts16;

    /// Checks that `row` holds whole blocks of `block_bytes` covering `acts`, and the CPU.
    fn check(row: &[u8], block_bytes: usize, qk: usize, acts: &Acts16) -> usize {
        assert!(super::available(), "dot16 kernel called on a CPU without AVX-512BW");
        let blocks = row.len() / block_bytes;
        assert!(
            row.len().is_multiple_of(block_bytes) && blocks * qk == acts.q.len(),
            "row and activations differ in length"
        );
        blocks
    }

    /// The safe entry `$name` of the body `$body` for blocks of `$bytes` bytes and `$qk` weights.
    macro_rules! entry {
        ($name:ident, $body:ident, $bytes:expr, $qk:expr) => {
            pub fn $name(row: &[u8], a: &Acts16) -> f32 {
                let n = check(row, $bytes, $qk, a);
                // SAFETY: the CPU has the features; the row holds n blocks and `a` n·QK values.
                unsafe { $body(row, a, n) }
            }
        };
    }
    entry!(q8_0, q8_0_avx512, 34, 32);
    entry!(q4_0, q4_0_avx512, 18, 32);
    entry!(q4_k, q4_k_avx512, 144, 256);
    entry!(q5_k, q5_k_avx512, 176, 256);
    entry!(q6_k, q6_k_avx512, 210, 256);

    /// The f16 at `p` as f32 by F16C (the 256 KB table of `float::get_f16` costs cache misses
    /// here, one lookup per 32 weights).
    #[inline(always)]
    unsafe fn f16_at(p: *const u8) -> f32 {
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([*p, *p.add(1)]) as i32))) }
    }

    /// 32 bytes from `p` widened to 32 u16/i16 lanes.
    #[inline(always)]
    unsafe fn load_u8x32(p: *const u8) -> __m512i {
        unsafe { _mm512_cvtepu8_epi16(_mm256_loadu_si256(p as *const __m256i)) }
    }

    /// Activations `i..i + 32`.
    #[inline(always)]
    unsafe fn acts(a: &Acts16, i: usize) -> __m512i {
        unsafe { _mm512_loadu_si512(a.q.as_ptr().add(i) as *const __m512i) }
    }

    /// acc + f32(Σ pairs of w·x) · scale.
    #[inline(always)]
    unsafe fn fma_block(acc: __m512, w: __m512i, x: __m512i, scale: f32) -> __m512 {
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_madd_epi16(w, x)), _mm512_set1_ps(scale), acc)
    }

    #[inline(always)]
    unsafe fn sum4(acc: [__m512; 4]) -> f32 {
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }

    /// Σ over blocks of `block(b)`'s (weights, scale) against activations 32·b…, four blocks
    /// at a time into four accumulators (one block's FMA would wait for the previous one's).
    #[inline(always)]
    unsafe fn blocks32(a: &Acts16, n: usize, block: impl Fn(usize) -> (__m512i, f32)) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        let step = |acc: __m512, b: usize| {
            let (w, scale) = block(b);
            // SAFETY: b < n, and the entry checked that `a` holds n·32 values.
            unsafe { fma_block(acc, w, acts(a, 32 * b), scale * a.d[b]) }
        };
        let mut b = 0;
        while b + 4 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                *acc = step(*acc, b + k);
            }
            b += 4;
        }
        while b < n {
            acc[0] = step(acc[0], b);
            b += 1;
        }
        unsafe { sum4(acc) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn q8_0_avx512(row: &[u8], a: &Acts16, n: usize) -> f32 {
        // SAFETY (this and the other bodies): block b < n lies within the row (checked by the
        // entry).
        unsafe {
            blocks32(a, n, |b| {
                let blk = row.as_ptr().add(34 * b);
                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(16384) as *const i8);
                let w = _mm512_cvtepi8_epi16(_mm256_loadu_si256(blk.add(2) as *const __m256i));
                (w, f16_at(blk))
            })
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn q4_0_avx512(row: &[u8], a: &Acts16, n: usize) -> f32 {
        // Weight i of a block: low nibble of qs[i] (i < 16) or high nibble of qs[i − 16], − 8.
        // The sixteen bytes loaded into both halves (a load-port broadcast), widened once (the
        // one shuffle), and the upper half shifted by a per-lane count.
        let (lo4, eight) = (_mm512_set1_epi16(0xF), _mm512_set1_epi16(8));
        let shifts = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(4));
        unsafe {
            blocks32(a, n, |b| {
                let blk = row.as_ptr().add(18 * b);
                crate::cpu::prefetch_ahead(blk, 18);
                let twice = _mm256_broadcastsi128_si256(_mm_loadu_si128(blk.add(2) as *const __m128i));
                let both = _mm512_srlv_epi16(_mm512_cvtepu8_epi16(twice), shifts);
                let w = _mm512_sub_epi16(_mm512_and_si512(both, lo4), eight);
                (w, f16_at(blk))
            })
        }
    }

    /// The eight 6-bit scales and eight 6-bit mins of a Q4_K/Q5_K block's 12 packed bytes
    /// (`get_scale_min_k4` for all j at once, by 32-bit masks as llama.cpp's kernels unpack
    /// them): bytes 0–7 of the result are the scales, 8–15 the mins.
    #[inline(always)]
    pub(super) fn unpack_scales_mins(p: &[u8]) -> [u8; 16] {
        let word = |i: usize| u32::from_le_bytes([p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]]);
        let (w0, w1, w2) = (word(0), word(1), word(2));
        let (six, four, two) = (0x3f3f_3f3fu32, 0x0f0f_0f0fu32, 0x0303_0303u32);
        let sc_hi = (w2 & four) | (((w0 >> 6) & two) << 4);
        let m_hi = ((w2 >> 4) & four) | (((w1 >> 6) & two) << 4);
        let mut out = [0u8; 16];
        for (i, w) in [w0 & six, sc_hi, w1 & six, m_hi].into_iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Q4_K and Q5_K: sub-block j (32 weights) is `d·sc[j]·q − dmin·m[j]`, q the 4-bit code plus,
    /// for Q5_K, 16 × its fifth bit. The offsets' share is −dmin·Σⱼ m[j]·(Σ x over sub-block j),
    /// from the exact f32 sums, gathered in eight lanes; the codes' share is integer.
    #[inline(always)]
    unsafe fn k4_body(row: &[u8], a: &Acts16, n: usize, block_bytes: usize, qs_at: usize, high: Option<usize>) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut offsets = _mm256_setzero_ps();
        let lo4 = _mm512_set1_epi16(0xF);
        for b in 0..n {
            // SAFETY: block b < n lies within the row, sub-blocks 8b..8b+8 within `a` (checked
            // by the entry).
            let blk = unsafe { std::slice::from_raw_parts(row.as_ptr().add(block_bytes * b), block_bytes) };
            crate::cpu::prefetch_ahead(blk.as_ptr(), block_bytes);
            let (d, dmin) = unsafe { (f16_at(blk.as_ptr()), f16_at(blk.as_ptr().add(2))) };
            let packed = unpack_scales_mins(&blk[4..16]);
            let (dx, xs) =
                unsafe { (_mm256_loadu_ps(a.d.as_ptr().add(8 * b)), _mm256_loadu_ps(a.sum.as_ptr().add(8 * b))) };
            let bytes = unsafe { _mm_loadu_si128(packed.as_ptr() as *const __m128i) };
            let sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
            let m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(bytes)));
            offsets = _mm256_fmadd_ps(_mm256_mul_ps(m, _mm256_set1_ps(dmin)), xs, offsets);
            let mut f = [0f32; 8];
            // SAFETY: eight floats of room.
            unsafe { _mm256_storeu_ps(f.as_mut_ptr(), _mm256_mul_ps(_mm256_mul_ps(sc, _mm256_set1_ps(d)), dx)) };
            // Q5_K's fifth bits: bit j of byte i is weight i of sub-block j.
            let qh = high.map(|at| unsafe { load_u8x32(blk.as_ptr().add(at)) });
            for c in 0..4 {
                let q = unsafe { load_u8x32(blk.as_ptr().add(qs_at + 32 * c)) };
                let (mut w0, mut w1) = (_mm512_and_si512(q, lo4), _mm512_srli_epi16::<4>(q));
                if let Some(h) = qh {
                    // Bits 2c and 2c + 1 moved to bit 4 (16 added to the code).
                    let one = _mm512_set1_epi16(1);
                    let h0 = _mm512_and_si512(_mm512_srlv_epi16(h, _mm512_set1_epi16(2 * c as i16)), one);
                    let h1 = _mm512_and_si512(_mm512_srlv_epi16(h, _mm512_set1_epi16(2 * c as i16 + 1)), one);
                    w0 = _mm512_or_si512(w0, _mm512_slli_epi16::<4>(h0));
                    w1 = _mm512_or_si512(w1, _mm512_slli_epi16::<4>(h1));
                }
                let i = 256 * b + 64 * c;
                acc[0] = unsafe { fma_block(acc[0], w0, acts(a, i), f[2 * c]) };
                acc[1] = unsafe { fma_block(acc[1], w1, acts(a, i + 32), f[2 * c + 1]) };
            }
            // Alternate the accumulator pairs between blocks (shorter dependency chains).
            acc.swap(0, 2);
            acc.swap(1, 3);
        }
        let mut o = [0f32; 8];
        // SAFETY: eight floats of room.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), offsets) };
        (unsafe { sum4(acc) }) - o.iter().sum::<f32>()
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn q4_k_avx512(row: &[u8], a: &Acts16, n: usize) -> f32 {
        unsafe { k4_body(row, a, n, 144, 16, None) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn q5_k_avx512(row: &[u8], a: &Acts16, n: usize) -> f32 {
        // d, dmin, 12 bytes of scales, 32 bytes of fifth bits, 128 of nibbles.
        unsafe { k4_body(row, a, n, 176, 48, Some(16)) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn q6_k_avx512(row: &[u8], a: &Acts16, n: usize) -> f32 {
        // Per half h of a block (128 weights): ql 64 bytes, qh 32, eight i8 scales. Weight
        // 32k + i (i < 32): low nibble of ql[i] (k = 0) or ql[i + 32] (k = 1), their high
        // nibbles for k = 2, 3; bits 2k, 2k+1 of qh[i] on top; minus 32; scale sc[2k + i/16].
        // `vpmaddwd`'s lane l holds weights 2l and 2l + 1, so lanes 0–7 take sc[2k], 8–15
        // sc[2k + 1]: the f32 scales are spread by a permutation.
        let mut acc = [_mm512_setzero_ps(); 4];
        let (lo4, top2, off) = (_mm512_set1_epi16(0xF), _mm512_set1_epi16(0x30), _mm512_set1_epi16(32));
        for b in 0..n {
            let blk = unsafe { row.as_ptr().add(210 * b) };
            crate::cpu::prefetch_ahead(blk, 210);
            let d = unsafe { f16_at(blk.add(208)) };
            for h in 0..2 {
                let (ql, qh) = unsafe { (blk.add(64 * h), blk.add(128 + 32 * h)) };
                let sc = unsafe { _mm_loadl_epi64(blk.add(192 + 8 * h) as *const __m128i) };
                let scales = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc)), _mm512_set1_ps(d));
                let (l0, l1, hb) = unsafe { (load_u8x32(ql), load_u8x32(ql.add(32)), load_u8x32(qh)) };
                let nibbles = [
                    _mm512_and_si512(l0, lo4),
                    _mm512_and_si512(l1, lo4),
                    _mm512_srli_epi16::<4>(l0),
                    _mm512_srli_epi16::<4>(l1),
                ];
                let tops = [_mm512_slli_epi16::<4>(hb), _mm512_slli_epi16::<2>(hb), hb, _mm512_srli_epi16::<2>(hb)];
                for k in 0..4 {
                    let w = _mm512_sub_epi16(_mm512_or_si512(nibbles[k], _mm512_and_si512(tops[k], top2)), off);
                    let i = 256 * b + 128 * h + 32 * k;
                    let idx = _mm512_set_epi32(
                        2 * k as i32 + 1,
                        2 * k as i32 + 1,
                        2 * k as i32 + 1,
                        2 * k as i32 + 1,
                        2 * k as i32 + 1,
                        2 * k as i32 + 1,
                        2 * k as i32 + 1,
                        2 * k as i32 + 1,
                        2 * k as i32,
                        2 * k as i32,
                        2 * k as i32,
                        2 * k as i32,
                        2 * k as i32,
                        2 * k as i32,
                        2 * k as i32,
                        2 * k as i32,
                    );
                    let s = _mm512_mul_ps(_mm512_permutexvar_ps(idx, scales), _mm512_set1_ps(a.d[i / 32]));
                    let p = _mm512_cvtepi32_ps(unsafe { _mm512_madd_epi16(w, acts(a, i)) });
                    acc[k] = _mm512_fmadd_ps(p, s, acc[k]);
                }
            }
        }
        unsafe { sum4(acc) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml_type::GgmlType;

    /// Each kernel equals decode-then-dot against the rounded activations to f32 rounding, and
    /// the f32 activations to the rounding's 2⁻¹⁶ per value.
    #[test]
    fn kernels_match_decode_then_dot() {
        if !available() {
            eprintln!("no AVX-512BW: the kernels are not used on this CPU");
            return;
        }
        let mut rnd = crate::quant::dot::tests::uniform(0x9E37_79B9);
        // 25 blocks of 32 (not a multiple of the four accumulators) and three of 256.
        for (ty, n) in [
            (GgmlType::Q8_0, 800),
            (GgmlType::Q4_0, 800),
            (GgmlType::Q4_K, 768),
            (GgmlType::Q5_K, 768),
            (GgmlType::Q6_K, 768),
        ] {
            let w: Vec<f32> = (0..n).map(|_| rnd()).collect();
            // Activations of unequal size per block, one block all zero.
            let x: Vec<f32> = (0..n).map(|i| if i / 32 == 5 { 0.0 } else { rnd() * (1 + i % 7) as f32 }).collect();
            let a = Acts16::quantize(&x).unwrap();
            let rounded: Vec<f32> = (0..n).map(|i| a.d[i / 32] * a.q[i] as f32).collect();
            let bytes = crate::quant::encode(ty, &w).unwrap();
            let decoded = crate::quant::decode(ty, &bytes, n).unwrap();
            let got = kernel(ty).unwrap()(&bytes, &a) as f64;
            let scale: f64 = decoded.iter().zip(&x).map(|(&p, &q)| (p as f64 * q as f64).abs()).sum();
            // Against the rounded activations the integer sums are exact: f32 rounding of the
            // block sums remains (the offsets of Q4_K/Q5_K use the exact sums of x).
            let want: f64 = decoded.iter().zip(&rounded).map(|(&p, &q)| p as f64 * q as f64).sum();
            let offsets = matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K);
            let tol = if offsets { 3e-5 } else { 1e-6 };
            assert!((got - want).abs() <= tol * scale, "{ty}: {got} vs {want} (rounded x, scale {scale})");
            // Against the f32 activations: each off by ≤ 2⁻¹⁶ of its block's largest.
            let exact: f64 = decoded.iter().zip(&x).map(|(&p, &q)| p as f64 * q as f64).sum();
            assert!((got - exact).abs() <= 3e-5 * scale, "{ty}: {got} vs {exact} (f32 x, scale {scale})");
            // A row of other length is refused, not read past.
            let short = std::panic::catch_unwind(|| kernel(ty).unwrap()(&bytes[..bytes.len() / 2], &a));
            assert!(short.is_err(), "{ty}: a short row was accepted");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn scales_and_mins_unpack_as_get_scale_min_k4() {
        let mut s = 0x1234_5678u32;
        for _ in 0..2000 {
            let p: Vec<u8> = (0..12)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    s as u8
                })
                .collect();
            let got = kernels::unpack_scales_mins(&p);
            for j in 0..8 {
                assert_eq!((got[j], got[8 + j]), crate::quant::kquants::get_scale_min_k4(j, &p), "{p:?} j={j}");
            }
        }
    }

    #[test]
    fn rounding_refuses_what_it_cannot_represent() {
        assert!(Acts16::quantize(&[1.0; 31]).is_none());
        let mut x = vec![1.0f32; 32];
        x[3] = f32::NAN;
        assert!(Acts16::quantize(&x).is_none());
        x[3] = f32::INFINITY;
        assert!(Acts16::quantize(&x).is_none());
        let a = Acts16::quantize(&[0.0; 64]).unwrap();
        assert!(a.q.iter().all(|&q| q == 0) && a.d.iter().all(|&d| d == 0.0));
    }
}
