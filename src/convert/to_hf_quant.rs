//! Write a quantized Hugging Face checkpoint (GPTQ, AWQ layouts): the quantized linears as
//! the method's packed tensors, every other tensor copied, `config.json` with its
//! `quantization_config`, and the tokenizer files — into a temporary directory renamed into
//! place only when complete.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use safetensors::{Dtype, View};
use serde_json::Value;

use super::shards::ShardedWriter;
use super::{hf_norm_offset, tensor_to_hf_f32};
use crate::error::{Error, Result};
use crate::formats::st_writer::StEntry;
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

/// One packed tensor of a quantized linear in a [`PackedLinears`] file.
struct PackedPart {
    suffix: String,
    dtype: Dtype,
    shape: Vec<usize>,
    offset: u64,
    len: usize,
}

/// The packed tensors of the quantized linears (GPTQ's qweight/qzeros/scales/g_idx, AWQ's),
/// kept in a scratch file while the checkpoint is written: appended as each layer is packed,
/// read back one tensor at a time in the order the safetensors files take them (larger
/// elements first, which interleaves every layer's parts). Memory holds one tensor, not the
/// model's codes.
pub struct PackedLinears {
    file: std::fs::File,
    path: PathBuf,
    end: u64,
    parts: HashMap<String, Vec<PackedPart>>,
}

impl PackedLinears {
    /// An empty set kept in `path` (a file in the run's work directory).
    pub fn create(path: &Path) -> Result<PackedLinears> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(PackedLinears { file, path: path.to_path_buf(), end: 0, parts: HashMap::new() })
    }

    /// Keep `parts` (suffix, e.g. `qweight`, and tensor) of the linear `name` (GGUF name).
    pub fn add(&mut self, name: String, parts: Vec<(String, OutTensor<'_>)>) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let mut list = Vec::with_capacity(parts.len());
        for (suffix, t) in parts {
            self.file.write_all_at(&t.data, self.end).map_err(|e| Error::io(&self.path, e))?;
            list.push(PackedPart { suffix, dtype: t.dtype, shape: t.shape, offset: self.end, len: t.data.len() });
            self.end += t.data.len() as u64;
        }
        if self.parts.insert(name.clone(), list).is_some() {
            return Err(Error::tensor(&name, "was packed twice"));
        }
        Ok(())
    }

    fn read(&self, p: &PackedPart) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; p.len];
        self.file.read_exact_at(&mut buf, p.offset).map_err(|e| Error::io(&self.path, e))?;
        Ok(buf)
    }
}

/// Where a planned tensor's bytes come from.
enum Source<'p> {
    Packed(&'p PackedPart),
    Owned(Vec<u8>),
    /// The input's bytes as they are (index into the model's tensors).
    Mapped(usize),
    /// The input's values decoded and stored as f16 (f32 for vectors).
    Decoded(usize),
}

