"""Check that two tokenizer.json files tokenize a text identically (Hugging Face `tokenizers`).

usage: check_tokenizer.py TOKENIZER_A TOKENIZER_B TEXT_FILE [MAX_BYTES]

Encodes the first MAX_BYTES (default 100000) bytes of TEXT_FILE, cut back to a whole UTF-8
character, with both tokenizers (no special tokens added) and requires identical ids. Also
checks that decoding the ids gives the text back.
"""
import sys

from tokenizers import Tokenizer


def main():
    a_path, b_path, text_path = sys.argv[1:4]
    max_bytes = int(sys.argv[4]) if len(sys.argv) > 4 else 100_000
    raw = open(text_path, "rb").read(max_bytes)
    text = raw.decode("utf-8", errors="ignore")
    a = Tokenizer.from_file(a_path)
    b = Tokenizer.from_file(b_path)
    ids_a = a.encode(text, add_special_tokens=False).ids
    ids_b = b.encode(text, add_special_tokens=False).ids
    if ids_a != ids_b:
        first = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), min(len(ids_a), len(ids_b)))
        print(f"FAIL: {len(ids_a)} vs {len(ids_b)} ids; first difference at {first}: "
              f"{ids_a[first:first + 5]} vs {ids_b[first:first + 5]}")
        sys.exit(1)
    if len(ids_a) < 1000:
        print(f"FAIL: only {len(ids_a)} tokens from {len(raw)} bytes")
        sys.exit(1)
    if b.decode(ids_b, skip_special_tokens=False) != a.decode(ids_a, skip_special_tokens=False):
        print("FAIL: decoded texts differ")
        sys.exit(1)
    print(f"OK: {len(ids_a)} identical ids from {len(raw)} bytes")


if __name__ == "__main__":
    main()
