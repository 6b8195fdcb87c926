//! bitsandbytes 4-bit quantization (NF4 and FP4), as `bitsandbytes.functional.quantize_4bit`
//! computes it on CUDA, so that a checkpoint qforge writes holds the bytes bitsandbytes would.
//!
//! The weight is flattened row-major and cut into blocks of `blocksize` weights (64 … 4096; a
//! block may straddle rows). Each block keeps its absolute maximum `absmax` (f32); each weight
//! becomes the 4-bit index of the code value nearest to `x / absmax`. Two indices share a byte,
//! the FIRST weight in the HIGH nibble. Decoding is `code[q] · absmax`.
//!
//! With double quantization (`dynamic`), the absmax values are themselves stored in 8 bits.

pub mod dynamic;
pub mod state;

use rayon::prelude::*;

/// The two 4-bit data types of bitsandbytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bnb4Type {
    /// 4-bit NormalFloat (QLoRA): 16 quantiles of N(0, 1) scaled to [−1, 1], with an exact zero.
    Nf4,
    /// bitsandbytes' 4-bit float: 1 sign, 2 exponent, 1 mantissa bit (its own layout, not E2M1).
    Fp4,
}

/// Block sizes bitsandbytes' kernels accept.
pub const BLOCK_SIZES: [usize; 7] = [64, 128, 256, 512, 1024, 2048, 4096];

/// `get_4bit_type("nf4")`, index = stored 4-bit code.
// bitsandbytes' literals digit for digit (they round to the same f32), so that they can be
// compared with its source.
#[allow(clippy::excessive_precision)]
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// The decision thresholds of bitsandbytes' `dQuantizeNF4` (the midpoints between neighbouring
/// NF4 values, as the f32 literals of the kernel), ascending: the code of `x` is the number of
/// thresholds it is strictly greater than (a value on a threshold takes the lower code).
#[allow(clippy::excessive_precision)]
const NF4_THRESHOLDS: [f32; 15] = [
    -0.848_096_400_499_343_9,
    -0.610_632_926_225_662_2,
    -0.459_995_269_775_390_6,
    -0.339_679_434_895_515_44,
    -0.234_607_405_960_559_84,
    -0.137_911_733_239_889_14,
    -0.045_525_018_125_772_476,
    0.039_790_149_778_127_67,
    0.120_255_250_483_751_3,
    0.203_521_251_678_466_8,
    0.292_013_771_789_389_3,
    0.389_312_535_524_368_3,
    0.501_663_416_624_069_2,
    0.642_786_920_070_648_2,
    0.861_478_418_111_801_1,
];

/// `get_4bit_type("fp4")`: the raw values [0, 0.0625, 8, 12, 4, 6, 2, 3] (bit 3 = sign, bits
/// 2..0 a 2-bit exponent and 1-bit mantissa with bias 3, 0b001 subnormal) divided by their
/// maximum, 12. These are the f32 values `dDequantizeFP4Tree` multiplies by.
pub const FP4: [f32; 16] = [
    0.0,
    0.0625 / 12.0,
    8.0 / 12.0,
    1.0,
    4.0 / 12.0,
    6.0 / 12.0,
    2.0 / 12.0,
    3.0 / 12.0,
    -0.0,
    -0.0625 / 12.0,
    -8.0 / 12.0,
    -1.0,
    -4.0 / 12.0,
    -6.0 / 12.0,
    -2.0 / 12.0,
    -3.0 / 12.0,
];

/// `dQuantizeFP4`'s thresholds on |x| (its literals), ascending, and the 3-bit magnitude code
/// of each interval between them (magnitudes 0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1).
#[allow(clippy::excessive_precision)]
const FP4_THRESHOLDS: [f32; 7] =
    [0.002_604_17, 0.085_937_5, 0.208_333_33, 0.291_666_67, 0.416_666_7, 0.583_333, 0.833_333_3];
const FP4_MAGNITUDE_CODES: [u8; 8] = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011];

impl Bnb4Type {
    pub fn parse(s: &str) -> Option<Bnb4Type> {
        match s.to_ascii_lowercase().as_str() {
            "nf4" => Some(Bnb4Type::Nf4),
            "fp4" => Some(Bnb4Type::Fp4),
            _ => None,
        }
    }

