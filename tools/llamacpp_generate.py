"""Greedy generation speed of a GGUF with llama.cpp itself (through llama-cpp-python), the
way `qforge generate` runs: the prompt in one batch, then one token per step through the KV
cache, the next token the argmax of the logits, EOS not special (the step count is fixed).
Prints JSON: prompt_tokens, prompt_tokens_per_sec, decode_steps, decode_tokens_per_sec (wall
time of the `eval` calls only (llama_decode and llama-cpp-python's bookkeeping; the argmax
is not counted, while qforge's figure includes its sampling), and the generated
token ids (to compare with qforge's).

usage: llamacpp_generate.py MODEL.gguf --prompt-ids 1,2,3 [-n 128] [--threads 2] [--ctx 512]
"""
import argparse
import json
import time

import numpy as np
from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt-ids", required=True, help="comma-separated token ids (qforge's)")
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512)
    a = ap.parse_args()
    prompt = [int(t) for t in a.prompt_ids.split(",")]
    llm = Llama(model_path=a.model, n_ctx=a.ctx, n_batch=a.ctx, n_ubatch=a.ctx, n_threads=a.threads,
                n_threads_batch=a.threads, verbose=False)
    n_vocab = llm.n_vocab()

    def argmax_last():
        # Without logits_all llama-cpp-python keeps no scores: read the context's last row.
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))))

    t0 = time.perf_counter()
    llm.eval(prompt)
    prompt_seconds = time.perf_counter() - t0
    tokens = [argmax_last()]
    decode_seconds = 0.0
    for _ in range(a.n - 1):
        t0 = time.perf_counter()
        llm.eval([tokens[-1]])
        decode_seconds += time.perf_counter() - t0
        tokens.append(argmax_last())
    print(json.dumps({
        "prompt_tokens": len(prompt),
        "prompt_tokens_per_sec": len(prompt) / prompt_seconds,
        "decode_steps": a.n - 1,
        "decode_tokens_per_sec": (a.n - 1) / decode_seconds,
        "tokens": tokens,
    }))


if __name__ == "__main__":
    main()
