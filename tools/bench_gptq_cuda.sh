#!/usr/bin/env bash
# The CUDA backend of GPTQ on a GPU machine: build with the `cuda` feature, run the GPU tests
# (they skip themselves without a device; this script then fails), then check and time the
# backend against the CPU solver on the golden unit layers and on 7B-shaped layers
# (examples/bench_gptq_cuda.rs; prints Markdown rows for BENCHMARKS.md).
# usage: tools/bench_gptq_cuda.sh [--quick] [--windows N] [--check-windows K] [--skip-cpu]
#   --quick: 8 windows, q_proj only (a first look in a short device session)
# Needs the NVIDIA driver and the CUDA 12 or 13 runtime libraries (libnvrtc, libcublas,
# libcusolver) on the library path; nothing CUDA is needed to build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --features cuda --example bench_gptq_cuda --bin qforge
LOG=$(mktemp)
echo "== GPU tests (gptq_cuda, gptq_device); full log: $LOG"
set +e
cargo test --release --features cuda --test gptq_cuda --test gptq_device -- --nocapture >"$LOG" 2>&1
status=$?
set -e
grep -E "SKIPPED|test result|codes equal|identical|self-test|device:|panicked|FAILED|error" "$LOG" || true
if [ "$status" -ne 0 ]; then
  echo "GPU tests FAILED (exit $status); see $LOG" >&2
  exit 1
fi
if grep -q "SKIPPED.*no usable CUDA device" "$LOG"; then
  echo "GPU tests were SKIPPED: no usable CUDA device" >&2
  exit 1
fi
echo "== bench"
target/release/examples/bench_gptq_cuda "$@"
