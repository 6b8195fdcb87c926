//! GPTQ checkpoints (AutoGPTQ / GPTQModel "gptq" and "gptq_v2" formats).
//!
//! weight[r, c] = scales[g, r] · (q[r, c] − z[g, r]) with g = g_idx[c]. The codes of one
//! output row r form a little-endian bit stream down column r of `qweight` (int32
//! [cols·bits/32, rows]): code c occupies bits `bits·c … bits·c + bits − 1` of the stream, so
//! for 2/4/8 bits each word holds 32/bits codes, lowest index in the lowest bits, and 3-bit
//! codes straddle words exactly as AutoGPTQ packs them. Zero points are packed the same way
//! along the rows of `qzeros` (int32 [groups, rows·bits/32]); the v1 format stores zero − 1 (a
//! historical off-by-one every reader reproduces), v2 the zero itself.

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
    let cols =
        qw.shape[0].checked_mul(32).ok_or_else(|| Error::tensor(name, "qweight is absurdly large"))? / bits as usize;
    Ok((qw.shape[1], cols))
}

pub(super) fn validate(name: &str, p: &Packed<'_>) -> Result<()> {
    let (bits, _) = params(&p.scheme);
    if !(p.rows * bits as usize).is_multiple_of(32) || !(p.cols * bits as usize).is_multiple_of(32) {
        return Err(Error::tensor(name, format!("{}×{} weights do not pack into int32 words", p.rows, p.cols)));
    }
    let scales = expect_part(name, &p.parts, "scales", &[Dtype::F16, Dtype::BF16, Dtype::F32], None)?;
    if scales.shape.len() != 2 || scales.shape[1] != p.rows || scales.shape[0] == 0 {
        return Err(Error::tensor(name, format!("scales has shape {:?} for {} rows", scales.shape, p.rows)));
    }
    let groups = scales.shape[0];
    expect_part(name, &p.parts, "qzeros", &[Dtype::I32, Dtype::U32], Some(&[groups, p.rows * bits as usize / 32]))?;
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
    let (rows, cols) = (p.rows, p.cols);
    // Parts were validated in `Packed::new`.
    let (Some(qw), Some(qz), Some(sc), Some(gi)) =
        (p.part("qweight"), p.part("qzeros"), p.part("scales"), p.part("g_idx"))
    else {
        return;
    };
    let zero_offset = if v2 { 0 } else { 1 };
    let zwords = rows * bits as usize / 32;
    let groups = sc.shape[0];
    // Scale and zero point of every (group, row of the tile), read once: the runtime decodes
    // every tile for every window, so the inner loops must not re-read the packed zeros.
    let mut scale = Vec::with_capacity(groups * n);
    let mut zero = Vec::with_capacity(groups * n);
    for g in 0..groups {
        for r in r0..r0 + n {
            scale.push(sc.f32_at(g * rows + r));
            zero.push((stream_code(|w| qz.u32_at(g * zwords + w), r, bits) + zero_offset) as f32);
        }
    }
    let g_idx: Vec<usize> = (0..cols).map(|c| gi.u32_at(c) as usize).collect();
    let value = |c: usize, i: usize, q: u32| {
        let k = g_idx[c] * n + i;
        scale[k] * (q as f32 - zero[k])
    };
    if 32 % bits == 0 {
        // 2, 4, 8 bits: every word holds whole codes. Word w of row r is `qweight[w, r]`, so
        // walking the tile's rows inside a word row reads memory contiguously.
        let per = (32 / bits) as usize;
        let mask = (1u32 << bits) - 1;
        for w in 0..cols / per {
            for i in 0..n {
                let mut word = qw.u32_at(w * rows + r0 + i);
                let o = &mut out[i * cols + w * per..][..per];
                for (k, v) in o.iter_mut().enumerate() {
                    *v = value(w * per + k, i, word & mask);
                    word >>= bits;
                }
            }
        }
    } else {
        // 3 bits: codes straddle words; follow the bit stream.
        for (i, o) in out.chunks_exact_mut(cols).take(n).enumerate() {
            let r = r0 + i;
            for (c, v) in o.iter_mut().enumerate() {
                *v = value(c, i, stream_code(|w| qw.u32_at(w * rows + r), c, bits));
            }
        }
    }
}

