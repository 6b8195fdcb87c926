#!/usr/bin/env bash
# Outputs of two qforge builds compared on a fixture: GGUFs byte for byte, Hugging Face
# checkpoints tensor by tensor (name, dtype, shape, bytes; the files' tensor order and sharding
# may differ) plus their JSON files. Covers every block type and mix (plain and with an
# imatrix), requantization, the convert storage types, GGUF -> HF and HF (GPTQ/AWQ) -> GGUF,
# GPTQ/AWQ/AWQ+GPTQ onto GGML grids and into HF layouts, NF4. For refactors that must not
# change results (issues 15 and 17). ~2 minutes per build on 2 cores.
#
#   tools/check_identical_outputs.sh OLD_QFORGE [NEW_QFORGE] [MODEL_DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD=$1
NEW=${2:-$ROOT/target/release/qforge}
M=${3:-$ROOT/tests/fixtures/tiny-llama}
C="--nsamples 8 --seqlen 128"
TYPES="Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K IQ4_NL"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
for v in old new; do
  Q=$([ $v = old ] && echo "$OLD" || echo "$NEW")
  mkdir "$W/$v"
  "$Q" -q quantize "$M" -o "$W/$v/rtn.gguf" --type Q4_K_M
  "$Q" -q quantize "$M" -o "$W/$v/nf4" --method nf4
  "$Q" -q quantize "$M" -o "$W/$v/gptq-hf" --method gptq $C
  "$Q" -q quantize "$M" -o "$W/$v/gptq.gguf" --method gptq --type Q4_K_M $C
  "$Q" -q quantize "$M" -o "$W/$v/awq-hf" --method awq $C
  "$Q" -q quantize "$M" -o "$W/$v/awq.gguf" --method awq --type Q4_0 $C
  "$Q" -q quantize "$M" -o "$W/$v/ag-hf" --method awq+gptq --format hf-awq $C
  "$Q" -q quantize "$M" -o "$W/$v/ag.gguf" --method awq+gptq --type Q5_0 $C
  "$Q" -q quantize "$M" -o "$W/$v/gptq-iq4.gguf" --method gptq --type IQ4_NL $C
  # Every block type and mix, plain and (where it applies) importance-weighted.
  "$Q" -q imatrix "$M" -o "$W/$v/imatrix.gguf" --ctx 128 --chunks 8
  # One path for both builds: the quantized file records the imatrix's file name.
  cp "$W/$v/imatrix.gguf" "$W/imatrix.gguf"
  for t in $TYPES; do
    "$Q" -q quantize "$M" -o "$W/$v/rtn-$t.gguf" --type "$t"
    "$Q" -q quantize "$M" -o "$W/$v/imx-$t.gguf" --type "$t" --imatrix "$W/imatrix.gguf"
  done
  "$Q" -q quantize "$W/$v/rtn-Q8_0.gguf" -o "$W/$v/requant-q4_0.gguf" --type Q4_0 --allow-requantize
  # Conversions: to GGUF in each storage type, and back to a Hugging Face directory.
  for t in f32 f16 bf16 q8_0; do
    "$Q" -q convert "$M" -o "$W/$v/conv-$t.gguf" --outtype "$t"
  done
  "$Q" -q convert "$W/$v/rtn-Q4_K_M.gguf" -o "$W/$v/back-hf" --to hf
  "$Q" -q convert "$W/$v/gptq-hf" -o "$W/$v/gptq-hf.gguf"
  "$Q" -q convert "$W/$v/awq-hf" -o "$W/$v/awq-hf.gguf"
done
for f in rtn.gguf gptq.gguf awq.gguf ag.gguf gptq-iq4.gguf imatrix.gguf requant-q4_0.gguf \
  conv-f32.gguf conv-f16.gguf conv-bf16.gguf conv-q8_0.gguf gptq-hf.gguf awq-hf.gguf \
  $(for t in $TYPES; do echo rtn-$t.gguf imx-$t.gguf; done); do
  if cmp -s "$W/old/$f" "$W/new/$f"; then echo "$f: identical bytes"; else echo "$f: DIFFERENT"; BAD=1; fi
done
BAD=${BAD:-0}
python3 - "$W" <<'PY'
import glob, json, sys
w = sys.argv[1]
def tensors(d):
    out = {}
    for f in sorted(glob.glob(f"{d}/*.safetensors")):
        raw = open(f, "rb").read()
        n = int.from_bytes(raw[:8], "little")
        for k, m in json.loads(raw[8:8 + n]).items():
            if k != "__metadata__":
                s, e = m["data_offsets"]
                out[k] = (m["dtype"], m["shape"], raw[8 + n + s:8 + n + e])
    return out
bad = 0
for d in ["nf4", "gptq-hf", "awq-hf", "ag-hf", "back-hf"]:
    a, b = tensors(f"{w}/old/{d}"), tensors(f"{w}/new/{d}")
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    for j in ["config.json", "quantize_config.json", "tokenizer.json", "tokenizer_config.json"]:
        try:
            if json.load(open(f"{w}/old/{d}/{j}")) != json.load(open(f"{w}/new/{d}/{j}")):
                diff.append(j)
        except FileNotFoundError:
            pass
    print(f"{d}: {len(a)} tensors, " + ("identical" if not diff else f"DIFFERENT: {diff[:5]}"))
    bad += bool(diff)
sys.exit(1 if bad else 0)
PY
exit "$BAD"
