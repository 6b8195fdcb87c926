//! `quantize --imatrix`: matching an importance matrix to the tensors of a planned GGUF, the
//! [`TensorEncoder`] that quantizes with it, and the metadata llama-quantize records.
//!
//! As in llama-quantize, entries are looked up by GGUF tensor name; an entry whose column
//! count differs from the tensor's row length is an error (the imatrix belongs to another
//! model), except for token_embd, where llama.cpp only warns and quantizes without weights.
//! Matrices without an entry are quantized without weights. The importance is per input
//! column, so the q/k row permutation GGUF applies does not touch it.

use std::collections::HashMap;

use super::to_gguf::{Header, TensorEncoder};
use crate::error::{Error, Result};
use crate::formats::gguf::{GgufWriter, Value};
use crate::formats::imatrix::Imatrix;
use crate::ggml_type::GgmlType;
use crate::model::ModelFile;
use crate::quant::weighted;

pub const KEY_FILE: &str = "quantize.imatrix.file";
pub const KEY_DATASET: &str = "quantize.imatrix.dataset";
pub const KEY_ENTRIES: &str = "quantize.imatrix.entries_count";
pub const KEY_CHUNKS: &str = "quantize.imatrix.chunks_count";

/// Quantizes the matrices that have an importance entry with the weighted codecs.
pub struct ImatrixEncoder {
    /// Tensor name → importance per column, for the tensors that will be re-encoded into a
    /// type with a weighted quantizer.
    weights: HashMap<String, Vec<f32>>,
    /// Tensor name → row length (the importance holds one block of it per expert).
    columns: HashMap<String, usize>,
}

/// How the importance matrix met the model, for warnings and `--json`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImatrixUse {
    /// Entries in the file.
    pub entries: usize,
    /// Tensors that will be quantized with their importance.
    pub weighted: Vec<String>,
    /// Tensors quantized into a weighted type without an entry (llama.cpp: "did not find
    /// weights").
    pub missing: Vec<String>,
    /// Entries whose column count does not fit the tensor and that are ignored (token_embd).
    pub ignored: Vec<String>,
    /// Entries that name no tensor of the model.
    pub unmatched: Vec<String>,
}

impl ImatrixEncoder {
    /// Match `imatrix` to the tensors `header` plans for `model`. Fails, before anything is
    /// written, when an entry's column count does not fit its tensor or when no entry names a
    /// tensor of the model (an imatrix made for another model).
    pub fn new(imatrix: &Imatrix, model: &ModelFile, header: &Header) -> Result<(ImatrixEncoder, ImatrixUse)> {
        let sources = model.tensors()?;
        let mut weights = HashMap::new();
        let mut columns = HashMap::new();
        let mut report = ImatrixUse { entries: imatrix.entries.len(), ..Default::default() };
        for p in header.writer.tensors() {
            let source_type = sources.iter().find(|t| t.name == p.name).map(|t| (t.ggml_type, t.packed.is_some()));
            // A tensor stored in its planned type is copied, not re-encoded, as llama.cpp does.
            let reencoded = source_type.is_none_or(|(t, packed)| t != p.ggml_type || packed);
            if p.ne.len() < 2 || !reencoded {
                continue;
            }
            let n_cols = p.ne[0] as usize;
            // A 3-D tensor (an MoE layer's experts) has one block of importance per expert.
            let n_mat = p.ne.get(2).copied().unwrap_or(1) as usize;
            match imatrix.importance(&p.name) {
                Some(w) if w.len() != n_cols * n_mat => {
                    if p.name == "token_embd.weight" {
                        report.ignored.push(p.name.clone());
                        continue;
                    }
                    return Err(Error::InvalidArgument(format!(
                        "imatrix size {} is different from tensor size {} for {} (an importance matrix of \
                         another model?)",
                        w.len(),
                        n_cols * n_mat,
                        p.name
                    )));
                }
                Some(w) if weighted::uses_weights(p.ggml_type) => {
                    report.weighted.push(p.name.clone());
                    weights.insert(p.name.clone(), w);
                    columns.insert(p.name.clone(), n_cols);
                }
                None if weighted::uses_weights(p.ggml_type) => report.missing.push(p.name.clone()),
                Some(_) | None => {}
            }
        }
        let names: Vec<&str> = header.writer.tensors().iter().map(|t| t.name.as_str()).collect();
        report.unmatched =
            imatrix.entries.iter().filter(|e| !names.contains(&e.name.as_str())).map(|e| e.name.clone()).collect();
        if !imatrix.entries.is_empty() && report.unmatched.len() == imatrix.entries.len() {
            return Err(Error::InvalidArgument(format!(
                "none of the {} imatrix entries names a tensor of this model (first: {}); it was computed for \
                 another model",
                imatrix.entries.len(),
                imatrix.entries[0].name
            )));
        }
        Ok((ImatrixEncoder { weights, columns }, report))
    }
}

impl TensorEncoder for ImatrixEncoder {
    fn encode(&mut self, name: &str, values: &[f32], ty: GgmlType) -> Result<Option<Vec<u8>>> {
        let Some(w) = self.weights.get(name) else {
            return Ok(None);
        };
        let Some(&n_cols) = self.columns.get(name) else {
            return Ok(None);
        };
        // Each expert's rows with its own block of the importance (one block for a matrix).
        let n_mat = w.len() / n_cols.max(1);
        let per_mat = values.len() / n_mat.max(1);
        let mut out = Vec::new();
        for (vals, imp) in values.chunks(per_mat.max(1)).zip(w.chunks(n_cols.max(1))) {
            out.extend(
                weighted::encode_weighted(ty, vals, n_cols, imp).map_err(|e| Error::tensor(name, e.to_string()))?,
            );
        }
        Ok(Some(out))
    }
}

/// Record the imatrix in the output's metadata with llama-quantize's keys: the file as given,
/// the first dataset, the number of entries and (when known) of chunks. llama-quantize passes
/// the strings through 128-byte buffers, so they are cut at 127 bytes there; qforge keeps them
/// whole.
pub fn record_metadata(w: &mut GgufWriter, file: &str, imatrix: &Imatrix) {
    w.set(KEY_FILE, Value::String(file.to_string()));
    if let Some(d) = imatrix.datasets.first() {
        w.set(KEY_DATASET, Value::String(d.clone()));
    }
    w.set(KEY_ENTRIES, Value::U32(imatrix.entries.len() as u32));
    if imatrix.chunk_count > 0 {
        w.set(KEY_CHUNKS, Value::U32(imatrix.chunk_count));
    }
}
