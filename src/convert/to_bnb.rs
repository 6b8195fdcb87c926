//! Any model qforge reads → a Hugging Face directory in bitsandbytes' 4-bit layout (NF4 or
//! FP4, optionally double-quantized), as transformers' `save_pretrained` writes a model loaded
//! with `BitsAndBytesConfig(load_in_4bit=True, ...)`: the 7 linear weights of every decoder
//! layer quantized; embeddings, norms and lm_head kept in the model's float type (transformers
//! leaves the output layer unquantized by default, `llm_int8_skip_modules` null).
//!
//! Tensors stream to one model.safetensors in groups by element size (f32 parts, 16-bit
//! tensors, byte parts) so that each stays aligned; a layer is quantized again for each group
//! it has parts in rather than kept in memory (NF4 quantization is cheap next to I/O).

use std::path::Path;

use indicatif::ProgressBar;
use safetensors::Dtype;
use serde_json::{json, Value};

use super::shards::ShardedWriter;
use super::tensor_to_hf_f32;
use crate::error::{Error, Result};
use crate::formats::st_writer::StEntry;
use crate::ggml_type::GgmlType;
use crate::model::{names, ModelFile, RopeLayout, TensorRef};
use crate::output::AtomicDir;
use crate::quant::bnb::dynamic::{self, Nested, NESTED_BLOCKSIZE};
use crate::quant::bnb::state::{state_suffix, NestedState, QuantState};
use crate::quant::bnb::{self, Bnb4Type};

#[derive(Debug, Clone)]
pub struct BnbOptions {
    pub quant_type: Bnb4Type,
    /// Weights per absmax block: one of `bnb::BLOCK_SIZES`.
    pub blocksize: usize,
    pub double_quant: bool,
    pub allow_nonfinite: bool,
    /// Bytes per safetensors file (see [`super::shards`]).
    pub max_shard_size: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BnbSummary {
    /// safetensors entries written.
    pub tensors: usize,
    /// Linear weights quantized.
    pub quantized: usize,
    /// Weights in the quantized linears, and the bytes of all their parts.
    pub quantized_weights: u64,
    pub quantized_bytes: u64,
    /// All weights of the model, and model.safetensors' size.
    pub weights: u64,
    pub bytes: u64,
    /// The float type of the unquantized tensors (`bfloat16`, ...).
    pub dtype: String,
}

impl BnbSummary {
    /// Bits per weight of the quantized linears (codes, absmax and their tables).
    pub fn linear_bits_per_weight(&self) -> f64 {
        self.quantized_bytes as f64 * 8.0 / self.quantized_weights.max(1) as f64
    }

    /// Bits per weight of the whole file.
    pub fn bits_per_weight(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.weights.max(1) as f64
    }
}

/// The weights transformers + bitsandbytes quantize: those of `nn.Linear` modules, less
/// lm_head. Phi-3's fused `attn_qkv` and `ffn_up` are such modules, and so are Qwen2-MoE's
/// shared expert and its gate; the experts of an MoE layer are not (transformers 5 holds
/// them as 3-D parameters of one module, which bitsandbytes leaves in the model's dtype), nor
/// is the router.
pub fn is_quantized_linear(gguf_name: &str) -> bool {
    const LINEARS: [&str; 12] = [
        "attn_qkv.weight",
        "attn_q.weight",
        "attn_k.weight",
        "attn_v.weight",
        "attn_output.weight",
        "ffn_gate.weight",
        "ffn_up.weight",
        "ffn_down.weight",
        "ffn_gate_shexp.weight",
        "ffn_up_shexp.weight",
        "ffn_down_shexp.weight",
        "ffn_gate_inp_shexp.weight",
    ];
    gguf_name.strip_prefix("blk.").and_then(|r| r.split_once('.')).is_some_and(|(_, s)| LINEARS.contains(&s))
}

/// The stored parts of one quantized linear.
#[derive(Clone, Copy, Debug, PartialEq)]
enum PartKind {
    Weight,
    Absmax,
    QuantMap,
    NestedAbsmax,
    NestedQuantMap,
    State,
}

enum Source {
    Plain(usize),
    Part(usize, PartKind),
}

struct Planned {
    entry: StEntry,
    source: Source,
}

/// One linear's quantization.
struct Quantized {
    packed: Vec<u8>,
    absmax: Vec<f32>,
    nested: Option<Nested>,
}

fn torch_dtype(t: GgmlType) -> &'static str {
    match t {
        GgmlType::F16 => "float16",
        GgmlType::BF16 => "bfloat16",
        _ => "float32",
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

struct Writer<'m, 'a> {
    model: &'m ModelFile,
    /// In Hugging Face's order and shapes (an MoE layer's experts one by one), with
    /// `hf_names`.
    tensors: &'a [TensorRef<'m>],
    hf_names: &'a [String],
    opts: &'a BnbOptions,
    dtype: GgmlType,
    progress: &'a ProgressBar,
}

impl Writer<'_, '_> {
    /// The weight as f32 in Hugging Face row order.
    fn values(&self, t: &TensorRef<'_>) -> Result<Vec<f32>> {
        tensor_to_hf_f32(t, self.model.config(), self.model.qk_layout(), self.opts.allow_nonfinite)
    }

