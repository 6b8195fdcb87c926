#!/usr/bin/env bash
# Quality and size of every quantization type on one model: bits per weight, file size,
# quantize time, and `compare` against the unquantized model (perplexity, KLD, top-1) over the
# first WINDOWS windows of WikiText-2. Prints a Markdown table for BENCHMARKS.md.
# usage: tools/bench_types.sh [MODEL_DIR] [WINDOWS] [THREADS]
# TYPES="Q4_K_M IQ4_NL" limits the plain rows; IMATRIX_TYPES (default "Q4_K_M IQ4_NL Q4_0",
# empty for none) adds rows quantized with an importance matrix that `qforge imatrix` computes
# first on calibration/calib.txt (all of it; its time is printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-../shared/fixtures/models/small-llama}
WINDOWS=${2:-40}
THREADS=${3:-2}
TEXT=tests/fixtures/text/wiki.test.raw
cargo build --release --quiet
Q=target/release/qforge
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
$Q -q perplexity "$MODEL" --text "$TEXT" --max-windows "$WINDOWS" --save-logits "$DIR/base.qflogits" --json > "$DIR/base.json"
echo "| type | bits/weight | size (MB) | quantize s | ppl | ppl ratio | KLD mean | KLD p99 | top-1 |"
echo "|---|---|---|---|---|---|---|---|---|"
python3 -c "import json; r=json.load(open('$DIR/base.json')); print(f\"| f32 (base) | 32 | - | - | {r['ppl']:.3f} | 1 | 0 | 0 | 100% |\")"
TYPES=${TYPES-Q8_0 Q6_K Q5_K_M Q5_K_S Q5_1 Q5_0 Q4_K_M Q4_K_S Q4_1 Q4_0 IQ4_NL Q3_K_L Q3_K_M Q3_K_S Q2_K}
IMATRIX_TYPES=${IMATRIX_TYPES-Q4_K_M IQ4_NL Q4_0}
if [ -n "$IMATRIX_TYPES" ]; then
  $Q -q -t "$THREADS" imatrix "$MODEL" -o "$DIR/imatrix.gguf" --json > "$DIR/imatrix.json"
fi
for spec in $TYPES $(for t in $IMATRIX_TYPES; do echo "$t+imatrix"; done); do
  t=${spec%+imatrix}
  extra=()
  if [ "$spec" != "$t" ]; then extra=(--imatrix "$DIR/imatrix.gguf"); fi
  q=$($Q -q -t "$THREADS" quantize "$MODEL" -o "$DIR/m.gguf" --type "$t" "${extra[@]}" --json)
  c=$($Q -q -t "$THREADS" compare "$DIR/base.qflogits" "$DIR/m.gguf" --text "$TEXT" --max-windows "$WINDOWS" --json)
  python3 - "${spec/+imatrix/ + imatrix}" "$q" "$c" "$DIR/m.gguf" <<'PY'
import json, os, sys
t, q, c, path = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
size = os.path.getsize(path) / 1e6
print(f"| {t} | {q['bits_per_weight']:.2f} | {size:.1f} | {q['seconds']:.2f} | {c['ppl']:.3f} | {c['ppl_ratio']:.4f} | "
      f"{c['kld_mean']:.5f} | {c['kld_p99']:.4f} | {100 * c['top1_agree']:.2f}% |")
PY
done
if [ -n "$IMATRIX_TYPES" ]; then
  python3 -c "
import json; r = json.load(open('$DIR/imatrix.json'))
print(f\"\nimatrix: {r['chunks']} windows of {r['ctx']} tokens of calib.txt ({r['tokens']} tokens), \"
      f\"{r['entries']} matrices, {r['seconds']:.1f} s ({r['tokens_per_sec']:.0f} tokens/s)\")"
fi
