//! Which storage type each tensor gets when a model is written as GGUF. The GGUF pipeline
//! (`to_gguf`) asks a [`TypePlan`] for every tensor's type before it writes the header, so the
//! same streaming writer serves `convert` ([`Uniform`]: one type for every weight matrix) and
//! `quantize` ([`QuantPlan`]: llama.cpp's per-tensor rules for its quantization mixes).
//!
//! [`QuantPlan`] is a port of llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp) for the
//! dense `llama` and `qwen2` architectures and the file types qforge can encode. The rules only
//! look at tensor names, shapes and a few hyper-parameters, so the plan is computed up front
//! from the header and never needs the weights.

use regex::Regex;

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::model::{Arch, ModelConfig};
use crate::quant;

/// What a plan sees of a tensor: its GGUF name, row-major shape (`[out, in]`, the row length
/// last) and the type it is stored as in the input.
#[derive(Debug, Clone, Copy)]
pub struct TensorSpec<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub source_type: GgmlType,
}

impl TensorSpec<'_> {
    /// ggml's `ne[0]`: the number of weights in one row, the dimension blocks run along.
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(0)
    }
}

/// The type chosen for one tensor, with a note for the user when it is not the one asked for
/// (a fall-back because the row length does not divide into the type's blocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub ggml_type: GgmlType,
    pub note: Option<String>,
}

impl Assigned {
    fn plain(ggml_type: GgmlType) -> Assigned {
        Assigned { ggml_type, note: None }
    }
}

/// A per-tensor type decision for a whole model.
pub trait TypePlan {
    /// `general.file_type` (llama.cpp's `llama_ftype`) of the file this plan produces.
    fn file_type(&self) -> u32;

