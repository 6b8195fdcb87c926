"""Perplexity of a GGUF with llama.cpp itself (through llama-cpp-python), using qforge's
protocol: non-overlapping windows of CTX tokens, no BOS, logits 0..ctx-2 scored against
tokens 1..ctx-1. Prints JSON: ppl, tokens_scored, windows, tokens_per_sec (eval time only),
and the token ids' agreement with an optional reference id list.

With --protocol llama.cpp: llama-perplexity's (tools/perplexity/perplexity.cpp of the pinned
llama.cpp, re-run step by step through the library, since llama-cpp-python ships no
llama-perplexity binary): the text tokenized with the vocabulary's special tokens (BOS when it
adds one), n_chunk = tokens / ctx windows, each window's first token replaced by BOS when the
vocabulary adds one, logits first..ctx-2 (first = ctx/2) scored against the next tokens; the
result is its "Final estimate" (exp of the mean NLL).

usage: llamacpp_ppl.py MODEL.gguf TEXT [--ctx 512] [--threads 2] [--max-windows N]
                       [--protocol qforge|llama.cpp]
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
    ap.add_argument("--protocol", choices=["qforge", "llama.cpp"], default="qforge")
    a = ap.parse_args()
    llm = Llama(model_path=a.model, n_ctx=a.ctx, n_batch=a.ctx, n_ubatch=a.ctx, n_threads=a.threads,
                n_threads_batch=a.threads, logits_all=True, verbose=False)
    text = open(a.text, "rb").read()
    lcpp = a.protocol == "llama.cpp"
    # add_bos=True is llama.cpp's add_special: BOS only when the vocabulary adds one.
    adds_bos = lcpp and len(llm.tokenize(b"", add_bos=True, special=False)) > 0
    ids = llm.tokenize(text, add_bos=lcpp, special=False)
    first = a.ctx // 2 if lcpp else 0
    if a.dump_ids:
        json.dump(ids, open(a.dump_ids, "w"))
    n_win = len(ids) // a.ctx
    if a.max_windows:
        n_win = min(n_win, a.max_windows)
    nll, n, secs = 0.0, 0, 0.0
    for w in range(n_win):
        win = ids[w * a.ctx:(w + 1) * a.ctx]
        inp = ([llm.token_bos()] + win[1:]) if adds_bos else win
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(inp)
        secs += time.perf_counter() - t0
        logits = np.asarray(llm.scores[first: a.ctx - 1], dtype=np.float64)
        m = logits.max(axis=1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))
        tgt = np.asarray(win[first + 1:])
        nll += float((lse - logits[np.arange(len(tgt)), tgt]).sum())
        n += len(tgt)
    print(json.dumps({"ppl": math.exp(nll / n), "nll_mean": nll / n, "tokens_scored": n, "windows": n_win,
                      "tokens_per_sec": n_win * a.ctx / secs}))


if __name__ == "__main__":
    main()
