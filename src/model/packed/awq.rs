//! AWQ checkpoints in AutoAWQ's "gemm" layout (what AutoAWQ, llm-compressor's AWQ export and
//! transformers' `AwqConfig(version="gemm")` read and write).
//!
//! weight[r, c] = scales[g, r] · (q[r, c] − z[g, r]) with g = c / group_size, asymmetric
//! 4-bit codes. Unlike GPTQ, the codes are packed along the *output* dimension: `qweight` is
//! int32 [cols, rows/8] and word (c, j) holds the codes of rows 8j…8j+7 for input column c,
//! nibble k (bits 4k…4k+3) holding row 8j + ORDER[k] with ORDER = [0, 2, 4, 6, 1, 3, 5, 7] (the
//! interleave AutoAWQ's CUDA kernel unpacks fastest). `qzeros` int32 [groups, rows/8] packs the
//! zero points the same way, and stores them as they are (no GPTQ-style "zero − 1").
//! `scales` is f16 [groups, rows].

use safetensors::Dtype;
use serde_json::Value;

use super::{bad, expect_part, Packed, Part, Scheme};
use crate::error::{Error, Result};

/// Nibble k of a word holds row `ORDER[k]` of its 8 rows.
pub const ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
/// The inverse: row k of 8 sits in nibble `NIBBLE[k]`.
const NIBBLE: [u32; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// The AWQ scheme of a `quantization_config` (transformers' keys, or AutoAWQ's own
/// `quant_config.json` keys `w_bit` / `q_group_size`).
pub(super) fn from_config(q: &Value) -> Result<Option<Scheme>> {
    let int = |keys: &[&str]| keys.iter().find_map(|k| q.get(*k)).map(|v| v.as_i64().ok_or(v));
    let bits = match int(&["bits", "w_bit"]) {
        Some(Ok(b)) => b,
        Some(Err(v)) => return Err(bad("awq", &format!("bits {v}"))),
        None => return Err(bad("awq", "no integer `bits`")),
    };
    if bits != 4 {
        return Err(Error::Unsupported(format!("AWQ with {bits} bits (the gemm layout holds 4-bit codes only)")));
    }
    let group_size = match int(&["group_size", "q_group_size"]) {
        None | Some(Ok(-1)) => None,
        Some(Ok(g)) if g > 0 => Some(g as usize),
        Some(Ok(g)) => return Err(bad("awq", &format!("group_size {g}"))),
        Some(Err(v)) => return Err(bad("awq", &format!("group_size {v}"))),
    };
    if q.get("zero_point").and_then(Value::as_bool) == Some(false) {
        return Err(Error::Unsupported(
            "AWQ without zero points (zero_point false); the gemm layout qforge reads is asymmetric".into(),
        ));
    }
    let version = match q.get("version") {
        None | Some(Value::Null) => "gemm".to_string(),
        Some(Value::String(s)) => s.to_ascii_lowercase(),
        Some(v) => return Err(bad("awq", &format!("version {v}"))),
    };
    if version != "gemm" {
        return Err(Error::Unsupported(format!(
            "AWQ version {version:?}: qforge reads the \"gemm\" layout only (gemv, gemv_fast, marlin and \
             exllama pack their codes differently)"
        )));
    }
    Ok(Some(Scheme::Awq { group_size }))
}

/// `(rows, cols)` from `qweight` [cols, rows/8].
pub(super) fn shape(name: &str, parts: &[Part<'_>]) -> Result<(usize, usize)> {
    let qw = expect_part(name, parts, "qweight", &[Dtype::I32, Dtype::U32], None)?;
    if qw.shape.len() != 2 || qw.shape[0] == 0 || qw.shape[1] == 0 {
        return Err(Error::tensor(name, format!("qweight has shape {:?}, expected [in, out/8]", qw.shape)));
    }
    let rows = qw.shape[1].checked_mul(8).ok_or_else(|| Error::tensor(name, "qweight is absurdly large"))?;
    Ok((rows, qw.shape[0]))
}

fn group_size(p: &Packed<'_>) -> usize {
    match p.scheme {
        Scheme::Awq { group_size } => group_size.unwrap_or(p.cols),
        // Only called for AWQ weights.
        _ => p.cols,
    }
}

pub(super) fn validate(name: &str, p: &Packed<'_>) -> Result<()> {
    let gs = group_size(p);
    if gs == 0 || !p.cols.is_multiple_of(gs) {
        return Err(Error::tensor(name, format!("{} input columns do not split into groups of {gs}", p.cols)));
    }
    let groups = p.cols / gs;
    expect_part(name, &p.parts, "scales", &[Dtype::F16, Dtype::BF16, Dtype::F32], Some(&[groups, p.rows]))?;
    expect_part(name, &p.parts, "qzeros", &[Dtype::I32, Dtype::U32], Some(&[groups, p.rows / 8]))?;
    if let Some(extra) = p.parts.iter().find(|q| !["qweight", "qzeros", "scales"].contains(&q.suffix.as_str())) {
        return Err(Error::tensor(name, format!("unexpected AWQ tensor `{}`", extra.suffix)));
    }
    Ok(())
}

#[inline(always)]
fn code(word: u32, row: usize) -> u32 {
    (word >> (4 * NIBBLE[row % 8])) & 15
}

pub(super) fn decode_rows(p: &Packed<'_>, r0: usize, n: usize, out: &mut [f32]) {
    let (rows, cols) = (p.rows, p.cols);
    // Parts were validated in `Packed::new`.
    let (Some(qw), Some(qz), Some(sc)) = (p.part("qweight"), p.part("qzeros"), p.part("scales")) else { return };
    let gs = group_size(p);
    let groups = cols / gs;
    let words = rows / 8;
    // Scale and zero of every (group, row) of the tile, read once.
    let mut sz = Vec::with_capacity(groups * n);
    for g in 0..groups {
        for r in r0..r0 + n {
            let z = code(qz.u32_at(g * words + r / 8), r);
            sz.push((sc.f32_at(g * rows + r), z as f32));
        }
    }
    for c in 0..cols {
        let g = c / gs;
        let sz = &sz[g * n..(g + 1) * n];
        for (i, &(s, z)) in sz.iter().enumerate() {
            let r = r0 + i;
            let q = code(qw.u32_at(c * words + r / 8), r);
            out[i * cols + c] = s * (q as f32 - z);
        }
    }
}

/// The integer grid behind an AWQ weight (for re-packing into GGML types on import).
pub(super) fn int_codes(p: &Packed<'_>) -> super::IntCodes {
    let (rows, cols) = (p.rows, p.cols);
    let (Some(qw), Some(qz), Some(sc)) = (p.part("qweight"), p.part("qzeros"), p.part("scales")) else {
        return super::IntCodes { bits: 4, codes: vec![], scales: vec![], zeros: vec![], group: vec![] };
    };
    let gs = group_size(p);
    let groups = cols / gs;
    let words = rows / 8;
    let mut codes = vec![0u8; rows * cols];
    for c in 0..cols {
        for r in 0..rows {
            codes[r * cols + c] = code(qw.u32_at(c * words + r / 8), r) as u8;
        }
    }
    let mut scales = Vec::with_capacity(groups * rows);
    let mut zeros = Vec::with_capacity(groups * rows);
    for g in 0..groups {
        for r in 0..rows {
            scales.push(sc.f32_at(g * rows + r));
            zeros.push(code(qz.u32_at(g * words + r / 8), r));
        }
    }
    super::IntCodes { bits: 4, codes, scales, zeros, group: (0..cols).map(|c| c / gs).collect() }
}

/// The tensors of one AWQ linear, ready to write (little-endian bytes).
pub struct AwqTensors {
    /// int32 [cols, rows/8]
    pub qweight: Vec<u8>,
    /// int32 [groups, rows/8]
    pub qzeros: Vec<u8>,
    /// f16 [groups, rows]
    pub scales: Vec<u8>,
    pub groups: usize,
}

/// Pack 4-bit codes (rows × cols), per-(row, group) scales and zero points (rows × groups,
/// row-major) into the gemm layout.
pub fn pack(
    rows: usize,
    cols: usize,
    group_size: usize,
    codes: &[u8],
    scales: &[f32],
    zeros: &[u8],
) -> Result<AwqTensors> {
    if !rows.is_multiple_of(8) || group_size == 0 || !cols.is_multiple_of(group_size) || codes.len() != rows * cols {
        return Err(Error::InvalidArgument(format!(
            "{rows}×{cols} weights do not pack into AWQ words with groups of {group_size}"
        )));
    }
    let groups = cols / group_size;
    if scales.len() != rows * groups || zeros.len() != rows * groups {
        return Err(Error::InvalidArgument("AWQ scales/zeros do not match the weight shape".into()));
    }
    let words = rows / 8;
    let mut qweight = vec![0u32; cols * words];
    for r in 0..rows {
        let shift = 4 * NIBBLE[r % 8];
        for c in 0..cols {
            qweight[c * words + r / 8] |= (codes[r * cols + c] as u32 & 15) << shift;
        }
    }
    let mut qzeros = vec![0u32; groups * words];
    let mut scale_bytes = Vec::with_capacity(groups * rows * 2);
    for g in 0..groups {
        for r in 0..rows {
            qzeros[g * words + r / 8] |= (zeros[r * groups + g] as u32 & 15) << (4 * NIBBLE[r % 8]);
            scale_bytes.extend_from_slice(&half::f16::from_f32(scales[r * groups + g]).to_le_bytes());
        }
    }
    let bytes = |v: &[u32]| v.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
    Ok(AwqTensors { qweight: bytes(&qweight), qzeros: bytes(&qzeros), scales: scale_bytes, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_tables_are_inverse() {
        for (k, &row) in ORDER.iter().enumerate() {
            assert_eq!(NIBBLE[row] as usize, k);
        }
    }

    #[test]
    fn pack_then_decode() {
        let (rows, cols, gs) = (16, 8, 4);
        let codes: Vec<u8> = (0..rows * cols).map(|i| ((i * 7 + i / 5) % 16) as u8).collect();
        let scales: Vec<f32> = (0..rows * 2).map(|i| 0.5 + i as f32 / 8.0).collect();
        let zeros: Vec<u8> = (0..rows * 2).map(|i| (i % 16) as u8).collect();
        let t = pack(rows, cols, gs, &codes, &scales, &zeros).unwrap();
        let part = |suffix: &str, dtype, shape: Vec<usize>, data: &'static [u8]| Part {
            suffix: suffix.into(),
            dtype,
            shape,
            data,
        };
        let leak = |v: Vec<u8>| -> &'static [u8] { Box::leak(v.into_boxed_slice()) };
        let parts = vec![
            part("qweight", Dtype::I32, vec![cols, rows / 8], leak(t.qweight)),
            part("qzeros", Dtype::I32, vec![2, rows / 8], leak(t.qzeros)),
            part("scales", Dtype::F16, vec![2, rows], leak(t.scales)),
        ];
        let p = Packed::new("w", Scheme::Awq { group_size: Some(gs) }, parts).unwrap();
        assert_eq!((p.rows, p.cols), (rows, cols));
        let w = p.dequantize();
        for r in 0..rows {
            for c in 0..cols {
                let g = c / gs;
                let s = half::f16::from_f32(scales[r * 2 + g]).to_f32();
                let expect = s * (codes[r * cols + c] as f32 - zeros[r * 2 + g] as f32);
                assert_eq!(w[r * cols + c], expect, "row {r} col {c}");
            }
        }
        // Word 0 of column 0: nibble k holds row ORDER[k].
        let word = p.part("qweight").unwrap().u32_at(0);
        for (k, &row) in ORDER.iter().enumerate() {
            assert_eq!((word >> (4 * k)) & 15, codes[row * cols] as u32);
        }
    }
}
