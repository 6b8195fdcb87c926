#!/usr/bin/env bash
# Fuzz every target for SECONDS (default 600) each, one after another, at the lowest CPU
# priority (FUZZ_NICE=0 to compete normally); or only the targets named after SECONDS.
#
#   tools/fuzz.sh            # 10 minutes per target
#   tools/fuzz.sh 60 gguf_reader block_decoders
#
# Needs a nightly toolchain (cargo-fuzz builds with sanitizer flags); installs cargo-fuzz if
# it is missing. The corpus grows in fuzz/corpus/<target> (seeded from fuzz/seeds/<target>),
# crashes land in fuzz/artifacts/<target>, logs in fuzz/logs/<target>.log; all three are
# git-ignored. A crash becomes a regression test: copy it to tests/fixtures/fuzz/<target>/
# and run `cargo test --release --test fuzz_regressions`. Exit status 1 if any target found
# something.
set -uo pipefail
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(safetensors_header gguf_reader config_json tokenizer_metadata block_decoders)
cd "$(dirname "$0")/.."
nice=${FUZZ_NICE:-19}

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz || exit 1
# Address sanitizer (cargo-fuzz's default) on top of debug assertions and overflow checks.
nice -n "$nice" cargo +nightly fuzz build --fuzz-dir fuzz || exit 1

# Inputs need not exceed what a seed needs; memory is capped so an allocation blow-up shows
# as a finding (libFuzzer's -malloc_limit_mb: one allocation; -rss_limit_mb: the whole process).
status=0
mkdir -p fuzz/logs
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    dict=()
    [ -f "fuzz/dicts/$t.dict" ] && dict=("-dict=fuzz/dicts/$t.dict")
    echo "== $t: ${secs}s"
    nice -n "$nice" cargo +nightly fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
        -print_final_stats=1 "${dict[@]}" 2>&1 | tee "fuzz/logs/$t.log" | grep -E "^#[0-9]+\s+DONE|stat::number_of_executed_units|ERROR|SUMMARY|Test unit written" 
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "== $t: FOUND SOMETHING (see fuzz/logs/$t.log)"; status=1; }
done
exit $status
