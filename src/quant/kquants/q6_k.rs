//! Q6_K: 6.5625 bits per weight. 16 sub-blocks of 16 weights, x ≈ d·sc·q with q ∈ [−32, 31]
//! and a signed 8-bit sc per sub-block.
//! Layout (`block_q6_K`): `ql[128]`, `qh[64]`, `scales[16]: i8`, `d: f16`; 210 bytes. Each
//! 128-weight half uses 64 bytes of ql and 32 of qh: for i < 32, ql[i] holds the low nibbles
//! of weights i (low) and i+64 (high), ql[i+32] those of i+32 and i+96, and qh[i] the top
//! 2 bits of weights i, i+32, i+64, i+96 in bit pairs 0, 2, 4, 6.

use crate::quant::dot::{chunk16, BlockSink};
use crate::quant::grid::ElemGrid;
use crate::quant::{as_block, as_bytes_mut};

use super::{get_f16, put_f16, search, sub, sub_mut, weighted_super_blocks, QK_K};

pub const QK: usize = QK_K;
pub const BLOCK_BYTES: usize = 210;

/// `quantize_row_q6_K_ref`: per sub-block `make_qx_quants(16, 32, …, rmse_type 1)`, scales
/// quantized to 8 bits against the one of largest magnitude (d = −max/128), requantization.
/// A super-block whose scales are all ~0 is stored as zeros.
#[inline(always)]
pub fn quantize_block(x: &[f32], out: &mut [u8]) {
    let x = as_block::<QK>(x);
    quantize_block_weighted(x, |i| x[i] * x[i], out);
}

/// The reference quantizer with weight `weight(i)` for x[i] in each sub-block's search: x² in
/// `quantize_row_q6_K_ref`, the importance `qw[i]` alone in `quantize_row_q6_K_impl` (ggml's
/// σ² term is commented out for this type).
#[inline(always)]
pub(crate) fn quantize_block_weighted(x: &[f32; QK], weight: impl Fn(usize) -> f32, out: &mut [u8]) {
    let out = as_bytes_mut::<BLOCK_BYTES>(out);
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for j in 0..16 {
        let s = search::make_qx_quants_weighted::<16>(32, sub(x, j), sub_mut(&mut l, j), |k| weight(16 * j + k));
        scales[j] = s;
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < search::GROUP_MAX_EPS {
        out[..BLOCK_BYTES].fill(0);
        return;
    }

    let (ql, rest) = out.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    let (sc, dd) = rest.split_at_mut(16);
    let iscale = -128.0 / max_scale;
    put_f16(dd, 1.0 / iscale);
    for j in 0..16 {
        sc[j] = search::nearest_int(iscale * scales[j]).min(127) as i8 as u8;
    }
    let d_all = get_f16(dd);
    for j in 0..16 {
        let d = d_all * (sc[j] as i8) as f32;
        if d == 0.0 {
            continue;
        }
        for i in 16 * j..16 * (j + 1) {
            l[i] = (search::nearest_int(x[i] / d).clamp(-32, 31) + 32) as i8;
        }
    }

    for h in 0..2 {
        let lh = &l[128 * h..128 * (h + 1)];
        let (ql, qh) = (&mut ql[64 * h..64 * (h + 1)], &mut qh[32 * h..32 * (h + 1)]);
        for i in 0..32 {
            let (a, b, c, e) = (lh[i] as u8, lh[i + 32] as u8, lh[i + 64] as u8, lh[i + 96] as u8);
            ql[i] = (a & 0xF) | ((c & 0xF) << 4);
            ql[i + 32] = (b & 0xF) | ((e & 0xF) << 4);
            qh[i] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
}

/// Weight `j`'s grid given the header in block `b` (GPTQ rounds onto it).
pub fn elem_grid(b: &[u8], j: usize) -> ElemGrid {
    let sc = b[192 + j / 16] as i8;
    ElemGrid::Sym { d: get_f16(&b[208..]) * sc as f32, off: -32, qmin: 0, qmax: 63 }
}

/// Store weight `j`'s code `q`. Half h: ql[64h..], qh[128 + 32h..]. Quarter t of the half
/// (32 weights): low nibbles in ql[i + 32·(t&1)] (low for t < 2, high otherwise), top two
/// bits in qh[i] bits 2t, 2t+1.
pub fn set_code(b: &mut [u8], j: usize, q: i32) {
    let (h, t, i) = (j / 128, (j % 128) / 32, j % 32);
    let lo = (q & 0xF) as u8;
    let k = 64 * h + i + 32 * (t & 1);
    b[k] = if t < 2 { (b[k] & 0xF0) | lo } else { (b[k] & 0x0F) | (lo << 4) };
    let kh = 128 + 32 * h + i;
    b[kh] = (b[kh] & !(3 << (2 * t))) | ((((q >> 4) & 3) as u8) << (2 * t));
}

/// `dequantize_row_q6_K`: x = (d·sc)·q, in ggml's order.
#[inline(always)]
pub fn decode_block(b: &[u8; BLOCK_BYTES], s: &mut impl BlockSink) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = get_f16(&b[208..]);
    for h in 0..2 {
        let (ql, qh, sc) = (&ql[64 * h..64 * (h + 1)], &qh[32 * h..32 * (h + 1)], &sc[8 * h..8 * (h + 1)]);
        // Weight 32·k + i (i < 32) of this half: low nibble of ql[i] (k even) or ql[i + 32]
        // (k odd), shifted by 4 for k ≥ 2; top bits from qh[i] bit pair k; scale sc[i/16 + 2k].
        for g in 0..2 {
            let (lo, hi, top) = (&ql[16 * g..][..16], &ql[32 + 16 * g..][..16], &qh[16 * g..][..16]);
            let level = |i: usize, k: usize| {
                let nib = ((if k.is_multiple_of(2) { lo[i] } else { hi[i] }) >> (4 * (k / 2))) & 0xF;
                (nib | (((top[i] >> (2 * k)) & 3) << 4)) as i32 - 32
            };
            for k in 0..4 {
                let dk = d * (sc[g + 2 * k] as i8) as f32;
                s.put16(128 * h + 32 * k + 16 * g, &chunk16(|i| dk * level(i, k) as f32));
            }
        }
    }
}

/// `quantize_row_q6_K_impl`: the reference search weighted by the importance alone (ggml's
/// σ² term is commented out for this type).
pub fn quantize_row_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
    for ((x, qw), o) in weighted_super_blocks::<BLOCK_BYTES>(x, qw, out) {
        quantize_block_weighted(x, |i| qw[i], o);
    }
}
