//! Write a model as a GGUF that llama.cpp loads unchanged: the metadata keys, tokenizer,
//! tensor names, types and q/k row order that llama.cpp's `convert_hf_to_gguf.py` writes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use indicatif::ProgressBar;

use super::plan::{self, TensorSpec, TypePlan, Uniform};
use super::tensor_values;
use crate::error::{Error, Result};
use crate::formats::gguf::{GgufFile, GgufWriter, Value};
use crate::ggml_type::GgmlType;
use crate::model::attn_variants::{scalar_of, AttnVariants};
use crate::model::source::size_label;
use crate::model::{names, ModelFile, RopeLayout, TensorRef};
use crate::output::Sink;
use crate::quant;

#[derive(Debug, Clone)]
pub struct GgufOptions {
    /// Type for 2-D weight tensors; 1-D tensors (norms, biases) always stay F32.
    pub outtype: GgmlType,
    pub allow_nonfinite: bool,
    /// Overrides the derived `general.name`.
    pub name: Option<String>,
}

/// What every GGUF write needs besides the per-tensor types.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
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
    plan::uniform_file_type(t)
}

/// The header of a GGUF about to be written: metadata, every tensor's type, shape and offset,
/// and the notes (fall-backs) the type plan made.
pub struct Header {
    pub writer: GgufWriter,
    pub notes: Vec<String>,
    pub file_type: u32,
}

/// Plan the header of `model` converted with `opts` (one type for every weight matrix).
pub fn plan(model: &ModelFile, opts: &GgufOptions) -> Result<(GgufWriter, Vec<String>)> {
    if !quant::can_encode(opts.outtype) {
        return Err(Error::Unsupported(format!("output type {} is not supported by convert", opts.outtype)));
    }
    file_type_id(opts.outtype)?;
    let h = plan_with(model, &Uniform { outtype: opts.outtype }, opts.name.clone())?;
    Ok((h.writer, h.notes))
}

/// The size label llama.cpp's converter writes: the parameter count, or for a mixture of
/// experts `{experts}x{what one token's path holds}` (everything but the experts, plus one).
fn model_size_label(model: &ModelFile, params: u64) -> Result<String> {
    let Some(moe) = &model.config().moe else { return Ok(size_label(params)) };
    let experts: u64 = model
        .tensors()?
        .iter()
        .filter(|t| names::EXPERT_TENSORS.iter().any(|s| t.name.ends_with(s)))
        .map(|t| t.n_elements() as u64)
        .sum();
    let per_expert = experts / moe.n_experts.max(1) as u64;
    Ok(format!("{}x{}", moe.n_experts, size_label(params - experts + per_expert)))
}

