//! Q2_K: 2.625 bits per weight. 16 sub-blocks of 16 weights, x ≈ d·sc·q − dmin·m with
//! q ∈ [0, 3] and 4-bit sc, m per sub-block.
//! Layout (`block_q2_K`): `scales[16]` (sc in the low nibble, m in the high), `qs[64]` (2-bit
//! quants, see `pack_2bit`), `d: f16`, `dmin: f16`; 84 bytes.

use crate::quant::dot::{chunk16, BlockSink};
use crate::quant::search::weighted::{make_qkx3_quants, make_qp_quants, sum_x2};
use crate::quant::{as_block, as_bytes_mut};

use super::search::nearest_int;
use super::{
    fit_sub_blocks, get_f16, pack_2bit, put_f16, search, sub, sub_mut, sub_weights, weighted_super_blocks, QK_K,
};

pub const QK: usize = QK_K;
pub const BLOCK_BYTES: usize = 84;

/// `quantize_row_q2_K_ref`: per sub-block an affine fit minimizing the |x|-weighted absolute
/// error, then 4-bit scales and mins against their maxima (d = max/15), then requantization.
pub fn quantize_block(x: &[f32], out: &mut [u8]) {
    let (x, out) = (as_block::<QK>(x), as_bytes_mut::<BLOCK_BYTES>(out));
    let mut l = [0u8; QK_K];
    let (scales, mins, max_scale, max_min) = fit_sub_blocks::<16>(|j| {
        let xs: &[f32; 16] = sub(x, j);
        let w: [f32; 16] = std::array::from_fn(|i| xs[i].abs());
        search::make_qkx2_quants(3, xs, &w, sub_mut(&mut l, j), -0.5, 0.1, 15, true)
    });

    let (sc, rest) = out.split_at_mut(16);
    let (qs, dd) = rest.split_at_mut(64);
    // `as u8` truncates like ggml's int → uint8_t stores.
    if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for j in 0..16 {
            sc[j] = search::nearest_int(iscale * scales[j]) as u8;
        }
        put_f16(&mut dd[0..], max_scale / 15.0);
    } else {
        sc.fill(0);
        put_f16(&mut dd[0..], 0.0);
    }
    if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for j in 0..16 {
            sc[j] |= (search::nearest_int(iscale * mins[j]) << 4) as u8;
        }
        put_f16(&mut dd[2..], max_min / 15.0);
    } else {
        put_f16(&mut dd[2..], 0.0);
    }

    let (d_all, dmin_all) = (get_f16(&dd[0..]), get_f16(&dd[2..]));
    for j in 0..16 {
        let d = d_all * (sc[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * (sc[j] >> 4) as f32;
        for i in 16 * j..16 * (j + 1) {
            l[i] = search::nearest_int((x[i] + dm) / d).clamp(0, 3) as u8;
        }
    }
    pack_2bit(&l, qs);
}

/// `dequantize_row_q2_K`.
#[inline(always)]
pub fn decode_block(b: &[u8; BLOCK_BYTES], s: &mut impl BlockSink) {
    let (sc, qs) = (&b[0..16], &b[16..80]);
    let d = get_f16(&b[80..]);
    let dmin = get_f16(&b[82..]);
    // Output index 128·h + 32·k + i (i < 32) is byte 32·h + i of qs, bits 2k..2k+2; its
    // sub-block is (128·h + 32·k + i)/16.
    for h in 0..2 {
        for k in 0..4 {
            for half in 0..2 {
                let scale = sc[8 * h + 2 * k + half];
                let dl = d * (scale & 0xF) as f32;
                let ml = dmin * (scale >> 4) as f32;
                let q = &qs[32 * h + 16 * half..][..16];
                s.put16(128 * h + 32 * k + 16 * half, &chunk16(|i| dl * ((q[i] >> (2 * k)) & 3) as f32 - ml));
            }
        }
    }
}

/// `quantize_row_q2_K_impl`.
pub fn quantize_row_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
    for ((x, qw), o) in weighted_super_blocks::<BLOCK_BYTES>(x, qw, out) {
        let sigma2 = sum_x2(x) / QK_K as f32;
        let mut l = [0u8; QK_K];
        let (mut scales, mut mins, mut sw) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        for j in 0..16 {
            let (weight, sumw) = sub_weights::<16>(x, qw, sigma2, j);
            sw[j] = sumw;
            let (s, m) = make_qkx3_quants(3, sub(x, j), &weight, sub_mut(&mut l, j), -0.9, 0.05, 36);
            scales[j] = s;
            mins[j] = m;
        }
        let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
        let dm = make_qp_quants(15, &scales, &mut ls, &sw);
        let mm = make_qp_quants(15, &mins, &mut lm, &sw);

        let (sc, rest) = o.split_at_mut(16);
        let (qs, dd) = rest.split_at_mut(64);
        put_f16(&mut dd[0..], dm);
        put_f16(&mut dd[2..], mm);
        let (dm, mm) = (get_f16(&dd[0..]), get_f16(&dd[2..]));
        for j in 0..16 {
            sc[j] = ls[j] | (lm[j] << 4);
        }
        for j in 0..16 {
            let d = dm * (sc[j] & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let m = mm * (sc[j] >> 4) as f32;
            for i in 16 * j..16 * (j + 1) {
                l[i] = nearest_int((x[i] + m) / d).clamp(0, 3) as u8;
            }
        }
        pack_2bit(&l, qs);
    }
}
