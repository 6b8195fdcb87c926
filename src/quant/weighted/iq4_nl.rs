//! Importance-weighted IQ4_NL: `quantize_iq4_nl` with `quant_weights`, i.e.
//! `quantize_row_iq4_nl_impl(32, 32, …, qw, ntry = 7)` per block. The search is the reference
//! one (`crate::quant::iq4_nl::quantize_block`) with the weights x² replaced by
//! `qw[j]·sqrt(σ² + x[j]²)`, σ² twice the block's mean square.

use crate::quant::iq4_nl::{quantize_block_weighted, BLOCK_BYTES, QK};

fn block(x: &[f32; QK], qw: &[f32], out: &mut [u8]) {
    let mut sigma2 = 0f32;
    for &v in x {
        sigma2 += v * v;
    }
    sigma2 *= 2.0 / QK as f32;
    let w: [f32; QK] = std::array::from_fn(|j| qw[j] * (sigma2 + x[j] * x[j]).sqrt());
    quantize_block_weighted(x, &w, out);
}

/// One row of `quantize_iq4_nl` with importance `qw` (one value per column).
pub fn iq4_nl_row(x: &[f32], qw: &[f32], out: &mut [u8]) {
    for ((xb, w), o) in x.chunks_exact(QK).zip(qw.chunks_exact(QK)).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        block(xb.try_into().unwrap(), w, o);
    }
}
