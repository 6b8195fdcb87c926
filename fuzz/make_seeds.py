#!/usr/bin/env python3
"""Write the seed corpora in fuzz/seeds/<target>/ from the committed fixtures.

Seeds are kept small (a few KB) so that every execution is fast: the tokenizer is cut to its
first 300 tokens and the merges among them, and GGUF seeds carry tiny tensors. Needs numpy and
`gguf` (gguf-py) only for the GGUF seeds' type constants; the files are built by hand so
that every metadata value type, nested arrays included, appears.

Run from anywhere: python3 fuzz/make_seeds.py
"""

import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests/fixtures/tiny-llama")
CODEC = os.path.join(ROOT, "tests/fixtures/codec")
OUT = os.path.join(ROOT, "fuzz/seeds")
SHARED = os.environ.get("QFORGE_SHARED_FIXTURES", os.path.join(ROOT, "../shared/fixtures"))

N_TOKENS = 300


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def small_tokenizer():
    tj = json.load(open(os.path.join(TINY, "tokenizer.json")))
    vocab = {t: i for t, i in tj["model"]["vocab"].items() if i < N_TOKENS}
    merges = [m for m in tj["model"]["merges"] if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
    tj["model"]["vocab"] = vocab
    tj["model"]["merges"] = merges
    tj["added_tokens"] = [a for a in tj["added_tokens"] if a["id"] < N_TOKENS]
    return tj


# --- GGUF, by hand -----------------------------------------------------------------------

def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


# value type ids
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
          U64: "<Q", I64: "<q", F64: "<d"}


def gval(t, v):
    if t in SCALAR:
        return struct.pack(SCALAR[t], v)
    if t == STR:
        return gstr(v)
    et, items = v
    return struct.pack("<IQ", et, len(items)) + b"".join(gval(et, x) for x in items)


def gguf(kvs, tensors, align=32):
    """kvs: [(key, type, value)]; tensors: [(name, ne, ggml_type_id, data_bytes)]."""
    h = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for k, t, v in kvs:
        h += gstr(k) + struct.pack("<I", t) + gval(t, v)
    off = 0
    offsets = []
    for name, ne, ty, data in tensors:
        h += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        h += struct.pack("<IQ", ty, off)
        offsets.append(off)
        off += (len(data) + align - 1) // align * align
    h += b"\0" * ((-len(h)) % align)
    body = b""
    for (name, ne, ty, data), o in zip(tensors, offsets):
        body += b"\0" * (o - len(body)) + data
    return h + body


def codec_blocks(name, n):
    """The first n blocks of a committed llama.cpp codec vector (real quantized bytes)."""
    size = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34, "Q2_K": 84, "Q3_K": 110, "Q4_K": 144,
            "Q5_K": 176, "Q6_K": 210, "IQ4_NL": 18}[name]
    return open(os.path.join(CODEC, name + ".bin"), "rb").read()[: n * size]


