"""Cross-check a GGUF written by `qforge quantize` against the source checkpoint with the
reference `gguf` package.

usage: check_quantized.py GGUF HF_DIR FILE_TYPE

- general.file_type is FILE_TYPE (llama.cpp's llama_ftype id);
- every source tensor is present with its GGUF name and shape (q/k rows permuted as llama.cpp's
  converter does; a tied lm_head is absent);
- 1-D tensors (norms) are F32 and equal the source exactly;
- 2-D tensors in a type gguf-py can quantize (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): the bytes equal
  `gguf.quants.quantize(source, type)`, i.e. ggml's reference quantizers;
- F32/BF16/F16 tensors equal the source (f16: numpy's rounding);
- other types (K-quants, IQ4_NL; gguf-py only decodes those): gguf-py's decoder reads them
  back within a per-type relative RMS error bound, so the blocks are well-formed and hold the
  source's weights.

Prints one line per type with the tensor count, then `OK`.
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

sys.path.insert(0, os.path.dirname(__file__))
from common import load_safetensors_dir, llama_permute, hf_to_gguf_name  # noqa: E402

QUANTIZABLE = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}
# Relative RMS error ||dequant - w|| / ||w|| allowed for the types only decoded here: about
# twice what these types give on Gaussian-like weights (Q2_K ~0.3, Q3_K ~0.17, Q4_K ~0.09,
# Q5_K ~0.045, Q6_K ~0.022, IQ4_NL ~0.09), loose enough for any real weight distribution and
# far below what a wrong scale, block order or row permutation gives (~1.0 or more).
RMS_BOUND = {T.Q2_K: 0.6, T.Q3_K: 0.35, T.Q4_K: 0.2, T.Q5_K: 0.1, T.Q6_K: 0.05, T.IQ4_NL: 0.2}


def main():
    path, hf_dir, file_type = sys.argv[1], sys.argv[2], int(sys.argv[3])
    r = GGUFReader(path)
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    tied = cfg.get("tie_word_embeddings", False)
    fails = []

    ft = r.fields.get("general.file_type")
    got_ft = int(ft.parts[ft.data[0]][0]) if ft is not None else None
    if got_ft != file_type:
        fails.append(f"general.file_type {got_ft}, expected {file_type}")

    by_name = {t.name: t for t in r.tensors}
    src = load_safetensors_dir(hf_dir)
    seen = set()
    counts = {}
    worst = {}
    for hf_name, (w, _) in sorted(src.items()):
        g = hf_to_gguf_name(hf_name)
        if g == "output.weight" and tied:
            continue
        seen.add(g)
        t = by_name.get(g)
        if t is None:
            fails.append(f"tensor {g} missing")
            continue
        if g.endswith("attn_q.weight"):
            w = llama_permute(w, n_head)
        elif g.endswith("attn_k.weight"):
            w = llama_permute(w, n_kv)
        w = np.ascontiguousarray(w, dtype=np.float32)
        ty = t.tensor_type
        counts[ty.name] = counts.get(ty.name, 0) + 1
        if [int(x) for x in reversed(t.shape)] != list(w.shape):
            fails.append(f"{g}: shape {list(reversed(t.shape))}, source {list(w.shape)}")
            continue
        raw = np.asarray(t.data).reshape(-1).view(np.uint8)
        if w.ndim == 1 and ty != T.F32:
            fails.append(f"{g}: 1-D tensor stored as {ty.name}, expected F32")
            continue
        if ty in QUANTIZABLE:
            ref = quantize(w, ty).reshape(-1).view(np.uint8)
            if not np.array_equal(raw, ref):
                diff = int(np.count_nonzero(raw != ref))
                fails.append(f"{g}: {ty.name} bytes differ from gguf-py's quantizer ({diff} of {raw.size} bytes)")
            continue
        got = dequantize(t.data, ty).reshape(w.shape)
        if ty in (T.F32, T.BF16):
            ok = np.array_equal(got, w)
        elif ty == T.F16:
            ok = np.array_equal(got, w.astype(np.float16).astype(np.float32))
        elif ty in RMS_BOUND:
            rel = float(np.sqrt(np.mean((got - w) ** 2) / max(np.mean(w**2), 1e-30)))
            worst[ty.name] = max(worst.get(ty.name, 0.0), rel)
            ok = np.isfinite(got).all() and rel <= RMS_BOUND[ty]
        else:
            fails.append(f"{g}: unexpected type {ty.name}")
            continue
        if not ok:
            fails.append(f"{g}: {ty.name} values differ from the source (max abs diff {np.abs(got - w).max()})")
    extra = set(by_name) - seen
    if extra:
        fails.append(f"tensors not in the source: {sorted(extra)}")
    for name in sorted(counts):
        extra_info = f", worst relative RMS error {worst[name]:.4f}" if name in worst else ""
        print(f"{name}: {counts[name]} tensors{extra_info}")
    if fails:
        print("FAIL", path)
        for f in fails[:40]:
            print("  ", f)
        sys.exit(1)
    print(f"OK {path}: {sum(counts.values())} tensors match the source")


if __name__ == "__main__":
    main()