pub(super) fn int_codes(p: &Packed<'_>) -> super::IntCodes {
    let (bits, v2) = params(&p.scheme);
    let (rows, cols) = (p.rows, p.cols);
    let (Some(qw), Some(qz), Some(sc), Some(gi)) =
        (p.part("qweight"), p.part("qzeros"), p.part("scales"), p.part("g_idx"))
    else {
        return super::IntCodes { bits, codes: vec![], scales: vec![], zeros: vec![], group: vec![] };
    };
    let groups = sc.shape[0];
    let zwords = rows * bits as usize / 32;
    let mut codes = vec![0u8; rows * cols];
    for (r, row) in codes.chunks_exact_mut(cols).enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = stream_code(|w| qw.u32_at(w * rows + r), c, bits) as u8;
        }
    }
    let zero_offset = if v2 { 0 } else { 1 };
    let mut scales = Vec::with_capacity(groups * rows);
    let mut zeros = Vec::with_capacity(groups * rows);
    for g in 0..groups {
        for r in 0..rows {
            scales.push(sc.f32_at(g * rows + r));
            zeros.push(stream_code(|w| qz.u32_at(g * zwords + w), r, bits) + zero_offset);
        }
    }
    super::IntCodes { bits, codes, scales, zeros, group: (0..cols).map(|c| gi.u32_at(c) as usize).collect() }
}

/// Code `k` of a little-endian bit stream of `bits`-bit codes held in 32-bit words.
#[inline(always)]
fn stream_code(word: impl Fn(usize) -> u32, k: usize, bits: u32) -> u32 {
    let bit = k * bits as usize;
    let (w, off) = (bit / 32, (bit % 32) as u32);
    let mask = (1u32 << bits) - 1;
    let lo = word(w) >> off;
    if off + bits <= 32 {
        lo & mask
    } else {
        (lo | (word(w + 1) << (32 - off))) & mask
    }
}

/// Write code `k` into a bit stream (the inverse of [`stream_code`]); `set(word, bits)` ORs
/// bits into a word.
fn put_code(mut set: impl FnMut(usize, u32), k: usize, bits: u32, code: u32) {
    let bit = k * bits as usize;
    let (w, off) = (bit / 32, (bit % 32) as u32);
    set(w, code << off);
    if off + bits > 32 {
        set(w + 1, code >> (32 - off));
    }
}

/// The tensors of one GPTQ linear, ready to write (little-endian bytes).
pub struct GptqTensors {
    /// int32 [cols·bits/32, rows]
    pub qweight: Vec<u8>,
    /// int32 [groups, rows·bits/32]
    pub qzeros: Vec<u8>,
    /// f16 [groups, rows]
    pub scales: Vec<u8>,
    /// int32 [cols]
    pub g_idx: Vec<u8>,
    pub groups: usize,
}

