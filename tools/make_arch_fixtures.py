#!/usr/bin/env python3
"""Tiny random-initialized Hugging Face checkpoints and their transformers goldens, one per
architecture feature qforge supports beyond plain LLaMA (issue: real architectures).

For each fixture: a checkpoint directory under tests/fixtures/arch/NAME (config.json,
model.safetensors in bf16, the tiny-llama byte-level BPE tokenizer files) made with
transformers from a fixed seed, and golden/arch_NAME.safetensors with transformers' f32
output on the first CTX tokens of WikiText-2: `input_ids`, `logits` at the positions in
`positions` (all 8192 vocabulary entries), and `nll` (mean negative log-likelihood of tokens
1..CTX-1 given the ones before, qforge's perplexity protocol for one window).

Variants that share weights (the RoPE scalings of one LLaMA) are separate goldens over one
checkpoint: `variants` maps a golden name to the config.json keys it overrides.

Needs torch + transformers (a large download; CI only reads what this writes).
usage: tools/make_arch_fixtures.py [NAME...]
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from transformers import (AutoTokenizer, Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig,
                          LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, MixtralConfig, MixtralForCausalLM, Phi3Config, Phi3ForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM)

CLASSES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
           "qwen3": (Qwen3Config, Qwen3ForCausalLM), "gemma2": (Gemma2Config, Gemma2ForCausalLM),
           "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM), "phi3": (Phi3Config, Phi3ForCausalLM),
           "mistral": (MistralConfig, MistralForCausalLM),
           "mixtral": (MixtralConfig, MixtralForCausalLM), "qwen2moe": (Qwen2MoeConfig, Qwen2MoeForCausalLM),
           "qwen3moe": (Qwen3MoeConfig, Qwen3MoeForCausalLM)}
# Gemma's RMSNorm scales by 1 + w.
NORM_PLUS_ONE = {"gemma2", "gemma3"}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "tests/fixtures/tiny-llama")
# SentencePiece fixtures: the first 8192 pieces of llama.cpp's Llama-2 vocabulary test file.
SPM_VOCAB = os.path.join(ROOT, "../shared/fixtures/vocab/ggml-vocab-llama-spm.gguf")
WIKI = os.path.join(ROOT, "tests/fixtures/text/wiki.test.raw")
CTX = 96
POSITIONS = [0, 1, 2, 3, 40, 41, 88, 89, 90, 91, 92, 93, 94, 95]

FIXTURES = {
    # LLaMA with RoPE scaling. head_dim 16 and an original context of 32 put the frequencies
    # on both sides of llama3's wavelength band and the test context (96) past it.
    "llama-rope": {
        "class": "llama",
        "config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rope_theta=10000.0,
                       rms_norm_eps=1e-5, tie_word_embeddings=True, initializer_range=0.1, bos_token_id=0, eos_token_id=1,
                       pad_token_id=2),
        "variants": {
            "llama-rope-llama3": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                   "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 32}},
            "llama-rope-linear": {"rope_scaling": {"rope_type": "linear", "factor": 4.0}},
        },
    },
    # Qwen2 (q/k/v biases) with YaRN, as Qwen2.5 configures it for long contexts: original
    # context 32, so the test window (96) is past it.
    "qwen2": {
        "class": "qwen2",
        "config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=256, rope_theta=1000000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, initializer_range=0.1, bos_token_id=0, eos_token_id=1,
                       pad_token_id=2),
        "variants": {
            # transformers 5's layout: the scaling inside rope_parameters, with the theta.
            "qwen2-yarn": {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1000000.0,
                                               "original_max_position_embeddings": 32}},
        },
    },
    # Qwen3: per-head q/k RMSNorm; head_dim 32 with hidden 64 and 4 heads, so the attention
    # width (128) differs from the hidden size, as in the real Qwen3 models.
    # Gemma 2: sandwich norms (1 + w), GeGLU, √hidden embedding scale, soft-capped scores and
    # logits (caps small enough to bite at this scale), sliding window (24) shorter than the
    # test context on the even layers, head_dim 32 ≠ hidden/heads. A SentencePiece
    # tokenizer.model without the dummy prefix, as Gemma's. query_pre_attn_scalar equals
    # head_dim in the base (what llama.cpp assumes); the variant tests the scalar itself.
    "gemma2": {
        "class": "gemma2",
        "tokenizer": "spm",
        "config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=32, max_position_embeddings=256, rope_theta=10000.0,
                       rms_norm_eps=1e-6, tie_word_embeddings=True, initializer_range=0.1, bos_token_id=1,
                       eos_token_id=2, pad_token_id=0, query_pre_attn_scalar=32, sliding_window=24,
                       attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
        "variants": {"gemma2-scalar": {"query_pre_attn_scalar": 48}},
    },
    # Gemma 3 (text): q/k norms, five sliding-window layers then a global one, the global layers
    # with linear RoPE scaling and their own base (transformers 5's per-layer-type
    # rope_parameters), byte-level BPE tokenizer.json (the converter's gpt2 path). Variants: the
    # local layers with another base, and a layer list that is not the default pattern.
    "gemma3": {
        "class": "gemma3",
        "config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=32, max_position_embeddings=256, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, initializer_range=0.1, bos_token_id=0, eos_token_id=1,
                       pad_token_id=2, query_pre_attn_scalar=32, sliding_window=24,
                       rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                                           "rope_theta": 1000000.0},
                                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
        "variants": {
            "gemma3-local-base": {"rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 500.0}}},
            "gemma3-layers": {"layer_types": ["sliding_attention", "full_attention", "sliding_attention",
                                              "sliding_attention", "full_attention", "sliding_attention"]},
        },
    },
    # Phi-3: fused qkv_proj and gate_up_proj, LongRoPE (original context 32, so the 96-token
    # window rotates with the long factors and the 32-token one with the short ones), a sliding
    # window (24) on every layer, untied output, a SentencePiece tokenizer.model with the dummy
    # prefix and added tokens past its pieces, padded to vocab_size as Phi-3's is. The variant:
    # partial rotary (Phi-4-mini's partial_rotary_factor) with its own factor lists.
    "phi3": {
        "class": "phi3",
        "tokenizer": "spm",
        "spm": dict(n_pieces=4096, dummy_prefix=True, tokenizer_class="LlamaTokenizer",
                    added={4096: "<|endoftext|>", 4097: "<|assistant|>", 4098: "<|user|>"}),
        "vocab_size": 4104,
        "config": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=128, original_max_position_embeddings=32,
                       rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.1,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0, sliding_window=24,
                       rope_scaling={"type": "longrope",
                                     "short_factor": [1.0, 1.02, 1.05, 1.1, 1.2, 1.3, 1.5, 1.8],
                                     "long_factor": [1.0, 1.1, 1.3, 1.7, 2.4, 3.5, 5.0, 7.0]}),
        "short": {"phi3-short": 32},
        "variants": {
            # No window: what llama.cpp (which switches Phi-3's window off) computes too.
            "phi3-nowindow": {"sliding_window": None},
            "phi3-partial": {"partial_rotary_factor": 0.5,
                             "rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.1, 1.2, 1.4],
                                              "long_factor": [1.0, 1.5, 3.0, 6.0]}},
        },
    },
    # Mistral v0.1: a sliding window (24 here, 4096 there) on every layer, which transformers
    # applies and llama.cpp's `llama` ignores. The variant: no window.
    "mistral": {
        "class": "mistral",
        "config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=True, initializer_range=0.1, bos_token_id=0, eos_token_id=1,
                       pad_token_id=2, sliding_window=24),
        "variants": {"mistral-nowindow": {"sliding_window": None}},
    },
    # Mixture of experts, 4 experts with top-2 routing: Mixtral (llama.cpp's `llama` with
    # expert tensors, weights renormalized), Qwen2-MoE (q/k/v biases, a shared expert behind a
    # sigmoid gate, weights not renormalized, an untied output as llama.cpp's qwen2moe needs)
    # and Qwen3-MoE (q/k norms, renormalized, as the
    # released checkpoints set norm_topk_prob).
    "mixtral": {
        "class": "mixtral",
        "config": dict(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=256, rope_theta=1000000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=True, initializer_range=0.1, bos_token_id=0, eos_token_id=1,
                       pad_token_id=2, num_local_experts=4, num_experts_per_tok=2),
    },
    "qwen2moe": {
        "class": "qwen2moe",
        "config": dict(hidden_size=32, intermediate_size=96, moe_intermediate_size=48,
                       shared_expert_intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=256, rope_theta=1000000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=False, initializer_range=0.1, bos_token_id=0, eos_token_id=1,
                       pad_token_id=2, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False),
    },
    "qwen3moe": {
        "class": "qwen3moe",
        "config": dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, initializer_range=0.1,
                       bos_token_id=0, eos_token_id=1, pad_token_id=2, num_experts=4, num_experts_per_tok=2,
                       norm_topk_prob=True),
    },
    "qwen3": {
        "class": "qwen3",
        "config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=32, max_position_embeddings=256, rope_theta=1000000.0,
                       rms_norm_eps=1e-6, tie_word_embeddings=True, initializer_range=0.1, bos_token_id=0,
                       eos_token_id=1, pad_token_id=2),
    },
}


def make_spm(out, n_pieces=8192, dummy_prefix=False, tokenizer_class="GemmaTokenizer", added=None):
    """tokenizer.model (+ tokenizer_config.json) from the first `n_pieces` Llama-2 pieces, and
    `added` tokens (id → text, special) past them in tokenizer_config.json."""
    import gguf
    sys.path.insert(0, os.path.join(ROOT, "tests/py"))
    from check_sentencepiece import make as make_model
    r = gguf.GGUFReader(SPM_VOCAB)
    field = lambda k: r.fields[k]
    toks = [bytes(field("tokenizer.ggml.tokens").parts[i]).decode() for i in field("tokenizer.ggml.tokens").data]
    scores = [float(field("tokenizer.ggml.scores").parts[i][0]) for i in field("tokenizer.ggml.scores").data]
    types = [int(field("tokenizer.ggml.token_type").parts[i][0]) for i in field("tokenizer.ggml.token_type").data]
    pieces = os.path.join(out, "pieces.json")
    n = n_pieces
    json.dump([[t, s, ty] for t, s, ty in list(zip(toks, scores, types))[:n]], open(pieces, "w"))
    make_model(pieces, os.path.join(out, "tokenizer.model"), dummy_prefix=dummy_prefix)
    os.remove(pieces)
    tcfg = {"tokenizer_class": tokenizer_class, "add_bos_token": True, "add_eos_token": False,
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
    if added:
        tcfg["added_tokens_decoder"] = {str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                                 "normalized": False, "single_word": False}
                                        for i, t in added.items()}
    json.dump(tcfg, open(os.path.join(out, "tokenizer_config.json"), "w"), indent=2)


def tokens(spec, out):
    text = open(WIKI, "rb").read().decode("utf-8")[:4000]
    if spec.get("tokenizer") == "spm":
        import sentencepiece
        # With BOS first, as the tokenizer config asks (add_bos_token) and qforge's perplexity does.
        bos = json.load(open(os.path.join(out, "config.json")))["bos_token_id"]
        ids = [bos] + sentencepiece.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model")).encode(text)
    else:
        ids = AutoTokenizer.from_pretrained(TOKENIZER).encode(text, add_special_tokens=False)
    ids = ids[:CTX]
    assert len(ids) == CTX
    return torch.tensor([ids])


def golden(model, ids, path):
    positions = [p for p in POSITIONS if p < ids.shape[1]]
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    nll = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:]).item()
    save_file({"input_ids": ids[0].to(torch.int64), "logits": logits[positions].contiguous(),
               "positions": torch.tensor(positions, dtype=torch.int64),
               "nll": torch.tensor([nll], dtype=torch.float64)}, path)
    return nll


def make(name, spec):
    out = os.path.join(ROOT, "tests/fixtures/arch", name)
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(1234)
    config_class, model_class = CLASSES[spec["class"]]
    cfg = config_class(vocab_size=spec.get("vocab_size", 8192), **spec["config"])
    model = model_class(cfg).to(torch.bfloat16)
    # Random init is close to uniform; larger norms make the logits differ more per token.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") and spec["class"] in NORM_PLUS_ONE:
                # Multiples of 2^-7 in [-0.5, 1), so 1 + w is exact even in bf16 (HF Gemma norms
                # are offsets from 1; llama.cpp's converter adds the 1).
                p.copy_(torch.clamp(torch.round(0.4 * torch.randn_like(p) * 128) / 128, -0.5, 0.984375))
            elif n.endswith("norm.weight"):
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
            elif n.endswith("bias"):  # zero at init: make them count
                p.copy_(0.5 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    if spec.get("tokenizer") == "spm":
        make_spm(out, **spec.get("spm", {}))
    else:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(TOKENIZER, f), out)
    ids = tokens(spec, out)
    # Goldens from a model built in f32 from the saved config (plus the variant's keys) with
    # the saved weights: a model cast to bf16 and back would also carry a bf16-rounded RoPE
    # inv_freq buffer, which is not part of the checkpoint.
    weights = {k: v.float() for k, v in model.state_dict().items()}
    for variant, override in [(name, {})] + list(spec.get("variants", {}).items()):
        cfg_v = json.load(open(os.path.join(out, "config.json")))
        cfg_v.update(override)
        vcfg = config_class(**{k: v for k, v in cfg_v.items() if k not in ("architectures", "transformers_version")})
        vcfg._attn_implementation = "eager"  # soft-capping needs the eager attention
        vm = model_class(vcfg).float()
        vm.load_state_dict(weights)
        nll = golden(vm.eval(), ids, os.path.join(ROOT, "golden", f"arch_{variant}.safetensors"))
        print(f"{variant}: nll {nll:.6f}")
        # Shorter windows of the same model (LongRoPE's short factors).
        for short, ctx in (spec.get("short", {}) if variant == name else {}).items():
            nll = golden(vm.eval(), ids[:, :ctx], os.path.join(ROOT, "golden", f"arch_{short}.safetensors"))
            print(f"{short}: nll {nll:.6f}")


def main():
    names = sys.argv[1:] or list(FIXTURES)
    for n in names:
        make(n, FIXTURES[n])


if __name__ == "__main__":
    main()
