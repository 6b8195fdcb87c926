#!/usr/bin/env python3
"""Generate the committed llama.cpp reference vectors for tests/suite/codec_bytes.rs.

Writes tests/fixtures/codec/:
  inputs.f32       the synthetic edge-case rows and the random rows, float32 little-endian,
                   rows of 256 (the third input set, 256 rows of 768 of the tiny model's
                   model.layers.0.mlp.down_proj.weight, is read from the committed
                   tests/fixtures/tiny-llama/model.safetensors instead of being stored twice;
                   its SHA-256 is recorded so the test knows it quantizes the same floats)
  <TYPE>.bin       for each of the 11 types, llama.cpp's ggml_quantize_chunk(type, rows,
                   imatrix = NULL) of the three sets, one after the other (synthetic, random,
                   down_proj), then 4096 weights' worth of blocks of random bytes (finite f16
                   scales) that are only dequantized
  MANIFEST.json    the sets (offsets, shapes, row names, SHA-256 of their floats), per type the
                   size and SHA-256 of <TYPE>.bin and, per set and for the random blocks, the
                   SHA-256 of ggml's to_float of those bytes (float32 LE, NaNs written as
                   0x7FC00000), plus the versions that made them
  README.md        how the files were made (written from the same data)

llama.cpp is reached as tests/py/codec_reference.py reaches it: libggml-base.so from the
llama-cpp-python package, through ctypes. The vectors committed were made with
llama-cpp-python 0.3.36 (its bundled ggml 0.25.3, commit "0c1e570-dirty" as ggml_commit()
reports it), built from the sdist with gcc 12.2 for plain x86-64 (that libggml-base.so has no
AVX/FMA code: the reference quantizers are scalar). Run it on x86-64 Linux only: the C code's float->int8 casts in the quantizers
(cvttss2si) and its NaN bit patterns are those of x86-64; on other machines the bytes can
differ for out-of-range blocks.

Exact command (from the repository root; needs numpy and llama-cpp-python, e.g.
`pip install llama-cpp-python==0.3.36 numpy`):

    python3 tools/gen_codec_vectors.py            # (re)write tests/fixtures/codec/
    python3 tools/gen_codec_vectors.py --check    # regenerate in memory, compare, write nothing

then `cargo test --release --test suite codec_bytes::`. `--check` exits 1 if anything differs
(e.g. another llama.cpp version quantizes differently); set QFORGE_LIBGGML_BASE to try
another libggml-base.so.
"""
import argparse
import hashlib
import importlib.util
import json
import os
import platform
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "codec")
MODEL = os.path.join(ROOT, "tests", "fixtures", "tiny-llama", "model.safetensors")
DOWN_PROJ = "model.layers.0.mlp.down_proj.weight"
RAW_NAME = "random_blocks"
RAW_WEIGHTS = 4096  # per type, in the random-bytes blocks
# Byte offsets of each type's f16 fields (d, and dmin/m where there is one), ggml-common.h.
F16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "IQ4_NL": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}
TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL"]
COLS = 256
RANDOM_ROWS = 512