/// Pack integer codes (rows × cols, original column order), per-(row, group) scales and zero
/// points and the column → group map into the GPTQ layout. `v2` stores the zero points
/// themselves instead of zero − 1.
#[allow(clippy::too_many_arguments)]
pub fn pack(
    rows: usize,
    cols: usize,
    bits: u32,
    codes: &[u8],
    scales: &[f32],
    zeros: &[u8],
    g_idx: &[u32],
    v2: bool,
) -> Result<GptqTensors> {
    if !(rows * bits as usize).is_multiple_of(32)
        || !(cols * bits as usize).is_multiple_of(32)
        || codes.len() != rows * cols
    {
        return Err(Error::InvalidArgument(format!("{rows}×{cols} {bits}-bit codes do not pack into int32 words")));
    }
    let groups = scales.len() / rows.max(1);
    if scales.len() != rows * groups || zeros.len() != rows * groups || g_idx.len() != cols {
        return Err(Error::InvalidArgument("GPTQ scales/zeros/g_idx do not match the weight shape".into()));
    }
    let mask = (1u32 << bits) - 1;
    let qrows = cols * bits as usize / 32;
    let mut qweight = vec![0u32; qrows * rows];
    for r in 0..rows {
        for c in 0..cols {
            put_code(|w, b| qweight[w * rows + r] |= b, c, bits, codes[r * cols + c] as u32 & mask);
        }
    }
    let zwords = rows * bits as usize / 32;
    let mut qzeros = vec![0u32; groups * zwords];
    let mut scale_bytes = Vec::with_capacity(groups * rows * 2);
    for g in 0..groups {
        for r in 0..rows {
            let z = zeros[r * groups + g] as u32;
            let stored = if v2 { z } else { z.wrapping_sub(1) } & mask;
            put_code(|w, b| qzeros[g * zwords + w] |= b, r, bits, stored);
            scale_bytes.extend_from_slice(&half::f16::from_f32(scales[r * groups + g]).to_le_bytes());
        }
    }
    let words = |v: &[u32]| v.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
    Ok(GptqTensors {
        qweight: words(&qweight),
        qzeros: words(&qzeros),
        scales: scale_bytes,
        g_idx: words(g_idx),
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pack codes of every bit width with an act-order-like (unsorted) g_idx, then decode
    /// tiles that start mid-matrix: every weight equals scale · (code − zero).
    #[test]
    fn pack_then_decode_every_width() {
        let leak = |v: Vec<u8>| -> &'static [u8] { Box::leak(v.into_boxed_slice()) };
        for bits in [2u32, 3, 4, 8] {
            for v2 in [false, true] {
                let (rows, cols, groups) = (64, 96, 3);
                let levels = 1usize << bits;
                let codes: Vec<u8> = (0..rows * cols).map(|i| ((i * 7 + i / 5) % levels) as u8).collect();
                let scales: Vec<f32> = (0..rows * groups).map(|i| 0.5 + i as f32 / 64.0).collect();
                // v1 cannot store a zero point of 0 (it stores zero − 1).
                let zeros: Vec<u8> = (0..rows * groups)
                    .map(|i| if v2 { (i * 3) % levels } else { 1 + (i * 3) % (levels - 1) } as u8)
                    .collect();
                let g_idx: Vec<u32> = (0..cols).map(|c| ((c * 5) % groups) as u32).collect();
                let t = pack(rows, cols, bits, &codes, &scales, &zeros, &g_idx, v2).unwrap();
                let part =
                    |suffix: &str, dtype, shape: Vec<usize>, data| Part { suffix: suffix.into(), dtype, shape, data };
                let b = bits as usize;
                let parts = vec![
                    part("qweight", Dtype::I32, vec![cols * b / 32, rows], leak(t.qweight)),
                    part("qzeros", Dtype::I32, vec![groups, rows * b / 32], leak(t.qzeros)),
                    part("scales", Dtype::F16, vec![groups, rows], leak(t.scales)),
                    part("g_idx", Dtype::I32, vec![cols], leak(t.g_idx)),
                ];
                let scheme = Scheme::Gptq { bits: bits as u8, group_size: None, sym: false, desc_act: true, v2 };
                let p = Packed::new("w", scheme, parts).unwrap();
                let (r0, n) = (24, 17);
                let mut out = vec![f32::NAN; n * cols];
                p.decode_rows(r0, n, &mut out);
                for i in 0..n {
                    let r = r0 + i;
                    for c in 0..cols {
                        let k = r * groups + g_idx[c] as usize;
                        let s = half::f16::from_f32(scales[k]).to_f32();
                        let want = s * (codes[r * cols + c] as f32 - zeros[k] as f32);
                        assert_eq!(out[i * cols + c], want, "{bits} bits, v2 {v2}: row {r} col {c}");
                    }
                }
            }
        }
    }
}