    fn quantize(&self, t: &TensorRef<'_>) -> Result<Quantized> {
        let x = self.values(t)?;
        let (packed, absmax) = bnb::quantize(self.opts.quant_type, &x, self.opts.blocksize);
        let nested = self.opts.double_quant.then(|| dynamic::quantize_absmax(&absmax));
        Ok(Quantized { packed, absmax, nested })
    }

    fn state(&self, t: &TensorRef<'_>, offset: Option<f32>) -> QuantState {
        QuantState {
            quant_type: self.opts.quant_type,
            blocksize: self.opts.blocksize,
            dtype: torch_dtype(self.dtype).into(),
            shape: t.shape.clone(),
            nested: offset.map(|offset| NestedState { blocksize: NESTED_BLOCKSIZE, dtype: "float32".into(), offset }),
        }
    }

    /// Plain tensors' bytes: copied when stored in the output type and row order, else decoded
    /// and re-encoded.
    fn plain_bytes(&self, t: &TensorRef<'_>) -> Result<Vec<u8>> {
        let reorder = self.model.qk_layout() != RopeLayout::RotateHalf
            && names::qk_heads(&t.name, self.model.config().n_heads, self.model.config().n_kv_heads).is_some()
            || super::hf_norm_offset(self.model.config(), &t.name);
        if t.packed.is_none() && t.ggml_type == self.dtype && !reorder {
            return Ok(t.data.to_vec());
        }
        crate::quant::encode(self.dtype, &self.values(t)?)
    }
}

/// Plan, then stream every tensor; returns the entries written and the file size.
fn write_safetensors(w: &Writer<'_, '_>, dir: &Path, offsets: &[Option<f32>]) -> Result<(usize, u64, u64)> {
    let opts = w.opts;
    let mut plan: Vec<Planned> = Vec::new();
    let mut quantized_bytes = 0u64;
    for (i, t) in w.tensors.iter().enumerate() {
        let hf = w.hf_names[i].clone();
        if !is_quantized_linear(&t.name) {
            let entry = StEntry { name: hf, dtype: super::st_dtype(w.dtype), shape: t.shape.clone() };
            plan.push(Planned { entry, source: Source::Plain(i) });
            continue;
        }
        let n = t.n_elements();
        let blocks = bnb::n_blocks(n, opts.blocksize);
        let json_len = w.state(t, offsets[i]).to_json_bytes().len();
        let mut parts = vec![
            (PartKind::Weight, "weight".to_string(), Dtype::U8, vec![n.div_ceil(2), 1]),
            (PartKind::QuantMap, "weight.quant_map".into(), Dtype::F32, vec![16]),
            (PartKind::State, format!("weight.{}", state_suffix(opts.quant_type)), Dtype::U8, vec![json_len]),
        ];
        if opts.double_quant {
            parts.push((PartKind::Absmax, "weight.absmax".into(), Dtype::U8, vec![blocks]));
            parts.push((
                PartKind::NestedAbsmax,
                "weight.nested_absmax".into(),
                Dtype::F32,
                vec![blocks.div_ceil(NESTED_BLOCKSIZE)],
            ));
            parts.push((PartKind::NestedQuantMap, "weight.nested_quant_map".into(), Dtype::F32, vec![256]));
        } else {
            parts.push((PartKind::Absmax, "weight.absmax".into(), Dtype::F32, vec![blocks]));
        }
        let prefix = hf.strip_suffix(".weight").unwrap_or(&hf);
        for (kind, suffix, dtype, shape) in parts {
            let entry = StEntry { name: format!("{prefix}.{suffix}"), dtype, shape };
            quantized_bytes += entry.byte_len() as u64;
            plan.push(Planned { entry, source: Source::Part(i, kind) });
        }
    }
    // Larger elements first, each group in model order, so every tensor stays aligned.
    plan.sort_by_key(|p| std::cmp::Reverse(p.entry.dtype.bitsize()));
    let n_entries = plan.len();
    let (entries, sources): (Vec<StEntry>, Vec<Source>) = plan.into_iter().map(|p| (p.entry, p.source)).unzip();

    let mut st = ShardedWriter::new(dir, entries, opts.max_shard_size)?;
    let mut current: Option<(usize, Quantized)> = None;
    for source in sources {
        let name = st.next_entry().map(|e| e.name.clone()).unwrap_or_default();
        let bytes = match source {
            Source::Plain(i) => {
                let b = w.plain_bytes(&w.tensors[i])?;
                w.progress.inc(w.tensors[i].stored_bytes() as u64);
                b
            }
            Source::Part(i, kind) => {
                let t = &w.tensors[i];
                if current.as_ref().is_none_or(|(c, _)| *c != i) {
                    let q = w.quantize(t)?;
                    if q.nested.as_ref().map(|n| n.offset) != offsets[i] {
                        return Err(Error::tensor(&t.name, "double-quantization offset changed between passes"));
                    }
                    w.progress.inc(t.stored_bytes() as u64);
                    current = Some((i, q));
                }
                let Some((_, q)) = current.as_ref() else { unreachable!() };
                part_bytes(w, t, q, kind)
            }
        };
        st.write(&name, &bytes)?;
    }
    let size = st.finish()?;
    Ok((n_entries, size, quantized_bytes))
}

fn part_bytes(w: &Writer<'_, '_>, t: &TensorRef<'_>, q: &Quantized, kind: PartKind) -> Vec<u8> {
    let nested = q.nested.as_ref();
    match kind {
        PartKind::Weight => q.packed.clone(),
        PartKind::Absmax => match nested {
            Some(n) => n.codes.clone(),
            None => f32_bytes(&q.absmax),
        },
        PartKind::QuantMap => f32_bytes(w.opts.quant_type.table()),
        PartKind::NestedAbsmax => nested.map(|n| f32_bytes(&n.absmax)).unwrap_or_default(),
        PartKind::NestedQuantMap => nested.map(|n| f32_bytes(&n.code)).unwrap_or_default(),
        PartKind::State => w.state(t, nested.map(|n| n.offset)).to_json_bytes(),
    }
}

/// transformers' `BitsAndBytesConfig(...).to_dict()` for these options, keys sorted as
/// `save_pretrained` writes them.
pub fn quantization_config(opts: &BnbOptions, compute_dtype: &str) -> Value {
    json!({
        "_load_in_4bit": true,
        "_load_in_8bit": false,
        "bnb_4bit_compute_dtype": compute_dtype,
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": opts.quant_type.name(),
        "bnb_4bit_use_double_quant": opts.double_quant,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": true,
        "load_in_8bit": false,
        "quant_method": "bitsandbytes",
    })
}

pub fn write(model: &ModelFile, out_dir: &Path, opts: &BnbOptions, progress: &ProgressBar) -> Result<BnbSummary> {
    if !bnb::BLOCK_SIZES.contains(&opts.blocksize) {
        return Err(Error::InvalidArgument(format!(
            "block size {} (bitsandbytes supports {:?})",
            opts.blocksize,
            bnb::BLOCK_SIZES
        )));
    }
    model.check_tensors()?;
    let (hf_names, tensors): (Vec<String>, Vec<TensorRef<'_>>) =
        super::to_hf::hf_tensors(model.tensors()?, model.config())?.into_iter().unzip();
    // The unquantized tensors keep the model's float type (f32 when the source stores none).
    let dtype = tensors
        .iter()
        .find(|t| t.shape.len() >= 2 && t.packed.is_none() && t.ggml_type.is_float())
        .map_or(GgmlType::F32, |t| t.ggml_type);
    for t in &tensors {
        if t.packed.is_none() && !crate::quant::can_decode(t.ggml_type) {
            return Err(Error::tensor(&t.name, format!("decoding {} tensors is not supported yet", t.ggml_type)));
        }
    }
    let w = Writer { model, tensors: &tensors, hf_names: &hf_names, opts, dtype, progress };

    // The quant_state JSON holds the double-quantization offset (the mean absmax), and the
    // header needs its length before any data: a first pass finds each linear's offset.
    let mut offsets = vec![None; tensors.len()];
    if opts.double_quant {
        for (i, t) in tensors.iter().enumerate().filter(|(_, t)| is_quantized_linear(&t.name)) {
            let x = w.values(t)?;
            offsets[i] = Some(dynamic::mean_offset(&bnb::block_absmax(&x, opts.blocksize)));
            progress.inc(t.stored_bytes() as u64);
        }
    }

    let dir = AtomicDir::create(out_dir)?;
    let (n_entries, bytes, quantized_bytes) = write_safetensors(&w, dir.path(), &offsets)?;

    let td = torch_dtype(dtype);
    super::write_quantized_hf_files(model, dir.path(), td, quantization_config(opts, td), &[])?;
    // Read the directory back as qforge reads any checkpoint: every part of every quantized
    // weight is checked against its quant_state before the directory is published.
    let check = ModelFile::open(dir.path())?;
    check.check_tensors()?;
    drop(check);
    dir.commit()?;

    let quantized: Vec<&TensorRef<'_>> = tensors.iter().filter(|t| is_quantized_linear(&t.name)).collect();
    Ok(BnbSummary {
        tensors: n_entries,
        quantized: quantized.len(),
        quantized_weights: quantized.iter().map(|t| t.n_elements() as u64).sum(),
        quantized_bytes,
        weights: tensors.iter().map(|t| t.n_elements() as u64).sum(),
        bytes,
        dtype: td.into(),
    })
}
