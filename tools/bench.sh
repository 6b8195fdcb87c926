#!/usr/bin/env bash
# Side-by-side benchmarks, qforge vs llama.cpp (llama-cpp-python: llama_model_quantize and its
# logits), on the small fixture and a synthetic LLaMA-7B-shaped layer, same files, same thread
# count. Writes the Markdown tables of BENCHMARKS.md's "Side by side" section to OUT (default
# target/bench/side-by-side.md) and prints them as they come.
#
# usage: tools/bench.sh [OUT.md] [THREADS]
# Environment: SMALL (default ../shared/fixtures/models/small-llama), SYNTH_DIR (where the
# synthetic checkpoint is written/reused, default target/bench/synth-7b-layer), GPTQ_TOKENS
# (calibration tokens of the GPTQ layer solver benchmark, default 32768; the reference protocol
# is 262144 = 128 × 2048 and the Hessian's cost is linear in it), QUICK=1 (fewer repeats/windows).
# Needs python3 with numpy and llama-cpp-python (see tools/bench_ppl.sh for the build flags).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench/side-by-side.md}
THREADS=${2:-2}
SMALL=${SMALL:-../shared/fixtures/models/small-llama}
SYNTH=${SYNTH_DIR:-target/bench/synth-7b-layer}
GPTQ_TOKENS=${GPTQ_TOKENS:-32768}
REPEATS=3; WINDOWS=20; SYNTH_WINDOWS=4
if [ "${QUICK:-0}" = 1 ]; then REPEATS=1; WINDOWS=4; SYNTH_WINDOWS=1; fi
[ -d "$SMALL" ] || { echo "error: small fixture not found at $SMALL" >&2; exit 1; }
mkdir -p "$(dirname "$OUT")"
cargo build --release --quiet
Q=target/release/qforge
TEXT=tests/fixtures/text/wiki.test.raw
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
[ -f "$SYNTH/model.safetensors" ] || python3 tools/make_synthetic_layer.py "$SYNTH"

exec > >(tee "$OUT")
echo "Machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs, $((
  $(sed -n 's/MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 1048576)) GB; $THREADS threads;" \
  "qforge $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(date -u +%F)."

# Wall seconds and peak RSS (MB) of one command; its stdout goes to $DIR/stdout.
timed() {
  /usr/bin/time -f "%e %M" -o "$DIR/time" "$@" > "$DIR/stdout"
  read -r secs kb < "$DIR/time"
  echo "$secs $((kb / 1024))"
}
weights_mb() { # MB of f32 weights in an HF checkpoint
  python3 -c "
import json, struct, glob, sys
n = 0
for f in glob.glob(sys.argv[1] + '/*.safetensors'):
    with open(f, 'rb') as fh:
        h = json.loads(fh.read(struct.unpack('<Q', fh.read(8))[0]))
    for k, v in h.items():
        if k != '__metadata__':
            p = 1
            for d in v['shape']: p *= d
            n += p
print(n * 4 / 1e6)" "$1"
}

for model in "$SMALL" "$SYNTH"; do
  name=$(basename "$model")
  mb=$(weights_mb "$model")
  echo
  echo "### $name ($(python3 -c "print(f'{$mb / 4:.0f}')")M parameters, ${mb%.*} MB as f32)"
  echo
  echo "Convert (Hugging Face safetensors → GGUF; llama.cpp's converter is Python, not part of"
  echo "llama-cpp-python, so there is no llama.cpp column):"
  echo
  echo "| outtype | seconds | MB/s (f32 weights) | peak RSS MiB |"
  echo "|---|---|---|---|"
  for t in f32 f16 q8_0; do
    read -r s rss < <(timed $Q -q -t "$THREADS" convert "$model" -o "$DIR/c-$t.gguf" --outtype "$t")
    python3 -c "print(f'| $t | {$s:.2f} | {$mb / max($s, 0.01):.0f} | $rss |')"
  done
  echo
  echo "Quantize (F32 GGUF in, best of $REPEATS):"
  echo
  tools/bench_quantize.sh "$model" "$THREADS" "$REPEATS"
  echo
  if [ "$model" = "$SMALL" ]; then w=$WINDOWS; else w=$SYNTH_WINDOWS; fi
  echo "Perplexity, $w windows of 512 tokens:"
  echo
  tools/bench_ppl.sh "$model" "$w" "$THREADS"
done

echo
echo "### GPTQ, AWQ, NF4 end to end on $(basename "$SMALL") (llama.cpp has none of them)"
echo
echo "| method | output | seconds | peak RSS MiB |"
echo "|---|---|---|---|"
E2E=("gptq hf-gptq" "gptq gguf --type Q4_K_M" "awq hf-awq" "awq gguf --type Q4_0" "nf4 hf-bnb" "rtn gguf --type Q4_K_M")
[ "${QUICK:-0}" = 1 ] && E2E=("gptq hf-gptq" "awq hf-awq" "nf4 hf-bnb" "rtn gguf --type Q4_K_M")
for spec in "${E2E[@]}"; do
  set -- $spec
  m=$1 f=$2; shift 2
  read -r s rss < <(timed $Q -q -t "$THREADS" quantize "$SMALL" -o "$DIR/e2e-$m-$f" --method "$m" --format "$f" "$@")
  echo "| $m | $f $* | $s | $rss |"
  rm -rf "$DIR/e2e-$m-$f"
done

echo
echo "### GPTQ solver on one 7B layer (synthetic weights and activations, int4 g128, $GPTQ_TOKENS tokens)"
echo
cargo run --release --quiet --example bench_gptq_layer -- --tokens "$GPTQ_TOKENS"
