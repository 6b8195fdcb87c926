"""The tokenizer metadata llama.cpp's converter writes for a checkpoint, against a GGUF's.

usage: check_hf_vocab.py HF_DIR GGUF

Computes what convert_hf_to_gguf.py (LlamaModel.set_vocab) writes for HF_DIR's tokenizer with
gguf-py's own classes: `_set_vocab_sentencepiece` (tokenizer.model, read with sentencepiece),
else `_set_vocab_llama_hf` (gguf.LlamaHfVocab, which loads the tokenizer with transformers),
else `_set_vocab_gpt2` (its get_vocab_base, transformers' AutoTokenizer; the pre-tokenizer
name is checked elsewhere), then gguf.SpecialVocab and LlamaModel's own touches. Compares
every tokenizer key with GGUF's, prints one line per difference and exits 1 if any.
"""
import json
import sys
from pathlib import Path

import gguf
import numpy as np


def llama_cpp_vocab():
    """gguf-py's vocab.py of the pinned llama.cpp (tests/py/llama_cpp/), on the PyPI package's
    constants and writer (its own relative import pointed at them)."""
    path = Path(__file__).parent / "llama_cpp" / "vocab.py"
    src = path.read_text(encoding="utf-8").replace("from .gguf_writer import", "from gguf.gguf_writer import")
    ns = {"__name__": "llama_cpp_vocab"}
    exec(compile(src, str(path), "exec"), ns)
    return ns


VOCAB = llama_cpp_vocab()


def does_token_look_special(t):
    return (t in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (t.startswith("<|") and t.endswith("|>"))
            or (t.startswith("<\uff5c") and t.endswith("\uff5c>")) or (t.startswith("<unused") and t.endswith(">")))


def sentencepiece_vocab(d, hparams):
    from sentencepiece import SentencePieceProcessor
    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(d / "tokenizer.model"))
    n = hparams.get("vocab_size") or sp.vocab_size()
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [5] * n
    for i in range(min(n, sp.vocab_size())):
        ty = 1
        if sp.IsUnknown(i):
            ty = 2
        elif sp.IsControl(i):
            ty = 3
        elif sp.IsUnused(i):
            ty = 5
        elif sp.IsByte(i):
            ty = 6
        tokens[i], scores[i], types[i] = sp.IdToPiece(i), sp.GetScore(i), ty
    added = d / "added_tokens.json"
    if added.is_file():
        for key, i in json.load(open(added, encoding="utf-8")).items():
            if i < n:
                tokens[i], scores[i], types[i] = key, -1000.0, 4
    cfg = d / "tokenizer_config.json"
    if cfg.is_file():
        for i, data in json.load(open(cfg, encoding="utf-8")).get("added_tokens_decoder", {}).items():
            i = int(i)
            if i >= n:
                continue
            tok = data["content"]
            if data.get("special") or does_token_look_special(tok):
                types[i] = 3
            else:
                tok = tok.replace("\u2581", " ")
                types[i] = 4
            scores[i], tokens[i] = -1000.0, tok
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types}, len(tokens)


def llama_hf_vocab(d):
    vocab = VOCAB["LlamaHfVocab"](d)
    tokens, scores, types = [], [], []
    for text, score, ty in vocab.all_tokens():
        tokens.append(text.decode("utf-8"))
        scores.append(score)
        types.append(int(ty))
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types}, len(tokens)


def gpt2_vocab(d, hparams):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(d)
    n = hparams.get("vocab_size", len(tok.vocab))
    reverse = {i: t for t, i in tok.vocab.items()}
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(n):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(5)
            continue
        t = reverse[i]
        if t in added:
            if decoder[i].special or does_token_look_special(t):
                types.append(3)
            else:
                t = t.replace("\u2581", " ")
                types.append(4)
        else:
            types.append(1)
        tokens.append(t)
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types}, None


