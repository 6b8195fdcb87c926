//! Q4_K: 4.5 bits per weight. 8 sub-blocks of 32 weights, x ≈ d·sc·q − dmin·m with
//! q ∈ [0, 15] and 6-bit sc, m per sub-block.
//! Layout (`block_q4_K`): `d: f16`, `dmin: f16`, `scales[12]` (see `get_scale_min_k4`),
//! `qs[128]` (each 64-weight chunk fills 32 bytes: weight i in the low nibble of byte i,
//! weight i+32 in the high nibble); 144 bytes.

use crate::quant::dot::{chunk16, BlockSink};
use crate::quant::grid::ElemGrid;
use crate::quant::{as_block, as_bytes_mut};

use super::{
    get_f16, get_scale_min_k4, quantize_scales_k4, requantize_k4, weighted_scales_k4, weighted_super_blocks, QK_K,
};

pub const QK: usize = QK_K;
pub const BLOCK_BYTES: usize = 144;

/// `quantize_row_q4_K_ref`: `make_qkx2_quants(32, 15, …, rmin −1, rdelta 0.1, 20 steps)`
/// per sub-block, 6-bit scales and mins, requantization.
pub fn quantize_block(x: &[f32], out: &mut [u8]) {
    let (x, out) = (as_block::<QK>(x), as_bytes_mut::<BLOCK_BYTES>(out));
    let mut l = [0u8; QK_K];
    let (head, qs) = out.split_at_mut(16);
    let (d, dmin) = quantize_scales_k4(x, 15, -1.0, 20, &mut l, head);
    requantize_k4(x, d, dmin, &head[4..16], 15, &mut l);
    pack_levels(&l, qs);
}

/// The 4-bit levels into `qs`: weights 64·c + i and 64·c + 32 + i share byte 32·c + i.
pub(crate) fn pack_levels(l: &[u8; QK_K], qs: &mut [u8]) {
    for c in 0..4 {
        let (lc, q) = (&l[64 * c..64 * (c + 1)], &mut qs[32 * c..32 * (c + 1)]);
        for i in 0..32 {
            q[i] = lc[i] | (lc[i + 32] << 4);
        }
    }
}

/// Weight `j`'s grid given the header in block `b` (GPTQ rounds onto it).
pub fn elem_grid(b: &[u8], j: usize) -> ElemGrid {
    k4_elem_grid(b, j, 15)
}

/// Weight `j`'s grid in a Q4_K or Q5_K block (same header, codes up to `qmax`).
pub(crate) fn k4_elem_grid(b: &[u8], j: usize, qmax: i32) -> ElemGrid {
    let (sc, m) = get_scale_min_k4(j / 32, &b[4..16]);
    ElemGrid::KAffine { d: get_f16(b) * sc as f32, m: get_f16(&b[2..]) * m as f32, qmax }
}

/// Store weight `j`'s code `q`: 64-weight chunk c fills 32 bytes of `qs` (the block after its
/// 16-byte head), weight i in the low nibble, i + 32 in the high one.
pub fn set_code(b: &mut [u8], j: usize, q: i32) {
    set_nibble64(&mut b[16..], j, q as u8);
}

/// Nibble `j` of 4-bit levels packed as Q4_K's `qs` (also Q5_K's low nibbles).
pub(crate) fn set_nibble64(qs: &mut [u8], j: usize, v: u8) {
    let (c, i) = (j / 64, j % 64);
    let k = 32 * c + i % 32;
    qs[k] = if i < 32 { (qs[k] & 0xF0) | v } else { (qs[k] & 0x0F) | (v << 4) };
}

/// `dequantize_row_q4_K`.
#[inline(always)]
pub fn decode_block(b: &[u8; BLOCK_BYTES], s: &mut impl BlockSink) {
    let d = get_f16(&b[0..]);
    let min = get_f16(&b[2..]);
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for c in 0..4 {
        let (sc1, m1) = get_scale_min_k4(2 * c, scales);
        let (sc2, m2) = get_scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        for h in 0..2 {
            let q = &qs[32 * c + 16 * h..][..16];
            s.put16(64 * c + 16 * h, &chunk16(|i| d1 * (q[i] & 0xF) as f32 - m1));
            s.put16(64 * c + 32 + 16 * h, &chunk16(|i| d2 * (q[i] >> 4) as f32 - m2));
        }
    }
}

/// `quantize_row_q4_K_impl`.
pub fn quantize_row_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
    for ((x, qw), o) in weighted_super_blocks::<BLOCK_BYTES>(x, qw, out) {
        let mut l = [0u8; QK_K];
        let (head, qs) = o.split_at_mut(16);
        let (d, dmin) = weighted_scales_k4(x, qw, 15, false, &mut l, head);
        requantize_k4(x, d, dmin, &head[4..16], 15, &mut l);
        pack_levels(&l, qs);
    }
}