/// Write `model` to `out_dir` with the linears in `linears` (by GGUF name) replacing their
/// float weights, and the tensors in `replaced` (GGUF name → tensor, Hugging Face row order)
/// written instead of the input's (AWQ folds its scales into the norm weights).
/// `quant_config` goes into config.json as `quantization_config`; `extra_json` are more files
/// (e.g. `quantize_config.json`); the weights are sharded at `max_shard_size` bytes per file
/// and streamed one tensor at a time.
#[allow(clippy::too_many_arguments)]
pub fn write_replacing(
    model: &ModelFile,
    out_dir: &Path,
    mut linears: PackedLinears,
    mut replaced: HashMap<String, OutTensor<'static>>,
    quant_config: Value,
    extra_json: Vec<(String, Value)>,
    max_shard_size: u64,
    progress: &ProgressBar,
) -> Result<HfQuantSummary> {
    let cfg = model.config();
    let from = model.qk_layout();
    let tensors = super::to_hf::hf_tensors(model.tensors()?, cfg)?;
    let packed = std::mem::take(&mut linears.parts);
    let mut plan: Vec<(StEntry, Source<'_>)> = Vec::new();
    for (i, (hf_name, t)) in tensors.iter().enumerate() {
        // GPTQModel finds an MoE block's packed experts and float router by module name.
        let hf_name = names::hf_module_name(hf_name, cfg.arch);
        if let Some(parts) = packed.get(&t.name) {
            // A packed expert goes under the module name GPTQModel loads it by.
            let module = names::split_expert_part(&t.name)
                .and_then(|(tensor, e)| names::gguf_expert_tensor(tensor).map(|(li, suffix)| (li, e, suffix)))
                .and_then(|(li, e, suffix)| names::hf_expert_module(li, e, suffix));
            let prefix = module.unwrap_or_else(|| hf_name.strip_suffix(".weight").unwrap_or(&hf_name).to_string());
            for p in parts {
                let entry = StEntry { name: format!("{prefix}.{}", p.suffix), dtype: p.dtype, shape: p.shape.clone() };
                plan.push((entry, Source::Packed(p)));
            }
            continue;
        }
        if let Some(tensor) = replaced.remove(&t.name) {
            if tensor.shape != t.shape {
                return Err(Error::tensor(&t.name, "replacement has a different shape"));
            }
            let entry = StEntry { name: hf_name, dtype: tensor.dtype, shape: tensor.shape };
            plan.push((entry, Source::Owned(tensor.data.into_owned())));
            continue;
        }
        let reorder = (from != RopeLayout::RotateHalf
            && names::qk_heads(&t.name, cfg.n_heads, cfg.n_kv_heads).is_some())
            || hf_norm_offset(cfg, &t.name);
        let (dtype, source) = match t.ggml_type {
            GgmlType::F32 if !reorder && t.packed.is_none() => (Dtype::F32, Source::Mapped(i)),
            GgmlType::F16 if !reorder && t.packed.is_none() => (Dtype::F16, Source::Mapped(i)),
            GgmlType::BF16 if !reorder && t.packed.is_none() => (Dtype::BF16, Source::Mapped(i)),
            // Quantized GGUF input: store the decoded values as f16 (norms as f32).
            _ if t.shape.len() < 2 => (Dtype::F32, Source::Decoded(i)),
            _ => (Dtype::F16, Source::Decoded(i)),
        };
        plan.push((StEntry { name: hf_name, dtype, shape: t.shape.clone() }, source));
    }
    let written: std::collections::HashSet<&String> = tensors.iter().map(|(_, t)| &t.name).collect();
    if let Some(name) = packed.keys().filter(|n| !written.contains(n)).chain(replaced.keys()).next() {
        return Err(Error::tensor(name, "quantized but not part of the model"));
    }
    // Larger elements first, each group in model order, so every tensor stays aligned.
    plan.sort_by_key(|(e, _)| std::cmp::Reverse(e.dtype.bitsize()));
    let bytes = plan.iter().map(|(e, _)| e.byte_len() as u64).sum();
    let n_tensors = plan.len();
    let (entries, sources): (Vec<StEntry>, Vec<Source<'_>>) = plan.into_iter().unzip();

    let dir = AtomicDir::create(out_dir)?;
    let mut st = ShardedWriter::new(dir.path(), entries, max_shard_size)?;
    for source in sources {
        let name = st.next_entry().map(|e| e.name.clone()).unwrap_or_default();
        let data: Cow<'_, [u8]> = match source {
            Source::Packed(p) => Cow::Owned(linears.read(p)?),
            Source::Owned(d) => Cow::Owned(d),
            Source::Mapped(i) => Cow::Borrowed(tensors[i].1.data),
            Source::Decoded(i) => {
                let t = &tensors[i].1;
                let values = tensor_to_hf_f32(t, cfg, from, false)?;
                Cow::Owned(quant::encode(if t.shape.len() < 2 { GgmlType::F32 } else { GgmlType::F16 }, &values)?)
            }
        };
        st.write(&name, &data)?;
        progress.inc(data.len() as u64);
    }
    st.finish()?;

    super::write_quantized_hf_files(model, dir.path(), "float16", quant_config, &extra_json)?;
    dir.commit()?;
    Ok(HfQuantSummary { tensors: n_tensors, bytes })
}
