//! Double quantization (`bnb_4bit_use_double_quant`): the f32 absmax values of a 4-bit weight,
//! less their mean (`offset`), stored as 8-bit codes into bitsandbytes' signed "dynamic" map,
//! in blocks of 256 with one f32 absmax each (`quantize_blockwise(absmax − offset, 256)`).
//!
//! Decoding: `absmax[i] = code[q[i]] · nested_absmax[i / 256] + offset`, each step in f32.

use rayon::prelude::*;

/// Absmax values per nested block (bitsandbytes hard-codes 256 for 4-bit weights).
pub const NESTED_BLOCKSIZE: usize = 256;

/// `create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)`, ascending: for each
/// decade 10⁻⁶ … 10⁰, the midpoints of 2ⁱ + 1 evenly spaced points in [0.1, 1] scaled by it,
/// both signs, plus 0 and 1. The f32 bit patterns are torch's own (printed with torch 2.15 and
/// bitsandbytes 0.50): recomputing the formula in f32 lands up to an ulp away on 42 of them,
/// as torch's vectorized `linspace` rounds differently, and these are the values bitsandbytes
/// quantizes against and stores as `nested_quant_map`.
pub fn dynamic_map() -> [f32; 256] {
    DYNAMIC_MAP_BITS.map(f32::from_bits)
}

#[rustfmt::skip]
const DYNAMIC_MAP_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

/// The code of `x` (already divided by its block's absmax) in the ascending 256-value `code`:
/// bitsandbytes' `dQuantize<0>` — a 7-step binary search from index 127, then the nearer of
/// the landing value and its neighbour on the side of `x`, by the f32 midpoint (a value on
/// the midpoint keeps the landing index).
pub fn encode_8bit(code: &[f32; 256], x: f32) -> u8 {
    let (mut pivot, mut lower_pivot, mut upper_pivot) = (127usize, 0usize, 255usize);
    let (mut lower, mut upper) = (-1.0f32, 1.0f32);
    let mut val = code[pivot];
    let mut step = 64;
    while step > 0 {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += step;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= step;
        }
        val = code[pivot];
        step >>= 1;
    }
    if upper_pivot == 255 {
        upper = code[255];
    }
    if lower_pivot == 0 {
        lower = code[0];
    }
    if x > val {
        if x > (upper + val) * 0.5 {
            upper_pivot as u8
        } else {
            pivot as u8
        }
    } else if x < (lower + val) * 0.5 {
        lower_pivot as u8
    } else {
        pivot as u8
    }
}

/// Double-quantized absmax values.
#[derive(Debug, Clone, PartialEq)]
pub struct Nested {
    /// One 8-bit code per 4-bit block.
    pub codes: Vec<u8>,
    /// One f32 absmax per 256 codes.
    pub absmax: Vec<f32>,
    /// The mean subtracted before quantizing.
    pub offset: f32,
    pub code: [f32; 256],
}

/// The offset subtracted before quantizing: the mean absmax. torch sums in f32 in an order of
/// its own; an f64 sum gives the correctly rounded mean, within an f32 ulp of torch's. Any
/// offset decodes exactly: it is stored.
pub fn mean_offset(absmax: &[f32]) -> f32 {
    if absmax.is_empty() {
        return 0.0;
    }
    (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len() as f64) as f32
}

/// `quantize_4bit(..., compress_statistics=True)`'s second stage.
pub fn quantize_absmax(absmax: &[f32]) -> Nested {
    let code = dynamic_map();
    let offset = mean_offset(absmax);
    let centered: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let mut codes = vec![0u8; absmax.len()];
    let mut nested = vec![0f32; absmax.len().div_ceil(NESTED_BLOCKSIZE)];
    codes
        .par_chunks_mut(NESTED_BLOCKSIZE)
        .zip(nested.par_iter_mut())
        .zip(centered.par_chunks(NESTED_BLOCKSIZE))
        .for_each(|((q, m), x)| {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let inv = 1.0 / amax;
            for (q, &v) in q.iter_mut().zip(x) {
                *q = encode_8bit(&code, v * inv);
            }
            *m = amax;
        });
    Nested { codes, absmax: nested, offset, code }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torch's CPU `linspace` in f32, scalar path: the first half counted up from `start`, the
    /// rest down from `end`.
    fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
        let step = (end - start) / (steps - 1) as f32;
        let half = steps / 2;
        (0..steps)
            .map(|i| if i < half { start + step * i as f32 } else { end - step * (steps - 1 - i) as f32 })
            .collect()
    }

    /// The table is the formula, to within an ulp.
    #[test]
    fn dynamic_map_is_the_formula() {
        let mut v: Vec<f32> = vec![0.0, 1.0];
        for (i, decade) in [1e-6f32, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0].into_iter().enumerate() {
            for w in linspace_f32(0.1, 1.0, (1 << i) + 1).windows(2) {
                let mean = (w[0] + w[1]) / 2.0;
                v.push(decade * mean);
                v.push(-decade * mean);
            }
        }
        v.sort_by(f32::total_cmp);
        for (k, (&a, b)) in v.iter().zip(dynamic_map()).enumerate() {
            // The table holds torch's f32 bits, which torch computes in its own order: within
            // 2 ulps of this formula.
            assert!((a - b).abs() <= 2.5e-7 * b.abs(), "{k}: formula {a}, table {b}");
        }
    }

    #[test]
    fn dynamic_map_shape() {
        let c = dynamic_map();
        assert!(c.windows(2).all(|w| w[0] < w[1]), "strictly ascending");
        assert_eq!(c[127], 0.0);
        assert_eq!(c[255], 1.0);
        assert_eq!(c[128], 1e-6f32 * ((0.1f32 + 1.0) / 2.0)); // the mean of linspace(0.1, 1, 2), · 10⁻⁶
        assert!((c[0] + 0.992_968_75).abs() < 1e-6);
    }

    #[test]
    fn encode_8bit_is_nearest() {
        let c = dynamic_map();
        for (k, &v) in c.iter().enumerate() {
            assert_eq!(encode_8bit(&c, v) as usize, k);
        }
        for i in 0..=4000 {
            let x = -1.0 + i as f32 / 2000.0;
            let q = encode_8bit(&c, x) as usize;
            let best = c.iter().map(|v| (v - x).abs()).fold(f32::INFINITY, f32::min);
            assert!(((c[q] - x).abs() - best).abs() <= 1e-7, "x {x}: got {} best dist {best}", c[q]);
        }
    }

    /// The absmax of 4-bit block `i`, as bitsandbytes' `dequantize_blockwise(...) + offset`.
    fn decode(n: &Nested, i: usize) -> f32 {
        n.code[n.codes[i] as usize] * n.absmax[i / NESTED_BLOCKSIZE] + n.offset
    }

    #[test]
    fn absmax_roundtrip() {
        let a: Vec<f32> = (0..700).map(|i| 0.01 + (i % 97) as f32 * 1e-3).collect();
        let n = quantize_absmax(&a);
        assert_eq!(n.codes.len(), 700);
        assert_eq!(n.absmax.len(), 3);
        for (i, &want) in a.iter().enumerate() {
            let got = decode(&n, i);
            // 8-bit dynamic codes near ±1 are 1/64 apart: half of that of the block's range.
            assert!((got - want).abs() <= n.absmax[i / 256] / 100.0, "{i}: {got} vs {want}");
        }
        // A single block whose values all equal their mean: 0·∞ → code 0, decoded as offset.
        let n = quantize_absmax(&[0.5; 10]);
        assert_eq!(n.absmax, vec![0.0]);
        assert_eq!(decode(&n, 3), 0.5);
    }
}