/// Plan the header of `model` written with the per-tensor types `types` chooses.
pub fn plan_with(model: &ModelFile, types: &dyn TypePlan, name: Option<String>) -> Result<Header> {
    model.check_tensors()?;
    let cfg = model.config();
    let arch = cfg.arch.gguf_name();
    let vocab = model.vocab()?;
    let params = model.parameter_count()?;
    let file_type = types.file_type();

    let mut w = GgufWriter::new();
    let k = |s: &str| format!("{arch}.{s}");
    w.set("general.architecture", Value::String(arch.into()));
    w.set("general.type", Value::String("model".into()));
    w.set("general.name", Value::String(name.unwrap_or_else(|| model.display_name())));
    w.set("general.size_label", Value::String(model_size_label(model, params)?));
    w.set(&k("block_count"), Value::U32(cfg.n_layers as u32));
    w.set(&k("context_length"), Value::U32(cfg.context_length as u32));
    w.set(&k("embedding_length"), Value::U32(cfg.hidden_size as u32));
    w.set(&k("feed_forward_length"), Value::U32(cfg.ffn_size as u32));
    w.set(&k("attention.head_count"), Value::U32(cfg.n_heads as u32));
    w.set(&k("attention.head_count_kv"), Value::U32(cfg.n_kv_heads as u32));
    w.set(&k("rope.freq_base"), Value::F32(cfg.rope_theta));
    for (key, v) in cfg.rope_scaling.gguf_keys() {
        w.set(&k(key), v);
    }
    for (key, v) in cfg.attn.gguf_keys(cfg.arch, cfg.n_layers) {
        w.set(&k(key), v);
    }
    if let Some(m) = &cfg.moe {
        w.set(&k("expert_count"), Value::U32(m.n_experts as u32));
        w.set(&k("expert_used_count"), Value::U32(m.n_used as u32));
        // llama.cpp's `llama` (Mixtral) takes the experts' width from feed_forward_length.
        if cfg.arch.gguf_name() != "llama" {
            w.set(&k("expert_feed_forward_length"), Value::U32(m.expert_ffn as u32));
        }
        if m.shared_ffn > 0 {
            w.set(&k("expert_shared_feed_forward_length"), Value::U32(m.shared_ffn as u32));
        }
    }
    w.set(&k("attention.layer_norm_rms_epsilon"), Value::F32(cfg.rms_eps));
    w.set(&k("attention.key_length"), Value::U32(cfg.head_dim as u32));
    w.set(&k("attention.value_length"), Value::U32(cfg.head_dim as u32));
    w.set("general.file_type", Value::U32(file_type));
    w.set(&k("vocab_size"), Value::U32(vocab.tokens.len() as u32));
    w.set(&k("rope.dimension_count"), Value::U32(cfg.rope_dim as u32));
    if let Some(o) = cfg.longrope_original_context() {
        w.set(&k("rope.scaling.original_context_length"), Value::U32(o as u32));
    }
    w.set("general.quantization_version", Value::U32(2));
    for (key, v) in vocab.to_gguf() {
        w.set(&key, v);
    }

    let tensors = model.tensors()?;
    let specs: Vec<TensorSpec<'_>> =
        tensors.iter().map(|t| TensorSpec { name: &t.name, shape: &t.shape, source_type: t.ggml_type }).collect();
    let assigned = types.assign(cfg, &specs)?;
    if assigned.len() != tensors.len() {
        return Err(Error::InvalidModel(format!(
            "type plan gave {} types for {} tensors",
            assigned.len(),
            tensors.len()
        )));
    }
    let mut notes = Vec::new();
    if let Some(m) =
        cfg.moe.as_ref().filter(|m| cfg.arch.spec().experts.as_ref().is_some_and(|e| e.norm_topk != m.norm_topk))
    {
        notes.push(format!(
            "norm_topk_prob is {} but llama.cpp's {} always {} the chosen experts' weights: GGUF has no key for it, so \
             llama.cpp and qforge will run this file that way",
            m.norm_topk,
            arch,
            if m.norm_topk { "leaves" } else { "renormalizes" }
        ));
    }
    if let Some(scale) = cfg.attn.query_scale {
        let theirs =
            AttnVariants::llama_cpp_query_scale(cfg.arch, cfg.n_layers, cfg.hidden_size, cfg.n_heads, cfg.head_dim);
        if (scale - theirs).abs() > 1e-6 * theirs {
            notes.push(format!(
                "query_pre_attn_scalar {} is not what llama.cpp derives for this model ({}): GGUF stores no scale, \
                 so llama.cpp and qforge will run this file with {}",
                scalar_of(scale),
                scalar_of(theirs),
                scalar_of(theirs)
            ));
        }
    }
    for (t, a) in tensors.iter().zip(assigned) {
        if !quant::can_encode(a.ggml_type) {
            return Err(Error::tensor(&t.name, format!("storing {} tensors is not supported", a.ggml_type)));
        }
        notes.extend(a.note);
        w.add_tensor(&t.name, &t.shape, a.ggml_type)?;
    }
    Ok(Header { writer: w, notes, file_type })
}

/// Convert `model` to GGUF, streaming into `sink`. Call `progress.inc(bytes)` per tensor.
pub fn write<W: Write + Send>(
    model: &ModelFile,
    opts: &GgufOptions,
    sink: W,
    progress: &ProgressBar,
) -> Result<(W, GgufSummary)> {
    let (writer, notes) = plan(model, opts)?;
    let header = Header { writer, notes, file_type: file_type_id(opts.outtype)? };
    let wopts = WriteOptions { allow_nonfinite: opts.allow_nonfinite, name: opts.name.clone() };
    write_header(model, header, &wopts, sink, progress)
}

/// Write `model` as GGUF with the per-tensor types `types` chooses, streaming into `sink`.
pub fn write_with<W: Write + Send>(
    model: &ModelFile,
    types: &dyn TypePlan,
    opts: &WriteOptions,
    sink: W,
    progress: &ProgressBar,
) -> Result<(W, GgufSummary)> {
    let header = plan_with(model, types, opts.name.clone())?;
    write_header(model, header, opts, sink, progress)
}

/// Produces the bytes of tensors whose encoding is more than the reference codec applied to
/// the input's values: importance-weighted quantization, GPTQ, AWQ.
pub trait TensorEncoder {
    /// Encode tensor `name` — `values` are its weights in the output's row order — as `ty`.
    /// `None` means: use the reference codec.
    fn encode(&mut self, name: &str, values: &[f32], ty: GgmlType) -> Result<Option<Vec<u8>>>;

