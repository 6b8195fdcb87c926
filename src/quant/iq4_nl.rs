//! IQ4_NL: blocks of 32 weights, x ≈ d·K[q] with q a 4-bit index into a fixed non-linear
//! grid K (denser near zero, where weights cluster).
//! Layout (`block_iq4_nl`): `d: f16`, `qs[16]` (weight j in the low nibble of byte j,
//! weight j+16 in the high nibble); 18 bytes, like Q4_0.

use super::dot::{chunk16, BlockSink};
use super::float::{get_f16, put_f16};
use super::grid::{set_nibble32, ElemGrid};
use super::search::best_candidate;
use super::search::weighted::{importance, sum_x2};
use super::{as_block, as_bytes_mut};

pub const QK: usize = 32;
pub const BLOCK_BYTES: usize = 18;

/// ggml's `kvalues_iq4nl`.
pub const KVALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// ggml's `GROUP_MAX_EPS`.
const GROUP_MAX_EPS: f32 = 1e-15;

/// How many stretched grids each side of the initial one the search tries: 7, the value
/// `quantize_iq4_nl` (the path `ggml_quantize_chunk` takes) passes. ggml's
/// `quantize_row_iq4_nl_ref` passes −1 instead and can give different bytes.
const NTRY: i32 = 7;

/// Inverse scales the search tries: the initial one and the 2·NTRY + 1 stretched ones.
const CANDIDATES: usize = 2 + 2 * NTRY as usize;

