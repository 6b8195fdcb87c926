"""Tokenize llama.cpp's vocab-suite inputs with a tokenizer.json (Hugging Face `tokenizers`, no
special tokens added) and compare with the suite's expected ids; also decode them back.

usage: check_vocab_suite.py TOKENIZER_JSON INP OUT
Prints one line per differing case and a summary `N/M equal, K decode back`; exit 1 if any
case differs.
"""
import sys

from tokenizers import Tokenizer


def main():
    tok = Tokenizer.from_file(sys.argv[1])
    texts = open(sys.argv[2], encoding="utf-8").read().split("\n__ggml_vocab_test__\n")[:-1]
    want = [[int(t) for t in line.split()] for line in open(sys.argv[3], encoding="utf-8").read().split("\n")[:len(texts)]]
    equal = back = 0
    for text, ids in zip(texts, want):
        got = tok.encode(text, add_special_tokens=False).ids
        if got == ids:
            equal += 1
        else:
            print(f"DIFF {text!r}: want {ids} got {got}")
        if tok.decode(ids, skip_special_tokens=False) == text:
            back += 1
    print(f"{equal}/{len(texts)} equal, {back} decode back")
    sys.exit(0 if equal == len(texts) else 1)


if __name__ == "__main__":
    main()
