"""Quantize a GGUF with llama.cpp's own quantizer (llama_model_quantize, through
llama-cpp-python) and print JSON {seconds, ftype}.

usage: llamacpp_quantize.py IN.gguf OUT.gguf FTYPE_ID [--threads 2] [--imatrix IMATRIX.gguf]
(FTYPE_ID is llama.cpp's llama_ftype: Q4_0=2, Q8_0=7, Q4_K_M=15, Q6_K=18, IQ4_NL=25, ...)

--imatrix reads a GGUF importance matrix with gguf-py and hands llama_model_quantize the
per-column importance the way llama-quantize computes it (in_sum2 / lround(counts), 1 where a
count is 0); the quantize.imatrix.* metadata that llama-quantize adds is not written.
"""
import argparse
import ctypes
import json
import time

import llama_cpp
import numpy as np


def imatrix_values(path):
    """{tensor name: float32 importance} as llama-quantize's load_imatrix computes it."""
    from gguf import GGUFReader
    r = GGUFReader(path)
    t = {x.name: np.asarray(x.data, dtype=np.float32).reshape(-1) for x in r.tensors}
    out = {}
    for name, sums in t.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name[: -len(".in_sum2")]
        counts = t[base + ".counts"]
        ne0 = sums.size // counts.size
        v = np.empty_like(sums)
        for j, c in enumerate(counts):
            c = np.float32(int(np.floor(float(c) + 0.5)))  # lround, for counts >= 0
            v[j * ne0:(j + 1) * ne0] = sums[j * ne0:(j + 1) * ne0] / c if c > 0 else 1.0
        out[base] = v
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("ftype", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--imatrix")
    a = ap.parse_args()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = a.ftype
    params.nthread = a.threads
    if a.imatrix:
        values = imatrix_values(a.imatrix)
        keep = []  # the arrays must outlive the call
        data = (llama_cpp.llama_model_imatrix_data * (len(values) + 1))()
        for i, (name, v) in enumerate(sorted(values.items())):
            v = np.ascontiguousarray(v, dtype=np.float32)
            keep.append((name.encode(), v))
            data[i].name = keep[-1][0]
            data[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            data[i].size = v.size
        data[len(values)].name = None  # terminator
        params.imatrix = ctypes.cast(data, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(a.inp.encode(), a.out.encode(), ctypes.byref(params))
    secs = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed: {rc}")
    print(json.dumps({"seconds": secs, "ftype": a.ftype}))


if __name__ == "__main__":
    main()
