"""Tokenize llama.cpp's vocab-suite inputs with a tokenizer.json (Hugging Face `tokenizers`, no
special tokens added) and compare with the suite's expected ids; also decode them back.

usage: check_vocab_suite.py TOKENIZER_JSON INP OUT
       check_vocab_suite.py --transformers DIR INP OUT [BOS]
The second form loads DIR (tokenizer.json + tokenizer_config.json, as `convert --to hf` writes
them) with transformers' AutoTokenizer, as a user of the exported checkpoint would; BOS (an id,
or "none") is what it must put first when asked to add special tokens.
Prints one line per differing case and a summary `N/M equal, K decode back`; exit 1 if any
case differs.
"""
import sys

from tokenizers import Tokenizer


def main():
    args = sys.argv[1:]
    if args[0] == "--transformers":
        from transformers import AutoTokenizer
        hf = AutoTokenizer.from_pretrained(args[1])
        args = args[1:]
        if len(args) > 3:
            plain = hf.encode("Hello", add_special_tokens=False)
            special = hf.encode("Hello", add_special_tokens=True)
            want = ([] if args[3] == "none" else [int(args[3])]) + plain
            if special != want:
                print(f"with special tokens: want {want}, transformers gives {special}")
                sys.exit(1)

        def encode(text):
            return hf.encode(text, add_special_tokens=False)

        def decode(ids):
            return hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    else:
        tok = Tokenizer.from_file(args[0])

        def encode(text):
            return tok.encode(text, add_special_tokens=False).ids

        def decode(ids):
            return tok.decode(ids, skip_special_tokens=False)
    texts = open(args[1], encoding="utf-8").read().split("\n__ggml_vocab_test__\n")[:-1]
    want = [[int(t) for t in line.split()] for line in open(args[2], encoding="utf-8").read().split("\n")[:len(texts)]]
    equal = back = 0
    for text, ids in zip(texts, want):
        got = encode(text)
        if got == ids:
            equal += 1
        else:
            print(f"DIFF {text!r}: want {ids} got {got}")
        if decode(ids) == text:
            back += 1
    print(f"{equal}/{len(texts)} equal, {back} decode back")
    sys.exit(0 if equal == len(texts) else 1)


if __name__ == "__main__":
    main()
