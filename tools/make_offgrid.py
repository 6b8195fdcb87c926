#!/usr/bin/env python3
"""Move a checkpoint's linear weights off their quantization grid (issue 18's "off-grid"
variant of a model that was dequantized from a GGUF, whose weights sit exactly on a 4-bit grid).

    make_offgrid.py SRC_DIR DST_DIR [--sigma 0.3] [--seed 0]

Every 32-weight block along the input of each `model.layers.*proj.weight` gets Gaussian noise
of SIGMA × (max − min) / 15 — SIGMA quantization steps of a 4-bit grid over that block. The
other tensors and files are copied unchanged. Needs numpy and safetensors.
"""
import argparse
import os
import shutil

import numpy as np
from safetensors.numpy import load_file, save_file

ap = argparse.ArgumentParser()
ap.add_argument("src")
ap.add_argument("dst")
ap.add_argument("--sigma", type=float, default=0.3)
ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()

rng = np.random.default_rng(a.seed)
tensors = load_file(os.path.join(a.src, "model.safetensors"))
out = {}
for name in sorted(tensors):
    w = tensors[name]
    if name.startswith("model.layers.") and name.endswith("proj.weight") and w.shape[1] % 32 == 0:
        rows, cols = w.shape
        blocks = w.astype(np.float32).reshape(rows, cols // 32, 32)
        step = (blocks.max(-1, keepdims=True) - blocks.min(-1, keepdims=True)) / 15
        blocks = blocks + rng.standard_normal(blocks.shape).astype(np.float32) * a.sigma * step
        w = blocks.reshape(rows, cols).astype(np.float32)
    out[name] = w
os.makedirs(a.dst, exist_ok=True)
for f in os.listdir(a.src):
    if f != "model.safetensors" and os.path.isfile(os.path.join(a.src, f)):
        shutil.copy(os.path.join(a.src, f), a.dst)
save_file(out, os.path.join(a.dst, "model.safetensors"), metadata={"format": "pt"})
