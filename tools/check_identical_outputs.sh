#!/usr/bin/env bash
# Outputs of two qforge builds compared on a fixture: GGUFs byte for byte, Hugging Face
# checkpoints tensor by tensor (name, dtype, shape, bytes; the files' tensor order and sharding
# may differ) plus config.json / quantize_config.json. For refactors that must not change
# results (issues 15 and 17).
#
#   tools/check_identical_outputs.sh OLD_QFORGE [NEW_QFORGE] [MODEL_DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD=$1
NEW=${2:-$ROOT/target/release/qforge}
M=${3:-$ROOT/tests/fixtures/tiny-llama}
C="--nsamples 8 --seqlen 128"
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
done
for f in rtn.gguf gptq.gguf awq.gguf ag.gguf; do
  cmp "$W/old/$f" "$W/new/$f" && echo "$f: identical bytes"
done
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
for d in ["nf4", "gptq-hf", "awq-hf", "ag-hf"]:
    a, b = tensors(f"{w}/old/{d}"), tensors(f"{w}/new/{d}")
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    for j in ["config.json", "quantize_config.json"]:
        try:
            if json.load(open(f"{w}/old/{d}/{j}")) != json.load(open(f"{w}/new/{d}/{j}")):
                diff.append(j)
        except FileNotFoundError:
            pass
    print(f"{d}: {len(a)} tensors, " + ("identical" if not diff else f"DIFFERENT: {diff[:5]}"))
    bad += bool(diff)
sys.exit(1 if bad else 0)
PY
