#!/usr/bin/env python3
"""Generate the committed llama.cpp reference vectors for tests/suite/codec_bytes.rs: the GGML
quantizers with an importance matrix.

Writes tests/fixtures/codec_imatrix/:
  weights.f32      the importance vectors (one per input set, float32 little-endian)
  <TYPE>.bin       for each of the 10 weighted types (all but Q8_0), llama.cpp's
                   ggml_quantize_chunk(type, rows, imatrix = weights of the set) of every set,
                   one after the other
  MANIFEST.json    the sets (which rows of which input, where their weights are, SHA-256 of
                   rows and weights), per type the size and SHA-256 of <TYPE>.bin, the versions
  README.md        how the files were made (written from the same data)

The input rows are those of tests/fixtures/codec (tools/gen_codec_vectors.py builds them the
same way, deterministically; down_proj is read from the committed tiny model), so they are not
stored again. The sets:
  synthetic-lognormal  the 84 synthetic edge-case rows, log-normal weights (sigma 1.5: a few
                       columns dominate, as with real activations)
  synthetic-sparse     the same rows, weights with exact zeros (a third of the columns, in runs
                       so that whole blocks and sub-blocks are zero), ties and huge values
  random               the first 256 random rows, log-normal weights (sigma 1)
  down_proj            the tiny model's layer-0 down_proj (256 x 768) with the importance that
                       `qforge imatrix` measures for it on calibration/calib.txt
                       (tests/fixtures/codec_imatrix/down_proj.imatrix.f32, committed; see below)

The down_proj importance is real: blk.0.ffn_down.weight's in_sum2/counts from
`qforge imatrix tests/fixtures/tiny-llama --text calibration/calib.txt --chunks 16`, saved once
with --save-down-proj-weights FILE (it needs the built qforge and the gguf package).

llama.cpp is reached as tests/py/codec_reference.py reaches it (libggml-base.so from the
llama-cpp-python package, through ctypes). Run on x86-64 Linux only (see gen_codec_vectors.py).

    python3 tools/gen_imatrix_vectors.py            # (re)write tests/fixtures/codec_imatrix/
    python3 tools/gen_imatrix_vectors.py --check    # regenerate in memory and compare

then `cargo test --release --test suite codec_bytes::`.
"""
import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "codec_imatrix")
DOWN_PROJ_WEIGHTS = "down_proj.imatrix.f32"
# Q8_0 is left out: llama.cpp ignores the imatrix for it (checked below, and recorded).
TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL"]
RANDOM_ROWS = 256


def load(name, rel):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, rel))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def lognormal(rng, n, sigma):
    """exp(sigma * N(0,1)) from the generators' xorshift, in float32."""
    return np.array([np.exp(sigma * rng.normal()) for _ in range(n)], dtype=np.float64).astype(np.float32)


