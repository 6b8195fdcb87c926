//! The architecture hyper-parameters qforge needs, parsed from a Hugging Face `config.json`
//! or from GGUF metadata, into one struct.

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::formats::gguf::{GgufHeader, Value};
use crate::model::arch::Activation;
pub use crate::model::arch::Arch;
pub use crate::model::attn_variants::AttnVariants;
pub use crate::model::rope::RopeScaling;
use crate::model::rope::{GgufRopeKeys, ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT, ROPE_FREQS};

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Dimensions of each head that RoPE rotates (the first ones; Phi-4-mini's
    /// `partial_rotary_factor` makes it less than head_dim).
    pub rope_dim: usize,
    /// The context the model was trained on before its RoPE was stretched, where config.json
    /// names it at the top level (Phi-3: `original_max_position_embeddings`, written to GGUF
    /// as `rope.scaling.original_context_length` even without scaling).
    pub original_context: Option<usize>,
    pub ffn_size: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub tie_embeddings: bool,
    pub vocab_size: usize,
    pub context_length: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// Attention beyond plain causal softmax(q·kᵀ/√d) (Gemma); the default for the others.
    pub attn: AttnVariants,
    /// The feed-forward blocks' experts (Mixtral, Qwen MoE); `None`: dense.
    pub moe: Option<MoeConfig>,
}

/// A mixture-of-experts feed-forward block (every layer).
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub n_experts: usize,
    /// Experts each token goes through (`num_experts_per_tok`).
    pub n_used: usize,
    /// Each expert's feed-forward width (Mixtral: `intermediate_size`; Qwen:
    /// `moe_intermediate_size`).
    pub expert_ffn: usize,
    /// The shared expert's width (Qwen2-MoE), 0 without one.
    pub shared_ffn: usize,
    /// The chosen experts' weights are renormalized to sum to 1.
    pub norm_topk: bool,
}

impl MoeConfig {
    /// From config.json (`num_local_experts` or `num_experts`, …), for an architecture with
    /// experts; dense layers among them (`mlp_only_layers`, `decoder_sparse_step`) are refused,
    /// as llama.cpp's qwen2moe/qwen3moe cannot hold them.
    fn from_hf(json: &Json, arch: Arch, intermediate: usize) -> Result<Option<MoeConfig>> {
        let Some(names) = &arch.spec().experts else { return Ok(None) };
        let bad = |m: String| Error::InvalidModel(format!("config.json: {m}"));
        let num = |k: &str| json.get(k).and_then(Json::as_u64).map(|v| v as usize);
        let n_experts =
            num("num_local_experts").or_else(|| num("num_experts")).ok_or_else(|| bad("no num_experts".into()))?;
        let n_used = num("num_experts_per_tok").ok_or_else(|| bad("no num_experts_per_tok".into()))?;
        if json.get("mlp_only_layers").and_then(Json::as_array).is_some_and(|l| !l.is_empty())
            || num("decoder_sparse_step").is_some_and(|s| s != 1)
        {
            return Err(Error::Unsupported(
                "dense layers among the MoE layers (mlp_only_layers, decoder_sparse_step), which llama.cpp's MoE \
                 architectures cannot hold"
                    .into(),
            ));
        }
        let expert_ffn = num("moe_intermediate_size").unwrap_or(intermediate);
        let shared_ffn = if names.shared_expert {
            num("shared_expert_intermediate_size").ok_or_else(|| bad("no shared_expert_intermediate_size".into()))?
        } else {
            0
        };
        let norm_topk = json.get("norm_topk_prob").and_then(Json::as_bool).unwrap_or(names.norm_topk);
        Ok(Some(MoeConfig { n_experts, n_used, expert_ffn, shared_ffn, norm_topk }))
    }

    /// From GGUF metadata (`{arch}.expert_count`, …); the renormalization is the
    /// architecture's, as llama.cpp fixes it.
    fn from_gguf(h: &GgufHeader, arch: Arch, ffn: usize) -> Option<MoeConfig> {
        let names = arch.spec().experts.as_ref()?;
        let a = arch.gguf_name();
        let num = |k: &str| h.get(&format!("{a}.{k}")).and_then(Value::as_u64).map(|v| v as usize);
        let n_experts = num("expert_count").filter(|&e| e > 0)?;
        let n_used = num("expert_used_count").unwrap_or(0);
        Some(MoeConfig {
            n_experts,
            n_used,
            expert_ffn: num("expert_feed_forward_length").unwrap_or(ffn),
            shared_ffn: if names.shared_expert { num("expert_shared_feed_forward_length").unwrap_or(0) } else { 0 },
            norm_topk: names.norm_topk,
        })
    }
}

