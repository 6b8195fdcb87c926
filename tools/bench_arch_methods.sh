#!/usr/bin/env bash
# Every quantization method on every architecture fixture (tests/fixtures/arch): KL divergence
# of each quantized model from the checkpoint (f32 runtime) on WikiText windows. Prints the
# arch × method Markdown table of BENCHMARKS.md.
#
# Same bits side by side: GGUF Q4_0 by round-to-nearest, with an importance matrix, GPTQ and AWQ
# and AWQ+GPTQ (each onto Q4_0's grid, llama.cpp's per-tensor rules for the rest); Q4_K_M by RTN and GPTQ;
# Hugging Face 4-bit formats (group size 32, the fixtures being 64 wide; 16 for the Qwen MoE
# fixtures, whose experts are 48 wide): GPTQ, AWQ, and
# NF4 (blocks of 64). Calibration: NSAMPLES windows of 96 tokens of calibration/calib.txt.
#
# usage: [ARCHS="phi3 …"] tools/bench_arch_methods.sh [WINDOWS] [NSAMPLES]
set -euo pipefail
cd "$(dirname "$0")/.."
WINDOWS=${1:-40}
NSAMPLES=${2:-32}
TEXT=tests/fixtures/text/wiki.test.raw
cargo build --release --quiet
Q=target/release/qforge
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
CAL=(--nsamples "$NSAMPLES" --seqlen 96)

kld() { # MODEL CANDIDATE -> "mean"
  $Q -q --json compare "$1" "$2" --text "$TEXT" --ctx 96 --max-windows "$WINDOWS" |
    python3 -c 'import json,sys; print("%.5f" % json.load(sys.stdin)["kld_mean"])'
}

echo "| arch | Q4_0 RTN | Q4_0 imatrix | Q4_0 GPTQ | Q4_0 AWQ | Q4_0 AWQ+GPTQ | Q4_K_M RTN | Q4_K_M GPTQ | hf-gptq g32¹ | hf-awq g32¹ | NF4² |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
# A method qforge refuses for an architecture shows as "—".
q() { # OUT ARGS... -> quantized model, or OUT.refused
  local out=$1; shift
  $Q -q quantize "$M" -o "$O/$out" "$@" 2>/dev/null || touch "$O/$out.refused"
}
for A in ${ARCHS:-llama-rope qwen2 qwen3 gemma2 gemma3 phi3 mixtral qwen2moe qwen3moe}; do
  M=tests/fixtures/arch/$A
  O=$DIR/$A
  mkdir -p "$O"
  imat=()
  if $Q -q imatrix "$M" -o "$O/imatrix.gguf" --ctx 96 --chunks "$NSAMPLES" >/dev/null 2>&1; then
    imat=(--imatrix "$O/imatrix.gguf")
  fi
  q q4_0.gguf --type q4_0
  if [ ${#imat[@]} -gt 0 ]; then q q4_0-imat.gguf --type q4_0 "${imat[@]}"; else touch "$O/q4_0-imat.gguf.refused"; fi
  q q4_0-gptq.gguf --method gptq --type q4_0 "${CAL[@]}"
  q q4_0-awq.gguf --method awq --type q4_0 "${CAL[@]}"
  q q4_0-awq-gptq.gguf --method awq+gptq --type q4_0 "${CAL[@]}"
  q q4km.gguf --type q4_k_m
  q q4km-gptq.gguf --method gptq --type q4_k_m "${CAL[@]}"
  # Groups of 32 need widths that are multiples of 32: the Qwen MoE fixtures' experts are 48
  # wide, so they get groups of 16 (the largest power of two that divides every width).
  G=32
  case $A in qwen2moe | qwen3moe) G=16 ;; esac
  q hf-gptq --method gptq --format hf-gptq --group-size $G "${CAL[@]}"
  q hf-awq --method awq --format hf-awq --group-size $G "${CAL[@]}"
  q nf4 --method nf4
  row="| $A"
  for c in q4_0.gguf q4_0-imat.gguf q4_0-gptq.gguf q4_0-awq.gguf q4_0-awq-gptq.gguf q4km.gguf q4km-gptq.gguf hf-gptq hf-awq nf4; do
    if [ -e "$O/$c.refused" ]; then row="$row | —"; else row="$row | $(kld "$M" "$O/$c")"; fi
  done
  echo "$row |"
done
