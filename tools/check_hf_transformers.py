#!/usr/bin/env python3
"""Load a Hugging Face checkpoint qforge wrote as its users would, on the CPU (bitsandbytes
NF4/FP4 in transformers; GPTQ and AWQ in GPTQModel, built without CUDA), and check it
against qforge.

    check_hf_transformers.py QUANTIZED_DIR [--source SRC_DIR] [--text FILE] [--ctx 96]
                             [--windows 4] [--tol 0.005] [--qforge target/release/qforge]

1. transformers loads the directory (GPTQModel's own loader for GPTQ/AWQ mixtures of
   experts; --loader picks one); the script counts the quantized modules it made (none is a
   failure).
2. On the first WINDOWS windows of CTX tokens of TEXT (qforge's windows, read back from
   `qforge perplexity --save-logits`), the loader's distributions against qforge's: the
   perplexities must agree within TOL (relative) and KL(qforge ‖ loader) per token stay
   below KLD. A weight the loader left uninitialized or decoded differently shows in the KL
   divergence even where a random-initialized model's perplexity hardly moves. The loaders
   compute in the model's dtype (bf16 for most checkpoints) where qforge computes in f32,
   hence the defaults (0.5%, 5e-3; bf16 compute alone gives ~2e-3 on the bf16 fixtures). With --source, qforge's KL divergence of the quantized
   model from the source is printed for scale.
3. With --source, bitsandbytes checkpoints: transformers quantizes SRC_DIR itself with the same
   BitsAndBytesConfig and saves it; every tensor of that directory must equal qforge's
   (same names and shapes, identical uint8 codes, equal float values, the same quant_state
   JSON up to its "dtype"; with double quantization, bitsandbytes' CPU path puts a few absmax
   values one 8-bit code away from the nearest, which qforge's CUDA-kernel rounding picks:
   reported, not failed). This is what "qforge writes what bitsandbytes writes" means, for
   dense and mixture-of-experts models alike.

Needs torch, transformers (and bitsandbytes, accelerate for NF4; gptqmodel for GPTQ/AWQ). Not part of the test suite
(CI has no torch); BENCHMARKS.md records what it printed.
"""
import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile


