#!/usr/bin/env bash
# Tokenizer throughput, qforge vs llama.cpp (llama-cpp-python, vocab-only load), on the same
# vocab-only GGUFs and the same text (default WikiText-2, 1.3 MB): the tokenize call alone,
# no special tokens added, best of REPEAT runs; qforge on 1 thread and on 2 (it encodes pieces
# of a long BPE text side by side; llama.cpp's tokenize has no threads). Prints a Markdown
# table for BENCHMARKS.md and checks that both give the same ids.
#
# Needs: llama-cpp-python (see tools/bench_ppl.sh for the build flags).
# usage: tools/bench_tokenize.sh [REPEAT] [TEXT] [VOCAB...]   (vocabs: names in the suite folders)
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${1:-3}
TEXT=${2:-tests/fixtures/text/wiki.test.raw}
shift 2 || true
VOCABS=("$@")
[ ${#VOCABS[@]} -eq 0 ] && VOCABS=(llama-spm phi-3 llama-bpe gpt-2 qwen2 starcoder)
SHARED=${QFORGE_SHARED_FIXTURES:-../shared/fixtures}
cargo build --release --quiet
Q=$PWD/target/release/qforge
find_vocab() {
  for d in tests/fixtures/vocab "$SHARED/vocab"; do
    [ -f "$d/ggml-vocab-$1.gguf" ] && { echo "$d/ggml-vocab-$1.gguf"; return; }
    # Committed xz-compressed (gemma-4): unpacked once into target/tmp/vocab, as the tests do.
    if [ -f "$d/ggml-vocab-$1.gguf.xz" ]; then
      mkdir -p target/tmp/vocab
      [ -f "target/tmp/vocab/ggml-vocab-$1.gguf" ] || xz -dc "$d/ggml-vocab-$1.gguf.xz" > "target/tmp/vocab/ggml-vocab-$1.gguf"
      echo "target/tmp/vocab/ggml-vocab-$1.gguf"; return
    fi
  done
  echo "vocab $1 not found" >&2; exit 1
}
echo "| vocabulary | tokens | qforge s, 1 thread | qforge s, 2 threads | llama.cpp s | ratio 1 thread | ratio 2 threads | same ids |"
echo "|---|---|---|---|---|---|---|---|"
for v in "${VOCABS[@]}"; do
  g=$(find_vocab "$v")
  python3 - "$Q" "$g" "$TEXT" "$REPEAT" "$v" <<'PY'
import json, subprocess, sys, time
q, gguf, text_path, repeat, name = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
def qforge(threads):
    best, ids = None, None
    for _ in range(repeat):
        out = subprocess.run([q, "--json", "-t", str(threads), "tokenize", gguf, "--file", text_path, "--no-special"],
                             check=True, capture_output=True).stdout
        j = json.loads(out)
        best = j["seconds"] if best is None else min(best, j["seconds"])
        ids = j["ids"]
    return best, ids
q1, ids_q = qforge(1)
q2, ids_q2 = qforge(2)
assert ids_q == ids_q2
from llama_cpp import Llama
llm = Llama(model_path=gguf, vocab_only=True, verbose=False)
data = open(text_path, "rb").read()
best_l, ids_l = None, None
for _ in range(repeat):
    t = time.perf_counter()
    ids_l = llm.tokenize(data, add_bos=False, special=False)
    dt = time.perf_counter() - t
    best_l = dt if best_l is None else min(best_l, dt)
print(f"| {name} | {len(ids_q)} | {q1:.3f} | {q2:.3f} | {best_l:.3f} | {best_l / q1:.2f} | {best_l / q2:.2f} | "
      f"{ids_q == ids_l} |")
PY
done
