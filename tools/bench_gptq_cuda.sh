#!/usr/bin/env bash
# The CUDA backend of GPTQ on a GPU machine: build with the `cuda` feature, run the GPU tests
# (which skip themselves without a device, so check their output for "SKIPPED"), then check
# and time the backend against the CPU solver on the golden unit layers and on 7B-shaped
# layers (examples/bench_gptq_cuda.rs; Markdown rows for BENCHMARKS.md).
# usage: tools/bench_gptq_cuda.sh [--quick] [bench options: --windows N --check-windows K --skip-cpu]
# Needs the NVIDIA driver and the CUDA 12 or 13 runtime libraries (libnvrtc, libcublas,
# libcusolver) on the library path; nothing CUDA is needed to build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --features cuda --example bench_gptq_cuda --bin qforge
echo "== GPU tests (gptq_cuda, gptq_device)"
cargo test --release --features cuda --test gptq_cuda --test gptq_device -- --nocapture 2>&1 | tee /tmp/qforge_gptq_cuda_tests.log | grep -E "SKIPPED|test result|codes equal|identical|panicked|FAILED|device:" || true
if grep -q "SKIPPED" /tmp/qforge_gptq_cuda_tests.log; then
  echo "GPU tests were SKIPPED: no usable CUDA device" >&2
  exit 1
fi
grep -q "test result: FAILED" /tmp/qforge_gptq_cuda_tests.log && { echo "GPU tests FAILED" >&2; exit 1; }
echo "== bench"
target/release/examples/bench_gptq_cuda "$@"
