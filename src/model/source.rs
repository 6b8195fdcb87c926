//! One view over every model container qforge reads: a Hugging Face directory or a GGUF
//! file. Tensors are addressed by their GGUF names and borrowed from the memory maps.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::formats::gguf::{GgufFile, Value};
use crate::formats::tokenizer::Vocab;
use crate::ggml_type::GgmlType;
use crate::model::arch::Arch;
use crate::model::checkpoint::HfCheckpoint;
use crate::model::names;
use crate::model::packed::{Packed, Part};
use crate::model::rope::ROPE_FREQS;
use crate::model::ModelConfig;

/// How the rows of q/k projections are ordered for RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Hugging Face: each head's rows are [first halves | second halves] ("rotate_half", NeoX).
    RotateHalf,
    /// llama.cpp's `llama` GGUF: rows of a pair are adjacent.
    Interleaved,
}

/// A tensor borrowed from a model file.
#[derive(Debug, Clone)]
pub struct TensorRef<'a> {
    /// GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    pub ggml_type: GgmlType,
    /// Row-major, outermost first ([out, in] for weights).
    pub shape: Vec<usize>,
    /// The stored bytes (for a packed weight: its main part, e.g. GPTQ's `qweight`).
    pub data: &'a [u8],
    /// A weight stored in a Hugging Face quantized layout (GPTQ, AWQ, bitsandbytes): decode
    /// through this, not through `ggml_type`/`data` (`ggml_type` is then F32, the type its
    /// rows decode to).
    pub packed: Option<Packed<'a>>,
}

impl TensorRef<'_> {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32, as stored (q/k rows in the file's layout), packed or not.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        match &self.packed {
            Some(p) => Ok(p.dequantize()),
            None => crate::quant::decode(self.ggml_type, self.data, self.n_elements())
                .map_err(|e| Error::tensor(&self.name, e.to_string())),
        }
    }

    /// Bytes the tensor occupies in its file (all parts of a packed weight).
    pub fn stored_bytes(&self) -> usize {
        self.packed.as_ref().map_or(self.data.len(), |p| p.stored_bytes())
    }
}

pub enum ModelFile {
    Hf(HfCheckpoint),
    Gguf { file: GgufFile, config: ModelConfig },
}

/// The F32 values of a 1-D tensor of `file`, if it has one of that name.
fn f32_vector(file: &GgufFile, name: &str) -> Result<Option<Vec<f32>>> {
    match file.header.tensor(name) {
        None => Ok(None),
        Some(t) if t.ggml_type == GgmlType::F32 => Ok(Some(
            file.tensor_data(t).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        )),
        Some(t) => Err(Error::tensor(name, format!("stored as {}, not F32", t.ggml_type))),
    }
}

/// Phi-3's LongRoPE: its factor tensors are data, read to know the scaling.
fn longrope_of_gguf(file: &GgufFile, mut c: ModelConfig) -> Result<ModelConfig> {
    use crate::model::rope::{GgufRopeKeys, RopeScaling, ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT};
    match (f32_vector(file, ROPE_FACTORS_SHORT)?, f32_vector(file, ROPE_FACTORS_LONG)?) {
        (None, None) => Ok(c),
        (Some(short), Some(long)) => {
            if c.rope_scaling != RopeScaling::None {
                return Err(Error::InvalidModel("LongRoPE factors together with another RoPE scaling".into()));
            }
            let keys = GgufRopeKeys::read(&file.header, c.arch.gguf_name());
            c.rope_scaling = RopeScaling::longrope_from_gguf(&keys, short, long)?;
            c.validate()?;
            Ok(c)
        }
        _ => Err(Error::InvalidModel("only one of rope_factors_short.weight and rope_factors_long.weight".into())),
    }
}

impl ModelFile {
    /// Open a Hugging Face directory or a GGUF file.
    pub fn open(path: &Path) -> Result<ModelFile> {
        if path.is_dir() {
            return Ok(ModelFile::Hf(HfCheckpoint::open(path)?));
        }
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
        let file = GgufFile::open(path)?;
        let config = ModelConfig::from_gguf(&file.header)
            .and_then(|c| match file.header.tensor(ROPE_FREQS) {
                // The RoPE divisors are data: read them to know the scaling.
                Some(t) if t.ggml_type == GgmlType::F32 => {
                    let values: Vec<f32> = file
                        .tensor_data(t)
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    c.with_rope_freqs(&file.header, &values)
                }
                Some(t) => Err(Error::tensor(ROPE_FREQS, format!("stored as {}, not F32", t.ggml_type))),
                None => Ok(c),
            })
            .and_then(|c| longrope_of_gguf(&file, c))
            .map_err(|e| match e {
                Error::InvalidModel(m) => Error::InvalidModel(format!("{}: {m}", path.display())),
                Error::Unsupported(m) => Error::Unsupported(format!("{}: {m}", path.display())),
                other => other,
            })?;
        Ok(ModelFile::Gguf { file, config })
    }