class Writer:
    """Collects what SpecialVocab.add_to_gguf would write (the same handler names)."""

    def __init__(self):
        self.kv = {}

    def __getattr__(self, name):
        keys = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "sep": "seperator_token_id",
                "pad": "padding_token_id", "mask": "mask_token_id", "eot": "eot_token_id", "eom": "eom_token_id"}
        for typ, key in keys.items():
            if name == f"add_{typ}_token_id":
                return lambda v, key=key: self.kv.__setitem__(f"tokenizer.ggml.{key}", v)
        for typ in ("bos", "eos", "sep"):
            if name == f"add_add_{typ}_token":
                return lambda v, typ=typ: self.kv.__setitem__(f"tokenizer.ggml.add_{typ}_token", v)
        if name == "add_token_merges":
            return lambda v: self.kv.__setitem__("tokenizer.ggml.merges", list(v))
        if name == "add_chat_template":
            return self.chat_template
        raise AttributeError(name)

    def chat_template(self, value):
        if isinstance(value, str):
            self.kv["tokenizer.chat_template"] = value
            return
        names = []
        for choice in value:
            name = "".join(c if c.isascii() and c.isalnum() else "_" for c in choice.get("name", ""))
            if name and choice.get("template") is not None:
                if name == "default":
                    self.kv["tokenizer.chat_template"] = choice["template"]
                else:
                    names.append(name)
                    self.kv[f"tokenizer.chat_template.{name}"] = choice["template"]
        if names:
            self.kv["tokenizer.chat_templates"] = names


def expected(d):
    hparams = json.load(open(d / "config.json", encoding="utf-8"))
    w = Writer()
    tcfg_file = d / "tokenizer_config.json"
    if tcfg_file.is_file():
        tcfg = json.load(open(tcfg_file, encoding="utf-8"))
        if tcfg.get("add_prefix_space") is not None:
            w.kv["tokenizer.ggml.add_space_prefix"] = tcfg["add_prefix_space"]
    if (d / "tokenizer.model").is_file():
        kv, n_vocab = sentencepiece_vocab(d, hparams)
        load_merges = False
    else:
        try:
            kv, n_vocab = llama_hf_vocab(d)
            load_merges = False
        except (FileNotFoundError, TypeError):
            kv, n_vocab = gpt2_vocab(d, hparams)
            load_merges = True
    w.kv.update(kv)
    VOCAB["SpecialVocab"](d, load_merges=load_merges, n_vocab=n_vocab).add_to_gguf(w, quiet=True)
    if hparams.get("vocab_size", 32000) == 32016:
        sv = VOCAB["SpecialVocab"](d, load_merges=False, special_token_types=["prefix", "suffix", "middle", "eot"])
        sv._set_special_token("eot", 32010)
        sv.add_to_gguf(w, quiet=True)
    if hparams.get("vocab_size", 32000) == 49152:
        w.kv["tokenizer.ggml.add_bos_token"] = False
    return w.kv


def gguf_kv(path):
    r = gguf.GGUFReader(path)
    out = {}
    for name, f in r.fields.items():
        if not name.startswith("tokenizer."):
            continue
        v = f.contents()
        if isinstance(v, np.ndarray):
            v = v.tolist()
        out[name] = v
    return out


def main():
    d, path = Path(sys.argv[1]), sys.argv[2]
    want, got = expected(d), gguf_kv(path)
    if want.get("tokenizer.ggml.model") == "gpt2":
        want["tokenizer.ggml.pre"] = got.get("tokenizer.ggml.pre")  # the hash is checked elsewhere
    bad = 0
    for key in sorted(set(want) | set(got)):
        a, b = want.get(key), got.get(key)
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a and isinstance(a[0], float):
            same = np.allclose(np.array(a, dtype=np.float32), np.array(b, dtype=np.float32), rtol=0, atol=0)
        else:
            same = a == b
        if not same:
            bad += 1
            if isinstance(a, list) and isinstance(b, list):
                first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                print(f"{key}: lengths {len(a)} vs {len(b)}, first difference at {first}: "
                      f"{a[first] if first < len(a) else None!r} vs {b[first] if first < len(b) else None!r}")
            else:
                print(f"{key}: converter {str(a)[:80]!r} vs qforge {str(b)[:80]!r}")
    print(f"{len(want)} keys, {bad} differ")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