def tiny_gguf(tj, with_tensors=True):
    cfg = json.load(open(os.path.join(TINY, "config.json")))
    toks = sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in toks]
    ttypes = [3 if i < 3 else 1 for i in range(len(tokens))]
    merges = [a + " " + b for a, b in tj["model"]["merges"]]
    kvs = [
        ("general.architecture", STR, "llama"),
        ("general.name", STR, "Tiny"),
        ("general.file_type", U32, 7),
        ("general.quantization_version", U32, 2),
        ("llama.context_length", U32, cfg["max_position_embeddings"]),
        ("llama.embedding_length", U32, cfg["hidden_size"]),
        ("llama.block_count", U32, cfg["num_hidden_layers"]),
        ("llama.feed_forward_length", U32, cfg["intermediate_size"]),
        ("llama.attention.head_count", U32, cfg["num_attention_heads"]),
        ("llama.attention.head_count_kv", U32, cfg["num_key_value_heads"]),
        ("llama.attention.key_length", U32, cfg["head_dim"]),
        ("llama.rope.freq_base", F32, 10000.0),
        ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("llama.vocab_size", U32, len(tokens)),
        ("tokenizer.ggml.model", STR, "gpt2"),
        ("tokenizer.ggml.pre", STR, "gpt-2"),
        ("tokenizer.ggml.tokens", ARR, (STR, tokens)),
        ("tokenizer.ggml.token_type", ARR, (I32, ttypes)),
        ("tokenizer.ggml.merges", ARR, (STR, merges)),
        ("tokenizer.ggml.bos_token_id", U32, 0),
        ("tokenizer.ggml.eos_token_id", U32, 1),
        ("tokenizer.ggml.padding_token_id", U32, 2),
        ("tokenizer.ggml.add_bos_token", BOOL, False),
        ("tokenizer.ggml.add_eos_token", BOOL, False),
    ]
    tensors = []
    if with_tensors:
        # One tiny tensor of each storage type qforge decodes (ids from ggml.h).
        f32 = struct.pack("<8f", 1.0, -2.0, 0.5, 0.0, 3.25, -0.125, 7.0, 1e-3)
        tensors = [
            ("output_norm.weight", [8], 0, f32),
            ("f16", [4, 2], 1, struct.pack("<8H", 0x3C00, 0xC000, 0x3800, 0, 0x7BFF, 0x0001, 0x8000, 0x3555)),
            ("bf16", [8], 30, struct.pack("<8H", 0x3F80, 0xC000, 0x3F00, 0, 0x7F7F, 0x0001, 0x8000, 0x3EAA)),
            ("q8_0", [32, 2], 8, codec_blocks("Q8_0", 2)),
            ("q4_0", [32], 2, codec_blocks("Q4_0", 1)),
            ("q4_1", [32], 3, codec_blocks("Q4_1", 1)),
            ("q5_0", [32], 6, codec_blocks("Q5_0", 1)),
            ("q5_1", [32], 7, codec_blocks("Q5_1", 1)),
            ("iq4_nl", [32], 20, codec_blocks("IQ4_NL", 1)),
            ("q2_k", [256], 10, codec_blocks("Q2_K", 1)),
            ("q3_k", [256], 11, codec_blocks("Q3_K", 1)),
            ("q4_k", [256], 12, codec_blocks("Q4_K", 1)),
            ("q5_k", [256], 13, codec_blocks("Q5_K", 1)),
            ("q6_k", [256], 14, codec_blocks("Q6_K", 1)),
        ]
    return gguf(kvs, tensors)


def spm_vocab_gguf():
    """A vocab-only SentencePiece GGUF (tokenizer.ggml.model = "llama"): control tokens, the
    256 byte tokens, a user-defined token, and a few scored pieces with ▁, as llama.cpp's
    converter writes a Llama-2 vocabulary, in miniature."""
    toks = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    toks += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    pieces = ["\u2581", "e", "t", "h", "\u2581t", "he", "\u2581the", "\u2581a", "in", "\u2581\u2581", "ll", "o",
              "\u2581he", "llo", "\u2581hello", "w", "r", "d", "\u2581w", "or", "\u2581wor", "ld", "\u2581world"]
    toks += [(t, -float(i), 1) for i, t in enumerate(pieces)]
    toks += [("<|user|>", 0.0, 4)]
    kvs = [
        ("general.architecture", STR, "llama"),
        ("tokenizer.ggml.model", STR, "llama"),
        ("tokenizer.ggml.tokens", ARR, (STR, [t for t, _, _ in toks])),
        ("tokenizer.ggml.scores", ARR, (F32, [s for _, s, _ in toks])),
        ("tokenizer.ggml.token_type", ARR, (I32, [ty for _, _, ty in toks])),
        ("tokenizer.ggml.bos_token_id", U32, 1),
        ("tokenizer.ggml.eos_token_id", U32, 2),
        ("tokenizer.ggml.unknown_token_id", U32, 0),
        ("tokenizer.ggml.add_bos_token", BOOL, True),
        ("tokenizer.ggml.add_space_prefix", BOOL, True),
    ]
    return gguf(kvs, [])


def every_value_type_gguf():
    kvs = [
        ("u8", U8, 255), ("i8", I8, -128), ("u16", U16, 65535), ("i16", I16, -32768),
        ("u32", U32, 2**32 - 1), ("i32", I32, -2**31), ("f32", F32, float("nan")), ("bool", BOOL, True),
        ("str", STR, "héllo"), ("u64", U64, 2**64 - 1), ("i64", I64, -2**63), ("f64", F64, float("-inf")),
        ("arr.u8", ARR, (U8, [1, 2, 3])), ("arr.str", ARR, (STR, ["a", "", "ü"])),
        ("arr.empty", ARR, (F64, [])),
        ("arr.nested", ARR, (ARR, [(I16, [1, -1]), (STR, ["x"]), (ARR, [(BOOL, [True, False])])])),
        ("general.alignment", U32, 64),
    ]
    return gguf(kvs, [("t", [4], 0, struct.pack("<4f", 1, 2, 3, 4)), ("z", [0, 3], 8, b"")], align=64)


