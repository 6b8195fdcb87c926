"""SentencePiece cross-checks (the `sentencepiece` package is the authority for tokenizer.model).

usage:
  check_sentencepiece.py make PIECES_JSON OUT_MODEL
      write a SentencePiece BPE model (byte fallback, identity normalizer, dummy prefix) whose
      pieces are PIECES_JSON's [[piece, score, type], ...], protobuf written by hand
  check_sentencepiece.py encode MODEL TEXT_FILE
      print the ids of the file's text as JSON (no BOS/EOS)
"""
import json
import struct
import sys


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def field(num, wire, payload):
    return varint(num << 3 | wire) + payload


def length_delimited(num, body):
    return field(num, 2, varint(len(body)) + body)


def make(pieces_json, out, dummy_prefix=True):
    pieces = json.load(open(pieces_json, encoding="utf-8"))
    model = b""
    for piece, score, ty in pieces:
        p = length_delimited(1, piece.encode("utf-8")) + field(2, 5, struct.pack("<f", score)) + field(3, 0, varint(ty))
        model += length_delimited(1, p)
    trainer = field(3, 0, varint(2)) + field(4, 0, varint(len(pieces))) + field(35, 0, varint(1))
    normalizer = (length_delimited(1, b"identity") + field(3, 0, varint(int(dummy_prefix))) + field(4, 0, varint(0))
                  + field(5, 0, varint(1)))
    model += length_delimited(2, trainer) + length_delimited(3, normalizer)
    open(out, "wb").write(model)


def encode(model, text_file):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=model)
    text = open(text_file, "rb").read().decode("utf-8")
    print(json.dumps(sp.encode(text)))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    else:
        encode(sys.argv[2], sys.argv[3])
