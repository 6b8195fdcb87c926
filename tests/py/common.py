"""Shared helpers for the Python cross-checks (numpy + gguf only; no torch)."""
import json
import os
import struct

import numpy as np


def load_safetensors_dir(model_dir):
    """All tensors of a Hugging Face directory as float32 numpy arrays (bf16 decoded by hand,
    since numpy has no bfloat16)."""
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        files = sorted(set(json.load(open(idx))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for f in files:
        out.update(load_safetensors(os.path.join(model_dir, f)))
    return out


def load_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = data[base + a : base + b]
        dt = info["dtype"]
        if dt == "BF16":
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif dt == "F16":
            arr = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
        elif dt == "F32":
            arr = np.frombuffer(raw, dtype=np.float32)
        else:
            arr = np.frombuffer(raw, dtype={"I32": np.int32, "U8": np.uint8, "I64": np.int64}[dt])
        out[name] = (arr.reshape(info["shape"]), dt)
    return out


def llama_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_to_gguf_name(name):
    glob = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}
    if name in glob:
        return glob[name]
    layer = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
             "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
             "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight", "self_attn.q_proj.bias": "attn_q.bias",
             "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias"}
    parts = name.split(".")
    return f"blk.{parts[2]}." + layer[".".join(parts[3:])]


def parse_reference_dump(path):
    """gguf-py dump text → (metadata {key: (type, value-text)}, tensors {name: (shape, type)})."""
    meta, tensors = {}, {}
    for line in open(path):
        line = line.rstrip("\n")
        if "|" not in line or line.startswith("*"):
            continue
        cols = [c.strip() for c in line.split("|")]
        if "=" in cols[-1] and len(cols) == 3:
            ty = cols[0].split(":", 1)[1].strip()
            key, val = cols[2].split(" = ", 1)
            meta[key] = (ty, val)
        elif len(cols) == 4:
            shape = [int(x) for x in cols[1].split(",")]
            tensors[cols[3]] = (shape, cols[2])
    return meta, tensors