    /// The name bitsandbytes uses (`quant_type`, `bnb_4bit_quant_type`).
    pub fn name(self) -> &'static str {
        match self {
            Bnb4Type::Nf4 => "nf4",
            Bnb4Type::Fp4 => "fp4",
        }
    }

    /// Code value of each 4-bit index (what `quant_map` stores).
    pub fn table(self) -> &'static [f32; 16] {
        match self {
            Bnb4Type::Nf4 => &NF4,
            Bnb4Type::Fp4 => &FP4,
        }
    }

    /// The 4-bit code of a value already divided by its block's absmax. Branch-free so that
    /// the block loop vectorizes; NaN (a block of zeros gives 0·∞) lands where the kernel's
    /// comparisons send it: code 0.
    #[inline(always)]
    pub fn encode(self, x: f32) -> u8 {
        match self {
            Bnb4Type::Nf4 => NF4_THRESHOLDS.iter().map(|&t| (x > t) as u8).sum(),
            Bnb4Type::Fp4 => {
                let sign = if x < 0.0 { 0b1000 } else { 0 };
                let a = x.abs();
                let k: u8 = FP4_THRESHOLDS.iter().map(|&t| (a > t) as u8).sum();
                FP4_MAGNITUDE_CODES[k as usize] | sign
            }
        }
    }
}

/// Number of absmax blocks for `n` weights.
pub fn n_blocks(n: usize, blocksize: usize) -> usize {
    n.div_ceil(blocksize)
}

/// Quantize `x` (the row-major flattened weight) in blocks of `blocksize`: the packed codes
/// (`⌈n/2⌉` bytes, first weight of each pair in the high nibble) and one absmax per block.
/// `blocksize` must be even (all of bitsandbytes' are), so that no byte spans two blocks.
pub fn quantize(ty: Bnb4Type, x: &[f32], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    assert!(blocksize >= 2 && blocksize.is_multiple_of(2), "block size {blocksize} is not even");
    let mut packed = vec![0u8; x.len().div_ceil(2)];
    let mut absmax = vec![0f32; n_blocks(x.len(), blocksize)];
    packed.par_chunks_mut(blocksize / 2).zip(absmax.par_iter_mut()).zip(x.par_chunks(blocksize)).for_each(
        |((out, amax), block)| {
            *amax = quantize_block(ty, block, out);
        },
    );
    (packed, absmax)
}

/// The absmax of each block (what `quantize` stores), without quantizing.
pub fn block_absmax(x: &[f32], blocksize: usize) -> Vec<f32> {
    x.par_chunks(blocksize).map(absmax_of).collect()
}