/// The text model's config.json as qforge reads it: a multimodal checkpoint's `text_config`
/// merged over the top level (as llama.cpp's converter merges it), named as the text-only
/// class of its architecture (so Hugging Face files written from it describe what they hold),
/// with the architecture's defaults for absent keys. Other configs come back unchanged but for
/// those defaults.
pub fn text_model_json(json: &Json) -> Json {
    let mut out = json.clone();
    let class = json.get("architectures").and_then(|a| a.get(0)).and_then(Json::as_str);
    let Some(spec) = class.and_then(Arch::from_hf_class).map(Arch::spec) else { return out };
    if let (Some(obj), Some(text)) = (out.as_object_mut(), json.get("text_config").and_then(Json::as_object)) {
        for (k, v) in text {
            obj.insert(k.clone(), v.clone());
        }
        for k in ["text_config", "vision_config", "audio_config"] {
            obj.remove(k);
        }
        obj.insert("architectures".into(), serde_json::json!([spec.hf_classes[0]]));
        obj.insert("model_type".into(), spec.hf_model_type.into());
    }
    if let Some(obj) = out.as_object_mut() {
        for &(k, v) in spec.hf_defaults {
            if !obj.contains_key(k) {
                let value = if v.fract() == 0.0 && v.abs() < 1e15 { Json::from(v as i64) } else { Json::from(v) };
                obj.insert(k.into(), value);
            }
        }
    }
    out
}

/// `found`, or the error for an architecture qforge does not know (`name` as the file gave it,
/// `what` the kind of name, and the names qforge does support).
fn known_arch(found: Option<Arch>, what: &str, name: &str, supported: fn() -> String) -> Result<Arch> {
    found.ok_or_else(|| Error::Unsupported(format!("unsupported {what} {name:?} (qforge supports {})", supported())))
}

impl ModelConfig {
    /// Parse a Hugging Face `config.json`.
    pub fn from_hf_json(json: &Json) -> Result<ModelConfig> {
        let class = json
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Json::as_str)
            .or_else(|| json.get("model_type").and_then(Json::as_str))
            .ok_or_else(|| Error::InvalidModel("config.json names no architecture".into()))?;
        let arch = known_arch(Arch::from_hf_class(class), "architecture", class, Arch::supported_hf_classes)?;

        let usize_field = |key: &str| -> Result<usize> {
            json.get(key)
                .and_then(Json::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| Error::InvalidModel(format!("config.json: missing or invalid {key:?}")))
        };
        let opt_usize = |key: &str| json.get(key).and_then(Json::as_u64).map(|v| v as usize);
        let opt_id = |key: &str| -> Option<u32> {
            // eos_token_id may be a list; the first entry is the primary one.
            let v = json.get(key)?;
            v.as_u64().or_else(|| v.get(0).and_then(Json::as_u64)).and_then(|x| u32::try_from(x).ok())
        };

