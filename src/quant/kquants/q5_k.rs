//! Q5_K: 5.5 bits per weight. As Q4_K with q ∈ [0, 31]: the fifth bit of weight 64·c + i
//! (i < 32) is bit 2c of `qh[i]`, that of weight 64·c + 32 + i bit 2c + 1.
//! Layout (`block_q5_K`): `d: f16`, `dmin: f16`, `scales[12]`, `qh[32]`, `qs[128]`
//! (low nibbles as Q4_K); 176 bytes.

use crate::quant::dot::{chunk16, BlockSink};
use crate::quant::grid::{set_bit, ElemGrid};
use crate::quant::{as_block, as_bytes_mut};

use super::{
    get_f16, get_scale_min_k4, quantize_scales_k4, requantize_k4, weighted_scales_k4, weighted_super_blocks, QK_K,
};

pub const QK: usize = QK_K;
pub const BLOCK_BYTES: usize = 176;

/// `quantize_row_q5_K_ref`: `make_qkx2_quants(32, 31, …, rmin −0.5, rdelta 0.1, 15 steps)`
/// per sub-block, 6-bit scales and mins, requantization.
pub fn quantize_block(x: &[f32], out: &mut [u8]) {
    let (x, out) = (as_block::<QK>(x), as_bytes_mut::<BLOCK_BYTES>(out));
    let mut l = [0u8; QK_K];
    let (head, rest) = out.split_at_mut(16);
    let (d, dmin) = quantize_scales_k4(x, 31, -0.5, 15, &mut l, head);
    requantize_k4(x, d, dmin, &head[4..16], 31, &mut l);
    pack_levels(&l, rest);
}

/// The 5-bit levels into `qh` then `qs` (`rest`: the block after its 16-byte head).
pub(crate) fn pack_levels(l: &[u8; QK_K], rest: &mut [u8]) {
    let (qh, qs) = rest.split_at_mut(32);
    qh.fill(0);
    for c in 0..4 {
        let (lc, q) = (&l[64 * c..64 * (c + 1)], &mut qs[32 * c..32 * (c + 1)]);
        for i in 0..32 {
            let (a, b) = (lc[i], lc[i + 32]);
            qh[i] |= ((a >> 4) << (2 * c)) | ((b >> 4) << (2 * c + 1));
            q[i] = (a & 0xF) | ((b & 0xF) << 4);
        }
    }
}

/// Weight `j`'s grid given the header in block `b` (GPTQ rounds onto it).
pub fn elem_grid(b: &[u8], j: usize) -> ElemGrid {
    super::q4_k::k4_elem_grid(b, j, 31)
}

/// Store weight `j`'s code `q`: low nibble as Q4_K's (after qh), fifth bit in qh.
pub fn set_code(b: &mut [u8], j: usize, q: i32) {
    super::q4_k::set_nibble64(&mut b[48..], j, (q & 0xF) as u8);
    let (c, i) = (j / 64, j % 64);
    set_bit(&mut b[16 + i % 32], 2 * c + i / 32, q & 0x10 != 0);
}

/// `dequantize_row_q5_K`.
#[inline(always)]
pub fn decode_block(b: &[u8; BLOCK_BYTES], s: &mut impl BlockSink) {
    let d = get_f16(&b[0..]);
    let min = get_f16(&b[2..]);
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for c in 0..4 {
        let (sc1, m1) = get_scale_min_k4(2 * c, scales);
        let (sc2, m2) = get_scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        for h in 0..2 {
            let (q, qh) = (&qs[32 * c + 16 * h..][..16], &qh[16 * h..][..16]);
            let hi = |i: usize, u: u8| if qh[i] & u != 0 { 16 } else { 0 };
            s.put16(64 * c + 16 * h, &chunk16(|i| d1 * ((q[i] & 0xF) + hi(i, u1)) as f32 - m1));
            s.put16(64 * c + 32 + 16 * h, &chunk16(|i| d2 * ((q[i] >> 4) + hi(i, u2)) as f32 - m2));
        }
    }
}

/// `quantize_row_q5_K_impl`.
pub fn quantize_row_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
    for ((x, qw), o) in weighted_super_blocks::<BLOCK_BYTES>(x, qw, out) {
        let mut l = [0u8; QK_K];
        let (head, rest) = o.split_at_mut(16);
        let (d, dmin) = weighted_scales_k4(x, qw, 31, true, &mut l, head);
        requantize_k4(x, d, dmin, &head[4..16], 31, &mut l);
        pack_levels(&l, rest);
    }
}
