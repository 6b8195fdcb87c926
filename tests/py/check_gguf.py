"""Cross-check a qforge-written GGUF with the reference `gguf` package (what llama.cpp uses).

usage: check_gguf.py GGUF HF_DIR OUTTYPE [REFERENCE_DUMP]

- gguf-py reads the file; every metadata key and tensor of llama.cpp's own converter output
  (REFERENCE_DUMP) is present with the same type, value (scalars) and shape;
- every tensor dequantized by gguf-py equals the source weights after undoing the q/k
  permutation: exactly for f32/bf16 (the fixtures are bf16), exactly equal to numpy's f16
  rounding for f16, and for q8_0 the bytes equal gguf-py's own Q8_0 quantizer output.
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

sys.path.insert(0, os.path.dirname(__file__))
from common import load_safetensors_dir, llama_permute, hf_to_gguf_name, parse_reference_dump  # noqa: E402


def field_value(f):
    from gguf import GGUFValueType as V
    t = f.types[0]
    if t == V.STRING:
        return bytes(f.parts[f.data[0]]).decode()
    if t == V.ARRAY:
        return None
    return f.parts[f.data[0]][0]


def main():
    path, hf_dir, outtype = sys.argv[1:4]
    ref = sys.argv[4] if len(sys.argv) > 4 else None
    r = GGUFReader(path)
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    fails = []

    if ref:
        rmeta, rtensors = parse_reference_dump(ref)
        for key, (ty, val) in rmeta.items():
            if key.startswith("GGUF."):
                continue
            f = r.fields.get(key)
            if f is None:
                fails.append(f"missing metadata key {key}")
                continue
            ours_ty = f.types[0].name if len(f.types) == 1 else f"[{f.types[-1].name}]"
            exp_ty = ty.replace("UINT", "UINT").strip()
            if exp_ty.startswith("["):
                if ours_ty != exp_ty:
                    fails.append(f"{key}: type {ours_ty}, reference {exp_ty}")
                n_ref = None
                continue
            if ours_ty != exp_ty:
                fails.append(f"{key}: type {ours_ty}, reference {exp_ty}")
                continue
            if key in ("general.file_type",):
                continue
            v = field_value(f)
            if isinstance(v, str):
                if repr(v) != val:
                    fails.append(f"{key}: {v!r} != reference {val}")
            elif isinstance(v, (np.bool_, bool)):
                if str(bool(v)) != val:
                    fails.append(f"{key}: {v} != reference {val}")
            elif abs(float(v) - float(val)) > 1e-12 * max(1, abs(float(val))):
                fails.append(f"{key}: {v} != reference {val}")
        ours_t = {t.name: t for t in r.tensors}
        if set(ours_t) != set(rtensors):
            fails.append(f"tensor names differ: extra {set(ours_t) - set(rtensors)}, missing {set(rtensors) - set(ours_t)}")
        for name, (shape, _) in rtensors.items():
            if name in ours_t:
                ne = [int(x) for x in ours_t[name].shape] + [1] * (4 - len(ours_t[name].shape))
                if ne != shape:
                    fails.append(f"{name}: ne {ne}, reference {shape}")
        # The token list and merges equal the source tokenizer's.
        tj = json.load(open(os.path.join(hf_dir, "tokenizer.json")))
        toks = [bytes(r.fields["tokenizer.ggml.tokens"].parts[i]).decode() for i in r.fields["tokenizer.ggml.tokens"].data]
        vocab = tj["model"]["vocab"]
        for t in tj["added_tokens"]:
            vocab[t["content"]] = t["id"]
        for tok, i in vocab.items():
            if toks[i] != tok:
                fails.append(f"token {i}: {toks[i]!r} != {tok!r}")
                break
        merges = [bytes(r.fields["tokenizer.ggml.merges"].parts[i]).decode() for i in r.fields["tokenizer.ggml.merges"].data]
        src_merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
        if merges != src_merges:
            fails.append("merges differ from tokenizer.json")

    src = load_safetensors_dir(hf_dir)
    tied = cfg.get("tie_word_embeddings", False)
    by_name = {t.name: t for t in r.tensors}
    checked = 0
    for hf_name, (w, _) in src.items():
        g = hf_to_gguf_name(hf_name)
        if g == "output.weight" and tied:
            continue
        t = by_name.get(g)
        if t is None:
            fails.append(f"tensor {g} missing")
            continue
        if g.endswith("attn_q.weight"):
            w = llama_permute(w, n_head)
        elif g.endswith("attn_k.weight"):
            w = llama_permute(w, n_kv)
        w = np.ascontiguousarray(w, dtype=np.float32)
        got = dequantize(t.data, t.tensor_type).reshape(w.shape)
        if w.ndim == 1:
            expect_type = T.F32
        else:
            expect_type = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0}[outtype]
        if t.tensor_type != expect_type:
            fails.append(f"{g}: type {t.tensor_type.name}, expected {expect_type.name}")
            continue
        if expect_type in (T.F32, T.BF16):
            ok = np.array_equal(got, w)
        elif expect_type == T.F16:
            ok = np.array_equal(got, w.astype(np.float16).astype(np.float32))
        else:
            ref_bytes = quantize(w, T.Q8_0)
            ok = np.array_equal(np.asarray(t.data).reshape(-1).view(np.uint8), ref_bytes.reshape(-1).view(np.uint8))
            # Error bound per block: half a step, plus the f16 rounding of d (rel. 2^-11)
            # times the largest code (127).
            blocks_w, blocks_g = w.reshape(-1, 32), got.reshape(-1, 32)
            d = np.abs(blocks_w).max(axis=1, keepdims=True) / 127
            ok = ok and bool((np.abs(blocks_g - blocks_w) <= d * (0.5 + 127 * 2.0**-11) * 1.0001 + 1e-12).all())
        if not ok:
            fails.append(f"{g}: values differ from the source (max abs diff {np.abs(got - w).max()})")
        checked += 1
    if fails:
        print("FAIL", path)
        for f in fails[:40]:
            print("  ", f)
        sys.exit(1)
    print(f"OK {path}: {checked} tensors match the source, metadata matches reference={bool(ref)}")


if __name__ == "__main__":
    main()
