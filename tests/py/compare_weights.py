"""Check that two Hugging Face directories hold the same weights.

usage: compare_weights.py ORIGINAL_DIR EXPORTED_DIR [--same-dtype]

Every tensor of ORIGINAL_DIR (except lm_head.weight when config.json ties the embeddings) is
in EXPORTED_DIR with the same shape and exactly the same values (compared as float32; NaN
never appears in the fixtures), and EXPORTED_DIR holds nothing else. With --same-dtype, the
stored dtypes must also match.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import load_safetensors_dir  # noqa: E402


def main():
    a_dir, b_dir = sys.argv[1:3]
    same_dtype = "--same-dtype" in sys.argv[3:]
    a = load_safetensors_dir(a_dir)
    b = load_safetensors_dir(b_dir)
    if json.load(open(os.path.join(a_dir, "config.json"))).get("tie_word_embeddings", False):
        a.pop("lm_head.weight", None)
    fails = []
    if set(a) != set(b):
        fails.append(f"names differ: missing {sorted(set(a) - set(b))[:5]}, extra {sorted(set(b) - set(a))[:5]}")
    for name in sorted(set(a) & set(b)):
        (wa, da), (wb, db) = a[name], b[name]
        if wa.shape != wb.shape:
            fails.append(f"{name}: shape {wb.shape}, original {wa.shape}")
        elif not np.array_equal(wa.astype(np.float32), wb.astype(np.float32)):
            fails.append(f"{name}: values differ (max abs diff {np.abs(wa - wb).max()})")
        if same_dtype and da != db:
            fails.append(f"{name}: dtype {db}, original {da}")
    if fails:
        print("FAIL", b_dir)
        for f in fails[:40]:
            print("  ", f)
        sys.exit(1)
    print(f"OK: {len(a)} tensors equal")


if __name__ == "__main__":
    main()
