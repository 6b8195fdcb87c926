//! Format conversion: any model qforge reads → GGUF (`to_gguf`), GGUF → Hugging Face
//! directory (`to_hf`). Both stream one tensor at a time. `plan` decides each tensor's GGUF
//! type: one type for `convert`, llama.cpp's quantization mixes for `quantize`.

pub mod hf_pack;
pub mod imatrix;
pub mod import;
pub mod plan;
pub mod shards;
pub mod to_bnb;
pub mod to_gguf;
pub mod to_hf;
pub mod to_hf_quant;

use std::borrow::Cow;
use std::path::Path;

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::model::names;
use crate::model::{ModelConfig, ModelFile, RopeLayout, TensorRef};
use crate::quant;

/// Tokenizer and generation files copied from a Hugging Face source into an HF output.
const HF_SIDE_FILES: [&str; 8] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// The safetensors dtype an HF export stores a tensor of output type `t` in: F16 and BF16 as
/// themselves, everything else (F32, and decoded quantized types) as F32.
pub(crate) fn st_dtype(t: crate::ggml_type::GgmlType) -> safetensors::Dtype {
    use crate::ggml_type::GgmlType;
    use safetensors::Dtype;
    match t {
        GgmlType::F16 => Dtype::F16,
        GgmlType::BF16 => Dtype::BF16,
        _ => Dtype::F32,
    }
}

/// Write `v` as pretty JSON to `dir/name`.
pub(crate) fn write_json(dir: &Path, name: &str, v: &serde_json::Value) -> Result<()> {
    let p = dir.join(name);
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::io(&p, std::io::Error::other(e)))?;
    std::fs::write(&p, text + "\n").map_err(|e| Error::io(&p, e))
}

/// The tokenizer files of a Hugging Face output directory: copied from a Hugging Face source,
/// written from a GGUF's vocabulary otherwise (tokenizer.json, tokenizer_config.json, and
/// tokenizer.model for a SentencePiece vocabulary).
pub(crate) fn write_hf_side_files(model: &ModelFile, dir: &Path) -> Result<()> {
    match model {
        ModelFile::Hf(c) => {
            for f in HF_SIDE_FILES {
                let src = c.dir.join(f);
                if src.is_file() {
                    std::fs::copy(&src, dir.join(f)).map_err(|e| Error::io(&src, e))?;
                }
            }
        }
        ModelFile::Gguf { config, .. } => {
            let vocab = model.vocab()?;
            write_json(dir, "tokenizer.json", &vocab.to_hf_json()?)?;
            write_json(dir, "tokenizer_config.json", &vocab.to_hf_tokenizer_config(config.context_length))?;
            if let Some(bytes) = vocab.to_sentencepiece() {
                let p = dir.join("tokenizer.model");
                std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))?;
            }
        }
    }
    Ok(())
}

/// The files beside a quantized Hugging Face export's weights (hf-gptq, hf-awq, bitsandbytes):
/// config.json — the input's own when it has one (it may carry fields qforge does not
/// model), else rebuilt from the GGUF metadata with `torch_dtype` — with `quant_config` as its
/// `quantization_config`, the `extra_json` files (e.g. `quantize_config.json`), and the
/// tokenizer and generation files.
pub(crate) fn write_quantized_hf_files(
    model: &ModelFile,
    dir: &Path,
    torch_dtype: &str,
    quant_config: serde_json::Value,
    extra_json: &[(String, serde_json::Value)],
) -> Result<()> {
    let mut config = match model {
        ModelFile::Hf(c) => c.config_json.clone(),
        ModelFile::Gguf { config, .. } => config.to_hf_json(torch_dtype)?,
    };
    if let Some(obj) = config.as_object_mut() {
        obj.insert("quantization_config".into(), quant_config);
    }
    write_json(dir, "config.json", &config)?;
    for (name, v) in extra_json {
        write_json(dir, name, v)?;
    }
    write_hf_side_files(model, dir)
}

/// Decode a tensor to f32 in the requested q/k row layout, refusing NaN/Inf unless allowed.
pub fn tensor_to_f32(
    t: &TensorRef<'_>,
    config: &ModelConfig,
    from: RopeLayout,
    to: RopeLayout,
    allow_nonfinite: bool,
) -> Result<Vec<f32>> {
    tensor_values(t, config, from, to, allow_nonfinite).map(Cow::into_owned)
}

/// [`tensor_to_f32`], borrowing the mapped values when the tensor is stored as aligned F32
/// and its rows keep their order: quantizing an F32 GGUF then reads the weights where they
/// lie instead of copying each tensor first (a copy of the whole model, the 7B-shaped layer's
/// 1 GB, and the page faults of its fresh memory).
pub fn tensor_values<'a>(
    t: &TensorRef<'a>,
    config: &ModelConfig,
    from: RopeLayout,
    to: RopeLayout,
    allow_nonfinite: bool,
) -> Result<Cow<'a, [f32]>> {
    let same_rows = rows_keep_order(t, config, from, to);
    if let (GgmlType::F32, None, true, true) = (t.ggml_type, &t.packed, same_rows, cfg!(target_endian = "little")) {
        if let Ok(values) = bytemuck::try_cast_slice::<u8, f32>(t.data) {
            if values.len() == t.n_elements() {
                check_finite(t, values, allow_nonfinite)?;
                return Ok(Cow::Borrowed(values));
            }
        }
    }
    let values = match &t.packed {
        Some(p) => p.dequantize(),
        None => decode_plain(t)?,
    };
    finish_f32(t, values, config, from, to, allow_nonfinite).map(Cow::Owned)
}

/// Whether `t`'s rows stay in their stored order between the rope layouts `from` and `to`
/// (only q and k rows are permuted, and only when the layouts differ).
pub(crate) fn rows_keep_order(t: &TensorRef<'_>, config: &ModelConfig, from: RopeLayout, to: RopeLayout) -> bool {
    from == to || names::qk_heads(&t.name, config.n_heads, config.n_kv_heads).is_none()
}

/// A non-finite weight is an error unless the user allowed them.
fn check_finite(t: &TensorRef<'_>, values: &[f32], allow_nonfinite: bool) -> Result<()> {
    if allow_nonfinite {
        return Ok(());
    }
    match quant::find_nonfinite(values) {
        Some(i) => Err(Error::tensor(
            &t.name,
            format!(
                "holds a non-finite value ({}) at flat index {i}; pass --allow-nonfinite to convert anyway",
                values[i]
            ),
        )),
        None => Ok(()),
    }
}

/// A tensor as f32 in Hugging Face's conventions: q/k rows in rotate-half order, and Gemma's
/// norms as offsets from 1 (`w`, where GGUF and qforge hold `1 + w`).
pub fn tensor_to_hf_f32(
    t: &TensorRef<'_>,
    config: &ModelConfig,
    from: RopeLayout,
    allow_nonfinite: bool,
) -> Result<Vec<f32>> {
    let mut values = tensor_to_f32(t, config, from, RopeLayout::RotateHalf, allow_nonfinite)?;
    if hf_norm_offset(config, &t.name) {
        values.iter_mut().for_each(|v| *v -= 1.0);
    }
    Ok(values)
}

/// Whether the tensor's HF values differ from GGUF's by the norm offset of 1 (Gemma).
pub fn hf_norm_offset(config: &ModelConfig, gguf_name: &str) -> bool {
    config.arch.spec().norm_plus_one && names::is_norm_weight(gguf_name)
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
    check_finite(t, &values, allow_nonfinite)?;
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