fn absmax_of(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// One block: returns its absmax. A trailing odd weight pairs with a zero, as the kernel
/// loads a zero past the end of the tensor.
fn quantize_block(ty: Bnb4Type, x: &[f32], out: &mut [u8]) -> f32 {
    let amax = absmax_of(x);
    // The kernel multiplies by the f32 reciprocal rather than dividing: the same rounding
    // decides the codes of values near a threshold.
    let inv = 1.0 / amax;
    for (o, pair) in out.iter_mut().zip(x.chunks(2)) {
        let hi = ty.encode(pair[0] * inv);
        let lo = ty.encode(pair.get(1).copied().unwrap_or(0.0) * inv);
        *o = (hi << 4) | lo;
    }
    amax
}

/// Decode elements `start..start + out.len()` of the flattened weight; `absmax(b)` is block
/// `b`'s absmax (stored, or double-quantized). `packed` and the blocks must cover the range
/// (checked by the callers, which validate the tensors first).
#[inline]
pub fn dequantize_range(
    ty: Bnb4Type,
    packed: &[u8],
    absmax: impl Fn(usize) -> f32,
    blocksize: usize,
    start: usize,
    out: &mut [f32],
) {
    let table = ty.table();
    let mut i = start;
    let end = start + out.len();
    let mut o = 0;
    while i < end {
        let block_end = ((i / blocksize + 1) * blocksize).min(end);
        let scale = absmax(i / blocksize);
        // Per-block table already multiplied by the scale: one lookup per weight.
        let lut: [f32; 16] = std::array::from_fn(|k| table[k] * scale);
        if i % 2 == 1 {
            out[o] = lut[(packed[i / 2] & 0x0f) as usize];
            i += 1;
            o += 1;
        }
        let pairs = (block_end - i) / 2;
        for (dst, &b) in out[o..o + 2 * pairs].chunks_exact_mut(2).zip(&packed[i / 2..i / 2 + pairs]) {
            dst[0] = lut[(b >> 4) as usize];
            dst[1] = lut[(b & 0x0f) as usize];
        }
        i += 2 * pairs;
        o += 2 * pairs;
        if i < block_end {
            out[o] = lut[(packed[i / 2] >> 4) as usize];
            i += 1;
            o += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thresholds are the midpoints of the table (to the kernel's printed precision), and
    /// encoding each table value gives its own index.
    #[test]
    fn nf4_thresholds_are_midpoints() {
        for k in 0..15 {
            let mid = (NF4[k] as f64 + NF4[k + 1] as f64) / 2.0;
            assert!((NF4_THRESHOLDS[k] as f64 - mid).abs() < 1e-7, "threshold {k}");
        }
        for (k, &v) in NF4.iter().enumerate() {
            assert_eq!(Bnb4Type::Nf4.encode(v) as usize, k);
        }
        assert_eq!(Bnb4Type::Nf4.encode(f32::NAN), 0);
        assert_eq!(Bnb4Type::Nf4.encode(NF4_THRESHOLDS[3]), 3, "a value on a threshold takes the lower code");
    }

    #[test]
    fn fp4_encodes_to_nearest() {
        for (k, &v) in FP4.iter().enumerate() {
            let want = if k == 8 { 0 } else { k }; // −0 encodes as +0 (x < 0 is false)
            assert_eq!(Bnb4Type::Fp4.encode(v) as usize, want, "value {v}");
        }
        // Nearest by magnitude, sign kept.
        let mut sorted: Vec<f32> = FP4[..8].to_vec();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        for i in 0..2000 {
            let x = -1.0 + i as f32 / 1000.0;
            let q = Bnb4Type::Fp4.encode(x);
            let nearest = FP4.iter().map(|c| (c - x).abs()).fold(f32::INFINITY, f32::min);
            assert!(((FP4[q as usize] - x).abs() - nearest).abs() < 1e-6, "x {x}");
        }
        assert_eq!(Bnb4Type::Fp4.encode(f32::NAN), 0);
    }

    #[test]
    fn roundtrip_and_layout() {
        let x: Vec<f32> = (0..200).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        for ty in [Bnb4Type::Nf4, Bnb4Type::Fp4] {
            let (packed, absmax) = quantize(ty, &x, 64);
            assert_eq!(packed.len(), 100);
            assert_eq!(absmax.len(), 4);
            // First weight in the high nibble.
            let inv = 1.0 / absmax[0];
            assert_eq!(packed[0] >> 4, ty.encode(x[0] * inv));
            assert_eq!(packed[0] & 15, ty.encode(x[1] * inv));
            let mut all = vec![0f32; 200];
            dequantize_range(ty, &packed, |b| absmax[b], 64, 0, &mut all);
            for (i, (&a, &b)) in x.iter().zip(&all).enumerate() {
                assert!((a - b).abs() <= 0.2 * absmax[i / 64], "{ty:?} weight {i}: {a} vs {b}");
            }
            // Any sub-range (odd starts, block-straddling) decodes the same values.
            for (s, len) in [(1, 10), (63, 3), (64, 64), (127, 73), (5, 190)] {
                let mut part = vec![0f32; len];
                dequantize_range(ty, &packed, |b| absmax[b], 64, s, &mut part);
                assert_eq!(part, all[s..s + len], "{ty:?} range {s}+{len}");
            }
        }
    }

    #[test]
    fn odd_length_and_zero_block() {
        // A block of zeros: 0·∞ = NaN → code 0, decoded as code·0 = 0 (bitsandbytes' bytes).
        let (packed, absmax) = quantize(Bnb4Type::Nf4, &[0.0; 64], 64);
        assert_eq!(absmax, vec![0.0]);
        assert!(packed.iter().all(|&b| b == 0));
        let mut out = vec![1f32; 64];
        dequantize_range(Bnb4Type::Nf4, &packed, |b| absmax[b], 64, 0, &mut out);
        assert!(out.iter().all(|&v| v == 0.0));
        // Odd length: the last byte pairs the weight with a zero (NF4 code 7).
        let (packed, _) = quantize(Bnb4Type::Nf4, &[1.0, -1.0, 0.5], 64);
        assert_eq!(packed, vec![0xf0, (Bnb4Type::Nf4.encode(0.5) << 4) | 7]);
    }
}
