#!/usr/bin/env bash
# The README's demo: convert the bundled tiny model to Q8_0 GGUF, then measure what the
# conversion cost: perplexity before/after, KL divergence and top-1 agreement.
set -euo pipefail
cd "$(dirname "$0")/.."
WINDOWS=${WINDOWS:-40}
OUT=${OUT:-$(mktemp -d)}
cargo build --release --quiet
Q=target/release/qforge
MODEL=tests/fixtures/tiny-llama
TEXT=tests/fixtures/text/wiki.test.raw

$Q convert "$MODEL" -o "$OUT/tiny-q8_0.gguf" --outtype q8_0
$Q inspect "$OUT/tiny-q8_0.gguf" | head -n 4
echo "--- f32 (Hugging Face) vs Q8_0 (GGUF) on the first $WINDOWS windows of WikiText-2:"
$Q compare "$MODEL" "$OUT/tiny-q8_0.gguf" --text "$TEXT" --max-windows "$WINDOWS"
echo "--- a greedy sample from the Q8_0 model:"
$Q generate "$OUT/tiny-q8_0.gguf" --prompt "The history of" -n 32
