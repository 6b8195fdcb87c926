//! One table describes each architecture qforge runs, in the spirit of llama.cpp's llama-arch:
//! its Hugging Face class names, GGUF name, tensor-name differences and the features of its
//! decoder layer. The config parser, tensor naming, runtime, converters and tokenizer import read
//! the description; adding an architecture is one row here (plus its tests), and code paths
//! for features not yet in the table.

use crate::formats::tokenizer::VocabRules;

/// The decoder families qforge supports. All are pre-norm transformers with RoPE and a gated
/// feed-forward block; [`ArchSpec`] says how each differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
    Phi3,
    Mixtral,
    Qwen2Moe,
    Qwen3Moe,
}

/// The gated feed-forward block's activation: `down(act(gate·x) ⊙ up·x)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (SwiGLU), LLaMA and Qwen.
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`, GeGLU), Gemma.
    GeluTanh,
}

/// A mixture-of-experts feed-forward block: a router picks `num_experts_per_tok` of the
/// experts per token, softmax-weighted (llama.cpp's `build_moe_ffn`).
#[derive(Debug)]
pub struct ExpertNames {
    /// The layer's MoE block in Hugging Face names (`block_sparse_moe`, `mlp`).
    pub block: &'static str,
    /// An expert's gate, up and down projections in Hugging Face names.
    pub gate: &'static str,
    pub up: &'static str,
    pub down: &'static str,
    /// The chosen experts' weights are renormalized to sum to 1 (llama.cpp fixes this per
    /// architecture; transformers reads `norm_topk_prob` for the Qwen models).
    pub norm_topk: bool,
    /// A shared expert every token goes through, scaled by sigmoid(gate·x) (Qwen2-MoE).
    pub shared_expert: bool,
    /// Hugging Face → GGUF names of the block's other weights (router, shared expert), per
    /// layer.
    pub names: &'static [(&'static str, &'static str)],
}

/// What distinguishes one architecture from plain LLaMA.
#[derive(Debug)]
pub struct ArchSpec {
    pub arch: Arch,
    /// `architectures[0]` in config.json; the first is the one qforge writes.
    pub hf_classes: &'static [&'static str],
    pub hf_model_type: &'static str,
    /// `general.architecture` in GGUF (llama.cpp runs Mistral as `llama`).
    pub gguf_name: &'static str,
    /// GGUF stores q/k rows permuted to the interleaved RoPE layout (llama.cpp's `llama`);
    /// the others keep the Hugging Face (NeoX, rotate-half) order.
    pub gguf_permutes_qk: bool,
    /// q/k/v projections carry biases (Qwen2).
    pub qkv_bias: bool,
    /// Each head of q and k is RMS-normed with its own weights before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Hugging Face norms scale by `1 + w` (Gemma's RMSNorm); GGUF stores `1 + w`, as
    /// llama.cpp's converter writes it, so the runtime multiplies by the stored value.
    pub norm_plus_one: bool,
    /// Norms after the attention and feed-forward blocks as well as before (Gemma 2/3):
    /// `x + post_norm(block(pre_norm(x)))`.
    pub sandwich_norms: bool,
    pub activation: Activation,
    /// The embeddings are multiplied by √hidden_size before layer 0 (Gemma).
    pub embed_scale: bool,
    /// Every `swa_pattern`-th layer attends globally, the others through the sliding window
    /// (llama.cpp's default pattern when GGUF does not list the layers); 0: no sliding window.
    pub swa_pattern: usize,
    /// Sliding-window layers use their own RoPE base without scaling (Gemma 3's local layers).
    pub swa_own_rope: bool,
    /// Every layer attends through `sliding_window` when config.json sets one, as transformers
    /// runs Mistral (v0.1: 4096), Mixtral and Phi-3. llama.cpp ignores the window of its `llama`
    /// architecture (its converter does not write it; qforge writes the key, which llama.cpp
    /// leaves unread) and switches Phi-3's off.
    pub swa_every_layer: bool,
    /// q/k/v are one fused projection (`attn_qkv`, rows q|k|v) and gate/up one (`ffn_up`,
    /// rows gate|up) in both file formats (Phi-3). qforge computes with the parts (row ranges
    /// of the fused weight) and fuses what the methods produce before writing.
    pub fused_linears: bool,
    /// The feed-forward block is a mixture of experts (Mixtral, Qwen MoE).
    pub experts: Option<ExpertNames>,
    /// How the converter reads this class's Hugging Face vocabulary.
    pub vocab: VocabRules,
    /// Hugging Face → GGUF names of the layer's norms (the rest of the names are shared).
    pub norm_names: &'static [(&'static str, &'static str)],
    /// config.json values transformers assumes when a key is absent (multimodal checkpoints'
    /// `text_config` often leaves them out; llama.cpp's converter assumes the same).
    pub hf_defaults: &'static [(&'static str, f64)],
}

const LLAMA_NORMS: &[(&str, &str)] =
    &[("input_layernorm.weight", "attn_norm.weight"), ("post_attention_layernorm.weight", "ffn_norm.weight")];

/// Gemma 2/3: HF's `post_attention_layernorm` is the attention block's post-norm, and the
/// feed-forward block has its own pre- and post-norms.
const GEMMA_NORMS: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "post_attention_norm.weight"),
    ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
    ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
];

const LLAMA: ArchSpec = ArchSpec {
    arch: Arch::Llama,
    hf_classes: &["LlamaForCausalLM", "LLaMAForCausalLM"],
    hf_model_type: "llama",
    gguf_name: "llama",
    gguf_permutes_qk: true,
    qkv_bias: false,
    qk_norm: false,
    norm_plus_one: false,
    sandwich_norms: false,
    activation: Activation::Silu,
    embed_scale: false,
    swa_pattern: 0,
    swa_own_rope: false,
    swa_every_layer: true,
    fused_linears: false,
    experts: None,
    vocab: VocabRules { llama: true, spm_no_space_prefix: false },
    norm_names: LLAMA_NORMS,
    hf_defaults: &[],
};

/// Qwen's MoE blocks (`mlp.experts.N.gate_proj`, router `mlp.gate`), weights not renormalized
/// (Qwen2-MoE; llama.cpp's qwen3moe renormalizes).
const QWEN_EXPERTS: ExpertNames = ExpertNames {
    block: "mlp",
    gate: "gate_proj",
    up: "up_proj",
    down: "down_proj",
    norm_topk: false,
    shared_expert: false,
    names: &[("mlp.gate.weight", "ffn_gate_inp.weight")],
};

/// The architecture table. `from_gguf` takes the first row with a GGUF name, so Llama comes
/// before Mistral.
pub const ARCHS: &[ArchSpec] = &[
    LLAMA,
    ArchSpec { arch: Arch::Mistral, hf_classes: &["MistralForCausalLM"], hf_model_type: "mistral", ..LLAMA },
    ArchSpec {
        arch: Arch::Qwen2,
        swa_every_layer: false,
        hf_classes: &["Qwen2ForCausalLM"],
        hf_model_type: "qwen2",
        gguf_name: "qwen2",
        gguf_permutes_qk: false,
        qkv_bias: true,
        vocab: VocabRules { llama: false, spm_no_space_prefix: false },
        ..LLAMA
    },
    ArchSpec {
        arch: Arch::Qwen3,
        swa_every_layer: false,
        hf_classes: &["Qwen3ForCausalLM"],
        hf_model_type: "qwen3",
        gguf_name: "qwen3",
        gguf_permutes_qk: false,
        qk_norm: true,
        vocab: VocabRules { llama: false, spm_no_space_prefix: false },
        ..LLAMA
    },
    ArchSpec {
        arch: Arch::Gemma2,
        swa_every_layer: false,
        hf_classes: &["Gemma2ForCausalLM"],
        hf_model_type: "gemma2",
        gguf_name: "gemma2",
        gguf_permutes_qk: false,
        norm_plus_one: true,
        sandwich_norms: true,
        activation: Activation::GeluTanh,
        embed_scale: true,
        swa_pattern: 2,
        vocab: VocabRules { llama: false, spm_no_space_prefix: true },
        norm_names: GEMMA_NORMS,
        ..LLAMA
    },
    ArchSpec {
        arch: Arch::Gemma3,
        swa_every_layer: false,
        // The multimodal class's text model (its vision tower is left out, as llama.cpp's
        // converter leaves it for the separate mmproj file).
        hf_classes: &["Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"],
        hf_model_type: "gemma3_text",
        gguf_name: "gemma3",
        gguf_permutes_qk: false,
        qk_norm: true,
        norm_plus_one: true,
        sandwich_norms: true,
        activation: Activation::GeluTanh,
        embed_scale: true,
        swa_pattern: 6,
        swa_own_rope: true,
        vocab: VocabRules { llama: false, spm_no_space_prefix: true },
        norm_names: GEMMA_NORMS,
        // Gemma3TextConfig's defaults.
        hf_defaults: &[
            ("num_attention_heads", 8.0),
            ("num_key_value_heads", 4.0),
            ("head_dim", 256.0),
            ("max_position_embeddings", 131072.0),
            ("rms_norm_eps", 1e-6),
            ("rope_theta", 1_000_000.0),
            ("rope_local_base_freq", 10000.0),
            ("query_pre_attn_scalar", 256.0),
            ("sliding_window", 4096.0),
            ("vocab_size", 262208.0),
        ],
        ..LLAMA
    },
    ArchSpec {
        arch: Arch::Phi3,
        hf_classes: &["Phi3ForCausalLM"],
        hf_model_type: "phi3",
        gguf_name: "phi3",
        gguf_permutes_qk: false,
        swa_every_layer: true,
        fused_linears: true,
        vocab: VocabRules { llama: false, spm_no_space_prefix: false },
        // Phi3Config's default, which transformers (and so llama.cpp's converter) read when
        // config.json leaves it out.
        hf_defaults: &[("original_max_position_embeddings", 4096.0)],
        ..LLAMA
    },
    // llama.cpp runs Mixtral as `llama` with expert tensors; `from_gguf` tells them apart by
    // `llama.expert_count`.
    ArchSpec {
        arch: Arch::Mixtral,
        hf_classes: &["MixtralForCausalLM"],
        hf_model_type: "mixtral",
        experts: Some(ExpertNames {
            block: "block_sparse_moe",
            gate: "w1",
            up: "w3",
            down: "w2",
            norm_topk: true,
            shared_expert: false,
            // The second name: transformers 5's module (GPTQModel stores quantized Mixtrals so).
            names: &[
                ("block_sparse_moe.gate.weight", "ffn_gate_inp.weight"),
                ("mlp.gate.weight", "ffn_gate_inp.weight"),
            ],
        }),
        ..LLAMA
    },
    ArchSpec {
        arch: Arch::Qwen2Moe,
        swa_every_layer: false,
        hf_classes: &["Qwen2MoeForCausalLM"],
        hf_model_type: "qwen2_moe",
        gguf_name: "qwen2moe",
        gguf_permutes_qk: false,
        qkv_bias: true,
        vocab: VocabRules { llama: false, spm_no_space_prefix: false },
        experts: Some(ExpertNames {
            shared_expert: true,
            names: &[
                ("mlp.gate.weight", "ffn_gate_inp.weight"),
                ("mlp.shared_expert_gate.weight", "ffn_gate_inp_shexp.weight"),
                ("mlp.shared_expert.gate_proj.weight", "ffn_gate_shexp.weight"),
                ("mlp.shared_expert.up_proj.weight", "ffn_up_shexp.weight"),
                ("mlp.shared_expert.down_proj.weight", "ffn_down_shexp.weight"),
            ],
            ..QWEN_EXPERTS
        }),
        ..LLAMA
    },
    ArchSpec {
        arch: Arch::Qwen3Moe,
        swa_every_layer: false,
        hf_classes: &["Qwen3MoeForCausalLM"],
        hf_model_type: "qwen3_moe",
        gguf_name: "qwen3moe",
        gguf_permutes_qk: false,
        qk_norm: true,
        vocab: VocabRules { llama: false, spm_no_space_prefix: false },
        experts: Some(ExpertNames { norm_topk: true, ..QWEN_EXPERTS }),
        ..LLAMA
    },
];

impl Arch {
    pub fn spec(self) -> &'static ArchSpec {
        ARCHS.iter().find(|s| s.arch == self).expect("every Arch has a row in ARCHS")
    }

    pub fn hf_class(self) -> &'static str {
        self.spec().hf_classes[0]
    }

    pub fn hf_model_type(self) -> &'static str {
        self.spec().hf_model_type
    }

    pub fn gguf_name(self) -> &'static str {
        self.spec().gguf_name
    }

    pub fn gguf_permutes_qk(self) -> bool {
        self.spec().gguf_permutes_qk
    }

    pub fn has_qkv_bias(self) -> bool {
        self.spec().qkv_bias
    }

    pub fn has_qk_norm(self) -> bool {
        self.spec().qk_norm
    }

    pub fn from_hf_class(name: &str) -> Option<Arch> {
        ARCHS.iter().find(|s| s.hf_classes.contains(&name)).map(|s| s.arch)
    }

    /// The vocabulary rules for a config.json: its first `architectures` class's, or the
    /// defaults for a class qforge does not run (the tokenizer is still read, as the converter
    /// reads any model's).
    pub fn vocab_rules(config_json: &serde_json::Value) -> VocabRules {
        let class = config_json.get("architectures").and_then(|a| a.get(0)).and_then(|c| c.as_str());
        class.and_then(Arch::from_hf_class).map(|a| a.spec().vocab).unwrap_or_default()
    }

    pub fn from_gguf(name: &str) -> Option<Arch> {
        ARCHS.iter().find(|s| s.gguf_name == name).map(|s| s.arch)
    }

    /// "A, B, C" of every supported class (for errors that list what is supported).
    pub fn supported_hf_classes() -> String {
        // The old `LLaMAForCausalLM` spelling is accepted but not advertised.
        let classes = ARCHS.iter().flat_map(|s| s.hf_classes.iter().copied());
        classes.filter(|c| *c != "LLaMAForCausalLM").collect::<Vec<_>>().join(", ")
    }

    pub fn supported_gguf_names() -> String {
        let mut names: Vec<&str> = Vec::new();
        for s in ARCHS {
            if !names.contains(&s.gguf_name) {
                names.push(s.gguf_name);
            }
        }
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_arch_round_trips_through_its_names() {
        for s in ARCHS {
            assert_eq!(Arch::from_hf_class(s.hf_classes[0]), Some(s.arch));
            assert_eq!(s.arch.spec().arch, s.arch);
            let g = Arch::from_gguf(s.gguf_name).unwrap();
            assert_eq!(g.gguf_name(), s.gguf_name);
        }
        assert_eq!(Arch::from_gguf("llama"), Some(Arch::Llama));
        assert_eq!(Arch::from_hf_class("GPT2LMHeadModel"), None);
    }
}