    pub fn path(&self) -> PathBuf {
        match self {
            ModelFile::Hf(c) => c.dir.clone(),
            ModelFile::Gguf { file, .. } => file.path.clone(),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        match self {
            ModelFile::Hf(c) => &c.config,
            ModelFile::Gguf { config, .. } => config,
        }
    }

    /// A Hugging Face checkpoint in a quantized layout (GPTQ, AWQ, bitsandbytes).
    pub fn is_quantized_checkpoint(&self) -> bool {
        matches!(self, ModelFile::Hf(c) if c.quant.is_some())
    }

    pub fn qk_layout(&self) -> RopeLayout {
        match self {
            ModelFile::Gguf { config, .. } if config.arch.gguf_permutes_qk() => RopeLayout::Interleaved,
            _ => RopeLayout::RotateHalf,
        }
    }

    /// All tensors the model is made of, by GGUF name, in file order (HF: sorted by HF name,
    /// the order llama.cpp's converter uses). Unknown tensors are an error: a converter that
    /// drops what it does not understand would silently produce a different model.
    pub fn tensors(&self) -> Result<Vec<TensorRef<'_>>> {
        match self {
            ModelFile::Hf(c) => {
                let mut out = Vec::new();
                // Computed from config.json, first as llama.cpp's converter writes it.
                for (name, bytes) in &c.rope_tensors {
                    out.push(TensorRef {
                        name: name.to_string(),
                        ggml_type: GgmlType::F32,
                        shape: vec![bytes.len() / 4],
                        data: bytes,
                        packed: None,
                    });
                }
                // Parts of packed (quantized) weights, by layer prefix, in name order.
                let mut packed: Vec<(String, Vec<Part<'_>>)> = Vec::new();
                for hf_name in c.names() {
                    if names::is_ignorable_hf(hf_name, c.multimodal) {
                        continue;
                    }
                    // An expert's weight (or part of a packed one): its layer's 3-D tensor comes
                    // after the last one.
                    if c.config.moe.is_some() && c.expert_of(hf_name).is_some() {
                        if let Some((gguf, (ty, shape, bytes))) =
                            c.expert_emit.get(hf_name).and_then(|g| c.merged_experts.get_key_value(g))
                        {
                            out.push(TensorRef {
                                name: gguf.clone(),
                                ggml_type: *ty,
                                shape: shape.clone(),
                                data: bytes,
                                packed: None,
                            });
                        }
                        continue;
                    }
                    let t = c.tensor(hf_name).ok_or_else(|| Error::tensor(hf_name, "listed but unreadable"))?;
                    if let Some((prefix, suffix)) =
                        c.quant.as_ref().and_then(|s| s.split_packed(hf_name, |n| c.tensor(n).map(|t| t.dtype)))
                    {
                        let part =
                            Part { suffix: suffix.to_string(), dtype: t.dtype, shape: t.shape.to_vec(), data: t.data };
                        match packed.iter_mut().find(|(p, _)| p == prefix) {
                            Some((_, parts)) => parts.push(part),
                            None => {
                                // Keep the file order: the packed weight takes the place of
                                // its first part.
                                out.push(TensorRef {
                                    name: String::new(),
                                    ggml_type: GgmlType::F32,
                                    shape: Vec::new(),
                                    data: &[],
                                    packed: None,
                                });
                                packed.push((prefix.to_string(), vec![part]));
                            }
                        }
                        continue;
                    }
                    let (ggml_type, data) = match c.shifted_norms.get(hf_name) {
                        Some(shifted) => (GgmlType::F32, shifted.as_slice()),
                        None => (t.ggml_type(hf_name)?, t.data),
                    };
                    out.push(TensorRef {
                        name: names::hf_to_gguf(hf_name, c.config.arch)?,
                        ggml_type,
                        shape: t.shape.to_vec(),
                        data,
                        packed: None,
                    });
                }
                let scheme = c.quant.clone();
                let mut groups = packed.into_iter();
                for slot in out.iter_mut().filter(|t| t.name.is_empty()) {
                    let (Some((prefix, parts)), Some(scheme)) = (groups.next(), scheme.clone()) else { break };
                    let name = names::hf_to_gguf(&format!("{prefix}.weight"), c.config.arch)?;
                    let p = Packed::new(&name, scheme, parts)?;
                    *slot = TensorRef {
                        shape: vec![p.rows, p.cols],
                        data: p.main_part().data,
                        ggml_type: GgmlType::F32,
                        name,
                        packed: Some(p),
                    };
                }
                // A tied checkpoint may still store lm_head; llama.cpp drops it then.
                if c.config.tie_embeddings {
                    out.retain(|t| t.name != "output.weight");
                }
                Ok(out)
            }
            ModelFile::Gguf { file, .. } => Ok(file
                .tensors()
                .iter()
                .map(|t| TensorRef {
                    name: t.name.clone(),
                    ggml_type: t.ggml_type,
                    shape: t.shape(),
                    data: file.tensor_data(t),
                    packed: None,
                })
                .collect()),
        }
    }

    /// Check that exactly the tensors the config implies are present, with the right shapes.
    /// The expected list is walked lazily and stops at the first missing tensor, so a config
    /// claiming millions of layers fails at once instead of building a list of them.
    pub fn check_tensors(&self) -> Result<()> {
        let tensors = self.tensors()?;
        let by_name: HashMap<&str, &TensorRef<'_>> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut expected_names = HashSet::with_capacity(tensors.len());
        for (name, shape) in self.config().expected_tensors() {
            match by_name.get(name.as_str()) {
                None => {
                    return Err(Error::InvalidModel(format!("{}: tensor {name} is missing", self.path().display())))
                }
                // A [1, n] vector may be stored as [n] (llama-quantize rewrites the MoE
                // shared-expert gate so).
                Some(t) if without_leading_ones(&t.shape) != without_leading_ones(&shape) => {
                    return Err(Error::tensor(name, format!("shape {:?}, config implies {shape:?}", t.shape)))
                }
                Some(_) => {}
            }
            expected_names.insert(name);
        }
        if let Some(extra) = tensors.iter().find(|t| !expected_names.contains(&t.name)) {
            return Err(Error::Unsupported(format!(
                "{}: tensor {} is not part of a {} model",
                self.path().display(),
                extra.name,
                self.config().arch.hf_class()
            )));
        }
        Ok(())
    }

    /// The tokenizer vocabulary (from tokenizer.json, or from GGUF metadata).
    pub fn vocab(&self) -> Result<Vocab> {
        match self {
            ModelFile::Hf(c) => {
                let rules = Arch::vocab_rules(&c.config_json);
                Vocab::from_hf_dir(&c.dir, c.config.vocab_size, &c.config_json, rules)
            }
            ModelFile::Gguf { file, .. } => Vocab::from_gguf(&file.header),
        }
    }

    /// A display name: `general.name` of a GGUF, or one derived from the directory name the
    /// way llama.cpp's converter does (`tiny-llama` → `Tiny`).
    pub fn display_name(&self) -> String {
        match self {
            ModelFile::Gguf { file, .. } => file
                .get("general.name")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| stem_name(&file.path)),
            ModelFile::Hf(c) => {
                let base = c
                    .dir
                    .canonicalize()
                    .ok()
                    .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "model".into());
                name_from_dir(&base, c.config.arch.hf_model_type())
            }
        }
    }

    pub fn parameter_count(&self) -> Result<u64> {
        Ok(self.tensors()?.iter().map(|t| t.n_elements() as u64).sum())
    }
}

