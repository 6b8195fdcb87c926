//! Hugging Face checkpoints: `config.json` plus one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, read through `formats::safetensors` (memory-mapped,
//! zero-copy), with what the model needs on top: its config, the packed layout of a quantized
//! checkpoint, RoPE tensors the converter computes, Gemma's shifted norms, MoE experts joined.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::formats::safetensors::{parse_index, read_json, HfTensor, SafetensorsFile};
use crate::ggml_type::GgmlType;
use crate::model::packed::Scheme;
use crate::model::ModelConfig;

/// A Hugging Face model directory.
pub struct HfCheckpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub config_json: serde_json::Value,
    /// The packed layout of a quantized checkpoint (`quantization_config`), if any.
    pub quant: Option<Scheme>,
    files: Vec<SafetensorsFile>,
    /// Tensor name → index into `files`, in name order.
    index: BTreeMap<String, usize>,
    /// The RoPE tensors llama.cpp's converter computes from `rope_scaling` (llama3's
    /// `rope_freqs.weight`, LongRoPE's `rope_factors_long/short.weight`), by GGUF name, as
    /// little-endian F32 bytes, in the order it writes them.
    pub rope_tensors: Vec<(&'static str, Vec<u8>)>,
    /// Norm weights of architectures whose HF norms scale by `1 + w` (Gemma), as the F32
    /// bytes of `1 + w`: GGUF's convention, which qforge uses inside. By HF name.
    pub shifted_norms: BTreeMap<String, Vec<u8>>,
    /// An MoE checkpoint's per-expert weights joined into GGUF's 3-D tensors (by GGUF name:
    /// type, shape [experts, rows, cols], bytes in expert order), and for each the Hugging Face
    /// name after which it comes in the tensor order (its last expert's, as llama.cpp's
    /// converter emits it). The experts are copied into memory once, when the checkpoint is
    /// opened.
    pub merged_experts: BTreeMap<String, (GgmlType, Vec<usize>, Vec<u8>)>,
    pub expert_emit: HashMap<String, String>,
    /// config.json describes more than a text model (`text_config`, `vision_config`, …): the
    /// other towers' tensors are left out rather than refused.
    pub multimodal: bool,
}