def main():
    tj = small_tokenizer()
    tcfg = open(os.path.join(TINY, "tokenizer_config.json")).read()

    # safetensors_header: the tiny model's header alone (cut before the data), a complete
    # small file of three tensors, and the small model's shard index.
    st = open(os.path.join(TINY, "model.safetensors"), "rb").read()
    n = struct.unpack("<Q", st[:8])[0]
    write("safetensors_header", "tiny-header-prefix", st[: 8 + n])
    header = json.loads(st[8: 8 + n])
    names = ["model.norm.weight", "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"]
    h, data, off = {}, b"", 0
    for name in names:
        a, b = header[name]["data_offsets"]
        h[name] = {"dtype": header[name]["dtype"], "shape": header[name]["shape"], "data_offsets": [off, off + b - a]}
        data += st[8 + n + a: 8 + n + b]
        off += b - a
    h["__metadata__"] = {"format": "pt"}
    hb = json.dumps(h, separators=(",", ":")).encode()
    write("safetensors_header", "three-tensors", struct.pack("<Q", len(hb)) + hb + data)
    f32 = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
           "b": {"dtype": "F16", "shape": [3], "data_offsets": [16, 22]}, "c": {"dtype": "I64", "shape": [], "data_offsets": [22, 30]}}
    hb = json.dumps(f32).encode()
    write("safetensors_header", "mixed-dtypes", struct.pack("<Q", len(hb)) + hb + bytes(range(30)))
    index = os.path.join(SHARED, "models/small-llama/model.safetensors.index.json")
    if os.path.exists(index):
        write("safetensors_header", "small-index.json", open(index, "rb").read())
    else:
        sys.exit(f"missing {index} (set QFORGE_SHARED_FIXTURES)")

    g = tiny_gguf(tj)
    gv = every_value_type_gguf()
    write("gguf_reader", "tiny.gguf", g)
    write("gguf_reader", "every-value-type.gguf", gv)
    write("gguf_reader", "tiny-metadata-only.gguf", tiny_gguf(tj, with_tensors=False))

    write("config_json", "tiny-config.json", open(os.path.join(TINY, "config.json")).read())
    write("config_json", "small-config.json", open(os.path.join(SHARED, "models/small-llama/config.json")).read())
    qwen = json.load(open(os.path.join(TINY, "config.json")))
    qwen.update({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "rope_theta": 1e6,
                 "eos_token_id": [1, 2], "head_dim": None})
    del qwen["rope_parameters"]
    write("config_json", "qwen2-config.json", json.dumps(qwen))
    write("config_json", "mistral-config.json", json.dumps({
        "architectures": ["MistralForCausalLM"], "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 1,
        "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 300, "rope_scaling": None,
        "tie_word_embeddings": True}))
    write("config_json", "tiny-metadata-only.gguf", tiny_gguf(tj, with_tensors=False))

    small_tj = json.dumps(tj, ensure_ascii=False)
    write("tokenizer_metadata", "tokenizer-300.json", small_tj)
    write("tokenizer_metadata", "tokenizer-300-with-config.json", small_tj + "\0" + tcfg)
    llama3 = dict(tj)
    llama3["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"},
         "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    llama3["model"] = dict(tj["model"], ignore_merges=True)
    write("tokenizer_metadata", "tokenizer-300-llama-bpe.json", json.dumps(llama3, ensure_ascii=False))
    write("tokenizer_metadata", "tiny-metadata-only.gguf", tiny_gguf(tj, with_tensors=False))
    write("tokenizer_metadata", "spm-vocab-only.gguf", spm_vocab_gguf())

    # block_decoders: [type index, mode, output length, blocks...]; the type index follows
    # GgmlType::ALL filtered by quant::can_decode (fuzz/src/lib.rs, decodable_types).
    order = ["F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL",
             "BF16"]
    floats = open(os.path.join(CODEC, "inputs.f32"), "rb").read()
    for i, name in enumerate(order):
        if name == "F32":
            blocks = floats[:64]
        elif name in ("F16", "BF16"):
            blocks = floats[:32]
        else:
            blocks = codec_blocks(name, 2)
        write("block_decoders", f"{name}-raw", bytes([i, 0, 255]) + blocks)
        write("block_decoders", f"{name}-nan-scales", bytes([i, 2, 7]) + blocks)


if __name__ == "__main__":
    main()