def sparse(rng, n):
    """Zeros in runs (whole 16/32-weight groups and scattered ones), ties, tiny and huge values."""
    w = np.zeros(n, dtype=np.float64)
    for i in range(n):
        u = rng.uniform()
        group = (i // 16) % 6
        if group == 1 or (group == 4 and (i // 32) % 2 == 0):
            w[i] = 0.0                 # whole sub-blocks / blocks of zero importance
        elif u < 0.15:
            w[i] = 0.0                 # scattered zeros
        elif u < 0.30:
            w[i] = 1.0                 # ties
        elif u < 0.35:
            w[i] = 1e4 * rng.uniform()  # dominant columns
        elif u < 0.40:
            w[i] = 1e-8 * rng.uniform()  # negligible ones
        else:
            w[i] = rng.uniform() * 2.0
    return w.astype(np.float32)


def save_down_proj_weights(path):
    """Measure blk.0.ffn_down.weight's importance on calib.txt with qforge (one-off)."""
    import gguf
    qforge = os.path.join(ROOT, "target", "release", "qforge")
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "tiny.imatrix.gguf")
        subprocess.run([qforge, "-q", "imatrix", os.path.join(ROOT, "tests", "fixtures", "tiny-llama"),
                        "--text", os.path.join(ROOT, "calibration", "calib.txt"), "--chunks", "16", "-o", out],
                       check=True)
        r = gguf.GGUFReader(out)
        t = {x.name: np.array(x.data, dtype=np.float32).reshape(-1) for x in r.tensors}
        s, c = t["blk.0.ffn_down.weight.in_sum2"], t["blk.0.ffn_down.weight.counts"]
        w = (s / c[0]).astype("<f4")
    w.tofile(path)
    print(f"wrote {path}: {w.size} weights, min {w.min():.3g}, max {w.max():.3g}")


def build(ref, gen):
    names, syn = gen.synthetic()
    rnd = gen.random_rows()[:RANDOM_ROWS]
    down = gen.down_proj()
    wpath = os.path.join(OUT_DIR, DOWN_PROJ_WEIGHTS)
    if not os.path.exists(wpath):
        sys.exit(f"{wpath} is missing: make it with --save-down-proj-weights {wpath}")
    down_w = np.fromfile(wpath, dtype="<f4")
    assert down_w.size == down.shape[1], (down_w.size, down.shape)

    rng = gen.Rng(0x1A7A1B1C)
    sets = [
        ("synthetic-lognormal", syn, "codec:synthetic", 0, lognormal(rng, syn.shape[1], 1.5)),
        ("synthetic-sparse", syn, "codec:synthetic", 0, sparse(rng, syn.shape[1])),
        ("random", rnd, "codec:random", 0, lognormal(rng, rnd.shape[1], 1.0)),
        ("down_proj", down, "codec:down_proj", 0, down_w),
    ]
    weights_blob = b"".join(gen.f32_bytes(w) for (_, _, _, _, w) in sets)
    files = {"weights.f32": weights_blob}
    manifest_sets = []
    woff = 0
    for name, a, src, row0, w in sets:
        manifest_sets.append({
            "name": name, "source": src, "first_row": row0, "rows": a.shape[0], "cols": a.shape[1],
            "sha256": gen.sha256(gen.f32_bytes(a)), "weights_offset": woff,
            "weights_sha256": gen.sha256(gen.f32_bytes(w)),
        })
        woff += w.size
    for (_, a, _, _, w) in sets:
        q8 = ref.ggml_quantize("Q8_0", a, imatrix=w).tobytes()
        assert q8 == ref.ggml_quantize("Q8_0", a).tobytes(), "llama.cpp's Q8_0 now uses the imatrix"
    manifest_types = []
    for t in TYPES:
        qk, nbytes = ref.BLOCKS[t]
        parts = [ref.ggml_quantize(t, a, imatrix=w).tobytes() for (_, a, _, _, w) in sets]
        blob = b"".join(parts)
        files[f"{t}.bin"] = blob
        manifest_types.append({"type": t, "file": f"{t}.bin", "block_weights": qk, "block_bytes": nbytes,
                               "bytes": len(blob), "sha256": gen.sha256(blob)})
    manifest = {
        "generator": "tools/gen_imatrix_vectors.py",
        "reference": "ggml_quantize_chunk(type, rows, imatrix=weights) from llama.cpp's libggml-base, "
                     "via tests/py/codec_reference.py",
        "order": "each <TYPE>.bin holds the sets in the order listed, each quantized as one call",
        "q8_0_ignores_imatrix": True,
        "versions": gen.versions(ref),
        "sets": manifest_sets,
        "types": manifest_types,
        "files": {k: {"bytes": len(v), "sha256": gen.sha256(v)} for k, v in files.items()},
    }
    return manifest, files


def readme(m):
    v = m["versions"]
    lines = [
        "# llama.cpp reference vectors for the importance-weighted quantizers",
        "",
        "Checked by `tests/suite/codec_bytes.rs`: `qforge::quant::weighted::encode_weighted` must",
        "reproduce `<TYPE>.bin` byte for byte. **Generated, do not edit**: rerun",
        "`python3 tools/gen_imatrix_vectors.py` (x86-64 Linux) instead; `--check` compares.",
        "",
        f"Made with llama-cpp-python {v.get('llama_cpp_python')} ({v.get('libggml_base')}, ggml "
        f"{v.get('ggml_version', '?')}, commit {v.get('ggml_commit', '?')}), numpy {v.get('numpy')},",
        f"Python {v.get('python')}, {v.get('system')} {v.get('machine')}.",
        "",
        "Reference: " + m["reference"] + ". With an imatrix that is `quantize_row_<type>_impl`",
        "for the legacy types and the K-quants, `quantize_iq4_nl` (ntry 7) for IQ4_NL. Q8_0 ignores",
        "the importance (the generator checks that its bytes equal the unweighted ones), so it has",
        "no file here.",
        "",
        "The rows are those of `tests/fixtures/codec` (not stored again); the importance vectors",
        "are in `weights.f32`, `down_proj.imatrix.f32` being a real one (layer 0 ffn_down of the",
        "tiny model on calibration/calib.txt):",
        "",
    ]
    for s in m["sets"]:
        lines.append(f"- `{s['name']}`: {s['rows']} rows of {s['cols']} from {s['source']}, weights from "
                     f"`weights.f32` value {s['weights_offset']}")
    lines += ["", "| file | bytes |", "|---|---:|"]
    for k, f in m["files"].items():
        lines.append(f"| `{k}` | {f['bytes']:,} |")
    lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the committed files; write nothing")
    ap.add_argument("--save-down-proj-weights", metavar="FILE",
                    help="measure the down_proj importance with qforge and write it to FILE, then stop")
    a = ap.parse_args()
    if a.save_down_proj_weights:
        save_down_proj_weights(a.save_down_proj_weights)
        return
    if platform.machine() not in ("x86_64", "AMD64"):
        sys.exit(f"gen_imatrix_vectors.py: run this on x86-64 (this is {platform.machine()})")
    ref = load("codec_reference", "tests/py/codec_reference.py")
    gen = load("gen_codec_vectors", "tools/gen_codec_vectors.py")
    manifest, files = build(ref, gen)
    text = {"MANIFEST.json": json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", "README.md": readme(manifest)}
    if a.check:
        bad = [k for k, b in files.items()
               if not os.path.exists(os.path.join(OUT_DIR, k)) or open(os.path.join(OUT_DIR, k), "rb").read() != b]
        old = json.load(open(os.path.join(OUT_DIR, "MANIFEST.json")))
        bad += [f"MANIFEST.json[{k}]" for k in ("sets", "types", "files") if old[k] != manifest[k]]
        if bad:
            print("differs from the committed vectors:", ", ".join(bad))
            sys.exit(1)
        print("the committed vectors are reproduced exactly")
        return
    os.makedirs(OUT_DIR, exist_ok=True)
    for k, b in files.items():
        with open(os.path.join(OUT_DIR, k), "wb") as f:
            f.write(b)
    for k, s in text.items():
        with open(os.path.join(OUT_DIR, k), "w", encoding="utf-8", newline="\n") as f:
            f.write(s)
    print(f"wrote {len(files) + len(text)} files to {OUT_DIR}")


if __name__ == "__main__":
    main()
