//! Integer-grid results (GPTQ's, AWQ's, AWQ+GPTQ's) as a Hugging Face quantized checkpoint:
//! each linear's codes with its rows put back in Hugging Face order and packed in GPTQ's or
//! AutoAWQ's layout, kept in a scratch file layer by layer, then written with the folded
//! vectors beside the copied tensors (`to_hf_quant::write_replacing`). The methods hand over
//! one neutral result, [`IntQuant`]; the layouts are `model::packed`'s.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use indicatif::ProgressBar;
use safetensors::Dtype;
use serde_json::Value;

use super::to_hf_quant::{self, HfQuantSummary, OutTensor, PackedLinears};
use crate::error::{Error, Result};
use crate::methods::{MatrixResult, RowParts, SpilledResults};
use crate::model::{names, packed, ModelConfig, ModelFile, RopeLayout};
use crate::quant::gptq::IntQuant;

/// A linear's packed tensors: (suffix, tensor), e.g. ("qweight", …).
pub type Parts = Vec<(String, OutTensor<'static>)>;

/// Which Hugging Face layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// GPTQ (AutoGPTQ / GPTQModel): `qweight`, `qzeros`, `scales`, `g_idx`; `v2` stores the
    /// zero points themselves instead of zero − 1.
    Gptq { v2: bool },
    /// AutoAWQ's gemm layout (4-bit, groups in column order): `qweight`, `qzeros`, `scales`.
    Awq,
}

/// Pack every layer's integer results into a [`PackedLinears`] file in `work`, one layer in
/// memory at a time.
pub fn pack_layers<T: RowParts + MatrixResult>(
    results: &mut SpilledResults<'_, T>,
    cfg: &ModelConfig,
    from: RopeLayout,
    layout: Layout,
    work: &Path,
) -> Result<PackedLinears> {
    let mut packed = PackedLinears::create(&work.join("packed.bin"))?;
    for li in 0..cfg.n_layers {
        for (name, r) in results.take_layer(li)? {
            let q = r.into_int_quant().ok_or_else(|| Error::tensor(&name, "expected integer codes"))?;
            let parts = linear_parts(&name, q, cfg, from, layout)?;
            packed.add(name, parts)?;
        }
    }
    results.finish()?;
    Ok(packed)
}

/// One linear's tensors in `layout`, rows back in Hugging Face order.
pub fn linear_parts(name: &str, q: IntQuant, cfg: &ModelConfig, from: RopeLayout, layout: Layout) -> Result<Parts> {
    let cols = q.g_idx.len();
    let rows = q.codes.len() / cols.max(1);
    let groups = q.scales.len() / rows.max(1);
    if layout == Layout::Awq
        && (q.bits != 4 || q.g_idx.iter().enumerate().any(|(c, &g)| g as usize != c / q.group_size))
    {
        return Err(Error::tensor(name, "not 4-bit groups in column order, which hf-awq cannot store"));
    }
    let order = names::row_order(name, rows, cfg.n_heads, cfg.n_kv_heads, from, RopeLayout::RotateHalf)?;
    let (codes, scales, zeros) = match &order {
        Some(src) => (
            names::reorder_rows(&q.codes, cols, src),
            names::reorder_rows(&q.scales, groups, src),
            names::reorder_rows(&q.zeros, groups, src),
        ),
        None => (q.codes, q.scales, q.zeros),
    };
    let part = |dtype, shape: Vec<usize>, data: Vec<u8>| OutTensor { dtype, shape, data: Cow::Owned(data) };
    Ok(match layout {
        Layout::Gptq { v2 } => {
            let bits = q.bits as usize;
            let t = packed::gptq::pack(rows, cols, bits as u32, &codes, &scales, &zeros, &q.g_idx, v2)?;
            vec![
                ("qweight".to_string(), part(Dtype::I32, vec![cols * bits / 32, rows], t.qweight)),
                ("qzeros".to_string(), part(Dtype::I32, vec![t.groups, rows * bits / 32], t.qzeros)),
                ("scales".to_string(), part(Dtype::F16, vec![t.groups, rows], t.scales)),
                ("g_idx".to_string(), part(Dtype::I32, vec![cols], t.g_idx)),
            ]
        }
        Layout::Awq => {
            let t = packed::awq::pack(rows, cols, q.group_size, &codes, &scales, &zeros)?;
            vec![
                ("qweight".to_string(), part(Dtype::I32, vec![cols, rows / 8], t.qweight)),
                ("qzeros".to_string(), part(Dtype::I32, vec![t.groups, rows / 8], t.qzeros)),
                ("scales".to_string(), part(Dtype::F16, vec![t.groups, rows], t.scales)),
            ]
        }
    })
}

/// Write the checkpoint: the packed `linears`, the folded `vectors` in place of the input's,
/// every other tensor copied; `quant_config` goes into config.json, `extra_json` are more
/// files (e.g. `quantize_config.json`).
#[allow(clippy::too_many_arguments)]
pub fn write(
    file: &ModelFile,
    output: &Path,
    linears: PackedLinears,
    vectors: &mut HashMap<String, Vec<f32>>,
    from: RopeLayout,
    quant_config: Value,
    extra_json: Vec<(String, Value)>,
    max_shard_size: u64,
    progress: &ProgressBar,
) -> Result<HfQuantSummary> {
    let cfg = file.config();
    let shapes: HashMap<String, Vec<usize>> =
        file.tensors()?.into_iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
    let replaced = hf_vectors(vectors, cfg, from, &shapes)?;
    to_hf_quant::write_replacing(file, output, linears, replaced, quant_config, extra_json, max_shard_size, progress)
}

/// The folded norms (and v bias, an MoE layer's router and shared gate) as f32 tensors of
/// their shapes in `shapes`: rounding them to the checkpoint's bf16 would add an error of up
/// to 2⁻⁹ per channel to what the fold computed exactly.
fn hf_vectors(
    vectors: &mut HashMap<String, Vec<f32>>,
    cfg: &ModelConfig,
    from: RopeLayout,
    shapes: &HashMap<String, Vec<usize>>,
) -> Result<HashMap<String, OutTensor<'static>>> {
    let mut out = HashMap::new();
    for (name, v) in vectors.drain() {
        let n = v.len();
        let v = match names::row_order(&name, n, cfg.n_heads, cfg.n_kv_heads, from, RopeLayout::RotateHalf)? {
            Some(src) => names::reorder_rows(&v, 1, &src),
            None => v,
        };
        // Gemma's HF norms are offsets from 1.
        let shift = if super::hf_norm_offset(cfg, &name) { 1.0 } else { 0.0 };
        let data: Vec<u8> = v.iter().flat_map(|x| (x - shift).to_le_bytes()).collect();
        let shape = shapes.get(&name).cloned().unwrap_or_else(|| vec![n]);
        out.insert(name, OutTensor { dtype: Dtype::F32, shape, data: Cow::Owned(data) });
    }
    Ok(out)
}
