#!/usr/bin/env bash
# The small fixture's full-text quality targets of the GPTQ, AWQ, NF4 and GGML issues, measured
# end to end with the release binary: every variant is quantized, then `compare`d with the f32
# model over all 741 windows of WikiText-2 (base logits saved once, ~6.2 GB in WORK). Prints a
# Markdown table and a PASS/FAIL line per target; exit status 1 if any target fails.
# Too slow for the test suite (~1 h on 2 cores); the tiny-model tests cover the same code.
#
# usage: tools/small_targets.sh [WORK_DIR] [THREADS]
# WORK_DIR keeps outputs, so an interrupted run resumes where it stopped (delete it to redo).
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-target/small-targets}
THREADS=${2:-2}
M=${SMALL:-../shared/fixtures/models/small-llama}
W=tests/fixtures/text/wiki.test.raw
[ -d "$M" ] || { echo "error: small fixture not found at $M" >&2; exit 1; }
cargo build --release --quiet || exit 1
Q=$PWD/target/release/qforge
mkdir -p "$WORK"
log() { echo "[$(date +%T)] $*" >&2; }
# step NAME CMD...: run once (skipped when WORK/NAME.done exists), stdout → NAME.json,
# wall seconds and peak RSS → NAME.time.
step() {
  local n=$1; shift
  [ -e "$WORK/$n.done" ] && return 0
  log "$n"
  /usr/bin/time -f "%e %M" -o "$WORK/$n.time" "$@" > "$WORK/$n.json" 2> "$WORK/$n.err" \
    && touch "$WORK/$n.done" || { log "$n failed: $(tail -2 "$WORK/$n.err")"; }
}
variant() { # NAME OUTPUT quantize-args...: quantize, then compare against the saved base logits
  local n=$1 out=$WORK/$2; shift 2
  step "q-$n" $Q --json -t "$THREADS" quantize "$M" -o "$out" "$@"
  step "c-$n" $Q --json -t "$THREADS" compare "$WORK/base.qflogits" "$out" --text "$W"
}
step base $Q --json -t "$THREADS" perplexity "$M" --text "$W" --save-logits "$WORK/base.qflogits"
variant q4_0 q4_0.gguf --type Q4_0
# Q4_0 on the 7 linears only (the goldens' protocol): --pure, embeddings (= output, tied) BF16.
lin=(--type Q4_0 --pure --embedding-type BF16)
variant q4_0-lin q4_0-lin.gguf "${lin[@]}"
variant gptq-w4 gptq-w4 --method gptq --format hf-gptq
variant gptq-w3 gptq-w3 --method gptq --format hf-gptq --bits 3
variant gptq-q4_0-lin gptq-q4_0-lin.gguf --method gptq "${lin[@]}"
step imatrix $Q --json -t "$THREADS" imatrix "$M" -o "$WORK/imatrix.gguf"
variant q4_k_m q4_k_m.gguf --type Q4_K_M
variant q4_k_m-imatrix q4_k_m-imatrix.gguf --type Q4_K_M --imatrix "$WORK/imatrix.gguf"
variant gptq-q4_k_m gptq-q4_k_m.gguf --method gptq --type Q4_K_M
variant awq-w4 awq-w4 --method awq --format hf-awq
variant awq-q4_0-lin awq-q4_0-lin.gguf --method awq "${lin[@]}"
variant nf4 nf4 --method nf4
variant nf4-dq nf4-dq --method nf4 --double-quant

python3 - "$WORK" golden/golden_small.json <<'PY'
import json, os, sys
work = sys.argv[1]
golden = json.load(open(sys.argv[2]))
def g(v, k="ppl"): return golden[v]["wiki"][k]
def load(n):
    try: return json.load(open(f"{work}/{n}.json"))
    except Exception: return None
def size(path):
    p = f"{work}/{path}"
    if os.path.isdir(p): return sum(os.path.getsize(os.path.join(p, f)) for f in os.listdir(p))
    return os.path.getsize(p) if os.path.exists(p) else 0
rows = ["q4_0", "q4_0-lin", "gptq-q4_0-lin", "awq-q4_0-lin", "q4_k_m", "q4_k_m-imatrix", "gptq-q4_k_m",
        "gptq-w4", "gptq-w3", "awq-w4", "nf4", "nf4-dq"]
print("| variant | size MB | quantize s | peak RSS MiB | ppl | KLD mean ± se | top-1 |")
print("|---|---|---|---|---|---|---|")
c = {}
for n in rows:
    q, c[n] = load("q-" + n), load("c-" + n)
    if c[n] is None:
        print(f"| {n} | missing | | | | | |"); continue
    t = open(f"{work}/q-{n}.time").read().split()
    out = next((f for f in os.listdir(work) if f.startswith(n + ".gguf") or f == n), n)
    print(f"| {n} | {size(out) / 1e6:.1f} | {float(t[0]):.1f} | {int(t[1]) / 1024:.0f} | {c[n]['ppl']:.3f} | "
          f"{c[n]['kld_mean']:.5f} ± {c[n]['kld_stderr']:.5f} | {100 * c[n]['top1_agree']:.2f}% |")
def val(n, k): return c[n][k] if c.get(n) else float("nan")
targets = [
    ("Q4_0 GGUF ppl within 0.5% of golden q4_0", abs(val("q4_0", "ppl") / g("q4_0") - 1) <= 5e-3),
    ("GPTQ 4-bit g128 ppl <= golden gptq_w4_g128 x 1.003", val("gptq-w4", "ppl") <= g("gptq_w4_g128") * 1.003),
    ("GPTQ 4-bit g128 KLD <= golden x 1.05", val("gptq-w4", "kld_mean") <= g("gptq_w4_g128", "kld_mean") * 1.05),
    ("GPTQ 3-bit g128 ppl <= golden gptq_w3_g128 x 1.01", val("gptq-w3", "ppl") <= g("gptq_w3_g128") * 1.01),
    ("GPTQ -> Q4_0 KLD <= 0.8 x plain Q4_0", val("gptq-q4_0-lin", "kld_mean") <= 0.8 * val("q4_0-lin", "kld_mean")),
    ("GPTQ -> Q4_K_M KLD < plain Q4_K_M", val("gptq-q4_k_m", "kld_mean") < val("q4_k_m", "kld_mean")),
    ("GPTQ -> Q4_K_M KLD < imatrix Q4_K_M", val("gptq-q4_k_m", "kld_mean") < val("q4_k_m-imatrix", "kld_mean")),
    ("imatrix Q4_K_M KLD < plain Q4_K_M", val("q4_k_m-imatrix", "kld_mean") < val("q4_k_m", "kld_mean")),
    ("AWQ 4-bit g128 ppl < golden rtn_w4_g128", val("awq-w4", "ppl") < g("rtn_w4_g128")),
    ("AWQ 4-bit g128 KLD < 0.1273", val("awq-w4", "kld_mean") < 0.1273),
    ("AWQ -> Q4_0 KLD < plain Q4_0", val("awq-q4_0-lin", "kld_mean") < val("q4_0-lin", "kld_mean")),
    ("NF4 b64 ppl within 0.2% of golden nf4_b64", abs(val("nf4", "ppl") / g("nf4_b64") - 1) <= 2e-3),
    ("NF4 b64 double-quant ppl within 0.5% of golden", abs(val("nf4-dq", "ppl") / g("nf4_b64") - 1) <= 5e-3),
]
print()
for name, ok in targets:
    print(("PASS " if ok else "FAIL ") + name)
sys.exit(0 if all(ok for _, ok in targets) else 1)
PY
