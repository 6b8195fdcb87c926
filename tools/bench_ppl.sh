#!/usr/bin/env bash
# Perplexity throughput, qforge vs llama.cpp (llama-cpp-python), same GGUF files, same
# threads, same windows. Prints a Markdown table for BENCHMARKS.md.
#
# Needs: python3 with llama-cpp-python built WITHOUT AMX (this VM advertises AMX but faults
# on it), e.g.
#   CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
#     -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" pip install llama-cpp-python
# On a machine without AVX-512 (`grep -c avx512f /proc/cpuinfo` is 0; VMs of this kind vary)
# leave the AVX-512 flags out (-DGGML_AVX512=OFF), or llama.cpp dies with SIGILL.
#
# usage: tools/bench_ppl.sh [MODEL_DIR] [WINDOWS] [THREADS]
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

echo "| format | qforge tok/s | llama.cpp tok/s | ratio | qforge ppl | llama.cpp ppl | qforge peak RSS |"
echo "|---|---|---|---|---|---|---|"
for t in f32 f16 bf16 q8_0; do
  $Q -q convert "$MODEL" -o "$DIR/m-$t.gguf" --outtype "$t"
  qf=$($Q -v -t "$THREADS" perplexity "$DIR/m-$t.gguf" --text "$TEXT" --max-windows "$WINDOWS" --json 2>"$DIR/err")
  rss=$(grep -o 'peak RSS [0-9.]* MB' "$DIR/err" | grep -o '[0-9.]* MB')
  # A llama.cpp build for a CPU feature this machine lacks dies with SIGILL: report n/a.
  lc=$(python3 tools/llamacpp_ppl.py "$DIR/m-$t.gguf" "$TEXT" --threads "$THREADS" --max-windows "$WINDOWS" 2>/dev/null) ||
    lc='{"tokens_per_sec": null, "ppl": null}' 
  python3 - "$t" "$qf" "$lc" "$rss" <<'PY'
import json, sys
t, qf, lc, rss = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
if lc["tokens_per_sec"] is None:
    print(f"| {t.upper()} | {qf['tokens_per_sec']:.0f} | n/a | n/a | {qf['ppl']:.4f} | n/a | {rss} |")
else:
    print(f"| {t.upper()} | {qf['tokens_per_sec']:.0f} | {lc['tokens_per_sec']:.0f} | "
          f"{qf['tokens_per_sec'] / lc['tokens_per_sec']:.2f} | {qf['ppl']:.4f} | {lc['ppl']:.4f} | {rss} |")
PY
done
