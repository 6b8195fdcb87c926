//! GGUF → Hugging Face directory: safetensors weights (q/k rows back in rotate-half order),
//! config.json, tokenizer.json and tokenizer_config.json, loadable by `transformers`.

use std::collections::HashMap;
use std::path::Path;

use indicatif::ProgressBar;

use super::shards::ShardedWriter;
use super::tensor_to_hf_f32;
use crate::error::{Error, Result};
use crate::formats::st_writer::StEntry;
use crate::ggml_type::GgmlType;
use crate::model::{names, ModelConfig, ModelFile, TensorRef};
use crate::output::AtomicDir;
use crate::quant;

#[derive(Debug, Clone)]
pub struct HfOptions {
    /// F32, F16 or BF16; `None` keeps float tensors' own type and writes quantized ones as F32.
    pub dtype: Option<GgmlType>,
    pub allow_nonfinite: bool,
    /// Bytes per safetensors file (see [`super::shards`]).
    pub max_shard_size: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HfSummary {
    pub tensors: usize,
    pub bytes: u64,
    pub dtype: String,
}

pub fn write(model: &ModelFile, out_dir: &Path, opts: &HfOptions, progress: &ProgressBar) -> Result<HfSummary> {
    if matches!(model, ModelFile::Hf(_)) {
        return Err(Error::InvalidArgument("the input is already a Hugging Face directory".into()));
    }
    model.check_tensors()?;
    let cfg = model.config();
    // A tokenizer that cannot be exported stops the export before any work.
    model.vocab()?.to_hf_json()?;
    let tensors = model.tensors()?;
    let pick = |t: GgmlType| match opts.dtype {
        Some(d) => d,
        None if t.is_float() => t,
        None => GgmlType::F32,
    };
    for t in &tensors {
        if !quant::can_decode(t.ggml_type) {
            return Err(Error::tensor(&t.name, format!("decoding {} tensors is not supported yet", t.ggml_type)));
        }
    }
    let main_dtype =
        tensors.iter().filter(|t| t.shape.len() >= 2).map(|t| pick(t.ggml_type)).next().unwrap_or(GgmlType::F32);
    let torch_dtype = match main_dtype {
        GgmlType::F16 => "float16",
        GgmlType::BF16 => "bfloat16",
        _ => "float32",
    };

    let dir = AtomicDir::create(out_dir)?;
    // Before any work: a config.json that cannot be written stops the export here.
    let config_json = cfg.to_hf_json(torch_dtype)?;
    let mut by_name = HashMap::new();
    let mut entries = Vec::new();
    for (hf_name, t) in hf_tensors(tensors, cfg)? {
        // Norms stay F32 in GGUF; keep them in the main dtype in HF files like the originals.
        let dtype = if t.shape.len() < 2 && opts.dtype.is_none() { main_dtype } else { pick(t.ggml_type) };
        entries.push(StEntry { name: hf_name.clone(), dtype: super::st_dtype(dtype), shape: t.shape.clone() });
        by_name.insert(hf_name, (t, dtype));
    }
    let (n_tensors, bytes) = (entries.len(), entries.iter().map(|e| e.byte_len() as u64).sum());
    // One tensor in memory at a time, in the order the file holds them.
    let mut st = ShardedWriter::in_crate_order(dir.path(), entries, opts.max_shard_size)?;
    while let Some(name) = st.next_entry().map(|e| e.name.clone()) {
        let (t, dtype) = by_name.get(&name).ok_or_else(|| Error::tensor(&name, "was not planned"))?;
        let values = tensor_to_hf_f32(t, cfg, model.qk_layout(), opts.allow_nonfinite)?;
        st.write(&name, &quant::encode(*dtype, &values)?)?;
        progress.inc(t.stored_bytes() as u64);
    }
    st.finish()?;

    super::write_json(dir.path(), "config.json", &config_json)?;
    super::write_hf_side_files(model, dir.path())?;
    dir.commit()?;
    Ok(HfSummary { tensors: n_tensors, bytes, dtype: torch_dtype.into() })
}

/// The GGUF tensors under their Hugging Face names: an MoE layer's 3-D expert tensors as one
/// tensor per expert (views of its rows, named as the runtime names them:
/// `blk.0.ffn_up_exps.weight[3]`), the shared-expert gate as the [1, hidden] matrix
/// transformers holds; the tensors GGUF computes from config.json left out.
pub(crate) fn hf_tensors<'a>(tensors: Vec<TensorRef<'a>>, cfg: &ModelConfig) -> Result<Vec<(String, TensorRef<'a>)>> {
    let mut out = Vec::with_capacity(tensors.len());
    for mut t in tensors.into_iter().filter(|t| !names::is_generated_gguf(&t.name)) {
        match names::gguf_expert_tensor(&t.name) {
            Some((li, suffix)) if t.shape.len() == 3 => {
                let (e, rows, cols) = (t.shape[0], t.shape[1], t.shape[2]);
                let bytes = t.ggml_type.row_bytes(cols as u64)? as usize * rows;
                if bytes * e != t.data.len() {
                    return Err(Error::tensor(&t.name, "byte size does not match its shape"));
                }
                for (ei, data) in t.data.chunks_exact(bytes.max(1)).enumerate() {
                    let part = TensorRef {
                        name: names::expert_part(&t.name, ei),
                        ggml_type: t.ggml_type,
                        shape: vec![rows, cols],
                        data,
                        packed: None,
                    };
                    out.push((names::hf_expert_name(cfg.arch, li, ei, suffix)?, part));
                }
            }
            _ => {
                if t.name.ends_with("ffn_gate_inp_shexp.weight") && t.shape.len() == 1 {
                    t.shape.insert(0, 1);
                }
                out.push((names::gguf_to_hf(&t.name, cfg.arch)?, t));
            }
        }
    }
    Ok(out)
}
