#!/usr/bin/env bash
# Generation speed, qforge vs llama.cpp (llama-cpp-python), same GGUF files, same threads, same
# prompt ids: prompt processing (one batch of PROMPT_TOKENS) and decoding (STEPS greedy tokens,
# one per step through the KV cache), in tokens/s, best of REPEATS; and how many of the greedy
# tokens the two agree on before they first differ (llama.cpp multiplies quantized weights by
# 8-bit-quantized activations, qforge by f32 ones, so near-ties may go either way).
# Prints a Markdown table for BENCHMARKS.md.
#
# usage: tools/bench_generate.sh [MODEL_DIR] [THREADS] [REPEATS]
# FORMATS="f16 Q8_0 Q4_K_M" chooses the types (outtypes of convert, or quantize types);
# STEPS (128) and PROMPT_WORDS (100, about 128 tokens of WikiText-2) size the run.
# Needs llama-cpp-python built as tools/bench_ppl.sh says.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-../shared/fixtures/models/small-llama}
THREADS=${2:-2}
REPEATS=${3:-3}
FORMATS=${FORMATS:-"f16 bf16 Q8_0 Q4_0 Q4_K_M Q5_K_M Q6_K"}
STEPS=${STEPS:-128}
PROMPT_WORDS=${PROMPT_WORDS:-100}
cargo build --release --quiet
Q=target/release/qforge
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
PROMPT=$(python3 -c "import sys; print(' '.join(open(sys.argv[1]).read().split()[:int(sys.argv[2])]))" \
  tests/fixtures/text/wiki.test.raw "$PROMPT_WORDS")
echo "| type | prompt tokens | qforge pp tok/s | llama.cpp pp tok/s | ratio | qforge tg tok/s | llama.cpp tg tok/s | ratio | same greedy tokens |"
echo "|---|---|---|---|---|---|---|---|---|"
for t in $FORMATS; do
  case $t in
    f32|f16|bf16|q8_0) $Q -q convert "$MODEL" -o "$DIR/m.gguf" --outtype "$t" ;;
    *) $Q -q quantize "$MODEL" -o "$DIR/m.gguf" --type "$t" ;;
  esac
  for r in $(seq "$REPEATS"); do
    $Q -q -t "$THREADS" --json generate "$DIR/m.gguf" --prompt "$PROMPT" -n "$STEPS" > "$DIR/q$r.json"
    ids=$(python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['prompt_ids'])))" "$DIR/q$r.json")
    # A llama.cpp build for a CPU feature this machine lacks dies with SIGILL: report n/a.
    python3 tools/llamacpp_generate.py "$DIR/m.gguf" --prompt-ids "$ids" -n "$STEPS" --threads "$THREADS" \
      > "$DIR/l$r.json" 2>/dev/null || echo '{}' > "$DIR/l$r.json"
  done
  python3 - "$t" "$DIR" "$REPEATS" <<'PY'
import json, sys
t, d, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
q = [json.load(open(f"{d}/q{r}.json")) for r in range(1, n + 1)]
l = [json.load(open(f"{d}/l{r}.json")) for r in range(1, n + 1)]
qpp, qtg = max(x["prompt_tokens_per_sec"] for x in q), max(x["decode_tokens_per_sec"] for x in q)
if not l[0]:
    print(f"| {t} | {q[0]['prompt_tokens']} | {qpp:.0f} | n/a | n/a | {qtg:.0f} | n/a | n/a | n/a |")
    sys.exit()
lpp, ltg = max(x["prompt_tokens_per_sec"] for x in l), max(x["decode_tokens_per_sec"] for x in l)
a, b = q[0]["tokens"], l[0]["tokens"]
same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
print(f"| {t} | {q[0]['prompt_tokens']} | {qpp:.0f} | {lpp:.0f} | {qpp / lpp:.2f} | {qtg:.0f} | {ltg:.0f} | "
      f"{qtg / ltg:.2f} | {same}/{len(a)} |")
PY
done