    /// Called once after the last tensor, before the file is committed: an encoder handed a
    /// method's results checks here that every one was used.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The reference codecs for every tensor.
pub struct PlainEncoder;

impl TensorEncoder for PlainEncoder {
    fn encode(&mut self, _: &str, _: &[f32], _: GgmlType) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

/// Stream the tensors of a planned header: one tensor is decoded (checked for NaN/Inf,
/// q/k rows reordered for the target layout) and encoded at a time. A tensor already stored
/// in its planned type whose rows need no reordering is copied byte for byte: re-encoding a
/// K-quant would only add error.
pub fn write_header<W: Write + Send>(
    model: &ModelFile,
    header: Header,
    opts: &WriteOptions,
    sink: W,
    progress: &ProgressBar,
) -> Result<(W, GgufSummary)> {
    write_header_with(model, header, opts, sink, progress, &mut PlainEncoder)
}

/// [`write_header`] with tensors encoded by `encoder` (falling back to the reference codecs).
pub fn write_header_with<W: Write + Send>(
    model: &ModelFile,
    header: Header,
    opts: &WriteOptions,
    sink: W,
    progress: &ProgressBar,
    encoder: &mut dyn TensorEncoder,
) -> Result<(W, GgufSummary)> {
    let Header { writer, notes, file_type } = header;
    let cfg = model.config();
    let target_layout = if cfg.arch.gguf_permutes_qk() { RopeLayout::Interleaved } else { RopeLayout::RotateHalf };
    let summary =
        GgufSummary { tensors: writer.tensors().len(), bytes: writer.total_size(), file_type, fallbacks: notes };
    let planned = writer.tensors().to_vec();
    let tensors = model.tensors()?;
    let by_name: HashMap<&str, &TensorRef<'_>> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut stream = writer.start(sink)?;
    // Tensors are written by a thread of their own while the next one is decoded and
    // encoded (the copy into the page cache is single-threaded and, for the fast codecs, as
    // long as the encoding: Q8_0 of the 7B-shaped layer spent a third of its time in it). The
    // channel holds one tensor, so at most two encoded tensors exist at a time.
    let stream = std::thread::scope(|s| -> Result<_> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(&str, Cow<'_, [u8]>)>(1);
        let writing = s.spawn(move || -> Result<_> {
            for (name, bytes) in rx {
                stream.write_tensor(name, &bytes)?;
            }
            Ok(stream)
        });
        let produced = (|| -> Result<()> {
            for p in &planned {
                let t = *by_name
                    .get(p.name.as_str())
                    .ok_or_else(|| Error::tensor(&p.name, "disappeared while converting"))?;
                let values = tensor_values(t, cfg, model.qk_layout(), target_layout, opts.allow_nonfinite)?;
                let same_rows = super::rows_keep_order(t, cfg, model.qk_layout(), target_layout);
                // The encoder goes first even for tensors kept in their stored type: AWQ
                // replaces the values of norms and linears whatever their type.
                let encoded = encoder.encode(&p.name, &values, p.ggml_type)?;
                let bytes = if encoded.is_none() && t.ggml_type == p.ggml_type && same_rows && t.packed.is_none() {
                    Cow::Borrowed(t.data)
                } else {
                    let bytes = match encoded {
                        Some(b) => b,
                        None => {
                            quant::encode(p.ggml_type, &values).map_err(|e| Error::tensor(&p.name, e.to_string()))?
                        }
                    };
                    let expected = p.ggml_type.row_bytes(values.len() as u64)? as usize;
                    if bytes.len() != expected {
                        return Err(Error::tensor(
                            &p.name,
                            format!("encoder gave {} bytes, {expected} planned", bytes.len()),
                        ));
                    }
                    Cow::Owned(bytes)
                };
                drop(values);
                if tx.send((&p.name, bytes)).is_err() {
                    // The writer stopped at an error, which `join` below returns.
                    break;
                }
                progress.inc(t.stored_bytes() as u64);
                // Stop at the first tensor read from a file that was truncated meanwhile.
                crate::formats::mapped::check()?;
            }
            Ok(())
        })();
        drop(tx);
        let stream = writing.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        produced?;
        Ok(stream)
    })?;
    Ok((stream.finish()?, summary))
}

/// [`write_header_with`] into `sink`, then (once the encoder's `finish` agrees) the file
/// validated and renamed into place. The progress bar is cleared once the tensors are written.
pub fn write_and_commit(
    model: &ModelFile,
    header: Header,
    opts: &WriteOptions,
    mut sink: Sink,
    progress: &ProgressBar,
    encoder: &mut dyn TensorEncoder,
) -> Result<GgufSummary> {
    let (_, summary) = write_header_with(model, header, opts, &mut sink, progress, encoder)?;
    progress.finish_and_clear();
    encoder.finish()?;
    let (n, size) = (summary.tensors, summary.bytes);
    sink.commit(|p| validate_written(p, n, size))?;
    Ok(summary)
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
