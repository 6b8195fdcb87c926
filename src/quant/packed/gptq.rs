//! GPTQ checkpoints (AutoGPTQ / GPTQModel "gptq" and "gptq_v2" formats).
//!
//! weight[r, c] = scales[g, r] · (q[r, c] − z[g, r]) with g = g_idx[c], where
//! q[r, c] is bits `bits·(c mod k)…` of qweight[c / k, r] (k = 32 / bits weights per int32,
//! lowest index in the lowest bits) and z[g, r] comes from qzeros[g, r / k] the same way,
//! plus one in the v1 format (which stores zero − 1, a historical off-by-one every reader
//! reproduces).

use safetensors::Dtype;

use super::{expect_part, Packed, Part, Scheme};
use crate::error::{Error, Result};

fn params(scheme: &Scheme) -> (u32, bool) {
    match scheme {
        Scheme::Gptq { bits, v2, .. } => (*bits as u32, *v2),
        // Only called for GPTQ weights.
        _ => (4, false),
    }
}

/// `(rows, cols)` from `qweight` [cols·bits/32, rows].
pub(super) fn shape(name: &str, scheme: &Scheme, parts: &[Part<'_>]) -> Result<(usize, usize)> {
    let (bits, _) = params(scheme);
    let qw = expect_part(name, parts, "qweight", &[Dtype::I32, Dtype::U32], None)?;
    if qw.shape.len() != 2 {
        return Err(Error::tensor(name, format!("qweight has shape {:?}, expected 2-D", qw.shape)));
    }
    let per = 32 / bits as usize;
    let cols = qw.shape[0].checked_mul(per).ok_or_else(|| Error::tensor(name, "qweight is absurdly large"))?;
    Ok((qw.shape[1], cols))
}

pub(super) fn validate(name: &str, p: &Packed<'_>) -> Result<()> {
    let (bits, _) = params(&p.scheme);
    let per = 32 / bits as usize;
    if p.rows % per != 0 {
        return Err(Error::tensor(name, format!("{} output features do not pack into qzeros words", p.rows)));
    }
    let scales = expect_part(name, &p.parts, "scales", &[Dtype::F16, Dtype::BF16, Dtype::F32], None)?;
    if scales.shape.len() != 2 || scales.shape[1] != p.rows || scales.shape[0] == 0 {
        return Err(Error::tensor(name, format!("scales has shape {:?} for {} rows", scales.shape, p.rows)));
    }
    let groups = scales.shape[0];
    expect_part(name, &p.parts, "qzeros", &[Dtype::I32, Dtype::U32], Some(&[groups, p.rows / per]))?;
    let g_idx = expect_part(name, &p.parts, "g_idx", &[Dtype::I32, Dtype::U32], Some(&[p.cols]))?;
    if let Some(c) = (0..p.cols).find(|&c| g_idx.u32_at(c) as usize >= groups) {
        return Err(Error::tensor(
            name,
            format!("g_idx[{c}] = {} but there are {groups} groups", g_idx.u32_at(c) as i32),
        ));
    }
    Ok(())
}

pub(super) fn decode_rows(p: &Packed<'_>, r0: usize, n: usize, out: &mut [f32]) {
    let (bits, v2) = params(&p.scheme);
    let per = (32 / bits) as usize;
    let mask = (1u32 << bits) - 1;
    let (rows, cols) = (p.rows, p.cols);
    // Parts were validated in `Packed::new`.
    let (Some(qw), Some(qz), Some(sc), Some(gi)) =
        (p.part("qweight"), p.part("qzeros"), p.part("scales"), p.part("g_idx"))
    else {
        return;
    };
    let zero_offset = if v2 { 0 } else { 1 };
    let g_idx: Vec<usize> = (0..cols).map(|c| gi.u32_at(c) as usize).collect();
    for (i, o) in out.chunks_exact_mut(cols).take(n).enumerate() {
        let r = r0 + i;
        let zshift = bits * (r % per) as u32;
        for (c, v) in o.iter_mut().enumerate() {
            let g = g_idx[c];
            let q = (qw.u32_at((c / per) * rows + r) >> (bits * (c % per) as u32)) & mask;
            let z = ((qz.u32_at(g * (rows / per) + r / per) >> zshift) & mask) + zero_offset;
            *v = sc.f32_at(g * rows + r) * (q as f32 - z as f32);
        }
    }
}
