//! Importing quantized Hugging Face checkpoints (GPTQ, AWQ) into GGUF. Where the checkpoint's
//! grid coincides with a GGML block type the codes are re-packed instead of re-quantized:
//! - 4-bit, asymmetric, groups of a multiple of 32 columns in order → Q4_1 with d = scale,
//!   m = −scale·zero (the only loss: m rounded to f16);
//! - 4-bit with every zero point 8 → Q4_0 with d = scale (exact);
//! - 8-bit with every zero point 128 → Q8_0 with d = scale (exact).
//!
//! Anything else (act-order checkpoints whose groups are not contiguous, other bit widths,
//! other target types) is dequantized and quantized again by the target type's quantizer,
//! which adds that type's rounding error on top of the checkpoint's; the caller warns.

use std::collections::HashMap;

use super::plan::{self, Assigned, TensorSpec, TypePlan, Uniform};
use super::to_gguf::TensorEncoder;
use crate::error::Result;
use crate::ggml_type::GgmlType;
use crate::model::packed::{IntCodes, Packed};
use crate::model::{names, ModelConfig, ModelFile, RopeLayout};
use crate::quant::float::put_f16;

/// The GGML type a packed weight converts to without re-quantization, if any.
pub fn native_type(p: &Packed<'_>) -> Option<GgmlType> {
    let codes = p.int_codes()?;
    [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_1].into_iter().find(|&t| repack(&codes, p.rows, p.cols, t).is_some())
}

/// The type every packed weight of `model` re-packs into, if they all agree (the default
/// output type for a quantized checkpoint).
pub fn native_type_of(model: &ModelFile) -> Result<Option<GgmlType>> {
    let mut found = None;
    for t in model.tensors()? {
        if let Some(p) = &t.packed {
            let n = native_type(p);
            if n.is_none() || (found.is_some() && found != n) {
                return Ok(None);
            }
            found = n;
        }
    }
    Ok(found)
}

/// The types of an imported quantized checkpoint: its quantized weights in `packed_type`, the
/// matrices it keeps unquantized (embeddings, lm_head) in their own float type, or
/// `other_type` when the user asked for one type everywhere.
pub struct ImportPlan {
    pub packed: std::collections::HashSet<String>,
    pub packed_type: GgmlType,
    pub other_type: Option<GgmlType>,
}

impl ImportPlan {
    pub fn new(model: &ModelFile, packed_type: GgmlType, other_type: Option<GgmlType>) -> Result<ImportPlan> {
        let packed = model.tensors()?.into_iter().filter(|t| t.packed.is_some()).map(|t| t.name).collect();
        Ok(ImportPlan { packed, packed_type, other_type })
    }
}

impl TypePlan for ImportPlan {
    fn file_type(&self) -> u32 {
        plan::uniform_file_type(self.packed_type).unwrap_or(0)
    }

    fn assign(&self, config: &ModelConfig, tensors: &[TensorSpec<'_>]) -> Result<Vec<Assigned>> {
        let mut out = Vec::with_capacity(tensors.len());
        for t in tensors {
            let ty = if self.packed.contains(t.name) {
                self.packed_type
            } else if t.shape.len() >= 2 {
                self.other_type.unwrap_or(if t.source_type.is_float() { t.source_type } else { GgmlType::F16 })
            } else {
                GgmlType::F32
            };
            out.extend(Uniform { outtype: ty }.assign(config, std::slice::from_ref(t))?);
        }
        Ok(out)
    }
}

/// How each packed tensor was written.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ImportReport {
    /// Re-packed without re-quantization.
    pub repacked: Vec<String>,
    /// Dequantized and quantized again.
    pub requantized: Vec<String>,
}

/// Writes packed weights by re-packing where the grids coincide.
pub struct ImportEncoder<'m> {
    packed: HashMap<String, Packed<'m>>,
    cfg: ModelConfig,
    from: RopeLayout,
    to: RopeLayout,
    pub report: ImportReport,
}

impl<'m> ImportEncoder<'m> {
    pub fn new(model: &'m ModelFile) -> Result<ImportEncoder<'m>> {
        let cfg = model.config().clone();
        let to = if cfg.arch.gguf_permutes_qk() { RopeLayout::Interleaved } else { RopeLayout::RotateHalf };
        let packed = model.tensors()?.into_iter().filter_map(|t| Some((t.name, t.packed?))).collect();
        Ok(ImportEncoder { packed, cfg, from: model.qk_layout(), to, report: ImportReport::default() })
    }
}

impl TensorEncoder for ImportEncoder<'_> {
    fn encode(&mut self, name: &str, _values: &[f32], ty: GgmlType) -> Result<Option<Vec<u8>>> {
        let Some(p) = self.packed.remove(name) else { return Ok(None) };
        let bytes = p.int_codes().and_then(|c| repack(&c, p.rows, p.cols, ty));
        let Some(bytes) = bytes else {
            self.report.requantized.push(name.to_string());
            return Ok(None);
        };
        self.report.repacked.push(name.to_string());
        let row_bytes = bytes.len() / p.rows.max(1);
        Ok(Some(match names::row_order(name, p.rows, self.cfg.n_heads, self.cfg.n_kv_heads, self.from, self.to)? {
            Some(src) => names::reorder_rows(&bytes, row_bytes, &src),
            None => bytes,
        }))
    }
}

/// Re-pack integer codes as `ty` blocks (rows in the checkpoint's order), or `None` when the
/// grids differ.
fn repack(c: &IntCodes, rows: usize, cols: usize, ty: GgmlType) -> Option<Vec<u8>> {
    const QK: usize = 32;
    if !cols.is_multiple_of(QK) || c.group.len() != cols {
        return None;
    }
    // Every block of 32 columns must lie in one group.
    let block_group: Vec<usize> = (0..cols / QK).map(|b| c.group[b * QK]).collect();
    if (0..cols).any(|col| c.group[col] != block_group[col / QK]) {
        return None;
    }
    let zero_is = |z: u32| c.zeros.iter().all(|&v| v == z);
    let fits = match ty {
        GgmlType::Q4_0 => c.bits == 4 && zero_is(8),
        GgmlType::Q4_1 => c.bits == 4,
        GgmlType::Q8_0 => c.bits == 8 && zero_is(128),
        _ => false,
    };
    if !fits {
        return None;
    }
    let block_bytes = ty.block_bytes();
    let mut out = vec![0u8; rows * cols / QK * block_bytes];
    for (r, row_out) in out.chunks_exact_mut(cols / QK * block_bytes).enumerate() {
        for (b, blk) in row_out.chunks_exact_mut(block_bytes).enumerate() {
            let g = block_group[b];
            let (d, z) = (c.scales[g * rows + r], c.zeros[g * rows + r]);
            let q = &c.codes[r * cols + b * QK..r * cols + (b + 1) * QK];
            match ty {
                GgmlType::Q4_0 => {
                    put_f16(blk, d);
                    for j in 0..QK / 2 {
                        blk[2 + j] = q[j] | (q[j + QK / 2] << 4);
                    }
                }
                GgmlType::Q4_1 => {
                    put_f16(blk, d);
                    put_f16(&mut blk[2..], -d * z as f32);
                    for j in 0..QK / 2 {
                        blk[4 + j] = q[j] | (q[j + QK / 2] << 4);
                    }
                }
                _ => {
                    put_f16(blk, d);
                    for j in 0..QK {
                        blk[2 + j] = (q[j] as i32 - 128) as i8 as u8;
                    }
                }
            }
        }
    }
    Some(out)
}
