#!/usr/bin/env bash
# Build what tools/bench_gptq_cuda.sh runs, for a GPU machine that has no Rust toolchain:
# OUT_DIR/bin/{qforge,bench_gptq_cuda,gptq_cuda,gptq_device}, stripped (about 12 MB each;
# about 2.6 MB each under xz). Run them there with QFORGE_PREBUILT=OUT_DIR/bin.
#
# The test binaries have this checkout's path compiled in (CARGO_MANIFEST_DIR for fixtures,
# CARGO_BIN_EXE_qforge = target/release/qforge): on the GPU machine, put the checkout (or a
# link to it) at the same path and the packed qforge at target/release/qforge.
# usage: tools/device_pack.sh OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: tools/device_pack.sh OUT_DIR}
cargo build --release --features cuda --example bench_gptq_cuda --bin qforge
mkdir -p "$OUT/bin"
cp target/release/qforge target/release/examples/bench_gptq_cuda "$OUT/bin/"
for t in gptq_cuda gptq_device; do
  exe=$(cargo test --release --features cuda --test "$t" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for m in map(json.loads, sys.stdin):
    if m.get("executable") and "test" in m["target"]["kind"] and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$t")
  cp "$exe" "$OUT/bin/$t"
done
strip "$OUT"/bin/*
ls -l "$OUT/bin"