def load_reference():
    path = os.path.join(ROOT, "tests", "py", "codec_reference.py")
    spec = importlib.util.spec_from_file_location("codec_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def f32_bytes(a):
    return np.ascontiguousarray(a, dtype="<f4").tobytes()


def dequantized_sha256(y):
    """SHA-256 of dequantized floats, each NaN written as 0x7FC00000: blocks whose f16 scale
    overflowed decode 0*inf, and the NaN's sign is the CPU's (x86-64 gives 0xFFC00000, AArch64
    0x7FC00000), not the codec's. Every other value counts bit for bit."""
    bits = np.ascontiguousarray(y, dtype="<f4").view("<u4").copy()
    bits[np.isnan(y)] = 0x7FC00000
    return sha256(bits.tobytes())


# ---------------------------------------------------------------- inputs

class Rng:
    """xorshift32, as the Rust test used: deterministic, independent of numpy's generators."""

    def __init__(self, seed):
        self.s = seed

    def uniform(self):
        s = self.s
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        self.s = s
        return (s >> 8) / float(1 << 24)

    def normal(self):
        """Roughly normal: the sum of 4 uniforms, centred, scaled to unit variance."""
        return (self.uniform() + self.uniform() + self.uniform() + self.uniform() - 2.0) * 3.0 ** 0.5


def synthetic():
    """Rows of 256 (one super-block, 8 legacy blocks) built to hit edge cases; (names, rows)."""
    r = Rng(0x9E3779B9)
    rows = []

    def row(name, f):
        rows.append((name, [f(i) for i in range(COLS)]))

    row("zeros", lambda i: 0.0)
    row("negative zeros", lambda i: -0.0)
    row("constant 0.5", lambda i: 0.5)
    row("constant -0.25", lambda i: -0.25)
    row("outlier +50", lambda i: 50.0 if i == 77 else 0.02 * r.normal())
    row("outlier -1e4", lambda i: -1e4 if i == 200 else 0.02 * r.normal())
    row("tiny 1e-30", lambda i: 1e-30 * r.normal())
    row("tiny 1e-20 mixed with 0", lambda i: 0.0 if i % 3 == 0 else 1e-20 * r.normal())
    row("subnormal 1e-40", lambda i: 1e-40 * r.normal())
    row("negative only", lambda i: -abs(0.05 * r.normal()) - 1e-4)
    row("positive only", lambda i: abs(0.05 * r.normal()) + 1e-4)
    row("alternating signs", lambda i: (1.0 if i % 2 == 0 else -1.0) * (0.01 + 0.01 * r.uniform()))
    row("alternating +-1", lambda i: 1.0 if i % 2 == 0 else -1.0)
    row("ties: k/8", lambda i: ((i % 17) - 8.0) / 8.0)
    row("ties: integers 0..15", lambda i: float(i % 16))
    row("ties: integers -16..15", lambda i: float(i % 32) - 16.0)
    row("ties: halves", lambda i: (i % 7) * 0.5 - 1.5)
    row("large 1e4", lambda i: 1e4 * r.normal())
    row("beyond f16 1e6", lambda i: 1e6 * r.normal())
    row("scale per block", lambda i: 10.0 ** (i // 32 - 4) * r.normal())
    row("scale per 16", lambda i: 10.0 ** (i // 16 % 5 - 2) * r.normal())
    row("sparse: one per 16", lambda i: r.normal() if i % 16 == 5 else 0.0)
    row("sparse: one per 32", lambda i: -r.uniform() - 0.5 if i % 32 == 31 else 0.0)
    row("zero sub-blocks", lambda i: 0.0 if (i // 16) % 2 == 0 else r.normal())
    row("ramp", lambda i: i / 127.5 - 1.0)
    row("offset", lambda i: 3.0 + 0.01 * r.normal())
    row("bimodal", lambda i: (-1.0 if r.uniform() < 0.5 else 1.0) + 0.05 * r.normal())
    # Around the f16 limits of the block scales: d near 65504 (the largest f16) and near
    # 6.1e-5 (the smallest normal f16), where d rounds to a subnormal or to infinity.
    row("f16 max: amax 65504*8", lambda i: 65504.0 * 8.0 * (r.uniform() - 0.5) * 2.0)
    row("f16 max: amax 65504*127", lambda i: 65504.0 * 127.0 * (r.uniform() - 0.5) * 2.0)
    row("f16 min normal scale", lambda i: 6.1e-5 * 8.0 * r.normal())
    row("f16 subnormal scale", lambda i: 1e-6 * r.normal())
    row("powers of two", lambda i: (-1.0 if i % 3 == 0 else 1.0) * 2.0 ** (i % 11 - 5))
    row("one nonzero per super-block", lambda i: 0.7 if i == 129 else 0.0)
    row("ties plus epsilon", lambda i: ((i % 17) - 8.0) / 8.0 + (1e-7 if i % 2 else -1e-7))
    for _ in range(40):
        s = 10.0 ** (4.0 * r.uniform() - 3.0)
        row("random normal", lambda i, s=s: s * r.normal())
    for _ in range(10):
        row("random heavy-tailed", lambda i: r.normal() ** 3 * 0.01)
    names = [n for n, _ in rows]
    data = np.array([v for _, v in rows], dtype=np.float64).astype(np.float32)
    return names, data


def random_rows():
    """RANDOM_ROWS rows of assorted distributions, scales and offsets, to meet the rare cases
    (rounding ties, near-equal candidates in the scale searches) that a few rows miss."""
    r = Rng(0x0BAD5EED)
    data = np.zeros((RANDOM_ROWS, COLS), dtype=np.float32)
    for k in range(RANDOM_ROWS):
        scale = 10.0 ** (6.0 * r.uniform() - 4.0)
        shift = scale * (r.uniform() - 0.5) * 4.0 if k % 5 == 0 else 0.0
        kind = k % 6
        vals = []
        for _ in range(COLS):
            if kind == 0:
                v = r.normal()
            elif kind == 1:
                v = 2.0 * r.uniform() - 1.0
            elif kind == 2:
                n = r.normal()
                v = n * abs(n)
            elif kind == 3:
                v = round(r.normal() * 4.0) / 4.0
            elif kind == 4:  # Laplace
                u = r.uniform() - 0.5
                v = -np.sign(u) * np.log1p(-2.0 * abs(u) + 1e-12)
            else:  # mostly small with rare large values, like outlier channels
                v = r.normal() * (20.0 if r.uniform() < 0.02 else 1.0)
            vals.append(scale * v + shift)
        data[k] = np.array(vals, dtype=np.float64).astype(np.float32)
    return data


def random_blocks(ref, name):
    """RAW_WEIGHTS weights' worth of blocks of random bytes, with the f16 scale fields forced
    finite (random bits, exponent 31 avoided; so zeros, subnormals and values up to 65504
    appear): bytes the quantizers rarely or never write (Q8_0's -128, every scale and
    high-bit pattern) for the dequantizers alone."""
    qk, nbytes = ref.BLOCKS[name]
    r = Rng(0xC0DEC000 + ref.GGML_TYPE_IDS[name])
    n = RAW_WEIGHTS // qk * nbytes
    words = []
    for _ in range((n + 3) // 4):
        r.uniform()
        words.append(r.s)
    b = np.array(words, dtype="<u4").view(np.uint8)[:n].copy().reshape(-1, nbytes)
    for off in F16_FIELDS[name]:
        h = b[:, off].astype(np.uint16) | (b[:, off + 1].astype(np.uint16) << 8)
        h = np.where((h & 0x7C00) == 0x7C00, h & ~np.uint16(0x4000), h).astype(np.uint16)
        b[:, off] = h & 0xFF
        b[:, off + 1] = h >> 8
    return b.reshape(-1)


def down_proj():
    """The tiny model's down_proj, bf16 -> f32 (exact)."""
    with open(MODEL, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        t = header[DOWN_PROJ]
        assert t["dtype"] == "BF16", t["dtype"]
        start, end = t["data_offsets"]
        f.seek(8 + n + start)
        raw = np.frombuffer(f.read(end - start), dtype="<u2")
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(t["shape"])


# ---------------------------------------------------------------- main

def versions(ref):
    import ctypes
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist):
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    lib = ref.libggml()
    v = {
        "llama_cpp_python": ver("llama_cpp_python"),
        "libggml_base": os.path.basename(os.path.realpath(ref.libggml_base_path())),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "system": platform.system(),
    }
    for fn in ("ggml_version", "ggml_commit"):
        if hasattr(lib, fn):
            getattr(lib, fn).restype = ctypes.c_char_p
            v[fn] = getattr(lib, fn)().decode()
    return v


def build(ref):
    names, syn = synthetic()
    rnd = random_rows()
    down = down_proj()
    sets = [("synthetic", syn, "inputs.f32"), ("random", rnd, "inputs.f32"), ("down_proj", down, "model")]
    files = {"inputs.f32": f32_bytes(np.concatenate([syn.reshape(-1), rnd.reshape(-1)]))}
    manifest_sets = []
    offset = {"inputs.f32": 0}
    for name, a, src in sets:
        entry = {"name": name, "rows": a.shape[0], "cols": a.shape[1], "sha256": sha256(f32_bytes(a))}
        if src == "inputs.f32":
            entry["source"] = "inputs.f32"
            entry["offset_weights"] = offset[src]
            offset[src] += a.size
        else:
            entry["source"] = f"tiny-llama/model.safetensors:{DOWN_PROJ}"
        if name == "synthetic":
            entry["row_names"] = names
        manifest_sets.append(entry)
    manifest_types = []
    for t in TYPES:
        qk, nbytes = ref.BLOCKS[t]
        parts, deq = [], {}
        for (name, a, _) in sets:
            q = ref.ggml_quantize(t, a)
            parts.append(q.tobytes())
            y = ref.ggml_dequantize(t, q, a.size)
            deq[name] = dequantized_sha256(y)
        raw = random_blocks(ref, t)
        parts.append(raw.tobytes())
        deq[RAW_NAME] = dequantized_sha256(ref.ggml_dequantize(t, raw, RAW_WEIGHTS))
        blob = b"".join(parts)
        files[f"{t}.bin"] = blob
        manifest_types.append({"type": t, "file": f"{t}.bin", "block_weights": qk, "block_bytes": nbytes,
                               "bytes": len(blob), "sha256": sha256(blob), "dequantized_sha256": deq})
    manifest = {
        "generator": "tools/gen_codec_vectors.py",
        "reference": "ggml_quantize_chunk(type, rows, imatrix=NULL) and the type's to_float "
                     "(ggml_get_type_traits) from llama.cpp's libggml-base, via tests/py/codec_reference.py",
        "order": "each <TYPE>.bin holds the sets in the order listed, each quantized row by row, "
                 "then the random_blocks",
        "random_blocks": {"name": RAW_NAME, "weights_per_type": RAW_WEIGHTS,
                          "what": "blocks of random bytes (xorshift32 seeded 0xC0DEC000 + the ggml type id) "
                                  "with finite f16 scale fields, at the end of each <TYPE>.bin; "
                                  "only dequantized (dequantized_sha256.random_blocks)"},
        "versions": versions(ref),
        "sets": manifest_sets,
        "types": manifest_types,
        "files": {k: {"bytes": len(v), "sha256": sha256(v)} for k, v in files.items()},
    }
    return manifest, files


def readme(m):
    v = m["versions"]
    lines = [
        "# llama.cpp reference vectors for the GGML block codecs",
        "",
        "Checked by `tests/suite/codec_bytes.rs`: qforge's quantizer must reproduce `<TYPE>.bin` byte for",
        "byte, and its dequantizer must reproduce llama.cpp's dequantization of those bytes bit for",
        "bit (compared through the SHA-256 in `MANIFEST.json`). **Generated, do not edit**: rerun",
        "the generator instead.",
        "",
        "Made by `python3 tools/gen_codec_vectors.py` (from the repository root, on x86-64 Linux),",
        f"with llama-cpp-python {v.get('llama_cpp_python')} ({v.get('libggml_base')}, ggml "
        f"{v.get('ggml_version', '?')}, commit {v.get('ggml_commit', '?')}), numpy {v.get('numpy')},",
        f"Python {v.get('python')}, {v.get('system')} {v.get('machine')}. `python3 tools/gen_codec_vectors.py --check`",
        "regenerates everything in memory and compares it with these files.",
        "",
        "Reference: " + m["reference"] + ". With a NULL imatrix that is",
        "`quantize_row_<type>_ref` for the legacy types and the K-quants, and `quantize_iq4_nl`",
        "(ntry = 7) for IQ4_NL.",
        "",
        "Inputs (float32; every row is a whole number of 256-weight super-blocks):",
        "",
    ]
    for s in m["sets"]:
        where = s["source"] + (f" (from weight {s['offset_weights']})" if "offset_weights" in s else "")
        lines.append(f"- `{s['name']}`: {s['rows']} rows of {s['cols']}, {where}; sha256 {s['sha256'][:16]}…")
    lines += [
        "",
        "`synthetic` is the edge cases (zeros, −0, constants, outliers, tiny, huge, subnormal and",
        "f16-limit scales, sign patterns, exact rounding ties; the row names are in the manifest);",
        "`random` is deterministic (xorshift32) rows of six distributions at scales 1e-4..1e2, some",
        "shifted; `down_proj` is read from the committed tiny model rather than stored again (bf16,",
        "so exact in f32), and checked against its SHA-256.",
        "",
        "Each `<TYPE>.bin` is the quantized bytes of the three sets, in that order, followed by",
        f"`{m['random_blocks']['name']}`: {m['random_blocks']['weights_per_type']} weights' worth of blocks of random "
        "bytes (deterministic;",
        "the f16 scale fields kept finite), which are only dequantized: they reach bit patterns the",
        "quantizers rarely or never write, such as Q8_0's −128.",
        "",
        "The dequantized SHA-256 are of float32 LE with every NaN written as 0x7FC00000 (blocks",
        "whose f16 scale overflowed decode 0·inf, whose sign is the CPU's, not the codec's); all",
        "other values count bit for bit.",
        "",
        "| file | bytes |",
        "|---|---:|",
    ]
    for k, f in m["files"].items():
        lines.append(f"| `{k}` | {f['bytes']:,} |")
    lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the committed files; write nothing")
    ap.add_argument("--out", default=OUT_DIR)
    a = ap.parse_args()
    if platform.machine() not in ("x86_64", "AMD64"):
        sys.exit(f"gen_codec_vectors.py: run this on x86-64 (this is {platform.machine()})")
    ref = load_reference()
    manifest, files = build(ref)
    text = {"MANIFEST.json": json.dumps(manifest, indent=1, ensure_ascii=False) + "\n",
            "README.md": readme(manifest)}
    if a.check:
        bad = []
        for k, b in files.items():
            p = os.path.join(a.out, k)
            if not os.path.exists(p) or open(p, "rb").read() != b:
                bad.append(k)
        old = json.load(open(os.path.join(a.out, "MANIFEST.json")))
        for key in ("sets", "random_blocks", "types", "files"):
            if old[key] != manifest[key]:
                bad.append(f"MANIFEST.json[{key}]")
        if bad:
            print("differs from the committed vectors:", ", ".join(bad))
            sys.exit(1)
        print("the committed vectors are reproduced exactly")
        return
    os.makedirs(a.out, exist_ok=True)
    for k, b in files.items():
        with open(os.path.join(a.out, k), "wb") as f:
            f.write(b)
    for k, s in text.items():
        with open(os.path.join(a.out, k), "w", encoding="utf-8", newline="\n") as f:
            f.write(s)
    total = sum(os.path.getsize(os.path.join(a.out, k)) for k in list(files) + list(text))
    print(f"wrote {len(files) + len(text)} files, {total:,} bytes, to {a.out}")


if __name__ == "__main__":
    main()
