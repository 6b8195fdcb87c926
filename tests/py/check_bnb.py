"""Check a bitsandbytes 4-bit directory written by `qforge quantize --method nf4`, with numpy
alone, from its safetensors bytes and quant_state JSON (no qforge code, no torch).

usage: check_bnb.py BNB_DIR SOURCE_DIR DECODED_GGUF

- config.json's quantization_config is the one transformers writes;
- every quantized linear has exactly the parts bitsandbytes' `QuantState.as_dict(packed=True)`
  writes, with the shapes and dtypes it gives them, and a quant_state JSON with its keys;
- an independent quantizer (absmax per block of the row-major flattened source weight, then
  the nearest code by argmin, as the golden protocol says) gives the same absmax (exactly, or
  within the 8-bit error with double quantization) and the same codes (a differing code is
  allowed only where the two codes are equally near, to f32 rounding);
- decoding by hand (quant_map[code] · absmax, absmax = nested_quant_map[q] · nested_absmax +
  offset with double quantization, all in f32) matches the source within the 4-bit error and
  matches qforge's own decode (DECODED_GGUF, `qforge convert BNB_DIR --outtype f32`) exactly;
- every other tensor equals the source tensor, in the source dtype.
Prints one line per quantized tensor type and a summary.
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader

sys.path.insert(0, os.path.dirname(__file__))
from common import hf_to_gguf_name, llama_permute, load_safetensors, load_safetensors_dir  # noqa: E402

# bitsandbytes.functional.get_4bit_type
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=np.float32)
FP4 = (np.array([0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0],
                dtype=np.float32) / np.float32(12.0)).astype(np.float32)
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj"]


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def check_config(cfg, qs_types):
    q = cfg.get("quantization_config")
    if q is None:
        fail("config.json has no quantization_config")
    want = {"_load_in_4bit": True, "_load_in_8bit": False, "bnb_4bit_quant_storage": "uint8",
            "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False,
            "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0, "load_in_4bit": True, "load_in_8bit": False,
            "quant_method": "bitsandbytes"}
    for k, v in want.items():
        if q.get(k, "missing") != v:
            fail(f"quantization_config[{k!r}] = {q.get(k, 'missing')!r}, transformers writes {v!r}")
    if q["bnb_4bit_quant_type"] not in qs_types or len(qs_types) != 1:
        fail(f"bnb_4bit_quant_type {q['bnb_4bit_quant_type']} vs tensors' {qs_types}")
    if q["bnb_4bit_compute_dtype"] not in ("float32", "float16", "bfloat16"):
        fail(f"bnb_4bit_compute_dtype {q['bnb_4bit_compute_dtype']}")
    return q


def reference_codes(x, absmax, table, bs):
    """Nearest code of x / absmax (argmin, the golden's rule) and whether the nearest two are tied."""
    n = x.size
    scale = np.repeat(absmax, bs)[:n]
    with np.errstate(invalid="ignore", divide="ignore"):
        y = x / scale
    d = np.abs(y[:, None] - table[None, :])
    order = np.argsort(d, axis=1, kind="stable")
    best, second = order[:, 0], order[:, 1]
    rows = np.arange(n)
    tie = np.abs(d[rows, best] - d[rows, second]) <= 2e-7
    return best, tie


def decode(parts, st, n):
    w = parts["weight"][0].reshape(-1)
    codes = np.empty(2 * w.size, dtype=np.uint8)
    codes[0::2] = w >> 4
    codes[1::2] = w & 15
    codes = codes[:n]
    bs = st["blocksize"]
    if "nested_offset" in st:
        q = parts["absmax"][0].astype(np.int64)
        code2 = parts["nested_quant_map"][0].astype(np.float32)
        nab = parts["nested_absmax"][0].astype(np.float32)
        nb = st["nested_blocksize"]
        absmax = (code2[q] * nab[np.arange(q.size) // nb]).astype(np.float32) + np.float32(st["nested_offset"])
    else:
        absmax = parts["absmax"][0].astype(np.float32)
    qmap = parts["quant_map"][0].astype(np.float32)
    return codes, absmax.astype(np.float32), (qmap[codes] * np.repeat(absmax, bs)[:n]).astype(np.float32)


def main():
    bnb_dir, src_dir, decoded_path = sys.argv[1:4]
    cfg = json.load(open(os.path.join(bnb_dir, "config.json")))
    out = load_safetensors(os.path.join(bnb_dir, "model.safetensors"))
    src = load_safetensors_dir(src_dir)
    if cfg.get("tie_word_embeddings", False):
        src.pop("lm_head.weight", None)
    gg = {t.name: t for t in GGUFReader(decoded_path).tensors}
    n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])

    prefixes = sorted({k.split(".weight.quant_state.")[0] for k in out if ".weight.quant_state." in k})
    expected = sorted(f"model.layers.{i}.{m}" for i in range(cfg["num_hidden_layers"]) for m in LINEARS)
    if prefixes != expected:
        fail(f"quantized modules {prefixes[:3]}… are not the 7 linears of every layer")
    qs_types = set()
    stats = {}
    seen = set()
    for p in prefixes:
        (qs_name,) = [k for k in out if k.startswith(p + ".weight.quant_state.")]
        raw = out[qs_name][0]
        if out[qs_name][1] != "U8" or raw.ndim != 1:
            fail(f"{qs_name}: not a 1-D uint8 tensor")
        st = json.loads(bytes(raw.tobytes()).decode("utf-8"))
        keys = ["quant_type", "blocksize", "dtype", "shape"]
        nested = "nested_offset" in st
        if nested:
            keys += ["nested_blocksize", "nested_dtype", "nested_offset"]
        if list(st) != keys:
            fail(f"{qs_name}: keys {list(st)}, bitsandbytes writes {keys}")
        if qs_name != f"{p}.weight.quant_state.bitsandbytes__{st['quant_type']}":
            fail(f"{qs_name} holds quant_type {st['quant_type']}")
        # json.dumps layout (", " and ": " separators)
        if bytes(raw.tobytes()).decode() != json.dumps(st):
            fail(f"{qs_name}: not in json.dumps layout: {bytes(raw.tobytes()).decode()}")
        qs_types.add(st["quant_type"])
        table = NF4 if st["quant_type"] == "nf4" else FP4
        x, src_dt = src[p + ".weight"]
        if st["shape"] != list(x.shape) or st["dtype"] != {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[src_dt]:
            fail(f"{p}: quant_state shape/dtype {st['shape']} {st['dtype']} vs source {list(x.shape)} {src_dt}")
        n, bs = x.size, st["blocksize"]
        blocks = -(-n // bs)
        want_parts = {"weight": ("U8", [(n + 1) // 2, 1]), "quant_map": ("F32", [16]),
                      "absmax": ("U8" if nested else "F32", [blocks])}
        if nested:
            want_parts["nested_absmax"] = ("F32", [-(-blocks // st["nested_blocksize"])])
            want_parts["nested_quant_map"] = ("F32", [256])
        parts = {}
        for k, (dt, shape) in want_parts.items():
            name = p + ".weight" if k == "weight" else f"{p}.weight.{k}"
            if name not in out:
                fail(f"{name} missing")
            arr, got_dt = out[name]
            if got_dt != dt or list(arr.shape) != shape:
                fail(f"{name}: {got_dt} {list(arr.shape)}, bitsandbytes writes {dt} {shape}")
            parts[k] = out[name]
            seen.add(name)
        seen.add(qs_name)
        extra = [k for k in out if k.startswith(p + ".weight.") and k not in seen]
        if extra:
            fail(f"{p}: unexpected tensors {extra}")
        if not np.array_equal(parts["quant_map"][0], table):
            fail(f"{p}: quant_map is not bitsandbytes' {st['quant_type']} table")

        flat = x.reshape(-1).astype(np.float32)
        ref_absmax = np.abs(np.pad(flat, (0, blocks * bs - n))).reshape(blocks, bs).max(axis=1)
        codes, absmax, deq = decode(parts, st, n)
        if nested:
            nab = parts["nested_absmax"][0][np.arange(blocks) // st["nested_blocksize"]]
            # the dynamic map's codes are at most 1/64 apart near ±1: half that of the block's range
            err = np.abs(absmax - ref_absmax) - (nab / 120.0 + 1e-7)
            if (err > 0).any():
                fail(f"{p}: double-quantized absmax off by {np.abs(absmax - ref_absmax).max()}")
        elif not np.array_equal(absmax, ref_absmax):
            fail(f"{p}: absmax differs from the block maxima")
        ref_codes, tie = reference_codes(flat, ref_absmax, table, bs)
        bad = (codes != ref_codes) & ~tie
        if bad.any():
            i = int(np.argmax(bad))
            fail(f"{p}: weight {i} ({flat[i]}, absmax {ref_absmax[i // bs]}) got code {codes[i]}, nearest {ref_codes[i]}")
        # 4-bit error: at most half the widest gap of the table, plus the absmax error
        half_gap = np.diff(np.sort(table)).max() / 2
        scale = np.repeat(np.maximum(absmax, ref_absmax), bs)[:n]
        if (np.abs(deq - flat) > half_gap * scale * 1.0001 + np.repeat(np.abs(absmax - ref_absmax), bs)[:n] + 1e-7).any():
            fail(f"{p}: decoded weights further from the source than the 4-bit error")
        # qforge's decode, as written by `qforge convert --outtype f32` (q/k rows permuted)
        g = hf_to_gguf_name(p + ".weight")
        ours = deq.reshape(x.shape)
        if g.endswith("attn_q.weight"):
            ours = llama_permute(ours, n_head)
        elif g.endswith("attn_k.weight"):
            ours = llama_permute(ours, n_kv)
        got = np.asarray(gg[g].data).reshape(ours.shape)
        if not np.array_equal(got, ours):
            fail(f"{p}: qforge's decode differs from the independent one (max {np.abs(got - ours).max()})")
        kind = p.split(".")[-1]
        s = stats.setdefault(kind, [0, 0.0, 0, 0])
        s[0] += n
        s[1] += float(np.abs(deq - flat).sum() / np.abs(flat).mean())
        s[2] += int(tie.sum())
        s[3] += int((codes != ref_codes).sum())

    check_config(cfg, qs_types)
    rest = {k: v for k, v in out.items() if k not in seen}
    if set(rest) != {k for k in src if not any(k == p + ".weight" for p in prefixes)}:
        fail(f"unquantized tensors differ: {sorted(set(rest) ^ set(src))[:5]}")
    for k, (arr, dt) in rest.items():
        sarr, sdt = src[k]
        if dt != sdt or not np.array_equal(arr, sarr):
            fail(f"{k}: not the source tensor ({dt} vs {sdt})")
    for kind, (n, rel, ties, diff) in sorted(stats.items()):
        print(f"{kind}: {n} weights, mean |error| / mean |w| = {rel / n:.4f}, ties {ties}, codes differing at ties {diff}")
    print(f"OK: {len(prefixes)} quantized linears ({', '.join(sorted(qs_types))}), {len(rest)} other tensors")


if __name__ == "__main__":
    main()
