//! Q3_K: 3.4375 bits per weight. 16 sub-blocks of 16 weights, x ≈ d·sc·q with q ∈ [−4, 3]
//! and a signed 6-bit sc per sub-block.
//! Layout (`block_q3_K`): `hmask[32]` (bit 2 of q+4: weight i in byte i%32, bit i/32),
//! `qs[64]` (low 2 bits, see `pack_2bit`), `scales[12]` (sc+32 as 6 bits: low nibbles of
//! 0–7 and 8–15 in the low/high halves of bytes 0–7, top 2 bits of sub-block j in byte
//! 8 + j%4 at bit 2·(j/4)), `d: f16`; 110 bytes.

use crate::quant::dot::{chunk16, BlockSink};
use crate::quant::search::weighted::{make_qx_quants, sum_x2};
use crate::quant::{as_block, as_bytes_mut};

use super::{get_f16, pack_2bit, put_f16, search, sub, sub_mut, sub_weights, weighted_super_blocks, QK_K};

pub const QK: usize = QK_K;
pub const BLOCK_BYTES: usize = 110;

/// The signed 6-bit scale of sub-block `j`.
#[inline(always)]
fn scale(sc: &[u8], j: usize) -> i32 {
    let lo = if j < 8 { sc[j] & 0xF } else { sc[j - 8] >> 4 };
    let hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
    (lo | (hi << 4)) as i32 - 32
}

/// `quantize_row_q3_K_ref`: per sub-block `make_q3_quants` (x²-weighted, coordinate descent),
/// then the 16 scales quantized to [−32, 31] against the one of largest magnitude
/// (d = −max/32), then requantization.
pub fn quantize_block(x: &[f32], out: &mut [u8]) {
    let (x, out) = (as_block::<QK>(x), as_bytes_mut::<BLOCK_BYTES>(out));
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut amax) = (0f32, 0f32);
    for j in 0..16 {
        scales[j] = search::make_q3_quants(4, sub(x, j), sub_mut(&mut l, j));
        let a = scales[j].abs();
        if a > amax {
            amax = a;
            max_scale = scales[j];
        }
    }

    let (hmask, rest) = out.split_at_mut(32);
    let (qs, rest) = rest.split_at_mut(64);
    let (sc, dd) = rest.split_at_mut(12);
    sc.fill(0);
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for j in 0..16 {
            // ggml stores nearest_int into an int8_t first (a truncation), then clamps.
            let q = ((search::nearest_int(iscale * scales[j]) as i8) as i32).clamp(-32, 31) + 32;
            put_scale(sc, j, q as u8);
        }
        put_f16(dd, 1.0 / iscale);
    } else {
        put_f16(dd, 0.0);
    }
    requantize_and_pack(x, &mut l, hmask, qs, sc, dd);
}

/// Store sub-block `j`'s 6-bit scale code `q` (scale + 32) into `sc` (zeroed beforehand).
pub(crate) fn put_scale(sc: &mut [u8], j: usize, q: u8) {
    if j < 8 {
        sc[j] = q & 0xF;
    } else {
        sc[j - 8] |= (q & 0xF) << 4;
    }
    sc[8 + j % 4] |= (q >> 4) << (2 * (j / 4));
}

/// The tail both Q3_K quantizers share: each weight re-rounded against its sub-block's stored
/// scale (the f16 `dd` times the 6-bit code in `sc`; a sub-block whose stored scale is zero
/// keeps the search's levels, as in ggml), then the levels packed into `hmask` and `qs`.
pub(crate) fn requantize_and_pack(
    x: &[f32; QK],
    l: &mut [i8; QK_K],
    hmask: &mut [u8],
    qs: &mut [u8],
    sc: &[u8],
    dd: &[u8],
) {
    let d_all = get_f16(dd);
    for j in 0..16 {
        let d = d_all * scale(sc, j) as f32;
        if d == 0.0 {
            continue;
        }
        for i in 16 * j..16 * (j + 1) {
            l[i] = (search::nearest_int(x[i] / d).clamp(-4, 3) + 4) as i8;
        }
    }

    hmask.fill(0);
    let mut low = [0u8; QK_K];
    for i in 0..QK_K {
        let mut q = l[i] as u8;
        if q > 3 {
            hmask[i % 32] |= 1 << (i / 32);
            q -= 4;
        }
        low[i] = q;
    }
    pack_2bit(&low, qs);
}

/// `dequantize_row_q3_K`.
#[inline(always)]
pub fn decode_block(b: &[u8; BLOCK_BYTES], s: &mut impl BlockSink) {
    let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
    let d_all = get_f16(&b[108..]);
    // Output index 128·h + 32·k + i is qs byte 32·h + i bits 2k..2k+2 and hmask byte i bit
    // 4·h + k (as packed above).
    for h in 0..2 {
        for k in 0..4 {
            let bit = 1u8 << (4 * h + k);
            for half in 0..2 {
                let dl = d_all * scale(sc, 8 * h + 2 * k + half) as f32;
                let q = &qs[32 * h + 16 * half..][..16];
                let m = &hmask[16 * half..][..16];
                s.put16(
                    128 * h + 32 * k + 16 * half,
                    &chunk16(|i| {
                        let v = ((q[i] >> (2 * k)) & 3) as i32 - if m[i] & bit != 0 { 0 } else { 4 };
                        dl * v as f32
                    }),
                );
            }
        }
    }
}

/// `quantize_row_q3_K_impl`.
pub fn quantize_row_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
    for ((x, qw), o) in weighted_super_blocks::<BLOCK_BYTES>(x, qw, out) {
        let sigma2 = 2.0 * sum_x2(x) / QK_K as f32;
        let mut l = [0i8; QK_K];
        let (mut scales, mut sw) = ([0f32; 16], [0f32; 16]);
        for j in 0..16 {
            let (weight, sumw) = sub_weights::<16>(x, qw, sigma2, j);
            sw[j] = sumw;
            scales[j] = make_qx_quants(4, sub(x, j), sub_mut(&mut l, j), &weight);
        }
        let (hmask, rest) = o.split_at_mut(32);
        let (qs, rest) = rest.split_at_mut(64);
        let (sc, dd) = rest.split_at_mut(12);
        sc.fill(0);
        let mut ls = [0i8; 16];
        let d_block = make_qx_quants(32, &scales, &mut ls, &sw);
        for j in 0..16 {
            put_scale(sc, j, ls[j] as u8);
        }
        put_f16(dd, d_block);
        requantize_and_pack(x, &mut l, hmask, qs, sc, dd);
    }
}