        let hidden_size = usize_field("hidden_size")?;
        let n_heads = usize_field("num_attention_heads")?;
        let n_kv_heads = opt_usize("num_key_value_heads").unwrap_or(n_heads);
        let head_dim = match json.get("head_dim") {
            Some(Json::Null) | None => hidden_size.checked_div(n_heads).unwrap_or(0),
            Some(v) => v
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| Error::InvalidModel("config.json: invalid \"head_dim\"".into()))?,
        };

        // transformers v5 moved rope settings into `rope_parameters`; older files have
        // `rope_theta` and `rope_scaling` at the top level.
        // As transformers 5: a `rope_scaling` object replaces `rope_parameters` (theta then comes
        // from it or from the top level).
        let rope = json.get("rope_scaling").filter(|s| s.is_object()).or_else(|| json.get("rope_parameters"));
        // Gemma 3 (transformers 5): one set of RoPE parameters per layer type; the global
        // layers' set is the model's RoPE, the sliding layers' is read with the attention.
        let (rope, rope_json) = match rope.and_then(|r| r.get("full_attention")) {
            Some(full) => (Some(full), serde_json::json!({ "rope_parameters": full })),
            None => (rope, json.clone()),
        };
        let rope_theta = rope
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| json.get("rope_theta"))
            .and_then(Json::as_f64)
            .unwrap_or(10000.0);
        let rope_scaling = RopeScaling::from_hf(&rope_json)?;
        if matches!(rope_scaling, RopeScaling::LongRope { .. }) && arch != Arch::Phi3 {
            return Err(Error::Unsupported(format!(
                "RoPE scaling \"longrope\" in a {class} (llama.cpp applies LongRoPE factors to Phi-3 only, so a GGUF \
                 of it would run without them)"
            )));
        }
        let n_layers = usize_field("num_hidden_layers")?;
        let attn = AttnVariants::from_hf(json, arch, n_layers)?;
        // Qwen's sliding window (only from layer `max_window_layers` on) is not modeled.
        if json.get("use_sliding_window").and_then(Json::as_bool) == Some(true) {
            return Err(Error::Unsupported(format!(
                "use_sliding_window in a {class} (qforge runs its attention without the window, as llama.cpp does)"
            )));
        }
        let act = json.get("hidden_activation").or_else(|| json.get("hidden_act")).and_then(Json::as_str);
        let want = match arch.spec().activation {
            Activation::Silu => ["silu", "swish"],
            Activation::GeluTanh => ["gelu_pytorch_tanh", "gelu_new"],
        };
        if let Some(a) = act.filter(|a| !want.contains(a)) {
            return Err(Error::Unsupported(format!(
                "activation {a:?} in a {class} (qforge runs {} with {})",
                arch.hf_class(),
                want[0]
            )));
        }

        let partial = json
            .get("partial_rotary_factor")
            .or_else(|| rope.and_then(|r| r.get("partial_rotary_factor")))
            .and_then(Json::as_f64)
            .unwrap_or(1.0);
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(Error::InvalidModel(format!("config.json: partial_rotary_factor {partial}")));
        }
        let original_context = match arch.spec().fused_linears {
            true => opt_usize("original_max_position_embeddings"),
            false => None,
        };
        let ffn_size = usize_field("intermediate_size")?;
        let moe = MoeConfig::from_hf(json, arch, ffn_size)?;
        let cfg = ModelConfig {
            arch,
            hidden_size,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dim: (head_dim as f64 * partial) as usize,
            original_context,
            ffn_size,
            rms_eps: json.get("rms_norm_eps").and_then(Json::as_f64).unwrap_or(1e-6) as f32,
            rope_theta: rope_theta as f32,
            rope_scaling,
            tie_embeddings: json.get("tie_word_embeddings").and_then(Json::as_bool).unwrap_or(false),
            vocab_size: usize_field("vocab_size")?,
            context_length: opt_usize("max_position_embeddings").unwrap_or(2048),
            bos_token_id: opt_id("bos_token_id"),
            eos_token_id: opt_id("eos_token_id"),
            pad_token_id: opt_id("pad_token_id"),
            attn,
            moe,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rebuild the config from GGUF metadata (the inverse of what `convert` writes).
    pub fn from_gguf(h: &GgufHeader) -> Result<ModelConfig> {
        let arch_name = h
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::InvalidModel("GGUF has no general.architecture".into()))?;
        let arch = known_arch(Arch::from_gguf(arch_name), "GGUF architecture", arch_name, Arch::supported_gguf_names)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str| -> Result<usize> {
            h.get(&key(k))
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| Error::InvalidModel(format!("GGUF metadata lacks {}", key(k))))
        };
        let hidden_size = req("embedding_length")?;
        let n_heads = req("attention.head_count")?;
        let n_kv_heads =
            h.get(&key("attention.head_count_kv")).and_then(Value::as_u64).map(|v| v as usize).unwrap_or(n_heads);
        let head_dim = h
            .get(&key("attention.key_length"))
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .unwrap_or(hidden_size.checked_div(n_heads).unwrap_or(0));
        let tok_count = h.get("tokenizer.ggml.tokens").and_then(Value::as_array).map(|a| a.len());
        let vocab_size = h
            .get(&key("vocab_size"))
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .or(tok_count)
            .or_else(|| h.tensor("token_embd.weight").map(|t| t.ne.get(1).copied().unwrap_or(0) as usize))
            .ok_or_else(|| Error::InvalidModel("cannot tell the vocabulary size".into()))?;
        let id = |k: &str| h.get(k).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok());
        let rope_theta = h.get(&key("rope.freq_base")).and_then(Value::as_f64).unwrap_or(10000.0) as f32;
        // rope_freqs.weight's values are read with the tensors (`ModelFile::open` then calls
        // `with_rope_freqs`); until then the scaling is "some factors".
        let rope_scaling =
            RopeScaling::from_gguf(&GgufRopeKeys::read(h, arch_name), None, rope_theta, head_dim).map(|s| {
                if h.tensor(ROPE_FREQS).is_some() && s == RopeScaling::None {
                    RopeScaling::FreqFactors
                } else {
                    s
                }
            })?;
        let n_layers = req("block_count")?;
        let attn = AttnVariants::from_gguf(h, arch, n_layers, hidden_size, n_heads, head_dim)?;
        let rope_keys = GgufRopeKeys::read(h, arch_name);
        let ffn_size = req("feed_forward_length")?;
        // Mixtral is llama.cpp's `llama` with experts.
        let arch = match arch {
            Arch::Llama if h.get(&key("expert_count")).and_then(Value::as_u64).is_some_and(|e| e > 0) => Arch::Mixtral,
            a => a,
        };
        let moe = MoeConfig::from_gguf(h, arch, ffn_size);
        // Every field, as `from_hf_json` sets them from config.json's names (deliberately the
        // same struct literal).
        let cfg = ModelConfig {
            arch,
            hidden_size,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dim: h.get(&key("rope.dimension_count")).and_then(Value::as_u64).map_or(head_dim, |v| v as usize),
            original_context: if arch.spec().fused_linears { rope_keys.original_context } else { None },
            ffn_size,
            rms_eps: h.get(&key("attention.layer_norm_rms_epsilon")).and_then(Value::as_f64).unwrap_or(1e-5) as f32,
            rope_theta,
            rope_scaling,
            tie_embeddings: h.tensor("output.weight").is_none(),
            vocab_size,
            context_length: h.get(&key("context_length")).and_then(Value::as_u64).map(|v| v as usize).unwrap_or(2048),
            bos_token_id: id("tokenizer.ggml.bos_token_id"),
            eos_token_id: id("tokenizer.ggml.eos_token_id"),
            pad_token_id: id("tokenizer.ggml.padding_token_id"),
            attn,
            moe,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The scaling a GGUF's `rope_freqs.weight` (its F32 values) describes, with the
    /// metadata's scaling keys (`h`).
    pub fn with_rope_freqs(mut self, h: &GgufHeader, values: &[f32]) -> Result<ModelConfig> {
        let arch = self.arch.gguf_name();
        if values.len() != self.rope_dim / 2 {
            return Err(Error::tensor(
                ROPE_FREQS,
                format!("{} values for {} rotary dimensions", values.len(), self.rope_dim),
            ));
        }
        if values.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::tensor(ROPE_FREQS, "holds a value that is not a positive number"));
        }
        self.rope_scaling =
            RopeScaling::from_gguf(&GgufRopeKeys::read(h, arch), Some(values), self.rope_theta, self.rope_dim)?;
        Ok(self)
    }

    /// Phi-3's original context: LongRoPE's, or config.json's top-level one without scaling
    /// (llama.cpp's converter writes it either way).
    pub fn longrope_original_context(&self) -> Option<usize> {
        match &self.rope_scaling {
            RopeScaling::LongRope { original_context, .. } => Some(*original_context),
            _ => self.original_context,
        }
    }

    /// Whether the model has a `rope_freqs.weight` tensor (per-frequency RoPE divisors).
    pub fn has_rope_freqs(&self) -> bool {
        matches!(self.rope_scaling, RopeScaling::Llama3 { .. } | RopeScaling::FreqFactors)
    }

    /// Reject configurations no model can have, before any shape arithmetic uses them.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidModel(format!("invalid model config: {m}")));
        const LIMIT: usize = 1 << 24;
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.n_layers),
            ("num_attention_heads", self.n_heads),
            ("num_key_value_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("intermediate_size", self.ffn_size),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 || v > LIMIT {
                return bad(format!("{name} = {v}"));
            }
        }
        if let Some(m) = &self.moe {
            if m.n_experts == 0 || m.n_experts > 1 << 16 || m.n_used == 0 || m.n_used > m.n_experts {
                return bad(format!("{} experts with {} used per token", m.n_experts, m.n_used));
            }
            if m.expert_ffn == 0 || m.expert_ffn > LIMIT || m.shared_ffn > LIMIT {
                return bad(format!("expert width {}", m.expert_ffn));
            }
            if (m.n_experts as u64) * (m.expert_ffn as u64) * (self.hidden_size as u64) > 1 << 40 {
                return bad(format!("{} experts of {}×{} weights", m.n_experts, m.expert_ffn, self.hidden_size));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!("{} attention heads are not a multiple of {} kv heads", self.n_heads, self.n_kv_heads));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} is odd (RoPE needs pairs)", self.head_dim));
        }
        if self.rope_dim == 0 || !self.rope_dim.is_multiple_of(2) || self.rope_dim > self.head_dim {
            return bad(format!("{} rotary dimensions in heads of {}", self.rope_dim, self.head_dim));
        }
        if let RopeScaling::LongRope { short, .. } = &self.rope_scaling {
            if short.len() != self.rope_dim / 2 {
                return bad(format!(
                    "{} LongRoPE factors for {} rotary dimensions (one per pair)",
                    short.len(),
                    self.rope_dim
                ));
            }
        }
        let positive = |x: f32| x.is_finite() && x > 0.0;
        if !positive(self.rms_eps) || !positive(self.rope_theta) {
            return bad("rms_norm_eps and rope_theta must be positive".into());
        }
        Ok(())
    }

    /// The feed-forward widths the layers' linears have (an MoE model's experts and shared
    /// expert; `intermediate_size` is not used by its layers then).
    pub fn ffn_widths(&self) -> Vec<usize> {
        match &self.moe {
            Some(m) => std::iter::once(m.expert_ffn).chain((m.shared_ffn > 0).then_some(m.shared_ffn)).collect(),
            None => vec![self.ffn_size],
        }
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Shapes (row-major, [out, in]) of every tensor the model must have, keyed by GGUF name.
    pub fn expected_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.expected_tensors().collect()
    }

    /// [`expected_shapes`](Self::expected_shapes) as a lazy iterator, in the same order: a
    /// hostile config can claim millions of layers, and checking a file against it must not
    /// build the whole list first.
    pub fn expected_tensors(&self) -> impl Iterator<Item = (String, Vec<usize>)> + '_ {
        let (h, v, f) = (self.hidden_size, self.vocab_size, self.ffn_size);
        let (q, kv) = (self.q_dim(), self.kv_dim());
        let bias = self.arch.has_qkv_bias();
        let layers = (0..self.n_layers).flat_map(move |i| {
            let b = move |n: &str| format!("blk.{i}.{n}");
            let mut l = Vec::with_capacity(12);
            // Fused weights (Phi-3): their rows are their parts' (`names::fused_linears`).
            let fused_rows = |f: &str| {
                crate::model::names::fused_linears(self)
                    .into_iter()
                    .find(|(name, _)| *name == f)
                    .map_or(0, |(_, parts)| parts.iter().map(|(_, r)| r).sum::<usize>())
            };
            let fused = self.arch.spec().fused_linears;
            l.push((b("attn_norm.weight"), vec![h]));
            if fused {
                l.push((b("attn_qkv.weight"), vec![fused_rows("attn_qkv.weight"), h]));
            } else {
                l.push((b("attn_q.weight"), vec![q, h]));
                l.push((b("attn_k.weight"), vec![kv, h]));
                l.push((b("attn_v.weight"), vec![kv, h]));
            }
            if bias {
                l.push((b("attn_q.bias"), vec![q]));
                l.push((b("attn_k.bias"), vec![kv]));
                l.push((b("attn_v.bias"), vec![kv]));
            }
            if self.arch.has_qk_norm() {
                l.push((b("attn_q_norm.weight"), vec![self.head_dim]));
                l.push((b("attn_k_norm.weight"), vec![self.head_dim]));
            }
            l.push((b("attn_output.weight"), vec![h, q]));
            if self.arch.spec().sandwich_norms {
                l.push((b("post_attention_norm.weight"), vec![h]));
                l.push((b("post_ffw_norm.weight"), vec![h]));
            }
            l.push((b("ffn_norm.weight"), vec![h]));
            if let Some(m) = &self.moe {
                let (e, fe, fs) = (m.n_experts, m.expert_ffn, m.shared_ffn);
                l.push((b("ffn_gate_inp.weight"), vec![e, h]));
                l.push((b("ffn_gate_exps.weight"), vec![e, fe, h]));
                l.push((b("ffn_up_exps.weight"), vec![e, fe, h]));
                l.push((b("ffn_down_exps.weight"), vec![e, h, fe]));
                if fs > 0 {
                    // [1, h] as llama.cpp's converter writes it ([h] once llama-quantize
                    // rewrites the file: `check_tensors` takes either).
                    l.push((b("ffn_gate_inp_shexp.weight"), vec![1, h]));
                    l.push((b("ffn_gate_shexp.weight"), vec![fs, h]));
                    l.push((b("ffn_up_shexp.weight"), vec![fs, h]));
                    l.push((b("ffn_down_shexp.weight"), vec![h, fs]));
                }
                return l;
            }
            if fused {
                l.push((b("ffn_up.weight"), vec![fused_rows("ffn_up.weight"), h]));
            } else {
                l.push((b("ffn_gate.weight"), vec![f, h]));
                l.push((b("ffn_up.weight"), vec![f, h]));
            }
            l.push((b("ffn_down.weight"), vec![h, f]));
            l
        });
        let output = (!self.tie_embeddings).then(|| ("output.weight".to_string(), vec![v, h]));
        // llama.cpp's converter writes the RoPE divisors first.
        let rope_freqs = self.has_rope_freqs().then(|| (ROPE_FREQS.to_string(), vec![self.rope_dim / 2]));
        let longrope = match &self.rope_scaling {
            RopeScaling::LongRope { short, .. } => vec![
                (ROPE_FACTORS_LONG.to_string(), vec![short.len()]),
                (ROPE_FACTORS_SHORT.to_string(), vec![short.len()]),
            ],
            _ => Vec::new(),
        };
        rope_freqs
            .into_iter()
            .chain(longrope)
            .chain(std::iter::once(("token_embd.weight".to_string(), vec![v, h])))
            .chain(layers)
            .chain(std::iter::once(("output_norm.weight".to_string(), vec![h])))
            .chain(output)
    }

    /// config.json for a Hugging Face directory holding this model.
    pub fn to_hf_json(&self, torch_dtype: &str) -> Result<Json> {
        let spec = self.arch.spec();
        let theta = shortest_f64(self.rope_theta);
        let mut rope_parameters = self.rope_scaling.hf_parameters(theta)?;
        if let Some(local) = self.attn.swa_rope_theta {
            rope_parameters = serde_json::json!({
                "full_attention": rope_parameters,
                "sliding_attention": {"rope_type": "default", "rope_theta": shortest_f64(local)},
            });
        }
        let activation = match spec.activation {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
        };
        // A `llama` GGUF with a sliding window is a Mistral: LlamaForCausalLM has no window.
        let arch = match self.arch {
            Arch::Llama if self.attn.sliding_window.is_some() => Arch::Mistral,
            a => a,
        };
        let mut config = serde_json::json!({
            "architectures": [arch.hf_class()],
            "model_type": arch.hf_model_type(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.ffn_size,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": activation,
            "rms_norm_eps": shortest_f64(self.rms_eps),
            "rope_theta": theta,
            "rope_parameters": rope_parameters,
            "max_position_embeddings": self.context_length,
            "tie_word_embeddings": self.tie_embeddings,
            "vocab_size": self.vocab_size,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "attention_bias": self.arch.has_qkv_bias(),
            "torch_dtype": torch_dtype,
            "dtype": torch_dtype,
            "use_cache": true,
        });
        if spec.activation != Activation::Silu {
            config["hidden_activation"] = activation.into();
        }
        if let Some(m) = &self.moe {
            let experts = if self.arch == Arch::Mixtral { "num_local_experts" } else { "num_experts" };
            config[experts] = m.n_experts.into();
            config["num_experts_per_tok"] = m.n_used.into();
            if self.arch != Arch::Mixtral {
                config["moe_intermediate_size"] = m.expert_ffn.into();
                config["norm_topk_prob"] = m.norm_topk.into();
                config["decoder_sparse_step"] = 1.into();
                config["mlp_only_layers"] = serde_json::json!([]);
            }
            if m.shared_ffn > 0 {
                config["shared_expert_intermediate_size"] = m.shared_ffn.into();
            }
        }
        if self.rope_dim != self.head_dim {
            config["partial_rotary_factor"] = shortest_f64(self.rope_dim as f32 / self.head_dim as f32).into();
        }
        // Phi-3 reads the original context at the top level (and assumes 4096 without it).
        if let Some(o) = self.longrope_original_context() {
            config["original_max_position_embeddings"] = o.into();
        }
        for (k, v) in self.attn.hf_keys(self.arch, self.head_dim).as_object().into_iter().flatten() {
            config[k] = v.clone();
        }
        Ok(config)
    }
}

/// The f64 whose decimal form is the f32's shortest one, so that 1e-5 stored as f32 comes back
/// as 1e-5 in JSON rather than 9.999999747378752e-6.
fn shortest_f64(x: f32) -> f64 {
    format!("{x}").parse().unwrap_or(x as f64)
}