fn without_leading_ones(shape: &[usize]) -> &[usize] {
    let first = shape.iter().position(|&d| d != 1).unwrap_or(shape.len().saturating_sub(1));
    &shape[first..]
}

fn stem_name(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
}

/// Drop the architecture word and size labels from a directory name and title-case the rest.
fn name_from_dir(base: &str, arch_word: &str) -> String {
    let parts: Vec<String> = base
        .split(['-', '_'])
        .filter(|p| !p.is_empty() && !p.eq_ignore_ascii_case(arch_word))
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                None => String::new(),
            }
        })
        .collect();
    if parts.is_empty() {
        base.to_string()
    } else {
        parts.join(" ")
    }
}

/// llama.cpp's `model_weight_count_rounded_notation`: 7342336 → "7.3M", 23075328 → "23M".
pub fn size_label(params: u64) -> String {
    let p = params as f64;
    let (scaled, suffix) = if p > 1e12 {
        (p * 1e-12, "T")
    } else if p > 1e9 {
        (p * 1e-9, "B")
    } else if p > 1e6 {
        (p * 1e-6, "M")
    } else {
        (p * 1e-3, "K")
    };
    let int_digits = format!("{}", scaled.round() as u64).trim_start_matches('0').len();
    let fix = 2usize.saturating_sub(int_digits);
    format!("{scaled:.fix$}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels_match_llama_cpp() {
        assert_eq!(size_label(7_342_336), "7.3M");
        assert_eq!(size_label(23_075_328), "23M");
        assert_eq!(size_label(6_738_415_616), "6.7B");
        assert_eq!(size_label(70_553_706_496), "71B");
    }

    #[test]
    fn names_from_directories() {
        assert_eq!(name_from_dir("tiny-llama", "llama"), "Tiny");
        assert_eq!(name_from_dir("small-llama", "llama"), "Small");
        assert_eq!(name_from_dir("llama", "llama"), "llama");
    }
}
