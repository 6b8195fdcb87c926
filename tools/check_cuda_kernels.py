#!/usr/bin/env python3
"""Compile the CUDA GPTQ kernels (the `SOURCE` string of src/quant/gptq/cuda/kernels.rs) with
NVRTC, the way the backend does at run time (`--fmad=false`), on a machine without a GPU:
NVRTC needs no device. Catches syntax and type errors in the kernels before a GPU run does.

    python3 -m pip install nvidia-cuda-nvrtc-cu12     # NVRTC alone, ~100 MB, no toolkit
    tools/check_cuda_kernels.py [--arch compute_80]

Prints NVRTC's log and the kernels' entry points found in the PTX; exits 1 on a compile error.
"""
import argparse
import ctypes
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_nvrtc():
    candidates = []
    try:
        import nvidia.cuda_nvrtc  # the pip wheel

        for d in nvidia.cuda_nvrtc.__path__:
            candidates += sorted(glob.glob(os.path.join(d, "lib", "libnvrtc.so*")))
    except ImportError:
        pass
    candidates += ["libnvrtc.so", "libnvrtc.so.12"]
    for c in candidates:
        try:
            return ctypes.CDLL(c)
        except OSError:
            continue
    sys.exit("libnvrtc not found: python3 -m pip install nvidia-cuda-nvrtc-cu12")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="compute_75")
    a = ap.parse_args()
    text = open(os.path.join(ROOT, "src/quant/gptq/cuda/kernels.rs")).read()
    m = re.search(r'const SOURCE: &str = r#"(.*?)"#;', text, re.S)
    if not m:
        sys.exit("SOURCE not found in kernels.rs")
    src = m.group(1).encode()

    nv = load_nvrtc()
    prog = ctypes.c_void_p()
    check = lambda rc, what: rc == 0 or sys.exit(f"{what} failed ({rc})")
    check(nv.nvrtcCreateProgram(ctypes.byref(prog), src, b"qforge_gptq.cu", 0, None, None), "nvrtcCreateProgram")
    opts = [b"--fmad=false", f"--gpu-architecture={a.arch}".encode()]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = nv.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    nv.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nv.nvrtcGetProgramLog(prog, log)
    if log.value.strip():
        print(log.value.decode())
    if rc != 0:
        print(f"NVRTC compile failed ({rc})")
        return 1
    nv.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    nv.nvrtcGetPTX(prog, ptx)
    entries = re.findall(r"\.visible \.entry (\w+)\(", ptx.value.decode())
    print(f"compiled: {len(ptx.value)} bytes of PTX, entry points: {', '.join(entries)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
