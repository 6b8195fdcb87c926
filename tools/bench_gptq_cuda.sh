#!/usr/bin/env bash
# The CUDA backend of GPTQ on a GPU machine, in three steps (exit 1 if any check fails):
# 1. the GPU tests (tests/gptq_cuda.rs, tests/gptq_device.rs: probe, golden unit layers, GPU
#    vs CPU on every integer-grid option, `quantize --device cuda` on the tiny model); they
#    skip themselves without a device, and this script then fails;
# 2. examples/bench_gptq_cuda.rs: the golden unit layers and 7B-shaped layers (4096×4096,
#    11008×4096, 4096×11008 on 128 × 2048 tokens), GPU vs CPU, timed, with the per-layer
#    projection against the PyTorch reference (Markdown rows for BENCHMARKS.md);
# 3. with --small DIR: `quantize --method gptq` of that model (hf-gptq 4-bit g128) with
#    --device cuda and --device cpu, each compared with the f32 model on N windows of
#    WikiText-2 (KLD, top-1, ppl); the two KLDs must agree within 1%;
# 4. with --synth-7b N: `quantize --method gptq --device cuda` of a synthetic one-layer
#    LLaMA-7B-shaped checkpoint (tools/make_synthetic_layer.py; needs numpy) on N × 2048
#    calibration tokens: the whole pipeline per layer, calibration passes (CPU runtime)
#    included, and the CPU runtime's tokens/s on that layer.
#
# usage: tools/bench_gptq_cuda.sh [--small DIR] [--e2e-windows N] [--skip-cpu-e2e] [--synth-7b N]
#                                 [BENCH ARGS...]
#   BENCH ARGS go to the example: --quick, --windows N, --check-windows K, --skip-cpu
# QFORGE_PREBUILT=DIR runs the binaries in DIR (qforge, bench_gptq_cuda, gptq_cuda,
# gptq_device: tools/device_pack.sh makes them) instead of building: for a GPU machine
# without a Rust toolchain. Needs the NVIDIA driver and the CUDA 12 or 13 libraries
# (libnvrtc, libcublas, libcusolver) on the library path; nothing CUDA is needed to build.
set -euo pipefail
cd "$(dirname "$0")/.."
SMALL="" E2E_WINDOWS=64 CPU_E2E=1 SYNTH=""
BENCH_ARGS=()
while [ $# -gt 0 ]; do
  case $1 in
    --small) SMALL=$2; shift 2 ;;
    --e2e-windows) E2E_WINDOWS=$2; shift 2 ;;
    --skip-cpu-e2e) CPU_E2E=0; shift ;;
    --synth-7b) SYNTH=$2; shift 2 ;;
    *) BENCH_ARGS+=("$1"); shift ;;
  esac
done
LOG=${QFORGE_TEST_LOG:-$(mktemp)}
echo "== GPU tests (gptq_cuda, gptq_device); full log: $LOG"
set +e
if [ -n "${QFORGE_PREBUILT:-}" ]; then
  B=$QFORGE_PREBUILT
  Q=$B/qforge BENCH=$B/bench_gptq_cuda
  { "$B/gptq_cuda" --nocapture; a=$?; "$B/gptq_device" --nocapture; [ $a -eq 0 ] && [ $? -eq 0 ]; } >"$LOG" 2>&1
else
  cargo build --release --features cuda --example bench_gptq_cuda --bin qforge || exit 1
  Q=target/release/qforge BENCH=target/release/examples/bench_gptq_cuda
  cargo test --release --features cuda --test gptq_cuda --test gptq_device -- --nocapture >"$LOG" 2>&1
fi
status=$?
grep -E "SKIPPED|test result|codes equal|identical|self-test|device|Hessian|panicked|FAILED|error" "$LOG" || true
if grep -q "SKIPPED.*no usable CUDA device" "$LOG"; then
  echo "GPU tests were SKIPPED: no usable CUDA device" >&2
  exit 1
fi
# Device time is scarce: a failed step is reported and the next one still runs.
failed=()
[ "$status" -eq 0 ] || failed+=("GPU tests (exit $status; see $LOG)")

echo "== bench"
"$BENCH" "${BENCH_ARGS[@]}" || failed+=("bench (exit $?)")

