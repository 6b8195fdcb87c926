//! Write a quantized Hugging Face checkpoint (GPTQ, AWQ layouts): the quantized linears as
//! the method's packed tensors, every other tensor copied, `config.json` with its
//! `quantization_config`, and the tokenizer files — into a temporary directory renamed into
//! place only when complete.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use indicatif::ProgressBar;
use safetensors::{Dtype, View};
use serde_json::Value;

use super::{hf_norm_offset, tensor_to_hf_f32};
use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::model::{names, ModelFile, RopeLayout};
use crate::output::AtomicDir;
use crate::quant;

/// One tensor to write.
pub struct OutTensor<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

impl View for &OutTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HfQuantSummary {
    pub tensors: usize,
    pub bytes: u64,
}

/// Write `model` to `out_dir` with the linears in `linears` (GGUF name → suffix → tensor,
/// e.g. `qweight`) replacing their float weights, and the tensors in `replaced` (GGUF name →
/// tensor, Hugging Face row order) written instead of the input's (AWQ folds its scales into
/// the norm weights). `quant_config` goes into config.json as `quantization_config`;
/// `extra_json` are more files (e.g. `quantize_config.json`); the weights are sharded at
/// `max_shard_size` bytes per file.
#[allow(clippy::too_many_arguments)]
pub fn write_replacing(
    model: &ModelFile,
    out_dir: &Path,
    mut linears: HashMap<String, Vec<(String, OutTensor<'static>)>>,
    mut replaced: HashMap<String, OutTensor<'static>>,
    quant_config: Value,
    extra_json: Vec<(String, Value)>,
    max_shard_size: u64,
    progress: &ProgressBar,
) -> Result<HfQuantSummary> {
    let cfg = model.config();
    let from = model.qk_layout();
    let mut out: Vec<(String, OutTensor<'_>)> = Vec::new();
    for (hf_name, t) in super::to_hf::hf_tensors(model.tensors()?, cfg)? {
        // GPTQModel finds an MoE block's packed experts and float router by module name.
        let hf_name = names::hf_module_name(&hf_name, cfg.arch);
        if let Some(parts) = linears.remove(&t.name) {
            // A packed expert goes under the module name GPTQModel loads it by.
            let module = names::split_expert_part(&t.name)
                .and_then(|(tensor, e)| names::gguf_expert_tensor(tensor).map(|(li, suffix)| (li, e, suffix)))
                .and_then(|(li, e, suffix)| names::hf_expert_module(li, e, suffix));
            let prefix = module.unwrap_or_else(|| hf_name.strip_suffix(".weight").unwrap_or(&hf_name).to_string());
            for (suffix, tensor) in parts {
                out.push((format!("{prefix}.{suffix}"), tensor));
            }
            continue;
        }
        if let Some(tensor) = replaced.remove(&t.name) {
            if tensor.shape != t.shape {
                return Err(Error::tensor(&t.name, "replacement has a different shape"));
            }
            out.push((hf_name, tensor));
            continue;
        }
        let reorder = (from != RopeLayout::RotateHalf
            && names::qk_heads(&t.name, cfg.n_heads, cfg.n_kv_heads).is_some())
            || hf_norm_offset(cfg, &t.name);
        let tensor = match t.ggml_type {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 if !reorder && t.packed.is_none() => OutTensor {
                dtype: match t.ggml_type {
                    GgmlType::F32 => Dtype::F32,
                    GgmlType::F16 => Dtype::F16,
                    _ => Dtype::BF16,
                },
                shape: t.shape.clone(),
                data: Cow::Borrowed(t.data),
            },
            _ => {
                // Quantized GGUF input: store the decoded values as f16 (norms as f32).
                let values = tensor_to_hf_f32(&t, cfg, from, false)?;
                let ty = if t.shape.len() < 2 { GgmlType::F32 } else { GgmlType::F16 };
                let data = quant::encode(ty, &values)?;
                OutTensor {
                    dtype: if ty == GgmlType::F32 { Dtype::F32 } else { Dtype::F16 },
                    shape: t.shape.clone(),
                    data: Cow::Owned(data),
                }
            }
        };
        out.push((hf_name, tensor));
    }
    if let Some(name) = linears.keys().chain(replaced.keys()).next() {
        return Err(Error::tensor(name, "quantized but not part of the model"));
    }
    let bytes = out.iter().map(|(_, t)| t.data.len() as u64).sum();
    let n_tensors = out.len();

    let dir = AtomicDir::create(out_dir)?;
    super::shards::write_views(dir.path(), out.iter().map(|(n, t)| (n.clone(), t)).collect(), max_shard_size)?;
    progress.inc(bytes);

    let write_json = |name: &str, v: &Value| super::write_json(dir.path(), name, v);
    // config.json: the original one when there is one (it may carry fields qforge does not
    // model), else rebuilt from the GGUF metadata.
    let mut config = match model {
        ModelFile::Hf(c) => c.config_json.clone(),
        ModelFile::Gguf { .. } => cfg.to_hf_json("float16")?,
    };
    if let Some(obj) = config.as_object_mut() {
        obj.insert("quantization_config".into(), quant_config);
    }
    write_json("config.json", &config)?;
    for (name, v) in &extra_json {
        write_json(name, v)?;
    }
    super::write_hf_side_files(model, dir.path())?;
    dir.commit()?;
    Ok(HfQuantSummary { tensors: n_tensors, bytes })
}
