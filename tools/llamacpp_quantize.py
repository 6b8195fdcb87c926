"""Quantize a GGUF with llama.cpp's own quantizer (llama_model_quantize, through
llama-cpp-python) and print JSON {seconds, ftype}.

usage: llamacpp_quantize.py IN.gguf OUT.gguf FTYPE_ID [--threads 2]
(FTYPE_ID is llama.cpp's llama_ftype: Q4_0=2, Q8_0=7, Q4_K_M=15, Q6_K=18, IQ4_NL=25, ...)
"""
import argparse
import ctypes
import json
import time

import llama_cpp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("ftype", type=int)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = a.ftype
    params.nthread = a.threads
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(a.inp.encode(), a.out.encode(), ctypes.byref(params))
    secs = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed: {rc}")
    print(json.dumps({"seconds": secs, "ftype": a.ftype}))


if __name__ == "__main__":
    main()
