//! Write a model as a GGUF that llama.cpp loads unchanged: the metadata keys, tokenizer,
//! tensor names, types and q/k row order that llama.cpp's `convert_hf_to_gguf.py` writes.

use std::io::Write;
use std::path::Path;

use indicatif::ProgressBar;

use super::tensor_to_f32;
use crate::error::{Error, Result};
use crate::formats::gguf::{GgufFile, GgufWriter, Value};
use crate::ggml_type::GgmlType;
use crate::model::source::size_label;
use crate::model::{ModelFile, RopeLayout};
use crate::quant;

#[derive(Debug, Clone)]
pub struct GgufOptions {
    /// Type for 2-D weight tensors; 1-D tensors (norms, biases) always stay F32.
    pub outtype: GgmlType,
    pub allow_nonfinite: bool,
    /// Overrides the derived `general.name`.
    pub name: Option<String>,
}

/// What was written, for `--json` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GgufSummary {
    pub tensors: usize,
    pub bytes: u64,
    pub file_type: u32,
    pub fallbacks: Vec<String>,
}

/// llama.cpp's `llama_ftype` for a whole-file type.
pub fn file_type_id(t: GgmlType) -> Result<u32> {
    Ok(match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::BF16 => 32,
        other => return Err(Error::Unsupported(format!("no file type for {other}"))),
    })
}

/// The type a tensor is stored as: norms and biases stay F32 (llama.cpp computes them in f32
/// and they are tiny); weights whose rows do not divide into blocks fall back to F16.
fn tensor_type(shape: &[usize], outtype: GgmlType) -> (GgmlType, bool) {
    if shape.len() < 2 {
        return (GgmlType::F32, false);
    }
    let row = *shape.last().unwrap_or(&0) as u64;
    if row % outtype.block_size() as u64 != 0 {
        (GgmlType::F16, true)
    } else {
        (outtype, false)
    }
}

/// Plan the header of `model` converted with `opts`.
pub fn plan(model: &ModelFile, opts: &GgufOptions) -> Result<(GgufWriter, Vec<String>)> {
    if !quant::can_encode(opts.outtype) {
        return Err(Error::Unsupported(format!("output type {} is not supported by convert", opts.outtype)));
    }
    model.check_tensors()?;
    let cfg = model.config();
    let arch = cfg.arch.gguf_name();
    let vocab = model.vocab()?;
    let params = model.parameter_count()?;

    let mut w = GgufWriter::new();
    let k = |s: &str| format!("{arch}.{s}");
    w.set("general.architecture", Value::String(arch.into()));
    w.set("general.type", Value::String("model".into()));
    w.set("general.name", Value::String(opts.name.clone().unwrap_or_else(|| model.display_name())));
    w.set("general.size_label", Value::String(size_label(params)));
    w.set(&k("block_count"), Value::U32(cfg.n_layers as u32));
    w.set(&k("context_length"), Value::U32(cfg.context_length as u32));
    w.set(&k("embedding_length"), Value::U32(cfg.hidden_size as u32));
    w.set(&k("feed_forward_length"), Value::U32(cfg.ffn_size as u32));
    w.set(&k("attention.head_count"), Value::U32(cfg.n_heads as u32));
    w.set(&k("attention.head_count_kv"), Value::U32(cfg.n_kv_heads as u32));
    w.set(&k("rope.freq_base"), Value::F32(cfg.rope_theta));
    w.set(&k("attention.layer_norm_rms_epsilon"), Value::F32(cfg.rms_eps));
    w.set(&k("attention.key_length"), Value::U32(cfg.head_dim as u32));
    w.set(&k("attention.value_length"), Value::U32(cfg.head_dim as u32));
    w.set("general.file_type", Value::U32(file_type_id(opts.outtype)?));
    w.set(&k("vocab_size"), Value::U32(vocab.tokens.len() as u32));
    w.set(&k("rope.dimension_count"), Value::U32(cfg.head_dim as u32));
    w.set("general.quantization_version", Value::U32(2));
    for (key, v) in vocab.to_gguf() {
        w.set(key, v);
    }

    let mut fallbacks = Vec::new();
    for t in model.tensors()? {
        let (ty, fell_back) = tensor_type(&t.shape, opts.outtype);
        if fell_back {
            fallbacks.push(format!(
                "{}: row of {} is not a multiple of {}, stored as F16",
                t.name,
                t.shape[t.shape.len() - 1],
                opts.outtype.block_size()
            ));
        }
        w.add_tensor(&t.name, &t.shape, ty)?;
    }
    Ok((w, fallbacks))
}

/// Convert `model` to GGUF, streaming into `sink`. Call `progress.inc(bytes)` per tensor.
pub fn write<W: Write>(
    model: &ModelFile,
    opts: &GgufOptions,
    sink: W,
    progress: &ProgressBar,
) -> Result<(W, GgufSummary)> {
    let (writer, fallbacks) = plan(model, opts)?;
    let cfg = model.config();
    let target_layout = if cfg.arch.gguf_permutes_qk() { RopeLayout::Interleaved } else { RopeLayout::RotateHalf };
    let summary = GgufSummary {
        tensors: writer.tensors().len(),
        bytes: writer.total_size(),
        file_type: file_type_id(opts.outtype)?,
        fallbacks,
    };
    let planned = writer.tensors().to_vec();
    let tensors = model.tensors()?;
    let mut stream = writer.start(sink)?;
    for p in &planned {
        let t = tensors
            .iter()
            .find(|t| t.name == p.name)
            .ok_or_else(|| Error::tensor(&p.name, "disappeared while converting"))?;
        let values = tensor_to_f32(t, cfg, model.qk_layout(), target_layout, opts.allow_nonfinite)?;
        let bytes = quant::encode(p.ggml_type, &values).map_err(|e| Error::tensor(&p.name, e.to_string()))?;
        drop(values);
        stream.write_tensor(&p.name, &bytes)?;
        progress.inc(t.data.len() as u64);
    }
    Ok((stream.finish()?, summary))
}

/// Re-open a written GGUF and check that it holds exactly the planned tensors at valid
/// offsets (run on the temporary file before it is renamed into place).
pub fn validate_written(path: &Path, expected_tensors: usize, expected_size: u64) -> Result<()> {
    let f = GgufFile::open(path)?;
    if f.tensors().len() != expected_tensors {
        return Err(Error::malformed(
            path,
            "GGUF",
            format!("written file holds {} tensors, {expected_tensors} planned", f.tensors().len()),
        ));
    }
    if f.file_len() != expected_size {
        return Err(Error::malformed(
            path,
            "GGUF",
            format!("written file is {} bytes, {expected_size} planned", f.file_len()),
        ));
    }
    Ok(())
}
