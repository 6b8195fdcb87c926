#!/usr/bin/env bash
# The README's demo: quantize the bundled tiny model to Q4_K_M GGUF, then measure what the
# quantization cost: perplexity before/after, KL divergence and top-1 agreement.
set -euo pipefail
cd "$(dirname "$0")/.."
WINDOWS=${WINDOWS:-40}
OUT=${OUT:-$(mktemp -d)}
cargo build --release --quiet
Q=target/release/qforge
MODEL=tests/fixtures/tiny-llama
TEXT=tests/fixtures/text/wiki.test.raw

$Q quantize "$MODEL" -o "$OUT/tiny-q4_k_m.gguf" --type Q4_K_M
# Through a file, not a pipe: `| head` may close the pipe while inspect still writes, and
# with pipefail the SIGPIPE exit would end the demo.
$Q inspect "$OUT/tiny-q4_k_m.gguf" > "$OUT/inspect.txt"
head -n 4 "$OUT/inspect.txt"
echo "--- f32 (Hugging Face) vs Q4_K_M (GGUF) on the first $WINDOWS windows of WikiText-2:"
$Q compare "$MODEL" "$OUT/tiny-q4_k_m.gguf" --text "$TEXT" --max-windows "$WINDOWS"
echo "--- a greedy sample from the Q4_K_M model:"
$Q generate "$OUT/tiny-q4_k_m.gguf" --prompt "The history of" -n 32