    /// One decision per tensor, in the order given. Called once, before anything is written.
    fn assign(&self, config: &ModelConfig, tensors: &[TensorSpec<'_>]) -> Result<Vec<Assigned>>;
}

/// llama.cpp's `llama_ftype` id for a file whose weights are all of one type (what `convert`
/// writes): the codec table's.
pub fn uniform_file_type(t: GgmlType) -> Result<u32> {
    quant::codec(t).and_then(|c| c.ftype).ok_or_else(|| Error::Unsupported(format!("no file type for {t}")))
}

/// `convert`'s plan: every weight matrix in one type, as llama.cpp's `convert_hf_to_gguf.py`
/// writes it. Norms and biases (1-D) stay F32: llama.cpp computes with them in f32 and they
/// are tiny. A matrix whose rows do not divide into the type's blocks falls back to F16.
#[derive(Debug, Clone, Copy)]
pub struct Uniform {
    pub outtype: GgmlType,
}

impl TypePlan for Uniform {
    fn file_type(&self) -> u32 {
        uniform_file_type(self.outtype).unwrap_or(0)
    }

    fn assign(&self, _config: &ModelConfig, tensors: &[TensorSpec<'_>]) -> Result<Vec<Assigned>> {
        Ok(tensors
            .iter()
            .map(|t| {
                if kept_f32(t) {
                    Assigned::plain(GgmlType::F32)
                } else if t.row_len() % self.outtype.block_size() != 0 {
                    Assigned {
                        ggml_type: GgmlType::F16,
                        note: Some(format!(
                            "{}: row of {} is not a multiple of {}, stored as F16",
                            t.name,
                            t.row_len(),
                            self.outtype.block_size()
                        )),
                    }
                } else {
                    Assigned::plain(self.outtype)
                }
            })
            .collect())
    }
}

/// A quantization target of `qforge quantize --type` (llama.cpp's `llama_ftype`): every
/// quantized type whose codec has a `llama_ftype` of its own (`quant::CODECS`), and
/// llama-quantize's `_S/_M/_L` mixes of the K-quants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileType(Kind);

/// The mixes are named; every other file type is its block type's. The mix rules
/// ([`QuantPlan::mix_type`]) match on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
enum Kind {
    /// `LLAMA_FTYPE_MOSTLY_<T>`: T's codec has an ftype and T is not a float type.
    Mostly(GgmlType),
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
}

/// One of llama-quantize's mixes: its name, `llama_ftype` id, base type and the block type
/// name that llama-quantize also accepts for it (`Q4_K` means `Q4_K_M`; with `--pure`, every
/// weight in Q4_K).
struct Mix {
    kind: Kind,
    name: &'static str,
    id: u32,
    base: GgmlType,
    alias: Option<&'static str>,
}

const MIXES: &[Mix] = &[
    Mix { kind: Kind::Q3_K_S, name: "Q3_K_S", id: 11, base: GgmlType::Q3_K, alias: None },
    Mix { kind: Kind::Q3_K_M, name: "Q3_K_M", id: 12, base: GgmlType::Q3_K, alias: Some("Q3_K") },
    Mix { kind: Kind::Q3_K_L, name: "Q3_K_L", id: 13, base: GgmlType::Q3_K, alias: None },
    Mix { kind: Kind::Q4_K_S, name: "Q4_K_S", id: 14, base: GgmlType::Q4_K, alias: None },
    Mix { kind: Kind::Q4_K_M, name: "Q4_K_M", id: 15, base: GgmlType::Q4_K, alias: Some("Q4_K") },
    Mix { kind: Kind::Q5_K_S, name: "Q5_K_S", id: 16, base: GgmlType::Q5_K, alias: None },
    Mix { kind: Kind::Q5_K_M, name: "Q5_K_M", id: 17, base: GgmlType::Q5_K, alias: Some("Q5_K") },
];

impl FileType {
    /// Every file type with its `--type` names (name first, then the alias), in llama.cpp's
    /// id order.
    fn all() -> Vec<(FileType, Vec<&'static str>)> {
        let mostly = quant::CODECS
            .iter()
            .filter(|c| c.ftype.is_some() && !c.ty.is_float())
            .map(|c| (FileType(Kind::Mostly(c.ty)), vec![c.ty.name()]));
        let mixes = MIXES.iter().map(|m| (FileType(m.kind), std::iter::once(m.name).chain(m.alias).collect()));
        let mut all: Vec<_> = mostly.chain(mixes).collect();
        all.sort_by_key(|(f, _)| f.id());
        all
    }

    fn mix(self) -> Option<&'static Mix> {
        MIXES.iter().find(|m| m.kind == self.0)
    }

    /// Parse a `--type` name, case-insensitively.
    pub fn parse(s: &str) -> Option<FileType> {
        Self::all().into_iter().find(|(_, names)| names.iter().any(|n| n.eq_ignore_ascii_case(s))).map(|(f, _)| f)
    }

    /// Every accepted `--type` name, for error messages.
    pub fn valid_names() -> String {
        Self::all().into_iter().flat_map(|(_, names)| names).collect::<Vec<_>>().join(", ")
    }

    /// The `--type` names for help texts: `Q4_0, …, Q4_K_M (Q4_K), …`.
    pub fn help_list() -> String {
        Self::help_list_where(|_| true)
    }

    /// [`FileType::help_list`] of the file types `keep` accepts.
    pub fn help_list_where(keep: impl Fn(FileType) -> bool) -> String {
        let item = |names: &[&str]| match names {
            [name, alias] => format!("{name} ({alias})"),
            _ => names.join(", "),
        };
        Self::all().iter().filter(|(f, _)| keep(*f)).map(|(_, names)| item(names)).collect::<Vec<_>>().join(", ")
    }

    pub fn name(self) -> &'static str {
        match (self.0, self.mix()) {
            (Kind::Mostly(t), _) => t.name(),
            (_, Some(m)) => m.name,
            (_, None) => unreachable!("every mix kind has a row in MIXES"),
        }
    }

    /// `general.file_type`: llama.cpp's `enum llama_ftype` value (llama.h).
    pub fn id(self) -> u32 {
        match (self.0, self.mix()) {
            // Made only by `all()`, from a codec with an ftype.
            (Kind::Mostly(t), _) => quant::codec(t).and_then(|c| c.ftype).unwrap_or(0),
            (_, Some(m)) => m.id,
            (_, None) => unreachable!("every mix kind has a row in MIXES"),
        }
    }

    /// The type most weights get (llama.cpp's `llama_ftype_get_default_type`); the mix rules
    /// then raise some tensors above it.
    pub fn default_type(self) -> GgmlType {
        match (self.0, self.mix()) {
            (Kind::Mostly(t), _) => t,
            (_, Some(m)) => m.base,
            (_, None) => unreachable!("every mix kind has a row in MIXES"),
        }
    }
}

/// Parse a tensor type for `--output-type`, `--embedding-type` and `--tensor-type`: a ggml
/// type qforge can encode (not a mix name).
pub fn parse_tensor_type(s: &str) -> Result<GgmlType> {
    match GgmlType::parse(s) {
        Some(t) if quant::can_encode(t) => Ok(t),
        _ => Err(Error::InvalidArgument(format!(
            "unknown tensor type {s:?}; valid types: {}",
            encodable_types().iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn encodable_types() -> Vec<GgmlType> {
    GgmlType::ALL.iter().copied().filter(|&t| quant::can_encode(t)).collect()
}

/// `--tensor-type REGEX=TYPE`: the last `=` separates the two (type names never hold one, a
/// pattern might). The pattern is searched anywhere in the GGUF tensor name, like llama.cpp's
/// `std::regex_search`.
pub fn parse_tensor_override(s: &str) -> Result<(Regex, GgmlType)> {
    let (pattern, ty) = s.rsplit_once('=').ok_or_else(|| {
        Error::InvalidArgument(format!("--tensor-type {s:?}: expected REGEX=TYPE (e.g. attn_v=Q8_0)"))
    })?;
    if pattern.is_empty() {
        return Err(Error::InvalidArgument(format!("--tensor-type {s:?}: empty pattern")));
    }
    let re = Regex::new(pattern).map_err(|e| {
        // regex's syntax errors span several lines (the pattern, a caret, the reason); the
        // reason is the last line.
        let text = e.to_string();
        let why = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("invalid").trim();
        let why = why.strip_prefix("error: ").unwrap_or(why);
        Error::InvalidArgument(format!("--tensor-type {s:?}: bad regular expression {pattern:?}: {why}"))
    })?;
    let ty = parse_tensor_type(ty).map_err(|e| Error::InvalidArgument(format!("--tensor-type {s:?}: {e}")))?;
    Ok((re, ty))
}

/// `qforge quantize`'s plan: llama.cpp's `llama_model_quantize` type selection.
#[derive(Debug, Clone)]
pub struct QuantPlan {
    pub ftype: FileType,
    /// `--pure`: every quantizable tensor gets the default type (no mix rules).
    pub pure: bool,
    /// `--output-type`: the type of `output.weight` (and of a tied `token_embd.weight`).
    pub output_type: Option<GgmlType>,
    /// `--embedding-type`: the type of `token_embd.weight`.
    pub embedding_type: Option<GgmlType>,
    /// `--tensor-type`: the first pattern that matches a tensor name decides its type.
    pub overrides: Vec<(Regex, GgmlType)>,
    /// `--leave-output`: keep `output.weight` as it is stored in the input.
    pub leave_output: bool,
    /// An importance matrix is given (`--imatrix`): llama.cpp's mixes then change a few
    /// ffn_down types (IQ4_NL keeps its type, Q4_0/Q5_0 raise the first eighth).
    pub has_imatrix: bool,
}

impl QuantPlan {
    pub fn new(ftype: FileType) -> QuantPlan {
        QuantPlan {
            ftype,
            pure: false,
            output_type: None,
            embedding_type: None,
            overrides: Vec::new(),
            leave_output: false,
            has_imatrix: false,
        }
    }
}

/// llama.cpp's `tensor_category`, for the tensors dense llama/qwen2 models have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

/// llama.cpp's `tensor_get_category`: substring tests in the same order.
fn category(name: &str) -> Category {
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" {
        Category::TokenEmbd
    } else if name.contains("attn_v.weight") || name.contains("attn_qkv.weight") || name.contains("attn_kv_b.weight") {
        // llama.cpp treats fused qkv and MLA kv projections like attn_v; neither occurs in
        // llama/qwen2 checkpoints, but a GGUF input could name one.
        Category::AttnV
    } else if name.contains("attn_k.weight") {
        Category::AttnK
    } else if name.contains("attn_q.weight") {
        Category::AttnQ
    } else if name.contains("attn_output.weight") {
        Category::AttnOutput
    } else if name.contains("ffn_up") {
        Category::FfnUp
    } else if name.contains("ffn_gate") {
        Category::FfnGate
    } else if name.contains("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

/// Tensors llama.cpp's converter stores in F32 whatever the output type: vectors, and an MoE
/// layer's router and shared-expert gate (small, and their errors pick the wrong experts).
pub fn kept_f32(t: &TensorSpec<'_>) -> bool {
    t.shape.len() < 2 || t.name.ends_with("ffn_gate_inp.weight") || t.name.ends_with("ffn_gate_inp_shexp.weight")
}

/// llama.cpp's `tensor_allows_quantization`, reduced to what can occur in the architectures
/// qforge has: only matrices (more than one dimension above 1) named `*weight`, never norms or
/// an MoE router, and not `output.weight` with `--leave-output`.
fn allows_quantization(plan: &QuantPlan, t: &TensorSpec<'_>) -> bool {
    t.shape.iter().filter(|&&d| d > 1).count() >= 2
        && t.name.ends_with("weight")
        && !t.name.contains("_norm.weight")
        && !t.name.contains("ffn_gate_inp.weight")
        && !(plan.leave_output && t.name == "output.weight")
}

/// The layer number llama.cpp's `weight_name_comparer` reads with `sscanf("blk.%d.")`, or -1.
fn layer_of(name: &str) -> i64 {
    name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|n| n.parse::<i64>().ok()).unwrap_or(-1)
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third layer
/// in between, get more bits in the `_M` mixes (these layers were measured to matter most).
fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// llama.cpp's `quantize_state_impl` counters: the rules for attn_v and ffn_down depend on how
/// many of them were seen before, in llama.cpp's tensor order.
struct State {
    has_tied_embeddings: bool,
    n_attention_wv: i64,
    i_attention_wv: i64,
    n_ffn_down: i64,
    i_ffn_down: i64,
    /// `n_head / n_head_kv`, integer division as in `llama_hparams::n_gqa`.
    n_gqa: usize,
    /// llama.cpp's `LLM_TYPE_70B` (from `load_hparams`): llama with 80 layers and GQA, qwen2
    /// with 80 layers.
    is_70b: bool,
    /// Experts per MoE layer (0: dense).
    n_expert: usize,
}

impl State {
    fn new(config: &ModelConfig, tensors: &[TensorSpec<'_>]) -> State {
        let n_layers = config.n_layers as i64;
        let is_70b = match config.arch {
            Arch::Llama | Arch::Mistral => n_layers == 80 && config.n_heads != config.n_kv_heads,
            Arch::Qwen2 => n_layers == 80,
            // llama.cpp sizes these by their layer counts, none of which is a 70B case.
            Arch::Qwen3 | Arch::Gemma2 | Arch::Gemma3 | Arch::Phi3 => false,
            Arch::Mixtral | Arch::Qwen2Moe | Arch::Qwen3Moe => false,
        };
        State {
            // llama.cpp assumes tied embeddings until it sees output.weight.
            has_tied_embeddings: !tensors.iter().any(|t| category(t.name) == Category::Output),
            n_attention_wv: tensors.iter().filter(|t| category(t.name) == Category::AttnV).count() as i64,
            i_attention_wv: 0,
            // llama.cpp counts ffn_down against the layer count, not the tensors present.
            n_ffn_down: n_layers,
            i_ffn_down: 0,
            n_gqa: config.n_heads / config.n_kv_heads.max(1),
            is_70b,
            n_expert: config.moe.as_ref().map_or(0, |m| m.n_experts),
        }
    }
}

impl TypePlan for QuantPlan {
    fn file_type(&self) -> u32 {
        self.ftype.id()
    }

    fn assign(&self, config: &ModelConfig, tensors: &[TensorSpec<'_>]) -> Result<Vec<Assigned>> {
        let mut state = State::new(config, tensors);
        // llama.cpp decides types walking its weights map, ordered by layer number (-1 for
        // global tensors) and then by name; the attn_v / ffn_down counters advance in that
        // order, so visit the tensors in it even though they are written in file order.
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by(|&a, &b| {
            (layer_of(tensors[a].name), tensors[a].name).cmp(&(layer_of(tensors[b].name), tensors[b].name))
        });
        let mut out = vec![None; tensors.len()];
        for i in order {
            out[i] = Some(self.tensor_type(&mut state, &tensors[i]));
        }
        let out: Vec<Assigned> = out.into_iter().map(|a| a.expect("every tensor planned")).collect();
        // --pure promises one type for every matrix: a fall-back would break that silently.
        if self.pure {
            if let Some(note) = out.iter().find_map(|a| a.note.as_deref()) {
                return Err(Error::Unsupported(format!("--pure: {note}; drop --pure to allow the fall-back")));
            }
        }
        Ok(out)
    }
}

impl QuantPlan {
    /// llama.cpp's `llama_tensor_get_type` (the outer wrapper).
    fn tensor_type(&self, qs: &mut State, t: &TensorSpec<'_>) -> Assigned {
        if !allows_quantization(self, t) {
            // Norms and biases: F32, as qforge's converter and llama.cpp's write them (a GGUF
            // input already holds them in F32). --leave-output keeps output.weight in its
            // input type; nothing is re-encoded then.
            let ty = if kept_f32(t) { GgmlType::F32 } else { t.source_type };
            return Assigned::plain(ty);
        }
        let cat = category(t.name);
        // --embedding-type / --output-type win over everything else. llama.cpp applies no
        // fall-back to them (an incompatible choice aborts there); qforge falls back with a
        // warning instead, like every other tensor.
        if let (Some(ty), Category::TokenEmbd) = (self.embedding_type, cat) {
            return fallback(t, ty);
        }
        if let (Some(ty), Category::Output) = (self.output_type, cat) {
            return fallback(t, ty);
        }
        let mut new_type = self.ftype.default_type();
        // --tensor-type: the first matching pattern decides. As in llama.cpp, a manual choice
        // skips the mix rules, so it does not advance their attn_v / ffn_down counters either.
        let manual = self.overrides.iter().find(|(re, _)| re.is_match(t.name)).map(|&(_, ty)| ty);
        if let Some(ty) = manual {
            new_type = ty;
        } else if !self.pure {
            new_type = self.mix_type(qs, t, new_type, cat);
        }
        fallback(t, new_type)
    }

    /// llama.cpp's `llama_tensor_get_type_impl` for the dense llama/qwen2 architectures (no
    /// experts, not Falcon) and the file types in [`FileType`]; rules for other file types
    /// (IQ1..IQ3, Q2_K_S, TQ*, MXFP4) are left out because qforge cannot write them.
    fn mix_type(&self, qs: &mut State, t: &TensorSpec<'_>, default: GgmlType, cat: Category) -> GgmlType {
        use GgmlType as G;
        use Kind as F;
        let ftype = self.ftype.0;
        let mut new_type = default;
        if cat == Category::Output || (qs.has_tied_embeddings && cat == Category::TokenEmbd) {
            // The output projection (or the embedding table that doubles as it) is the most
            // sensitive matrix: Q6_K unless the whole file is Q8_0. A row that the default
            // type cannot block up goes to Q8_0 (32-weight blocks).
            if let Some(ty) = self.output_type {
                new_type = ty;
            } else if !t.row_len().is_multiple_of(new_type.block_size()) {
                new_type = G::Q8_0;
            } else if new_type != G::Q8_0 {
                new_type = G::Q6_K;
            }
        } else if cat == Category::TokenEmbd {
            // An untied embedding table is only looked up, never multiplied in full: it keeps
            // the default type (llama.cpp only changes it for IQ1/IQ2/IQ3/TQ files).
        } else if cat == Category::AttnV {
            // attn_v is small (n_kv_heads rows) and its errors pass straight into every
            // token's attention output, so the mixes spend bits here.
            match ftype {
                // Q2_K: at least Q3_K; with 4+ query heads per kv head the tensor is smaller
                // still, so Q4_K costs little.
                F::Mostly(G::Q2_K) => new_type = if qs.n_gqa >= 4 { G::Q4_K } else { G::Q3_K },
                // Q3_K_M: the first two attn_v get Q5_K, the rest Q4_K.
                F::Q3_K_M => new_type = if qs.i_attention_wv < 2 { G::Q5_K } else { G::Q4_K },
                F::Q3_K_L => new_type = G::Q5_K,
                F::Mostly(G::IQ4_NL) if qs.n_gqa >= 4 => new_type = G::Q5_K,
                // The _M mixes: Q6_K on the use_more_bits layers.
                F::Q4_K_M | F::Q5_K_M if use_more_bits(qs.i_attention_wv, qs.n_attention_wv) => new_type = G::Q6_K,
                // Q4_K_S: Q5_K on the first four.
                F::Q4_K_S if qs.i_attention_wv < 4 => new_type = G::Q5_K,
                _ => {}
            }
            if qs.is_70b && matches!(new_type, G::Q3_K | G::Q4_K) {
                // In 70B models 8 query heads share each attn_v head: the tensor is 8× smaller
                // than attn_q, so more bits cost almost nothing.
                new_type = G::Q5_K;
            }
            if qs.n_expert == 8 {
                // Mixtral-shaped models: attention is a small share of the weights.
                new_type = G::Q8_0;
            }
            qs.i_attention_wv += 1;
        } else if cat == Category::AttnK && qs.n_expert == 8 {
            new_type = G::Q8_0;
        } else if cat == Category::FfnDown {
            // ffn_down takes the widest input (the FFN width) and its errors go straight into
            // the residual stream; llama.cpp found the first layers most sensitive. With experts,
            // every ffn_down* of a layer (experts and shared expert) counts as that layer.
            let i_layer = if qs.n_expert > 1 { layer_of(t.name) } else { qs.i_ffn_down };
            let n_layer = qs.n_ffn_down;
            match ftype {
                F::Mostly(G::Q2_K) => new_type = G::Q3_K,
                // Q3_K_M: Q5_K for the first sixteenth, Q4_K elsewhere (Q3_K only on Falcon's
                // non-use_more_bits layers, which do not apply here).
                F::Q3_K_M => new_type = if i_layer < n_layer / 16 { G::Q5_K } else { G::Q4_K },
                F::Q3_K_L => new_type = G::Q5_K,
                F::Q4_K_M if use_more_bits(i_layer, n_layer) => new_type = G::Q6_K,
                // IQ4_NL without an importance matrix: Q5_K on the first eighth (with one,
                // the weighted IQ4_NL is trusted there).
                F::Mostly(G::IQ4_NL) if i_layer < n_layer / 8 && !self.has_imatrix => new_type = G::Q5_K,
                F::Q5_K_M if use_more_bits(i_layer, n_layer) => new_type = G::Q6_K,
                F::Q4_K_S if i_layer < n_layer / 8 => new_type = G::Q5_K,
                // Q4_0/Q5_0 with an importance matrix: Q4_1/Q5_1 on the first eighth, which
                // llama.cpp found can go badly wrong even weighted (only with an imatrix, so
                // that files made without one stay as they always were).
                F::Mostly(G::Q4_0) if self.has_imatrix && i_layer < n_layer / 8 => new_type = G::Q4_1,
                F::Mostly(G::Q5_0) if self.has_imatrix && i_layer < n_layer / 8 => new_type = G::Q5_1,
                _ => {}
            }
            qs.i_ffn_down += 1;
        } else if cat == Category::AttnOutput {
            // The attention output projection: one step up in the low-bit mixes (to Q5_K in
            // the 8-expert models, whose attention is a small share of the weights).
            if qs.n_expert == 8 {
                if matches!(
                    ftype,
                    F::Mostly(G::Q2_K) | F::Q3_K_S | F::Q3_K_M | F::Mostly(G::IQ4_NL) | F::Q4_K_S | F::Q4_K_M
                ) {
                    new_type = G::Q5_K;
                }
            } else {
                match ftype {
                    F::Mostly(G::Q2_K) => new_type = G::Q3_K,
                    F::Q3_K_M => new_type = G::Q4_K,
                    F::Q3_K_L => new_type = G::Q5_K,
                    _ => {}
                }
            }
        }
        // attn_q, ffn_gate and ffn_up only change in the IQ3_XS/IQ3_XXS mixes, which qforge
        // does not write.
        new_type
    }
}

/// llama.cpp's `tensor_type_fallback`: a type whose blocks do not divide the row length is
/// replaced by the nearest type with 32-weight blocks (the codec table's `fallback`: Q2_K/Q3_K
/// → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, as llama.cpp maps them today), and by F16
/// when even that does not fit. llama.cpp aborts on a block-32 type that does not fit; qforge stores F16 instead,
/// as `convert` does.
fn fallback(t: &TensorSpec<'_>, target: GgmlType) -> Assigned {
    let ncols = t.row_len();
    if ncols.is_multiple_of(target.block_size()) {
        return Assigned::plain(target);
    }
    let mut ty = quant::codec(target).and_then(|c| c.fallback).unwrap_or(GgmlType::F16);
    if !ncols.is_multiple_of(ty.block_size()) {
        ty = GgmlType::F16;
    }
    Assigned {
        ggml_type: ty,
        note: Some(format!(
            "{}: row of {ncols} is not a multiple of {} ({target}), falling back to {ty}",
            t.name,
            target.block_size()
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn config(
        arch: Arch,
        layers: usize,
        hidden: usize,
        ffn: usize,
        heads: usize,
        kv: usize,
        vocab: usize,
        tied: bool,
    ) -> ModelConfig {
        ModelConfig {
            arch,
            hidden_size: hidden,
            n_layers: layers,
            n_heads: heads,
            n_kv_heads: kv,
            head_dim: hidden / heads,
            rope_dim: hidden / heads,
            original_context: None,
            moe: None,
            ffn_size: ffn,
            rms_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: crate::model::config::RopeScaling::None,
            tie_embeddings: tied,
            vocab_size: vocab,
            context_length: 2048,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            attn: Default::default(),
        }
    }

    /// LLaMA-7B (v1/v2): 32 layers, 4096 wide, FFN 11008, 32 heads, no GQA, 32000 tokens.
    fn llama_7b() -> ModelConfig {
        config(Arch::Llama, 32, 4096, 11008, 32, 32, 32000, false)
    }

    /// The file type of a `--type` name.
    fn ft(name: &str) -> FileType {
        FileType::parse(name).unwrap()
    }

    /// tests/fixtures/tiny-llama.
    pub(crate) fn tiny() -> ModelConfig {
        config(Arch::Llama, 4, 256, 768, 4, 2, 8192, false)
    }

    /// The shared small-llama fixture (tied embeddings: no output.weight).
    fn small() -> ModelConfig {
        config(Arch::Llama, 6, 512, 1536, 8, 4, 8192, true)
    }

    /// Plan every tensor the config implies (HF order does not matter: the plan sorts).
    pub(crate) fn plan_of(cfg: &ModelConfig, plan: &QuantPlan) -> Vec<(String, Vec<usize>, Assigned)> {
        let shapes = cfg.expected_shapes();
        let specs: Vec<TensorSpec<'_>> =
            shapes.iter().map(|(n, s)| TensorSpec { name: n, shape: s, source_type: GgmlType::BF16 }).collect();
        let out = plan.assign(cfg, &specs).unwrap();
        shapes.into_iter().zip(out).map(|((n, s), a)| (n, s, a)).collect()
    }

    fn type_of(p: &[(String, Vec<usize>, Assigned)], name: &str) -> GgmlType {
        p.iter().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("no {name}")).2.ggml_type
    }

    fn total_bytes(p: &[(String, Vec<usize>, Assigned)]) -> u64 {
        p.iter()
            .map(|(_, s, a)| {
                let ne: Vec<u64> = s.iter().rev().map(|&d| d as u64).collect();
                a.ggml_type.tensor_bytes(&ne).unwrap()
            })
            .sum()
    }

    fn gib(bytes: u64) -> f64 {
        bytes as f64 / (1u64 << 30) as f64
    }

    /// One layer's expected types in `check_layers`' order: `base` for q, k, gate and up, and
    /// the three tensors the mixes raise.
    fn layer(base: GgmlType, attn_v: GgmlType, attn_output: GgmlType, ffn_down: GgmlType) -> [GgmlType; 7] {
        [base, base, attn_v, attn_output, base, base, ffn_down]
    }

    /// Expected per-layer types: (attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up,
    /// ffn_down) for layer i.
    fn check_layers(p: &[(String, Vec<usize>, Assigned)], n: usize, f: impl Fn(usize) -> [GgmlType; 7], what: &str) {
        for i in 0..n {
            let names = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];
            let want = f(i);
            for (k, name) in names.iter().enumerate() {
                let full = format!("blk.{i}.{name}.weight");
                assert_eq!(type_of(p, &full), want[k], "{what}: {full}");
            }
            assert_eq!(type_of(p, &format!("blk.{i}.attn_norm.weight")), GgmlType::F32);
            assert_eq!(type_of(p, &format!("blk.{i}.ffn_norm.weight")), GgmlType::F32);
        }
        assert_eq!(type_of(p, "output_norm.weight"), GgmlType::F32);
        assert!(p.iter().all(|(_, _, a)| a.note.is_none()), "{what}: unexpected fall-back");
    }

    use GgmlType::{Q3_K, Q4_K, Q5_K, Q6_K, Q8_0};

    #[test]
    fn names_ids_and_aliases() {
        assert_eq!(FileType::parse("q4_k_m"), Some(ft("Q4_K_M")));
        assert_eq!(FileType::parse("Q4_K"), Some(ft("Q4_K_M")));
        assert_eq!(FileType::parse("Q3_K"), Some(ft("Q3_K_M")));
        assert_eq!(FileType::parse("Q5_K"), Some(ft("Q5_K_M")));
        assert_eq!(FileType::parse("Q4_K_X"), None);
        assert_eq!(FileType::parse("F16"), None);
        // llama.h's `llama_ftype` ids and llama_ftype_get_default_type's base types.
        let want = [
            ("Q4_0", 2, GgmlType::Q4_0),
            ("Q4_1", 3, GgmlType::Q4_1),
            ("Q8_0", 7, Q8_0),
            ("Q5_0", 8, GgmlType::Q5_0),
            ("Q5_1", 9, GgmlType::Q5_1),
            ("Q2_K", 10, GgmlType::Q2_K),
            ("Q3_K_S", 11, Q3_K),
            ("Q3_K_M", 12, Q3_K),
            ("Q3_K_L", 13, Q3_K),
            ("Q4_K_S", 14, Q4_K),
            ("Q4_K_M", 15, Q4_K),
            ("Q5_K_S", 16, Q5_K),
            ("Q5_K_M", 17, Q5_K),
            ("Q6_K", 18, Q6_K),
            ("IQ4_NL", 25, GgmlType::IQ4_NL),
        ];
        for (name, id, base) in want {
            let f = ft(name);
            assert_eq!((f.name(), f.id(), f.default_type()), (name, id, base));
        }
        // Listed in id order, aliases after their mix (the tests' made-up type comes last).
        assert!(FileType::valid_names().starts_with(
            "Q4_0, Q4_1, Q8_0, Q5_0, Q5_1, Q2_K, Q3_K_S, Q3_K_M, Q3_K, Q3_K_L, Q4_K_S, Q4_K_M, Q4_K, \
             Q5_K_S, Q5_K_M, Q5_K, Q6_K, IQ4_NL"
        ));
        assert!(FileType::help_list().starts_with("Q4_0, Q4_1, Q8_0, Q5_0, Q5_1, Q2_K, Q3_K_S, Q3_K_M (Q3_K), Q3_K_L"));
        assert_eq!(uniform_file_type(GgmlType::F32).unwrap(), 0);
        assert_eq!(uniform_file_type(GgmlType::F16).unwrap(), 1);
        assert!(uniform_file_type(Q4_K).is_err());
        assert!(parse_tensor_type("q8_0").is_ok());
        assert!(parse_tensor_type("Q4_K_M").unwrap_err().to_string().contains("IQ4_NL"));
        let (re, ty) = parse_tensor_override("blk\\.[0-3]\\.attn_v=q6_k").unwrap();
        assert!(re.is_match("blk.2.attn_v.weight") && !re.is_match("blk.12.attn_v.weight"));
        assert_eq!(ty, Q6_K);
        assert!(parse_tensor_override("attn_v").is_err());
        assert!(parse_tensor_override("attn_(v=Q8_0").unwrap_err().to_string().contains("regular expression"));
        assert!(parse_tensor_override("attn_v=Q9_0").is_err());
    }

    #[test]
    fn use_more_bits_layers() {
        // LLaMA-7B: the first and last 4 layers and every third one from layer 6.
        let v: Vec<i64> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(v, [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
        // Fixtures: 32/8 = 0 for n < 8, so only the last eighth and every third layer.
        assert_eq!((0..4).filter(|&i| use_more_bits(i, 4)).collect::<Vec<_>>(), [2, 3]);
        assert_eq!((0..6).filter(|&i| use_more_bits(i, 6)).collect::<Vec<_>>(), [2, 5]);
    }

    /// LLaMA-7B Q4_K_M: attn_v and ffn_down in Q6_K on the 16 use_more_bits layers, output in
    /// Q6_K, everything else Q4_K. The total is llama-quantize's published size for this mix
    /// ("3.80G @ LLaMA-v1-7B", GiB).
    #[test]
    fn llama_7b_q4_k_m() {
        let cfg = llama_7b();
        let p = plan_of(&cfg, &QuantPlan::new(ft("Q4_K_M")));
        let more = |i: usize| use_more_bits(i as i64, 32);
        let hi = |i| if more(i) { Q6_K } else { Q4_K };
        check_layers(&p, 32, |i| layer(Q4_K, hi(i), Q4_K, hi(i)), "7B Q4_K_M");
        assert_eq!(type_of(&p, "token_embd.weight"), Q4_K);
        assert_eq!(type_of(&p, "output.weight"), Q6_K);
        let total = total_bytes(&p);
        assert_eq!(total, 4_080_263_168);
        assert_eq!(format!("{:.2}", gib(total)), "3.80");
    }

    /// The other mixes on LLaMA-7B: each layer's seven types, the output (Q6_K unless the file
    /// is Q8_0), the untied embedding (the base type), and the total size where llama-quantize's
    /// help lists one for LLaMA-v1-7B (Q3_K_S 2.75G ... Q6_K 5.15G, in GiB), except Q8_0:
    /// llama-quantize still lists "6.70G", a figure from an older build; 6.74e9 weights at 8.5
    /// bits are 6.67 GiB.
    #[test]
    fn llama_7b_other_mixes() {
        use GgmlType::{IQ4_NL, Q2_K, Q4_0};
        let cfg = llama_7b();
        type Layer = fn(usize) -> [GgmlType; 7];
        let cases: [(&str, Layer, Option<&str>); 11] = [
            // attn_v Q5_K for the first two, then Q4_K; ffn_down Q5_K for the first 32/16 = 2
            // layers, then Q4_K; attn_output Q4_K; the rest Q3_K.
            (
                "Q3_K_M",
                |i| {
                    let hi = if i < 2 { Q5_K } else { Q4_K };
                    [Q3_K, Q3_K, hi, Q4_K, Q3_K, Q3_K, hi]
                },
                Some("3.07"),
            ),
            // attn_v, attn_output, ffn_down Q5_K.
            ("Q3_K_L", |_| [Q3_K, Q3_K, Q5_K, Q5_K, Q3_K, Q3_K, Q5_K], Some("3.35")),
            ("Q3_K_S", |_| [Q3_K; 7], Some("2.75")),
            // attn_v on the first 4 layers and ffn_down on the first 32/8 = 4 in Q5_K.
            (
                "Q4_K_S",
                |i| {
                    let hi = if i < 4 { Q5_K } else { Q4_K };
                    [Q4_K, Q4_K, hi, Q4_K, Q4_K, Q4_K, hi]
                },
                Some("3.59"),
            ),
            // Like Q4_K_M one step up.
            (
                "Q5_K_M",
                |i| {
                    let hi = if use_more_bits(i as i64, 32) { Q6_K } else { Q5_K };
                    [Q5_K, Q5_K, hi, Q5_K, Q5_K, Q5_K, hi]
                },
                Some("4.45"),
            ),
            ("Q5_K_S", |_| [Q5_K; 7], Some("4.33")),
            ("Q6_K", |_| [Q6_K; 7], Some("5.15")),
            ("Q8_0", |_| [Q8_0; 7], Some("6.67")),
            // No GQA: attn_v, attn_output and ffn_down Q3_K.
            ("Q2_K", |_| [Q2_K, Q2_K, Q3_K, Q3_K, Q2_K, Q2_K, Q3_K], None),
            ("Q4_0", |_| [Q4_0; 7], None),
            // ffn_down raised on the first eighth; (no GQA here) attn_v left alone.
            (
                "IQ4_NL",
                |i| {
                    let d = if i < 4 { Q5_K } else { IQ4_NL };
                    [IQ4_NL, IQ4_NL, IQ4_NL, IQ4_NL, IQ4_NL, IQ4_NL, d]
                },
                None,
            ),
        ];
        for (mix, layer, size) in cases {
            let p = plan_of(&cfg, &QuantPlan::new(ft(mix)));
            check_layers(&p, 32, layer, mix);
            let output = if mix == "Q8_0" { Q8_0 } else { Q6_K };
            assert_eq!(type_of(&p, "output.weight"), output, "{mix}");
            assert_eq!(type_of(&p, "token_embd.weight"), ft(mix).default_type(), "{mix}");
            if let Some(size) = size {
                assert_eq!(format!("{:.2}", gib(total_bytes(&p))), size, "{mix}");
            }
        }
    }

    /// tests/fixtures/tiny-llama (4 layers, untied): use_more_bits(i, 4) holds for layers 2
    /// and 3; the untied embedding keeps the default type.
    #[test]
    fn tiny_fixture_plans() {
        let cfg = tiny();
        let p = plan_of(&cfg, &QuantPlan::new(ft("Q4_K_M")));
        let hi = |i| if i >= 2 { Q6_K } else { Q4_K };
        check_layers(&p, 4, |i| layer(Q4_K, hi(i), Q4_K, hi(i)), "tiny Q4_K_M");
        assert_eq!((type_of(&p, "token_embd.weight"), type_of(&p, "output.weight")), (Q4_K, Q6_K));
        let p = plan_of(&cfg, &QuantPlan::new(ft("Q3_K_M")));
        // ffn_down: 4/16 = 0 layers get Q5_K, so all Q4_K.
        let v = |i| if i < 2 { Q5_K } else { Q4_K };
        check_layers(&p, 4, |i| layer(Q3_K, v(i), Q4_K, Q4_K), "tiny Q3_K_M");
        assert_eq!((type_of(&p, "token_embd.weight"), type_of(&p, "output.weight")), (Q3_K, Q6_K));
    }

    /// The small fixture (6 layers, tied): token_embd doubles as the output, so it follows
    /// the output rule (Q6_K); use_more_bits(i, 6) holds for layers 2 and 5.
    #[test]
    fn small_fixture_plans() {
        let cfg = small();
        let p = plan_of(&cfg, &QuantPlan::new(ft("Q4_K_M")));
        assert!(!p.iter().any(|(n, _, _)| n == "output.weight"));
        let hi = |i| if i == 2 || i == 5 { Q6_K } else { Q4_K };
        check_layers(&p, 6, |i| layer(Q4_K, hi(i), Q4_K, hi(i)), "small Q4_K_M");
        assert_eq!(type_of(&p, "token_embd.weight"), Q6_K);
        let p = plan_of(&cfg, &QuantPlan::new(ft("Q3_K_M")));
        let v = |i| if i < 2 { Q5_K } else { Q4_K };
        check_layers(&p, 6, |i| layer(Q3_K, v(i), Q4_K, Q4_K), "small Q3_K_M");
        assert_eq!(type_of(&p, "token_embd.weight"), Q6_K);
        // Q8_0 file, tied: the embedding stays Q8_0.
        let p = plan_of(&cfg, &QuantPlan::new(ft("Q8_0")));
        assert_eq!(type_of(&p, "token_embd.weight"), Q8_0);
    }

    /// --pure: every matrix in the default type, embeddings and output included; norms F32.
    #[test]
    fn pure_plan() {
        for cfg in [tiny(), small(), llama_7b()] {
            let mut plan = QuantPlan::new(ft("Q4_K_M"));
            plan.pure = true;
            for (n, s, a) in plan_of(&cfg, &plan) {
                assert_eq!(a.ggml_type, if s.len() == 2 { Q4_K } else { GgmlType::F32 }, "{n}");
            }
        }
    }

    /// --output-type, --embedding-type, --leave-output and --tensor-type.
    #[test]
    fn options() {
        let cfg = tiny();
        let mut plan = QuantPlan::new(ft("Q4_K_M"));
        plan.output_type = Some(GgmlType::F16);
        plan.embedding_type = Some(Q8_0);
        let p = plan_of(&cfg, &plan);
        assert_eq!((type_of(&p, "token_embd.weight"), type_of(&p, "output.weight")), (Q8_0, GgmlType::F16));

        // Tied: --output-type reaches token_embd through the output rule.
        let mut plan = QuantPlan::new(ft("Q4_K_M"));
        plan.output_type = Some(Q8_0);
        assert_eq!(type_of(&plan_of(&small(), &plan), "token_embd.weight"), Q8_0);

        let mut plan = QuantPlan::new(ft("Q4_K_M"));
        plan.leave_output = true;
        assert_eq!(type_of(&plan_of(&cfg, &plan), "output.weight"), GgmlType::BF16);

        // Overrides: first match wins; a manual attn_v does not advance the attn_v counter,
        // so with layer 0 overridden the remaining three are counted 0, 1, 2 (of 4), and
        // use_more_bits(i, 4) picks counter 2, which is layer 3.
        let mut plan = QuantPlan::new(ft("Q4_K_M"));
        plan.overrides = vec![
            parse_tensor_override("blk\\.0\\.attn_v=Q8_0").unwrap(),
            parse_tensor_override("attn_v=Q5_0").unwrap(),
        ];
        let p = plan_of(&cfg, &plan);
        assert_eq!(type_of(&p, "blk.0.attn_v.weight"), Q8_0);
        assert_eq!(type_of(&p, "blk.1.attn_v.weight"), GgmlType::Q5_0);
        let mut plan = QuantPlan::new(ft("Q4_K_M"));
        plan.overrides = vec![parse_tensor_override("blk\\.0\\.attn_v=Q8_0").unwrap()];
        let p = plan_of(&cfg, &plan);
        let v: Vec<GgmlType> = (0..4).map(|i| type_of(&p, &format!("blk.{i}.attn_v.weight"))).collect();
        assert_eq!(v, [Q8_0, Q4_K, Q4_K, Q6_K]);
        // Overrides apply in --pure too.
        plan.pure = true;
        assert_eq!(type_of(&plan_of(&cfg, &plan), "blk.0.attn_v.weight"), Q8_0);
    }

    /// Rows that K-quant blocks do not divide: llama.cpp's fall-backs, with a note each.
    /// Qwen2-0.5B-shaped: 896 wide (896 % 256 = 128), FFN 4864 (a multiple of 256), tied.
    #[test]
    fn fallbacks_for_odd_rows() {
        let cfg = config(Arch::Qwen2, 24, 896, 4864, 14, 2, 151936, true);
        let p = plan_of(&cfg, &QuantPlan::new(ft("Q4_K_M")));
        // Tied embedding: its row (896) does not fit Q4_K's blocks, so the output rule picks
        // Q8_0 directly (no fall-back note).
        assert_eq!(type_of(&p, "token_embd.weight"), Q8_0);
        let more = |i: usize| use_more_bits(i as i64, 24);
        for i in 0..24 {
            let t = |n: &str| type_of(&p, &format!("blk.{i}.{n}.weight"));
            assert_eq!(t("attn_q"), GgmlType::Q5_0, "Q4_K → Q5_0");
            assert_eq!(t("attn_v"), if more(i) { Q8_0 } else { GgmlType::Q5_0 }, "Q6_K → Q8_0");
            assert_eq!(t("attn_output"), GgmlType::Q5_0);
            assert_eq!(t("ffn_up"), GgmlType::Q5_0);
            assert_eq!(t("ffn_down"), if more(i) { Q6_K } else { Q4_K }, "4864 fits");
            assert_eq!(type_of(&p, &format!("blk.{i}.attn_q.bias")), GgmlType::F32);
        }
        let notes = p.iter().filter(|(_, _, a)| a.note.is_some()).count();
        assert_eq!(notes, 24 * 6);
        let note = p.iter().find_map(|(_, _, a)| a.note.clone()).unwrap();
        assert!(note.contains("not a multiple of 256") && note.contains("falling back"), "{note}");

        for (ftype, want) in [
            (ft("Q3_K_S"), GgmlType::Q4_0),
            (ft("Q2_K"), GgmlType::Q4_0),
            (ft("Q5_K_S"), GgmlType::Q5_1),
            (ft("Q6_K"), Q8_0),
        ] {
            let p = plan_of(&cfg, &QuantPlan::new(ftype));
            assert_eq!(type_of(&p, "blk.3.ffn_gate.weight"), want, "{ftype:?}");
        }
        // A row not even divisible by 32 falls back to F16 — but not under --pure, which
        // promises one type for every matrix.
        let mut plan = QuantPlan::new(ft("Q4_0"));
        let shape = [64usize, 100];
        let specs = [TensorSpec { name: "blk.0.ffn_up.weight", shape: &shape, source_type: GgmlType::F32 }];
        let a = plan.assign(&cfg, &specs).unwrap();
        assert_eq!(a[0].ggml_type, GgmlType::F16);
        plan.pure = true;
        let e = plan.assign(&cfg, &specs).unwrap_err().to_string();
        assert!(e.contains("--pure") && e.contains("blk.0.ffn_up.weight"), "{e}");
    }

    /// 70B-shaped llama (80 layers, GQA 8): attn_v is raised to Q5_K in Q4_K_M where it
    /// would be Q4_K, and Q2_K's attn_v (GQA ≥ 4) is Q4_K → Q5_K.
    #[test]
    fn llama_70b_attn_v() {
        let cfg = config(Arch::Llama, 80, 8192, 28672, 64, 8, 32000, false);
        let p = plan_of(&cfg, &QuantPlan::new(ft("Q4_K_M")));
        for i in 0..80 {
            let want = if use_more_bits(i as i64, 80) { Q6_K } else { Q5_K };
            assert_eq!(type_of(&p, &format!("blk.{i}.attn_v.weight")), want);
        }
        let p = plan_of(&cfg, &QuantPlan::new(ft("Q2_K")));
        assert_eq!(type_of(&p, "blk.7.attn_v.weight"), Q5_K);
    }

    #[test]
    fn uniform_plan_is_converts() {
        let cfg = tiny();
        let shapes = cfg.expected_shapes();
        let specs: Vec<TensorSpec<'_>> =
            shapes.iter().map(|(n, s)| TensorSpec { name: n, shape: s, source_type: GgmlType::BF16 }).collect();
        let out = Uniform { outtype: Q8_0 }.assign(&cfg, &specs).unwrap();
        for ((_, s), a) in shapes.iter().zip(&out) {
            assert_eq!(a.ggml_type, if s.len() == 2 { Q8_0 } else { GgmlType::F32 });
        }
        assert_eq!(Uniform { outtype: GgmlType::BF16 }.file_type(), 32);
    }

    /// With an importance matrix llama.cpp keeps IQ4_NL on the first eighth of ffn_down and
    /// raises Q4_0/Q5_0 there to Q4_1/Q5_1; nothing else changes.
    #[test]
    fn imatrix_changes_the_first_ffn_down() {
        let cfg = llama_7b();
        let with = |f: FileType| {
            let mut q = QuantPlan::new(f);
            q.has_imatrix = true;
            plan_of(&cfg, &q)
        };
        use GgmlType::{IQ4_NL, Q4_0, Q4_1, Q5_0, Q5_1};
        let down = |i: usize, early, late| if i < 4 { early } else { late };
        check_layers(&with(ft("IQ4_NL")), 32, |_| [IQ4_NL; 7], "7B IQ4_NL + imatrix");
        check_layers(
            &with(ft("Q4_0")),
            32,
            |i| {
                let mut t = [Q4_0; 7];
                t[6] = down(i, Q4_1, Q4_0);
                t
            },
            "7B Q4_0 + imatrix",
        );
        check_layers(
            &with(ft("Q5_0")),
            32,
            |i| {
                let mut t = [Q5_0; 7];
                t[6] = down(i, Q5_1, Q5_0);
                t
            },
            "7B Q5_0 + imatrix",
        );
        for f in [ft("Q4_K_M"), ft("Q3_K_M"), ft("Q2_K"), ft("Q6_K")] {
            let plain: Vec<GgmlType> = plan_of(&cfg, &QuantPlan::new(f)).iter().map(|t| t.2.ggml_type).collect();
            let weighted: Vec<GgmlType> = with(f).iter().map(|t| t.2.ggml_type).collect();
            assert_eq!(plain, weighted, "{f:?}");
        }
    }
}
