"""Cross-check an hf-awq checkpoint written by `qforge quantize --method awq` with an unpacker
written from AutoAWQ's documented gemm layout (numpy only), against qforge's own decode.

usage: check_awq.py AWQ_DIR DEQUANT_GGUF LAYER

- config.json has quantization_config {quant_method awq, bits 4, zero_point true, version gemm};
- every linear of layer LAYER has qweight int32 [in, out/8], qzeros int32 [in/group, out/8],
  scales f16 [in/group, out], and no float `weight`;
- unpacking them here — nibble k of each word holds output 8j + [0,2,4,6,1,3,5,7][k],
  w = scales · (q − zero) — gives exactly the f32 weights qforge decoded into DEQUANT_GGUF
  (`qforge convert AWQ_DIR -o DEQUANT_GGUF --outtype f32`; q/k rows permuted as llama.cpp's
  converter does);
- the layer's folded norms are stored as f32 and appear unchanged in the GGUF.

Prints one line per linear, then `OK`.
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader

sys.path.insert(0, os.path.dirname(__file__))
from common import load_safetensors_dir, llama_permute  # noqa: E402

# AutoAWQ packs outputs [0, 2, 4, 6, 1, 3, 5, 7] into nibbles 0..7.
PACK_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
LINEARS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def unpack(words):
    """int32 [r, c/8] → codes [r, c] in output order."""
    u = words.view(np.uint32)
    nib = np.stack([(u >> (4 * k)) & 15 for k in range(8)], axis=-1)  # [r, c/8, 8] by nibble
    out = np.empty_like(nib)
    for k, col in enumerate(PACK_ORDER):
        out[:, :, col] = nib[:, :, k]
    return out.reshape(words.shape[0], -1).astype(np.int32)


def main():
    awq_dir, gguf_path, layer = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = json.load(open(os.path.join(awq_dir, "config.json")))
    qc = cfg["quantization_config"]
    fails = []
    for k, v in {"quant_method": "awq", "bits": 4, "zero_point": True, "version": "gemm"}.items():
        if qc.get(k) != v:
            fails.append(f"quantization_config.{k} = {qc.get(k)!r}, expected {v!r}")
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    src = load_safetensors_dir(awq_dir)
    gg = {t.name: t for t in GGUFReader(gguf_path).tensors}

    for hf, g in LINEARS.items():
        p = f"model.layers.{layer}.{hf}"
        if f"{p}.weight" in src:
            fails.append(f"{p}: a float weight is stored next to the quantized one")
        (qw, qw_t), (qz, qz_t), (sc, sc_t) = src[f"{p}.qweight"], src[f"{p}.qzeros"], src[f"{p}.scales"]
        cols, rows = qw.shape[0], qw.shape[1] * 8
        groups = sc.shape[0]
        gs = cols // groups
        gs_cfg = qc["group_size"] if qc["group_size"] > 0 else cols
        if (qw_t, qz_t, sc_t) != ("I32", "I32", "F16") or gs != gs_cfg or sc.shape != (groups, rows) \
                or qz.shape != (groups, rows // 8):
            fails.append(f"{p}: dtypes {qw_t}/{qz_t}/{sc_t}, shapes {qw.shape} {qz.shape} {sc.shape}")
            continue
        q = unpack(qw)  # [cols, rows]
        z = unpack(qz)  # [groups, rows]
        zf = np.repeat(z, gs, axis=0).astype(np.float32)
        sf = np.repeat(sc.astype(np.float32), gs, axis=0)
        w = (sf * (q.astype(np.float32) - zf)).T  # [rows, cols]
        if g == "attn_q":
            w = llama_permute(w, n_head)
        elif g == "attn_k":
            w = llama_permute(w, n_kv)
        t = gg[f"blk.{layer}.{g}.weight"]
        ours = np.array(t.data, dtype=np.float32).reshape(rows, cols)
        diff = float(np.abs(ours - w).max())
        print(f"{p}: {rows}x{cols} group {gs}, max |qforge - numpy| = {diff:.3g}, "
              f"codes used {q.min()}..{q.max()}, zeros {z.min()}..{z.max()}")
        if diff != 0.0:
            fails.append(f"{p}: qforge's decode differs from the gemm layout by {diff}")

    for hf, g in (("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm")):
        arr, dt = src[f"model.layers.{layer}.{hf}.weight"]
        ours = np.array(gg[f"blk.{layer}.{g}.weight"].data, dtype=np.float32)
        if dt != "F32" or not np.array_equal(arr, ours):
            fails.append(f"{hf}: stored as {dt}, or changed on the way to GGUF")

    if fails:
        print("\n".join("FAIL " + f for f in fails))
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
