"""Cross-checks of qforge's importance matrices with the reference `gguf` package.

usage:
  check_imatrix.py check IMATRIX.gguf HF_DIR TOKENS [--process-output]
      gguf-py reads the file: general.type "imatrix", imatrix.datasets (array of strings),
      imatrix.chunk_count / chunk_size (u32); one `<W>.in_sum2` (F32, ne [n_cols, 1]) and
      `<W>.counts` (F32, ne [1, 1]) per linear layer W of every decoder layer (and
      output.weight with --process-output), n_cols the matrix's input width from config.json,
      counts == TOKENS, sums finite and >= 0, q/k/v (and gate/up), which share one input, with
      equal sums. Prints a JSON summary.
  check_imatrix.py to-dat IMATRIX.gguf OUT.dat
      Write the legacy llama.cpp .dat imatrix the way llama-imatrix's save_imatrix_legacy does:
      per entry (sorted by name) the name, ncall = ceil(count / chunk_size), nval, and the
      values (in_sum2 / count) * ncall; then the chunk count and the dataset name. Prints the
      importance it encoded (in_sum2 / count), as JSON {name: [values]}.
"""
import json
import math
import os
import struct
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType as V


def fields(r):
    out = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        t = f.types[0]
        if t == V.STRING:
            out[k] = ("string", bytes(f.parts[f.data[0]]).decode())
        elif t == V.ARRAY:
            if f.types[1] == V.STRING:
                out[k] = ("string_array", [bytes(f.parts[i]).decode() for i in f.data])
            else:
                out[k] = ("array", None)
        elif t == V.UINT32:
            out[k] = ("u32", int(f.parts[f.data[0]][0]))
        else:
            out[k] = (t.name.lower(), f.parts[f.data[0]][0])
    return out


def fail(msg):
    print(f"check_imatrix.py: {msg}", file=sys.stderr)
    sys.exit(1)


def check(path, hf_dir, tokens, process_output):
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    hidden, ffn, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim", hidden // heads)
    r = GGUFReader(path)
    f = fields(r)
    if f.get("general.type") != ("string", "imatrix"):
        fail(f"general.type is {f.get('general.type')}")
    if f.get("imatrix.datasets", ("",))[0] != "string_array" or not f["imatrix.datasets"][1]:
        fail(f"imatrix.datasets is {f.get('imatrix.datasets')}")
    for k in ("imatrix.chunk_count", "imatrix.chunk_size"):
        if f.get(k, ("",))[0] != "u32":
            fail(f"{k} is {f.get(k)}")
    if f["imatrix.chunk_count"][1] * f["imatrix.chunk_size"][1] != tokens:
        fail(f"chunk_count x chunk_size = {f['imatrix.chunk_count'][1]} x {f['imatrix.chunk_size'][1]}, not {tokens}")

    inputs = {"attn_q": hidden, "attn_k": hidden, "attn_v": hidden, "attn_output": heads * head_dim,
              "ffn_gate": hidden, "ffn_up": hidden, "ffn_down": ffn}
    expected = {f"blk.{i}.{n}.weight": c for i in range(layers) for n, c in inputs.items()}
    if process_output:
        expected["output.weight"] = hidden
    tensors = {t.name: t for t in r.tensors}
    want_names = sorted([f"{n}.in_sum2" for n in expected] + [f"{n}.counts" for n in expected])
    if sorted(tensors) != want_names:
        fail(f"tensors {sorted(set(tensors) ^ set(want_names))} differ from the expected set")
    sums = {}
    for name, cols in expected.items():
        s, c = tensors[name + ".in_sum2"], tensors[name + ".counts"]
        for t in (s, c):
            if t.tensor_type.name != "F32":
                fail(f"{t.name} is {t.tensor_type.name}")
        if [int(x) for x in s.shape] != [cols, 1] or [int(x) for x in c.shape] != [1, 1]:
            fail(f"{name}: shapes {list(s.shape)}, {list(c.shape)} (want [{cols}, 1], [1, 1])")
        sv = np.asarray(s.data, dtype=np.float32).reshape(-1)
        cv = np.asarray(c.data, dtype=np.float32).reshape(-1)
        if cv[0] != tokens:
            fail(f"{name}.counts = {cv[0]}, not {tokens}")
        if not np.all(np.isfinite(sv)) or np.any(sv < 0) or not np.any(sv > 0):
            fail(f"{name}.in_sum2 is not finite, non-negative and non-zero")
        sums[name] = sv
    for i in range(layers):
        b = f"blk.{i}."
        for group in (("attn_q", "attn_k", "attn_v"), ("ffn_gate", "ffn_up")):
            first = sums[b + group[0] + ".weight"]
            for n in group[1:]:
                if not np.array_equal(first, sums[b + n + ".weight"]):
                    fail(f"{b}{n} sums differ from {b}{group[0]} (they share one input)")
    print(json.dumps({"entries": len(expected), "tensors": len(tensors), "tokens": tokens,
                      "datasets": f["imatrix.datasets"][1], "chunk_count": f["imatrix.chunk_count"][1],
                      "chunk_size": f["imatrix.chunk_size"][1]}))


def to_dat(path, out):
    r = GGUFReader(path)
    f = fields(r)
    chunk_size = f["imatrix.chunk_size"][1]
    chunk_count = f["imatrix.chunk_count"][1]
    dataset = f["imatrix.datasets"][1][-1] if f["imatrix.datasets"][1] else ""
    t = {x.name: np.asarray(x.data, dtype=np.float32).reshape(-1) for x in r.tensors}
    names = sorted(n[: -len(".in_sum2")] for n in t if n.endswith(".in_sum2"))
    blob = bytearray(struct.pack("<i", len(names)))
    importance = {}
    for name in names:
        s, c = t[name + ".in_sum2"], t[name + ".counts"]
        count = float(c.max())
        ncall = int(math.ceil(count / chunk_size))
        mean = (s / np.float32(count)).astype(np.float32)
        importance[name] = [float(v) for v in mean]
        values = (mean * np.float32(ncall)).astype("<f4")
        nb = name.encode()
        blob += struct.pack("<i", len(nb)) + nb + struct.pack("<ii", ncall, values.size) + values.tobytes()
    ds = dataset.encode()
    blob += struct.pack("<i", chunk_count) + struct.pack("<i", len(ds)) + ds
    open(out, "wb").write(bytes(blob))
    print(json.dumps(importance))


def main():
    a = sys.argv[1:]
    if len(a) >= 4 and a[0] == "check":
        check(a[1], a[2], int(a[3]), "--process-output" in a[4:])
    elif len(a) == 3 and a[0] == "to-dat":
        to_dat(a[1], a[2])
    else:
        fail(__doc__)


if __name__ == "__main__":
    main()