impl HfCheckpoint {
    pub fn open(dir: &Path) -> Result<HfCheckpoint> {
        if !dir.is_dir() {
            return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, "not a model directory")));
        }
        let config_path = dir.join("config.json");
        let raw_config = read_json(&config_path)?;
        let multimodal = ["text_config", "vision_config", "audio_config"].iter().any(|k| raw_config.get(k).is_some());
        let config_json = crate::model::config::text_model_json(&raw_config);
        let config = ModelConfig::from_hf_json(&config_json).map_err(|e| prefix_error(&config_path, e))?;
        let quant = Scheme::from_config(&config_json).map_err(|e| prefix_error(&config_path, e))?;

        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        if index_path.exists() {
            let idx = read_json(&index_path)?;
            let mut shard_ids: HashMap<String, usize> = HashMap::new();
            for (tensor, shard) in parse_index(&idx, &index_path)? {
                let fid = match shard_ids.get(shard) {
                    Some(&i) => i,
                    None => {
                        let p = dir.join(shard);
                        if !p.is_file() {
                            return Err(Error::InvalidModel(format!(
                                "{}: shard {shard} named by the index is missing",
                                dir.display()
                            )));
                        }
                        files.push(SafetensorsFile::open(&p)?);
                        shard_ids.insert(shard.to_string(), files.len() - 1);
                        files.len() - 1
                    }
                };
                if !files[fid].contains(tensor) {
                    return Err(Error::InvalidModel(format!(
                        "index says {tensor} is in {shard}, but that shard does not hold it"
                    )));
                }
                index.insert(tensor.to_string(), fid);
            }
        } else if single.exists() {
            files.push(SafetensorsFile::open(&single)?);
            for name in files[0].names() {
                index.insert(name.to_string(), 0);
            }
        } else {
            return Err(Error::InvalidModel(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            )));
        }
        let rope_tensors = config.rope_scaling.gguf_tensors(config.rope_theta, config.rope_dim);
        let mut ckpt = HfCheckpoint {
            dir: dir.to_path_buf(),
            config,
            config_json,
            quant,
            files,
            index,
            rope_tensors,
            shifted_norms: BTreeMap::new(),
            merged_experts: BTreeMap::new(),
            expert_emit: HashMap::new(),
            multimodal,
        };
        if ckpt.config.moe.is_some() {
            ckpt.merge_experts()?;
        }
        if ckpt.config.arch.spec().norm_plus_one {
            ckpt.shifted_norms = ckpt.plus_one_norms()?;
        }
        Ok(ckpt)
    }

    /// Join each layer's per-expert weights into the 3-D tensors GGUF holds (see
    /// `merged_experts`), checking that every expert is there once, with one type and shape.
    fn merge_experts(&mut self) -> Result<()> {
        let n_experts = self.config.moe.as_ref().map_or(0, |m| m.n_experts);
        // (layer, suffix) → each expert's HF weight prefix, and the last name in file order.
        type Slots = (Vec<Option<String>>, String);
        let mut groups: BTreeMap<(usize, &'static str), Slots> = BTreeMap::new();
        // A packed expert's parts by weight prefix (found once: big MoE models have thousands).
        let mut packed_parts: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for name in self.names() {
            let Some((li, ei, suffix, prefix)) = self.expert_of(name) else { continue };
            if ei >= n_experts {
                return Err(Error::tensor(name, format!("expert {ei} of a model with {n_experts}")));
            }
            if let Some((_, part)) =
                self.quant.as_ref().and_then(|q| q.split_packed(name, |n| self.tensor(n).map(|t| t.dtype)))
            {
                packed_parts.entry(prefix.to_string()).or_default().push((name.to_string(), part.to_string()));
            }
            let (slots, last) = groups.entry((li, suffix)).or_insert_with(|| (vec![None; n_experts], String::new()));
            slots[ei] = Some(prefix.to_string());
            *last = name.to_string();
        }
        for ((li, suffix), (slots, last)) in groups {
            let gguf = format!("blk.{li}.{suffix}");
            let mut ty_shape: Option<(GgmlType, Vec<usize>)> = None;
            let mut bytes = Vec::new();
            for (ei, slot) in slots.iter().enumerate() {
                let prefix = slot.as_deref().ok_or_else(|| {
                    Error::InvalidModel(format!("{gguf}: expert {ei} of {n_experts} is missing from the checkpoint"))
                })?;
                let (ty, shape, data) = self.expert_weight(prefix, packed_parts.get(prefix), &gguf)?;
                match &ty_shape {
                    None => ty_shape = Some((ty, shape)),
                    Some((ty0, shape0)) if (*ty0, shape0) != (ty, &shape) => {
                        return Err(Error::tensor(prefix, format!("{ty} {shape:?}, other experts {ty0} {shape0:?}")))
                    }
                    Some(_) => {}
                }
                if bytes.is_empty() {
                    bytes.reserve_exact(data.len() * n_experts);
                }
                bytes.extend_from_slice(&data);
            }
            let (ty, shape) = ty_shape.ok_or_else(|| Error::InvalidModel(format!("{gguf}: no experts")))?;
            let shape = std::iter::once(n_experts).chain(shape).collect();
            self.merged_experts.insert(gguf.clone(), (ty, shape, bytes));
            self.expert_emit.insert(last, gguf);
        }
        Ok(())
    }

    /// An expert's weight or, in a quantized checkpoint, a part of one (`…experts.3.w1.qweight`):
    /// (layer, expert, GGUF suffix of its 3-D tensor, the HF weight's prefix).
    pub fn expert_of<'n>(&self, name: &'n str) -> Option<(usize, usize, &'static str, &'n str)> {
        let arch = self.config.arch;
        if let Some((prefix, _)) =
            self.quant.as_ref().and_then(|q| q.split_packed(name, |n| self.tensor(n).map(|t| t.dtype)))
        {
            let (li, ei, suffix) = crate::model::names::hf_expert(&format!("{prefix}.weight"), arch)?;
            return Some((li, ei, suffix, prefix));
        }
        let (li, ei, suffix) = crate::model::names::hf_expert(name, arch)?;
        Some((li, ei, suffix, name.strip_suffix(".weight")?))
    }

    /// One expert's weight (by HF prefix) as stored or, when it is packed (GPTQ/AWQ/
    /// bitsandbytes: `parts`, by name and suffix), decoded to F32, as a packed layout spans rows
    /// and cannot be joined as it is.
    fn expert_weight(
        &self,
        prefix: &str,
        parts: Option<&Vec<(String, String)>>,
        gguf: &str,
    ) -> Result<(GgmlType, Vec<usize>, Vec<u8>)> {
        let plain = format!("{prefix}.weight");
        match (self.quant.as_ref(), parts) {
            (Some(scheme), Some(parts)) => {
                let parts = parts
                    .iter()
                    .map(|(n, suffix)| {
                        let t = self.tensor(n).ok_or_else(|| Error::tensor(n, "listed but unreadable"))?;
                        Ok(crate::model::packed::Part {
                            suffix: suffix.clone(),
                            dtype: t.dtype,
                            shape: t.shape.to_vec(),
                            data: t.data,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let p = crate::model::packed::Packed::new(gguf, scheme.clone(), parts)?;
                let mut values = vec![0f32; p.rows * p.cols];
                p.decode_rows(0, p.rows, &mut values);
                Ok((GgmlType::F32, vec![p.rows, p.cols], values.iter().flat_map(|v| v.to_le_bytes()).collect()))
            }
            _ => {
                let t = self.tensor(&plain).ok_or_else(|| Error::tensor(&plain, "listed but unreadable"))?;
                Ok((t.ggml_type(&plain)?, t.shape.to_vec(), t.data.to_vec()))
            }
        }
    }

    /// `1 + w` of every norm weight, as llama.cpp's converter stores Gemma's norms (in f32, as
    /// the converter computes it for bf16 and f32 checkpoints; it adds in f16 for f16 ones).
    fn plus_one_norms(&self) -> Result<BTreeMap<String, Vec<u8>>> {
        let mut out = BTreeMap::new();
        use crate::model::names::{is_ignorable_hf, is_norm_weight};
        for name in self.names().filter(|n| is_norm_weight(n) && !is_ignorable_hf(n, self.multimodal)) {
            let t = self.tensor(name).ok_or_else(|| Error::tensor(name, "listed but unreadable"))?;
            let n = t.shape.iter().product();
            let values =
                crate::quant::decode(t.ggml_type(name)?, t.data, n).map_err(|e| Error::tensor(name, e.to_string()))?;
            out.insert(name.to_string(), values.iter().flat_map(|v| (v + 1.0).to_le_bytes()).collect());
        }
        Ok(out)
    }

    /// Tensor names in sorted order (the order llama.cpp's converter emits them).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn tensor(&self, name: &str) -> Option<HfTensor<'_>> {
        self.files[*self.index.get(name)?].tensor(name)
    }

    /// Total number of weights in all tensors.
    pub fn parameter_count(&self) -> u64 {
        self.names().filter_map(|n| self.tensor(n)).map(|t| t.shape.iter().product::<usize>() as u64).sum()
    }

    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }
}

fn prefix_error(path: &Path, e: Error) -> Error {
    match e {
        Error::Unsupported(m) => Error::Unsupported(format!("{}: {m}", path.display())),
        Error::InvalidModel(m) => Error::InvalidModel(format!("{}: {m}", path.display())),
        other => other,
    }
}