def qforge_json(qforge, *args):
    out = subprocess.run([qforge, "-q", "--json", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def read_qflogits(path):
    """qforge's saved distributions (`perplexity --save-logits`, src/eval/logits_file.rs):
    the windows' token ids and the log-probabilities at every scored position."""
    import numpy as np

    b = open(path, "rb").read()
    assert b[:8] == b"QFLOGIT2", "not a qforge logits file"
    vocab, ctx, windows, _ = struct.unpack_from("<4I", b, 8)
    off = 24
    ids = np.frombuffer(b, "<u4", windows * ctx, off).reshape(windows, ctx)
    off += 4 * windows * ctx
    n = windows * (ctx - 1)
    rec = np.frombuffer(b, np.uint8, n * (16 + 2 * vocab), off).reshape(n, 16 + 2 * vocab)
    lo = rec[:, 8:12].copy().view("<f4")[:, 0]
    step = rec[:, 12:16].copy().view("<f4")[:, 0]
    codes = rec[:, 16:].copy().view("<u2").astype(np.float32)
    lp = lo[:, None] + codes * step[:, None]
    return ids, lp.reshape(windows, ctx - 1, vocab)


def loader_vs_qforge(model, ids, qlp):
    """Perplexity, KL(qforge ‖ loader) and top-1 agreement of the loader's distributions
    on qforge's windows."""
    import numpy as np
    import torch

    nll, kld, agree, count = 0.0, 0.0, 0, 0
    for w, q in zip(ids, qlp):
        x = torch.tensor([w.astype(np.int64)])
        with torch.no_grad():
            lp = torch.log_softmax(model(x).logits[0, :-1].float(), dim=-1).numpy()
        nll -= lp[np.arange(len(w) - 1), w[1:]].sum()
        kld += (np.exp(q) * (q - lp)).sum()
        agree += int((q.argmax(-1) == lp.argmax(-1)).sum())
        count += len(w) - 1
    return math.exp(nll / count), kld / count, agree / count


def compare_with_bitsandbytes(qdir, source):
    """transformers + bitsandbytes quantize `source` as qdir's config says; compare tensors."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    qc = json.load(open(os.path.join(qdir, "config.json")))["quantization_config"]
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=qc["bnb_4bit_quant_type"],
        bnb_4bit_use_double_quant=qc["bnb_4bit_use_double_quant"],
        bnb_4bit_compute_dtype=getattr(torch, qc["bnb_4bit_compute_dtype"]),
    )
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        ref = AutoModelForCausalLM.from_pretrained(source, quantization_config=bnb, device_map="cpu")
        ref.save_pretrained(tmp)
        a, b = Checkpoint(tmp), Checkpoint(qdir)
        ka, kb = set(a.keys()), set(b.keys())
        for k in sorted(ka ^ kb):
            failures.append(f"{k}: only in {'transformers' if k in ka else 'qforge'}'s checkpoint")
        for k in sorted(ka & kb):
            x, y = a.get_tensor(k), b.get_tensor(k)
            if "quant_state" in k:
                sx, sy = json.loads(bytes(x.tolist())), json.loads(bytes(y.tolist()))
                sx.pop("dtype", None), sy.pop("dtype", None)
                if sx != sy:
                    failures.append(f"{k}: quant_state {sx} vs {sy}")
            elif x.shape != y.shape:
                failures.append(f"{k}: shape {list(x.shape)} vs {list(y.shape)}")
            elif x.dtype == torch.uint8 or y.dtype == torch.uint8:
                diff = (x.int() - y.int()).abs()
                if k.endswith(".absmax") and int(diff.max()) == 1:
                    # Double quantization: bitsandbytes' CPU path rounds a few absmax values
                    # to a neighbouring 8-bit code; qforge follows its CUDA kernel (README).
                    print(f"  note {k}: {int((diff > 0).sum())} absmax codes one step apart (CPU bitsandbytes)")
                elif not torch.equal(x, y):
                    failures.append(f"{k}: {int((x != y).sum())} of {x.numel()} bytes differ")
            else:
                # Unquantized weights: the same values, whatever float type each side stores.
                x32, y32 = x.float(), y.float()
                lo = x32.to(y.dtype).float() if y.dtype != x.dtype else x32
                if not torch.equal(lo, y32) and not torch.equal(x32, y32.to(x.dtype).float()):
                    failures.append(f"{k}: values differ (max {float((x32 - y32).abs().max()):.3g})")
        n = len(ka & kb)
    return n, failures


class Checkpoint:
    """The tensors of a checkpoint directory, one model.safetensors or shards with an index."""

    def __init__(self, d):
        from safetensors import safe_open

        index = os.path.join(d, "model.safetensors.index.json")
        if os.path.exists(index):
            files = sorted(set(json.load(open(index))["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        self.files = [safe_open(os.path.join(d, f), "pt") for f in files]
        self.where = {k: f for f in self.files for k in f.keys()}

    def keys(self):
        return self.where.keys()

    def get_tensor(self, k):
        return self.where[k].get_tensor(k)


def load(qdir, loader):
    """The model as its users load it. bitsandbytes: transformers. GPTQ/AWQ: transformers
    (through its GPTQModel integration) for dense models; GPTQModel's own loader for
    mixtures of experts, since transformers 5 holds experts as 3-D parameters it cannot swap
    for packed linears and GPTQModel splits them into modules first (`auto`)."""
    cfg = json.load(open(os.path.join(qdir, "config.json")))
    qc = cfg.get("quantization_config") or {}
    moe = any(k in cfg for k in ("num_local_experts", "num_experts"))
    if loader == "auto":
        loader = "gptqmodel" if qc.get("quant_method") in ("gptq", "awq") and moe else "transformers"
    if loader == "gptqmodel":
        from gptqmodel import BACKEND, GPTQModel

        # The CPU's fused int4 kernels take groups of 32…256 only; the plain torch kernel any.
        fused = qc.get("group_size") in (32, 64, 128, 256)
        m = GPTQModel.load(qdir, device="cpu", backend=BACKEND.AUTO if fused else BACKEND.TORCH)
        return m.model, "GPTQModel"
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(qdir, device_map="cpu"), "transformers"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("qdir")
    ap.add_argument("--source")
    ap.add_argument("--text", default="tests/fixtures/text/wiki.test.raw")
    ap.add_argument("--ctx", type=int, default=96)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--tol", type=float, default=0.005)
    ap.add_argument("--kld", type=float, default=5e-3)
    ap.add_argument("--loader", choices=["auto", "transformers", "gptqmodel"], default="auto")
    ap.add_argument("--qforge", default="target/release/qforge")
    args = ap.parse_args()

    ok = True
    model, loader = load(args.qdir, args.loader)
    kinds = {}
    for m in model.modules():
        name = type(m).__name__
        if name in ("Linear4bit", "Linear8bitLt") or hasattr(m, "qweight"):
            kinds[name] = kinds.get(name, 0) + 1
    print(f"{args.qdir}: {loader} loads it; quantized modules {kinds or 'none'}")
    ok &= bool(kinds)

    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "q.qflogits")
        ours = qforge_json(
            args.qforge, "perplexity", args.qdir, "--text", args.text, "--ctx", str(args.ctx),
            "--max-windows", str(args.windows), "--save-logits", saved,
        )["ppl"]
        ids, qlp = read_qflogits(saved)
    theirs, kld, top1 = loader_vs_qforge(model, ids, qlp)
    rel = abs(theirs - ours) / ours
    print(f"{len(ids)} windows of {args.ctx}: perplexity {loader} {theirs:.4f}, qforge {ours:.4f} "
          f"(relative difference {rel:.2e}); KL(qforge || {loader}) {kld:.2e}, top-1 agreement {top1:.2%}")
    if args.source:
        scale = qforge_json(
            args.qforge, "compare", args.source, args.qdir, "--text", args.text, "--ctx", str(args.ctx),
            "--max-windows", str(args.windows),
        )["kld_mean"]
        print(f"  for scale: KL(source || quantized) by qforge {scale:.2e}")
    ok &= rel <= args.tol and kld <= args.kld
    qc = json.load(open(os.path.join(args.qdir, "config.json")))["quantization_config"]
    if args.source and qc["quant_method"] == "bitsandbytes":
        n, failures = compare_with_bitsandbytes(args.qdir, args.source)
        for f in failures[:20]:
            print("  MISMATCH", f)
        print(f"against transformers + bitsandbytes quantizing {args.source}: {n} tensors compared, "
              f"{len(failures)} mismatches")
        ok &= not failures
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
