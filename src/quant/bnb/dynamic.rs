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
/// both signs, plus 0 and 1. The values are the f32 bits torch produces for it (torch's
/// `linspace` and the scaling run in f32); the table is the one every bitsandbytes version
/// since 0.37 writes as `nested_quant_map`, and readers use the stored table anyway.
pub fn dynamic_map() -> [f32; 256] {
    let mut v: Vec<f32> = Vec::with_capacity(256);
    // Python's `10 ** (i - 6)` as the f32 torch multiplies by.
    const DECADES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    for (i, &decade) in DECADES.iter().enumerate() {
        let b = linspace_f32(0.1, 1.0, (1 << i) + 1);
        let scale = decade as f32;
        for w in b.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            v.push(scale * mean);
            v.push(-scale * mean);
        }
    }
    v.push(0.0);
    v.push(1.0);
    v.sort_by(f32::total_cmp);
    let mut out = [0f32; 256];
    out.copy_from_slice(&v);
    out
}

/// torch's CPU `linspace` in f32: the first half counted up from `start`, the rest down from
/// `end`, so that both ends are exact.
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps).map(|i| if i < half { start + step * i as f32 } else { end - step * (steps - 1 - i) as f32 }).collect()
}

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
