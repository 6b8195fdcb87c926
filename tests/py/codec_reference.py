#!/usr/bin/env python3
"""Reference GGML block codecs, for tests/suite/codec_bytes.rs.

    codec_reference.py quantize   TYPES IN OUT [--cols N] [--impl auto|gguf|ggml] [--imatrix F32]
    codec_reference.py dequantize TYPES IN OUT [--impl gguf|ggml]
    codec_reference.py info

TYPES is one ggml type name (Q4_K) or several, comma-separated; with several, OUT (and for
dequantize IN) must contain "{type}", replaced by each name. Quantize reads float32 rows from
a .npy file (2-D) or a raw little-endian .f32 file (--cols gives the row length) and writes the
quantized bytes raw; dequantize reads raw quantized bytes and writes raw float32.

Implementations:
  gguf  gguf-py's numpy codecs (gguf.quants). It quantizes only Q4_0, Q4_1, Q5_0, Q5_1, Q8_0;
        it dequantizes every type used here.
  ggml  llama.cpp's own C code, from the libggml-base shared library that the llama-cpp-python
        wheel bundles (site-packages/llama_cpp/lib/), through ctypes:
        ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, imatrix=NULL), the entry
        point llama-quantize uses, and the type's `to_float` from ggml_get_type_traits.
        With a NULL imatrix ggml_quantize_chunk runs quantize_row_<type>_ref for the legacy
        types and the K-quants, and quantize_iq4_nl (quantize_row_iq4_nl_impl with ntry = 7,
        not quantize_row_iq4_nl_ref's ntry = -1) for IQ4_NL.
        Set QFORGE_LIBGGML_BASE to use another libggml-base.so. Set QFORGE_HIDE_LLAMA_CPP=1
        to make this script behave as if llama_cpp were not installed (to test that the
        tests that do not ask for llama.cpp never need it).
  auto  (quantize only) gguf where gguf-py can quantize the type, ggml otherwise.
"""
import argparse
import ctypes
import glob
import importlib.util
import os
import sys

import numpy as np

# ggml.h `enum ggml_type`.
GGML_TYPE_IDS = {
    "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8,
    "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "IQ4_NL": 20,
}
# (weights per block, bytes per block), ggml-common.h.
BLOCKS = {
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176),
    "Q6_K": (256, 210), "IQ4_NL": (32, 18),
}
GGUF_QUANTIZES = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}


def die(msg):
    print(f"codec_reference.py: {msg}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------- ggml through ctypes

class TypeTraits(ctypes.Structure):
    # ggml.h `struct ggml_type_traits`
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


def libggml_base_path():
    if os.environ.get("QFORGE_HIDE_LLAMA_CPP") == "1":
        die("llama_cpp (pip install llama-cpp-python) is not installed; it provides libggml-base "
            "(pretended: QFORGE_HIDE_LLAMA_CPP=1)")
    env = os.environ.get("QFORGE_LIBGGML_BASE")
    if env:
        return env
    # Find the package without importing it: importing llama_cpp loads libllama and
    # initializes its backends, which we do not need.
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        die("llama_cpp (pip install llama-cpp-python) is not installed; it provides libggml-base")
    for base in spec.submodule_search_locations:
        for pat in ("lib/libggml-base.so", "lib/libggml-base.so.*", "lib/libggml-base.dylib",
                    "lib/ggml-base.dll", "**/libggml-base.so*"):
            hits = sorted(glob.glob(os.path.join(base, pat), recursive=True))
            if hits:
                return hits[0]
    die("libggml-base not found inside the llama_cpp package")


_LIB = None


def libggml():
    global _LIB
    if _LIB is None:
        lib = ctypes.CDLL(libggml_base_path())
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                            ctypes.c_void_p]
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
        lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
        lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
        lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
        _LIB = lib
    return _LIB


def check_traits(lib, name):
    t = lib.ggml_get_type_traits(GGML_TYPE_IDS[name]).contents
    qk, nbytes = BLOCKS[name]
    got = (t.type_name.decode().upper(), t.blck_size, t.type_size)
    if got != (name, qk, nbytes):
        die(f"libggml-base disagrees about {name}: {got}")
    return t


