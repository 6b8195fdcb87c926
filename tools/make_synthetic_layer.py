#!/usr/bin/env python3
"""Write a synthetic one-layer LLaMA-7B-shaped Hugging Face checkpoint for benchmarks.

hidden 4096, intermediate 11008, 32 heads (no GQA), 2048 context: the linears have exactly the
shapes of one LLaMA-7B decoder layer (4096x4096 q/k/v/o, 11008x4096 gate/up, 4096x11008 down).
`--shape 1b` writes TinyLlama-1.1B's layer instead (hidden 2048, intermediate 5632, 32 heads
over 4 KV heads of 64): a model of many small layers, whose whole is larger than a memory limit
that one layer's working set fits in many times (issue 17's bounded-memory runs).
The vocabulary and tokenizer are the tiny fixture's (8192 tokens), so every qforge command and
llama.cpp can run it. Weights are Gaussian (std 0.02, like an initialised model) stored as BF16,
as a real 7B checkpoint is; the values are meaningless, the sizes and shapes are what count.

usage: tools/make_synthetic_layer.py OUT_DIR [--layers N] [--shape 7b|1b]
"""
import argparse
import json
import os
import shutil
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "tests", "fixtures", "tiny-llama")


def bf16(a):
    """f32 -> bf16 bits, round to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--shape", choices=["7b", "1b"], default="7b")
    args = ap.parse_args()
    # hidden, intermediate, attention heads, KV heads, head dim
    h, ffn, heads, kv_heads, head_dim = {"7b": (4096, 11008, 32, 32, 128), "1b": (2048, 5632, 32, 4, 64)}[args.shape]
    kv = kv_heads * head_dim
    vocab = 8192
    cfg = json.load(open(os.path.join(TINY, "config.json")))
    cfg.update(hidden_size=h, intermediate_size=ffn, num_attention_heads=heads, num_key_value_heads=kv_heads,
               head_dim=head_dim, num_hidden_layers=args.layers, max_position_embeddings=2048,
               vocab_size=vocab, tie_word_embeddings=False)
    shapes = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,), "lm_head.weight": (vocab, h)}
    for i in range(args.layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (ffn, h), p + "mlp.up_proj.weight": (ffn, h),
            p + "mlp.down_proj.weight": (h, ffn),
        })
    os.makedirs(args.out, exist_ok=True)
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    hdr = json.dumps(header).encode()
    hdr += b" " * (-len(hdr) % 8)
    rng = np.random.default_rng(0)
    path = os.path.join(args.out, "model.safetensors")
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(hdr)) + hdr)
        for name, shape in shapes.items():
            if len(shape) == 1:
                f.write(bf16(np.ones(shape, np.float32)).tobytes())
                continue
            for rows in np.array_split(np.arange(shape[0]), max(1, shape[0] // 1024)):
                f.write(bf16(rng.standard_normal((len(rows), shape[1]), np.float32) * 0.02).tobytes())
    os.replace(path + ".tmp", path)
    json.dump(cfg, open(os.path.join(args.out, "config.json"), "w"), indent=2)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(os.path.join(TINY, f), args.out)
    print(f"{args.out}: {sum(int(np.prod(s)) for s in shapes.values()) / 1e6:.0f}M parameters")


if __name__ == "__main__":
    main()
