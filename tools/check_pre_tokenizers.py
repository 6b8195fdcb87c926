#!/usr/bin/env python3
"""Every pre-tokenizer of qforge's table against llama.cpp (llama-cpp-python), on one text.

For each entry of src/formats/tokenizer/pre_tokenizers.rs that qforge supports, writes a copy of a
vocab-only BPE GGUF (default: the suite's gpt-2) with `tokenizer.ggml.pre` set to that name,
tokenizes TEXT with llama.cpp (`Llama(vocab_only=True).tokenize`, in a child process: some
name/vocabulary pairs make llama.cpp abort) and with `qforge tokenize --no-special`, and prints
one line per name: same, DIFF (first difference), or llama.cpp aborts. Exit 1 on any DIFF.
Needs: gguf, llama-cpp-python; the release build of qforge.

usage: tools/check_pre_tokenizers.py TEXT [VOCAB.gguf]
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QFORGE = os.path.join(ROOT, "target/release/qforge")
LLAMA = ("import json, sys\nfrom llama_cpp import Llama\n"
         "llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)\n"
         "print(json.dumps(llm.tokenize(open(sys.argv[2], 'rb').read(), add_bos=False, special=False)))")


def supported_names():
    src = open(os.path.join(ROOT, "src/formats/tokenizer/pre_tokenizers.rs"), encoding="utf-8").read()
    for block in src.split("PreTokenizer {")[1:]:
        if "regexes: &[]," not in block:
            yield re.findall(r'names: &\["([^"]+)"', block)[0]


def with_pre(src_path, name, out):
    r = gguf.GGUFReader(src_path)
    w = gguf.GGUFWriter(out, r.fields["general.architecture"].contents())
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        v = name if k == "tokenizer.ggml.pre" else f.contents()
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(k, v, f.types[0], sub_type=f.types[-1])
        else:
            w.add_key_value(k, v, f.types[0])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()


def main():
    text = sys.argv[1]
    vocab = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "../shared/fixtures/vocab/ggml-vocab-gpt-2.gguf")
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in supported_names():
            path = os.path.join(tmp, "v.gguf")
            with_pre(vocab, name, path)
            la = subprocess.run([sys.executable, "-c", LLAMA, path, text], capture_output=True)
            if la.returncode != 0:
                print(f"{name}: llama.cpp aborts with this vocabulary")
                continue
            want = json.loads(la.stdout.decode().strip().splitlines()[-1])
            q = subprocess.run([QFORGE, "--json", "tokenize", path, "--file", text, "--no-special"], capture_output=True)
            got = json.loads(q.stdout)["ids"] if q.returncode == 0 else None
            if got == want:
                print(f"{name}: same ({len(want)} ids)")
                continue
            bad += 1
            if got is None:
                print(f"{name}: DIFF: qforge fails: {q.stderr.decode().strip()}")
                continue
            i = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
            print(f"{name}: DIFF at {i}: llama.cpp {want[i:i + 4]} qforge {got[i:i + 4]}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
