#!/usr/bin/env python3
"""The architecture fixtures (tools/make_arch_fixtures.py) through llama.cpp: for each golden
variant, qforge's F32 and Q4_K_M GGUFs against llama.cpp's own pipeline on the same checkpoint
(convert_hf_to_gguf.py F32, then llama_model_quantize Q4_K_M), all run by llama.cpp
(llama-cpp-python) on the golden's 96-token WikiText window; transformers' NLL beside them.
Prints a Markdown table for BENCHMARKS.md and the tensors/metadata that differ between the
two F32 files; exit 1 if an F32 NLL differs by more than 1e-4 relative. For the variants in
CONVERTER_GAPS (settings llama.cpp reads from GGUF but its converter does not write), llama.cpp's
NLL on qforge's F32 is held to transformers' instead.

The fixtures' tokenizer (the trained tiny-llama BPE) is not in llama.cpp's pre-tokenizer hash
table, so convert_hf_to_gguf.py runs with its pre-tokenizer named "gpt-2" (what qforge
detects from the tokenizer's structure), and loads it as a plain PreTrainedTokenizerFast
(transformers 5 would pick Qwen2Tokenizer for a qwen2 config, which adds a token); nothing
else is changed.

Needs: torch, transformers, llama-cpp-python, the llama.cpp sources of the pinned
llama-cpp-python sdist (tools/bench_ppl.sh), qforge's release build.
usage: tools/check_arch_llamacpp.py LLAMA_CPP_DIR [FIXTURE...]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QFORGE = os.path.join(ROOT, "target/release/qforge")
sys.path.insert(0, os.path.join(ROOT, "tools"))
from make_arch_fixtures import FIXTURES  # noqa: E402

CONVERT = """
import sys
sys.path.insert(0, sys.argv[1] + "/gguf-py"); sys.path.insert(0, sys.argv[1])
sys.argv = [sys.argv[1] + "/convert_hf_to_gguf.py"] + sys.argv[2:]
import conversion.base as base
orig = base.TextModel.get_vocab_base_pre
def pre(self, tokenizer):
    try:
        return orig(self, tokenizer)
    except NotImplementedError:
        return "gpt-2"
base.TextModel.get_vocab_base_pre = pre
# transformers 5 picks the tokenizer class from the model type (Qwen2Tokenizer adds a token of
# its own); the fixtures' tokenizer is a plain tokenizer.json.
import transformers
transformers.AutoTokenizer.from_pretrained = staticmethod(
    lambda path, *a, **k: transformers.PreTrainedTokenizerFast.from_pretrained(path))
import runpy
runpy.run_path(sys.argv[0], run_name="__main__")
"""

NLL = """
import json, sys
import numpy as np
from llama_cpp import Llama
ids = json.loads(sys.argv[2])
m = Llama(sys.argv[1], n_ctx=len(ids), n_batch=len(ids), logits_all=True, verbose=False, n_threads=2)
m.eval(ids)
L = np.array(m.scores[:len(ids)], dtype=np.float64)
L -= L.max(1, keepdims=True)
lp = L - np.log(np.exp(L).sum(1, keepdims=True))
print(-np.mean([lp[i, ids[i + 1]] for i in range(len(ids) - 1)]))
"""


# Variant -> what convert_hf_to_gguf.py leaves out of its GGUF (llama.cpp then runs defaults).
CONVERTER_GAPS = {
    "gemma3-layers": "attention.sliding_window_pattern (a layer list other than every 6th global)",
}


def run(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def nll(gguf, ids):
    return float(run([sys.executable, "-c", NLL, gguf, json.dumps(ids)]).strip().splitlines()[-1])


def diff_files(a, b):
    from gguf import GGUFReader
    ra, rb = GGUFReader(a), GGUFReader(b)
    ta = {t.name: np.asarray(t.data) for t in ra.tensors}
    tb = {t.name: np.asarray(t.data) for t in rb.tensors}
    out = [f"tensor {n} only in {'llama.cpp' if n in ta else 'qforge'}" for n in sorted(set(ta) ^ set(tb))]
    for n in sorted(set(ta) & set(tb)):
        if ta[n].shape != tb[n].shape or not np.array_equal(ta[n], tb[n]):
            d = np.abs(ta[n].astype(np.float64) - tb[n].astype(np.float64)).max() if ta[n].shape == tb[n].shape else None
            out.append(f"tensor {n} differs (max |diff| {d})")
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    lcpp, only = sys.argv[1], sys.argv[2:]
    from safetensors.numpy import load_file
    rows, bad = [], 0
    for name, spec in FIXTURES.items():
        if only and name not in only:
            continue
        for variant, override in [(name, {})] + list(spec.get("variants", {}).items()):
            g = load_file(os.path.join(ROOT, "golden", f"arch_{variant}.safetensors"))
            ids = g["input_ids"].tolist()
            with tempfile.TemporaryDirectory() as tmp:
                hf = os.path.join(tmp, "hf")
                shutil.copytree(os.path.join(ROOT, "tests/fixtures/arch", name), hf)
                cfg = json.load(open(os.path.join(hf, "config.json")))
                cfg.update(override)
                json.dump(cfg, open(os.path.join(hf, "config.json"), "w"))
                q32, q4 = os.path.join(tmp, "q-f32.gguf"), os.path.join(tmp, "q-q4km.gguf")
                r32, r4 = os.path.join(tmp, "r-f32.gguf"), os.path.join(tmp, "r-q4km.gguf")
                run([QFORGE, "-q", "convert", hf, "-o", q32, "--outtype", "f32"])
                run([QFORGE, "-q", "quantize", hf, "-o", q4, "--type", "q4_k_m"])
                run([sys.executable, "-c", CONVERT, lcpp, hf, "--outfile", r32, "--outtype", "f32"])
                run([sys.executable, os.path.join(ROOT, "tools/llamacpp_quantize.py"), r32, r4, "15"])
                n = {k: nll(p, ids) for k, p in [("q32", q32), ("r32", r32), ("q4", q4), ("r4", r4)]}
                diffs = diff_files(r32, q32)
            rel32 = abs(n["q32"] - n["r32"]) / n["r32"]
            if variant in CONVERTER_GAPS:
                vs_hf = abs(n["q32"] - float(g["nll"][0])) / float(g["nll"][0])
                print(f"{variant}: llama.cpp's converter omits {CONVERTER_GAPS[variant]}; llama.cpp on "
                      f"qforge's F32 vs transformers: {vs_hf:.1e}", file=sys.stderr)
                bad += vs_hf > 1e-4
            else:
                bad += rel32 > 1e-4
            rows.append(f"| {variant} | {float(g['nll'][0]):.6f} | {n['r32']:.6f} | {n['q32']:.6f} | {rel32:.1e} | "
                        f"{n['r4']:.6f} | {n['q4']:.6f} | {abs(n['q4'] - n['r4']) / n['r4']:.1e} |")
            for d in diffs:
                print(f"{variant}: {d}", file=sys.stderr)
    print("| fixture | transformers NLL | llama.cpp on its F32 | llama.cpp on qforge's F32 | rel. diff | "
          "llama.cpp on its Q4_K_M | llama.cpp on qforge's Q4_K_M | rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
