#!/usr/bin/env bash
# Issue 17's bounded-memory check: every command on a synthetic LLaMA-7B-shaped checkpoint
# larger than the memory it may use, each run inside a memory cgroup (v1 or v2) limited to
# LIMIT. Prints one row per command: exit status (137 = killed by the limit), wall seconds,
# peak RSS (the largest per-stage peak of --json's "stages" where the command reports them,
# else ru_maxrss; both count mapped input pages the kernel may reclaim), and the cgroup's peak
# charge (anonymous memory plus the page cache it kept).
#
#   sudo tools/bench_bounded_memory.sh [WORK_DIR]     (default /tmp/qforge-bounded)
#
# Environment: LAYERS (8: 8 × 7B-shaped layers, 3.4 GB of bf16), SHAPE (7b, or 1b for
# TinyLlama-1.1B-shaped layers: LAYERS=22 is 2.0 GB), LIMIT (1536M), COMMANDS
# (space-separated names from the list below, default all), CALIB ("--nsamples 4 --seqlen
# 128": GPTQ/AWQ are here to show memory, not quality). Needs root for the cgroup.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/tmp/qforge-bounded}
Q=${QF:-$ROOT/target/release/qforge}
LAYERS=${LAYERS:-8}
SHAPE=${SHAPE:-7b}
LIMIT=${LIMIT:-1536M}
CALIB=${CALIB:---nsamples 4 --seqlen 128}
TEXT=$ROOT/tests/fixtures/text/wiki.test.raw
mkdir -p "$W"
cd "$W"

[ -f synth/model.safetensors ] || python3 "$ROOT/tools/make_synthetic_layer.py" synth --layers "$LAYERS" --shape "$SHAPE"

# A memory cgroup limited to LIMIT.
CG=""
if [ -d /sys/fs/cgroup/memory ]; then
  CG=/sys/fs/cgroup/memory/qforge-bounded-$$
  mkdir -p "$CG"
  echo "$LIMIT" >"$CG/memory.limit_in_bytes"
  PEAK_FILE=memory.max_usage_in_bytes
elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  CG=/sys/fs/cgroup/qforge-bounded-$$
  mkdir -p "$CG"
  echo "$LIMIT" >"$CG/memory.max"
  echo 0 >"$CG/memory.swap.max" 2>/dev/null || true
  PEAK_FILE=memory.peak
else
  echo "no memory cgroup available" >&2
  exit 1
fi
trap 'rmdir "$CG" 2>/dev/null || true' EXIT

# name | arguments (run in WORK_DIR; later commands read what earlier ones wrote).
commands() {
  cat <<CMDS
convert-f16|convert synth -o synth-f16.gguf --outtype f16
convert-q8_0|convert synth -o synth-q8_0.gguf --outtype q8_0
convert-q4_k_m|convert synth -o synth-q4_k_m.gguf --outtype Q4_K_M
convert-to-hf|convert synth-f16.gguf -o synth-hf --to hf --outtype bf16 --max-shard-size 1GB
quantize-rtn|quantize synth-hf -o rtn-q4_k_m.gguf --type Q4_K_M
imatrix|imatrix synth-hf -o synth.imatrix.gguf --chunks 2 --ctx 128
quantize-imatrix|quantize synth-hf -o imat-iq4_nl.gguf --type IQ4_NL --imatrix synth.imatrix.gguf
quantize-nf4|quantize synth-hf -o nf4 --method nf4
quantize-gptq|quantize synth-hf -o gptq --method gptq $CALIB
quantize-awq|quantize synth-hf -o awq --method awq $CALIB
perplexity|perplexity synth-hf --text $TEXT --ctx 128 --max-windows 2
compare|compare synth-hf rtn-q4_k_m.gguf --text $TEXT --ctx 128 --max-windows 2
CMDS
}

echo "limit $LIMIT; model $(du -sh synth | cut -f1) ($LAYERS $SHAPE-shaped layers)"
echo "| command | exit | seconds | peak RSS MiB | cgroup peak MiB |"
echo "|---|---|---|---|---|"
while IFS='|' read -r name args; do
  if [ -n "${COMMANDS:-}" ] && [[ " $COMMANDS " != *" $name "* ]]; then continue; fi
  echo 0 >"$CG/$PEAK_FILE" 2>/dev/null || true
  start=$(date +%s.%N)
  set +e
  # shellcheck disable=SC2086
  sh -c 'echo $$ >"$1/cgroup.procs"; shift; exec /usr/bin/time -f "%M" -o rss.txt "$@"' _ "$CG" "$Q" -q --json $args >"$name.json" 2>"$name.err"
  rc=$?
  set -e
  secs=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.0f}')" "$start" "$(date +%s.%N)")
  # quantize and convert reset the kernel's high-water mark per stage (their --json
  # "stages"), which leaves ru_maxrss with the last stage's peak: take the stages' maximum.
  rss=$(python3 -c "
import json, sys
try:
    print(round(max(s['peak_rss_bytes'] for s in json.load(open(sys.argv[1]))['stages']) / 2**20))
except Exception:
    print(round(int(open('rss.txt').read().split()[-1]) / 1024))" "$name.json" 2>/dev/null || echo "?")
  cg=$(awk '{printf "%.0f", $1 / 1048576}' "$CG/$PEAK_FILE" 2>/dev/null || echo "?")
  echo "| $name | $rc | $secs | ${rss:-?} | $cg |"
done < <(commands)