def ggml_quantize(name, rows, imatrix=None):
    """ggml_quantize_chunk of float32 rows; `imatrix` (one float per column) selects the
    importance-weighted quantizers."""
    lib = libggml()
    check_traits(lib, name)
    tid = GGML_TYPE_IDS[name]
    assert imatrix is not None or not lib.ggml_quantize_requires_imatrix(tid)
    nrows, cols = rows.shape
    qk, nbytes = BLOCKS[name]
    out = np.zeros(nrows * cols // qk * nbytes, dtype=np.uint8)
    src = np.ascontiguousarray(rows, dtype=np.float32)
    qw = None
    if imatrix is not None:
        qw = np.ascontiguousarray(imatrix, dtype=np.float32)
        assert qw.shape == (cols,), (qw.shape, cols)
    n = lib.ggml_quantize_chunk(tid, src.ctypes.data, out.ctypes.data, 0, nrows, cols,
                                None if qw is None else qw.ctypes.data)
    assert n == out.size, (n, out.size)
    return out


def ggml_dequantize(name, data, n):
    lib = libggml()
    t = check_traits(lib, name)
    out = np.zeros(n, dtype=np.float32)
    data = np.ascontiguousarray(data)
    TO_FLOAT(t.to_float)(data.ctypes.data, out.ctypes.data, n)
    return out


# ---------------------------------------------------------------- gguf-py

def gguf_type(name):
    from gguf.constants import GGMLQuantizationType
    return GGMLQuantizationType[name]


def gguf_quantize(name, rows):
    import gguf.quants
    if name not in GGUF_QUANTIZES:
        die(f"gguf-py cannot quantize {name}")
    return gguf.quants.quantize(rows, gguf_type(name)).reshape(-1)


def gguf_dequantize(name, data, n):
    import gguf.quants
    qk, nbytes = BLOCKS[name]
    return gguf.quants.dequantize(data.reshape(n // qk, nbytes), gguf_type(name)).reshape(-1)


# ---------------------------------------------------------------- CLI

def load_rows(path, cols):
    if path.endswith(".npy"):
        a = np.load(path)
        if a.ndim != 2:
            die(f"{path}: expected a 2-D array, got shape {a.shape}")
        return a.astype(np.float32, copy=False)
    if not cols:
        die("--cols is required for raw .f32 input")
    a = np.fromfile(path, dtype="<f4")
    if a.size % cols:
        die(f"{path}: {a.size} floats is not a whole number of rows of {cols}")
    return a.reshape(-1, cols)


def expand(template, name, many):
    if many and "{type}" not in template:
        die(f"{template}: must contain {{type}} when several types are given")
    return template.replace("{type}", name)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["quantize", "dequantize", "info"])
    ap.add_argument("types", nargs="?")
    ap.add_argument("input", nargs="?")
    ap.add_argument("output", nargs="?")
    ap.add_argument("--cols", type=int, default=0)
    ap.add_argument("--impl", choices=["auto", "gguf", "ggml"], default="auto")
    ap.add_argument("--imatrix", metavar="F32",
                    help="quantize: raw float32 importance, one value per column (implies --impl ggml)")
    a = ap.parse_args()

    if a.command == "info":
        from importlib.metadata import PackageNotFoundError, version
        import gguf

        def ver(dist):
            try:
                return version(dist)
            except PackageNotFoundError:
                return "?"
        print("numpy", np.__version__)
        print("gguf", ver("gguf"), os.path.dirname(gguf.__file__))
        print("llama-cpp-python", ver("llama_cpp_python"))
        print("libggml-base", libggml_base_path())
        for name in GGML_TYPE_IDS:
            check_traits(libggml(), name)
        return

    if not (a.types and a.input and a.output):
        die("TYPES, IN and OUT are required")
    names = a.types.split(",")
    for name in names:
        if name not in BLOCKS:
            die(f"unknown type {name} (known: {', '.join(BLOCKS)})")
    many = len(names) > 1

    if a.command == "quantize":
        rows = load_rows(a.input, a.cols)
        for name in names:
            if rows.shape[1] % BLOCKS[name][0]:
                die(f"rows of {rows.shape[1]} are not whole {name} blocks")
            impl = a.impl
            if impl == "auto":
                impl = "gguf" if name in GGUF_QUANTIZES and not a.imatrix else "ggml"
            if a.imatrix:
                if impl != "ggml":
                    die("--imatrix needs --impl ggml (gguf-py has no weighted quantizers)")
                qw = np.fromfile(a.imatrix, dtype="<f4")
                if qw.size != rows.shape[1]:
                    die(f"{a.imatrix}: {qw.size} weights for rows of {rows.shape[1]}")
                q = ggml_quantize(name, rows, imatrix=qw)
            else:
                q = gguf_quantize(name, rows) if impl == "gguf" else ggml_quantize(name, rows)
            q.astype(np.uint8).tofile(expand(a.output, name, many))
    else:
        for name in names:
            qk, nbytes = BLOCKS[name]
            data = np.fromfile(expand(a.input, name, many), dtype=np.uint8)
            if data.size % nbytes:
                die(f"{data.size} bytes is not a whole number of {name} blocks")
            n = data.size // nbytes * qk
            impl = "gguf" if a.impl == "auto" else a.impl
            y = gguf_dequantize(name, data, n) if impl == "gguf" else ggml_dequantize(name, data, n)
            y.astype("<f4").tofile(expand(a.output, name, many))


if __name__ == "__main__":
    main()