/// ggml's `best_index_int8`: index of the grid value nearest to `x` (binary search; on an
/// exact midpoint the upper value wins).
#[inline(always)]
pub(crate) fn best_index(x: f32) -> u8 {
    let v = |i: usize| KVALUES[i] as f32;
    if x <= v(0) {
        return 0;
    }
    if x >= v(15) {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < v(mav) {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - v(mu - 1) < v(mu) - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// `quantize_iq4_nl` with no importance matrix, i.e. `quantize_row_iq4_nl_impl(32, 32, …,
/// weights NULL, ntry 7)`, with weights x². The grid is asymmetric (−127 … 113), so both
/// orientations are tried: first d = max/127 (`max` the signed value of largest magnitude,
/// which then lands on the +113 end), refined by weighted least squares; then the 15 inverse
/// scales (t − 127)/max, t ∈ [−7, 7], which put `max` near the −127 end; the best weighted
/// correlation wins. Every weight is then assigned with the f32 d (not the f16-rounded one,
/// as ggml does).
#[inline(always)]
pub fn quantize_block(x: &[f32], out: &mut [u8]) {
    let x = as_block::<QK>(x);
    let w: [f32; QK] = std::array::from_fn(|j| x[j] * x[j]);
    quantize_block_weighted(x, &w, out);
}

/// `quantize_iq4_nl` with `quant_weights` (`quantize_row_iq4_nl_impl(32, 32, …, qw, ntry =
/// 7)` per block): the reference search with the weights x² replaced by
/// `qw[j]·sqrt(σ² + x[j]²)`, σ² twice the block's mean square.
pub fn quantize_row_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
    for ((xb, w), o) in x.chunks_exact(QK).zip(qw.chunks_exact(QK)).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        let xb: &[f32; QK] = xb.try_into().unwrap();
        let sigma2 = sum_x2(xb) * (2.0 / QK as f32);
        quantize_block_weighted(xb, &importance(xb, w, sigma2), o);
    }
}

/// The search of [`quantize_block`] with weights `w` (x² there; the importance-weighted
/// quantizer's `qw[j]·sqrt(σ² + x[j]²)` in `weighted::iq4_nl`).
pub(crate) fn quantize_block_weighted(x: &[f32; QK], w: &[f32; QK], out: &mut [u8]) {
    let out = as_bytes_mut::<BLOCK_BYTES>(out);
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let k0 = KVALUES[0] as f32;
    let d = if amax < GROUP_MAX_EPS {
        0.0
    } else {
        // Weighted correlation of x with the grid values picked at each candidate inverse
        // scale: the initial one, then the stretched ones (lane 1 + t + NTRY for t ∈ [−NTRY, NTRY]).
        let mut ids = [0f32; CANDIDATES];
        ids[0] = 1.0 / (-max / k0);
        for (slot, itry) in ids[1..].iter_mut().zip(-NTRY..=NTRY) {
            *slot = (itry + KVALUES[0] as i32) as f32 / max;
        }
        let (sumqx, sumq2) = fit_lanes(x, w, &ids);
        let first = if sumq2[0] > 0.0 { sumqx[0] / sumq2[0] } else { 0.0 };
        best_candidate(&sumqx[..ids.len()], &sumq2[..ids.len()], first).1
    };
    put_f16(out, d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for j in 0..QK / 2 {
        out[2 + j] = best_index(id * x[j]) | (best_index(id * x[j + QK / 2]) << 4);
    }
}

crate::cpu::multiversion! {
    /// Σ w·q·x and Σ w·q² (q = the grid value nearest to id·x) for every candidate `id`, one
    /// per vector lane, each summed over the block in ggml's order with its products grouped
    /// as ggml groups them. One candidate at a time, with ggml's branchy binary search per
    /// weight, this search cost ~490 cycles per weight.
    fn fit_lanes(x: &[f32], w: &[f32], ids: &[f32; CANDIDATES]) -> ([f32; CANDIDATES], [f32; CANDIDATES]) {
        let (mut sumqx, mut sumq2) = ([0f32; CANDIDATES], [0f32; CANDIDATES]);
        for (&xj, &wj) in x.iter().zip(w) {
            for c in 0..CANDIDATES {
                let q = nearest_value(ids[c] * xj);
                sumqx[c] += wj * q * xj;
                sumq2[c] += wj * q * q;
            }
        }
        (sumqx, sumq2)
    }
}

/// `KVALUES[best_index(x)]` without branches, so that it vectorizes: the grid values on
/// either side of `x` by selects over the table, then [`best_index`]'s choice (the upper one on
/// an exact midpoint; the ends beyond the grid; a NaN gives the top value, as there).
#[inline(always)]
fn nearest_value(x: f32) -> f32 {
    let (mut below, mut above) = (f32::NEG_INFINITY, f32::INFINITY);
    for &k in &KVALUES {
        below = if k as f32 <= x { k as f32 } else { below };
    }
    for &k in KVALUES.iter().rev() {
        above = if k as f32 > x { k as f32 } else { above };
    }
    if above == f32::INFINITY {
        KVALUES[15] as f32
    } else if below == f32::NEG_INFINITY {
        KVALUES[0] as f32
    } else if x - below < above - x {
        below
    } else {
        above
    }
}

/// `dequantize_row_iq4_nl`.
#[inline(always)]
pub fn decode_block(b: &[u8; BLOCK_BYTES], s: &mut impl BlockSink) {
    let d = get_f16(b);
    let q = &b[2..BLOCK_BYTES];
    s.put16(0, &chunk16(|j| d * KVALUES[(q[j] & 0xF) as usize] as f32));
    s.put16(16, &chunk16(|j| d * KVALUES[(q[j] >> 4) as usize] as f32));
}

/// Weight `j`'s grid given the header in block `b` (GPTQ rounds onto it).
pub fn elem_grid(b: &[u8], _j: usize) -> ElemGrid {
    ElemGrid::Levels { d: get_f16(b), levels: &KVALUES }
}

/// Store weight `j`'s code `q` (laid out as Q4_0's).
pub fn set_code(b: &mut [u8], j: usize, q: i32) {
    set_nibble32(&mut b[2..18], j, q as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The branch-free lookup of the search agrees with ggml's binary search everywhere:
    /// on the grid, on every midpoint and next to it, beyond the ends, and on NaN.
    #[test]
    fn nearest_value_is_best_index() {
        let mut xs = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e9, -1e9];
        for w in KVALUES.windows(2) {
            let mid = (w[0] as f32 + w[1] as f32) / 2.0;
            xs.extend([mid, mid.next_up(), mid.next_down(), w[0] as f32, (w[0] as f32).next_up()]);
        }
        xs.extend((-3000..3000).map(|i| i as f32 * 0.05));
        for x in xs {
            assert_eq!(nearest_value(x).to_bits(), (KVALUES[best_index(x) as usize] as f32).to_bits(), "x = {x}");
        }
    }

    #[test]
    fn best_index_picks_the_nearest_grid_value() {
        for (i, &k) in KVALUES.iter().enumerate() {
            assert_eq!(best_index(k as f32) as usize, i);
        }
        assert_eq!(best_index(0.0), 8); // 1 is nearer than −10
        assert_eq!(best_index(-1000.0), 0);
        assert_eq!(best_index(1000.0), 15);
        assert_eq!(best_index(7.0), 9); // midpoint of 1 and 13: the upper one
    }

    #[test]
    fn round_trip_error_is_within_half_the_widest_grid_gap() {
        let mut s = 12345u32;
        for _ in 0..200 {
            let x: Vec<f32> = (0..QK)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect();
            let mut b = [0u8; BLOCK_BYTES];
            quantize_block(&x, &mut b);
            let mut y = [0f32; QK];
            crate::quant::dot::block_decode!(crate::quant::iq4_nl)(&b, &mut y);
            let d = get_f16(&b).abs();
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            // Widest gap between grid values is 24 (89 → 113); the least-squares d may leave
            // the extreme weight up to a few grid units past the end of the grid.
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() <= 14.0 * d + amax * 1e-3, "{a} vs {b}, d = {d}");
            }
        }
    }

    #[test]
    fn zero_block() {
        let mut b = [0u8; BLOCK_BYTES];
        quantize_block(&[0.0; QK], &mut b);
        // d = 0 and every index is that of the grid value nearest 0 (1, index 8), as in ggml.
        assert_eq!(&b[..2], &[0, 0]);
        assert!(b[2..].iter().all(|&q| q == 0x88));
    }
}
