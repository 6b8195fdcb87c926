#!/usr/bin/env bash
# `--offload-activations` under a memory limit (issue 17): GPTQ on 2 TinyLlama-1.1B-shaped
# layers with 32 × 2048 calibration tokens — hidden states of 512 MiB, more than the layer's
# working set leaves of the limit — inside a memory cgroup (v1 or v2) of LIMIT, once with the
# states in memory and once offloaded. Prints exit status (137 = killed by the limit), seconds
# and the cgroup's peak charge for each. Needs root for the cgroup.
#
#   sudo tools/bench_offload.sh [WORK_DIR]     (default /tmp/qforge-offload; LIMIT=1536M)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/tmp/qforge-offload}
Q=${QF:-$ROOT/target/release/qforge}
LIMIT=${LIMIT:-1536M}
mkdir -p "$W/off"
cd "$W"
[ -f synth2/model.safetensors ] || python3 "$ROOT/tools/make_synthetic_layer.py" synth2 --layers 2 --shape 1b
if [ -d /sys/fs/cgroup/memory ]; then
  CG=/sys/fs/cgroup/memory/qforge-offload-$$; mkdir -p "$CG"
  echo "$LIMIT" >"$CG/memory.limit_in_bytes"; PEAK=memory.max_usage_in_bytes
else
  CG=/sys/fs/cgroup/qforge-offload-$$; mkdir -p "$CG"
  echo "$LIMIT" >"$CG/memory.max"; echo 0 >"$CG/memory.swap.max" 2>/dev/null || true; PEAK=memory.peak
fi
trap 'rmdir "$CG" 2>/dev/null || true' EXIT
for mode in in-memory offloaded; do
  extra=()
  [ "$mode" = offloaded ] && extra=(--offload-activations "$W/off")
  echo 0 >"$CG/$PEAK" 2>/dev/null || true
  rm -rf "out-$mode"
  start=$(date +%s)
  sh -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' _ "$CG" "$Q" -q --json quantize synth2 -o "out-$mode" \
    --method gptq --nsamples 32 --seqlen 2048 "${extra[@]}" >"$mode.json" 2>"$mode.err"
  rc=$?
  echo "$mode: exit $rc, $(( $(date +%s) - start )) s, cgroup peak $(( $(cat "$CG/$PEAK") / 1048576 )) MiB, files left in DIR: $(ls -A off | wc -l)"
done
