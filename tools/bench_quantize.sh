#!/usr/bin/env bash
# Quantize throughput, qforge vs llama.cpp's quantizer (llama-cpp-python's
# llama_model_quantize), same F32 GGUF input, same thread count. Throughput is MB of f32
# weights per second of wall time (model load and file write included for both).
# usage: tools/bench_quantize.sh [MODEL_DIR] [THREADS] [REPEATS]
# IMATRIX=FILE quantizes both with that importance matrix (qforge --imatrix; llama.cpp gets the
# same per-column importance through llama_model_quantize's imatrix parameter).
# TYPES="Q8_0 Q4_0" limits the run to those types.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-../shared/fixtures/models/small-llama}
THREADS=${2:-2}
REPEATS=${3:-3}
cargo build --release --quiet
Q=target/release/qforge
IM=()
if [ -n "${IMATRIX:-}" ]; then IM=(--imatrix "$IMATRIX"); fi
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
$Q -q convert "$MODEL" -o "$DIR/in.gguf" --outtype f32
MB=$(python3 -c "import os,sys; print(os.path.getsize(sys.argv[1]) / 1e6)" "$DIR/in.gguf")
echo "| type | qforge s | qforge MB/s | llama.cpp s | llama.cpp MB/s | ratio | same bytes |"
echo "|---|---|---|---|---|---|---|"
for spec in Q4_0:2 Q4_1:3 Q5_0:8 Q5_1:9 Q8_0:7 Q2_K:10 Q3_K_M:12 Q4_K_M:15 Q5_K_M:17 Q6_K:18 IQ4_NL:25; do
  t=${spec%%:*}; id=${spec##*:}
  if [ -n "${TYPES:-}" ] && [[ " $TYPES " != *" $t "* ]]; then continue; fi
  best_q=1e9; best_l=1e9
  for _ in $(seq "$REPEATS"); do
    # Each timed run starts with no dirty pages of the previous one still being written back
    # (on a VM's disk, that writeback throttles the next run's writes by ±30%).
    sync
    s=$( { /usr/bin/time -f %e $Q -q -t "$THREADS" quantize "$DIR/in.gguf" -o "$DIR/q.gguf" --type "$t" "${IM[@]}" >/dev/null; } 2>&1 | tail -1)
    best_q=$(python3 -c "print(min($best_q, $s))")
    sync
    l=$(python3 tools/llamacpp_quantize.py "$DIR/in.gguf" "$DIR/l.gguf" "$id" --threads "$THREADS" "${IM[@]}" 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['seconds'])")
    best_l=$(python3 -c "print(min($best_l, $l))")
  done
  same=$(python3 tools/gguf_same_tensors.py "$DIR/q.gguf" "$DIR/l.gguf")
  python3 -c "
mb, q, l = $MB, $best_q, $best_l
print(f'| $t | {q:.2f} | {mb/q:.0f} | {l:.2f} | {mb/l:.0f} | {l/q:.2f} | $same |')"
done
