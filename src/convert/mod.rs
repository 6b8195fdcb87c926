//! Format conversion: any model qforge reads → GGUF (`to_gguf`), GGUF → Hugging Face
//! directory (`to_hf`). Both stream one tensor at a time. `plan` decides each tensor's GGUF
//! type: one type for `convert`, llama.cpp's quantization mixes for `quantize`.

pub mod imatrix;
pub mod import;
pub mod plan;
pub mod to_bnb;
pub mod to_gguf;
pub mod to_hf;
pub mod to_hf_quant;

use crate::error::{Error, Result};
use crate::model::names;
use crate::model::{ModelConfig, RopeLayout, TensorRef};
use crate::quant;

/// Decode a tensor to f32 in the requested q/k row layout, refusing NaN/Inf unless allowed.
pub fn tensor_to_f32(
    t: &TensorRef<'_>,
    config: &ModelConfig,
    from: RopeLayout,
    to: RopeLayout,
    allow_nonfinite: bool,
) -> Result<Vec<f32>> {
    let values = match &t.packed {
        Some(p) => p.dequantize(),
        None => decode_plain(t)?,
    };
    finish_f32(t, values, config, from, to, allow_nonfinite)
}

fn decode_plain(t: &TensorRef<'_>) -> Result<Vec<f32>> {
    if !quant::can_decode(t.ggml_type) {
        return Err(Error::tensor(&t.name, format!("decoding {} tensors is not supported yet", t.ggml_type)));
    }
    quant::decode(t.ggml_type, t.data, t.n_elements()).map_err(|e| Error::tensor(&t.name, e.to_string()))
}

/// Check for NaN/Inf and reorder q/k rows.
fn finish_f32(
    t: &TensorRef<'_>,
    values: Vec<f32>,
    config: &ModelConfig,
    from: RopeLayout,
    to: RopeLayout,
    allow_nonfinite: bool,
) -> Result<Vec<f32>> {
    if !allow_nonfinite {
        if let Some(i) = quant::find_nonfinite(&values) {
            return Err(Error::tensor(
                &t.name,
                format!(
                    "holds a non-finite value ({}) at flat index {i}; pass --allow-nonfinite to convert anyway",
                    values[i]
                ),
            ));
        }
    }
    if from == to {
        return Ok(values);
    }
    let Some(heads) = names::qk_heads(&t.name, config.n_heads, config.n_kv_heads) else {
        return Ok(values);
    };
    let rows = t.shape[0];
    let row_len = t.n_elements() / rows.max(1);
    let src = match to {
        RopeLayout::Interleaved => names::rope_interleave_rows(rows, heads)?,
        RopeLayout::RotateHalf => names::rope_deinterleave_rows(rows, heads)?,
    };
    let mut out = Vec::with_capacity(values.len());
    for s in src {
        out.extend_from_slice(&values[s * row_len..(s + 1) * row_len]);
    }
    Ok(out)
}
