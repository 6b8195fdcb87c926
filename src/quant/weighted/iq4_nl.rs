//! Importance-weighted IQ4_NL: `quantize_iq4_nl` with `quant_weights`, i.e.
//! `quantize_row_iq4_nl_impl(32, 32, …, qw, ntry = 7)` per block. The search is the reference
//! one (`crate::quant::iq4_nl::quantize_block`) with the weights x² replaced by
//! `qw[j]·sqrt(σ² + x[j]²)`, σ² twice the block's mean square.

use crate::quant::float::put_f16;
use crate::quant::iq4_nl::{best_index, BLOCK_BYTES, KVALUES, QK};
use crate::quant::kquants::search::GROUP_MAX_EPS;

/// ggml's `ntry` for `quantize_iq4_nl`.
const NTRY: i32 = 7;

fn block(x: &[f32; QK], qw: &[f32], out: &mut [u8]) {
    let mut sigma2 = 0f32;
    for &v in x {
        sigma2 += v * v;
    }
    sigma2 *= 2.0 / QK as f32;
    let w: [f32; QK] = std::array::from_fn(|j| qw[j] * (sigma2 + x[j] * x[j]).sqrt());
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let d = if amax < GROUP_MAX_EPS {
        0.0
    } else {
        let fit = |id: f32| {
            let (mut sumqx, mut sumq2) = (0f32, 0f32);
            for j in 0..QK {
                let q = KVALUES[best_index(id * x[j]) as usize] as f32;
                sumqx += w[j] * q * x[j];
                sumq2 += w[j] * q * q;
            }
            (sumqx, sumq2)
        };
        let d0 = -max / KVALUES[0] as f32;
        let (sumqx, sumq2) = fit(1.0 / d0);
        let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -NTRY..=NTRY {
            let (sumqx, sumq2) = fit((itry + KVALUES[0] as i32) as f32 / max);
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        d
    };
    put_f16(out, d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for j in 0..QK / 2 {
        out[2 + j] = best_index(id * x[j]) | (best_index(id * x[j + QK / 2]) << 4);
    }
}

/// One row of `quantize_iq4_nl` with importance `qw` (one value per column).
pub fn iq4_nl_row(x: &[f32], qw: &[f32], out: &mut [u8]) {
    for ((xb, w), o) in x.chunks_exact(QK).zip(qw.chunks_exact(QK)).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        block(xb.try_into().unwrap(), w, o);
    }
}
