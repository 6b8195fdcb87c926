"""Perplexity of a GGUF with llama.cpp itself (through llama-cpp-python), using qforge's
protocol: non-overlapping windows of CTX tokens, no BOS, logits 0..ctx-2 scored against
tokens 1..ctx-1. Prints JSON: ppl, tokens_scored, windows, tokens_per_sec (eval time only),
and the token ids' agreement with an optional reference id list.

usage: llamacpp_ppl.py MODEL.gguf TEXT [--ctx 512] [--threads 2] [--max-windows N]
"""
import argparse
import json
import math
import time

import numpy as np
from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--dump-ids", default=None, help="write the token ids as JSON here")
    a = ap.parse_args()
    llm = Llama(model_path=a.model, n_ctx=a.ctx, n_batch=a.ctx, n_ubatch=a.ctx, n_threads=a.threads,
                n_threads_batch=a.threads, logits_all=True, verbose=False)
    text = open(a.text, "rb").read()
    ids = llm.tokenize(text, add_bos=False, special=False)
    if a.dump_ids:
        json.dump(ids, open(a.dump_ids, "w"))
    n_win = len(ids) // a.ctx
    if a.max_windows:
        n_win = min(n_win, a.max_windows)
    nll, n, secs = 0.0, 0, 0.0
    for w in range(n_win):
        win = ids[w * a.ctx:(w + 1) * a.ctx]
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(win)
        secs += time.perf_counter() - t0
        logits = np.asarray(llm.scores[: a.ctx - 1], dtype=np.float64)
        m = logits.max(axis=1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))
        tgt = np.asarray(win[1:])
        nll += float((lse - logits[np.arange(a.ctx - 1), tgt]).sum())
        n += a.ctx - 1
    print(json.dumps({"ppl": math.exp(nll / n), "nll_mean": nll / n, "tokens_scored": n, "windows": n_win,
                      "tokens_per_sec": n_win * a.ctx / secs}))


if __name__ == "__main__":
    main()