report() {
  [ ${#failed[@]} -eq 0 ] && { echo "== all steps passed"; exit 0; }
  printf '== FAILED: %s\n' "${failed[@]}" >&2
  exit 1
}
W=tests/fixtures/text/wiki.test.raw
# A failed command is recorded; `|| return` then leaves its step (a function) early.
e2e() { "$@" || { failed+=("end to end: $*"); return 1; }; }

small_e2e() {
  echo "== end to end: quantize --method gptq of $SMALL, KLD vs f32 on $E2E_WINDOWS windows"
  local T dev start end devices=(cuda)
  T=$(mktemp -d)
  e2e "$Q" -q --json perplexity "$SMALL" --text "$W" --max-windows "$E2E_WINDOWS" --save-logits "$T/base.qflogits" \
    >"$T/base.json" || return
  [ "$CPU_E2E" = 1 ] && devices+=(cpu)
  for dev in "${devices[@]}"; do
    start=$(date +%s.%N)
    e2e "$Q" -q --json quantize "$SMALL" --method gptq --format hf-gptq --device "$dev" -o "$T/gptq-$dev" \
      >"$T/q-$dev.json" || return
    end=$(date +%s.%N)
    echo "$start $end" >"$T/t-$dev"
    e2e "$Q" -q --json compare "$T/base.qflogits" "$T/gptq-$dev" --text "$W" --max-windows "$E2E_WINDOWS" \
      >"$T/c-$dev.json" || return
  done
  python3 - "$T" "${devices[@]}" <<'PY' || failed+=("end to end: GPU and CPU KLD")
import json, sys
t, devs = sys.argv[1], sys.argv[2:]
base = json.load(open(f"{t}/base.json"))
print(f"f32 ppl {base['ppl']:.3f}; the CPU runtime scores {base['tokens_per_sec']:.0f} tokens/s (calibration passes run there)")
print("| device | quantize wall s | GPTQ s | KLD mean | top-1 | ppl |")
print("|---|---|---|---|---|---|")
kld = {}
for d in devs:
    q, c = json.load(open(f"{t}/q-{d}.json")), json.load(open(f"{t}/c-{d}.json"))
    a, b = map(float, open(f"{t}/t-{d}").read().split())
    assert q["device"] == d, f"--device {d} ran on {q['device']}"
    kld[d] = c["kld_mean"]
    print(f"| {d} | {b - a:.1f} | {q['gptq_seconds']:.1f} | {c['kld_mean']:.5f} | {100 * c['top1_agree']:.2f}% | {c['ppl']:.3f} |")
if "cpu" in kld:
    rel = abs(kld["cuda"] / kld["cpu"] - 1)
    print(f"KLD cuda vs cpu: {100 * rel:.3f}% apart (limit 1%)")
    sys.exit(0 if rel <= 0.01 else 1)
PY
  rm -rf "$T"
}

synth_e2e() {
  echo "== one LLaMA-7B-shaped layer: quantize --method gptq --device cuda on $SYNTH × 2048 tokens"
  local D start end
  D=$(mktemp -d)
  e2e python3 tools/make_synthetic_layer.py "$D/synth" >/dev/null || return
  start=$(date +%s.%N)
  e2e "$Q" -q --json quantize "$D/synth" --method gptq --format hf-gptq --device cuda --nsamples "$SYNTH" \
    --seqlen 2048 -o "$D/gptq" >"$D/q.json" || return
  end=$(date +%s.%N)
  e2e "$Q" -q --json perplexity "$D/synth" --text "$W" --ctx 2048 --max-windows 4 >"$D/p.json" || return
  python3 - "$D" "$start" "$end" "$SYNTH" <<'PY'
import json, sys
d, a, b, n = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
q, p = json.load(open(f"{d}/q.json")), json.load(open(f"{d}/p.json"))
print(f"quantize wall {b - a:.1f} s, calibrating and solving {q['gptq_seconds']:.1f} s ({n} x 2048 tokens, "
      f"device {q['device']}); the CPU runtime's forward on this layer + embeddings + lm_head: "
      f"{p['tokens_per_sec']:.0f} tokens/s")
PY
  rm -rf "$D"
}

[ -z "$SMALL" ] || small_e2e
[ -z "$SYNTH" ] || synth_e2e
report
