#!/usr/bin/env python3
"""Write src/formats/tokenizer/pre_tokenizers.rs: llama.cpp's BPE pre-tokenizers as data.

Reads llama.cpp's src/llama-vocab.cpp (the copy vendored in the llama-cpp-python sdist that
tools/bench_ppl.sh builds) and extracts two of its tables: `tokenizer.ggml.pre` name → pre-
tokenizer type and flags (in `llama_vocab::impl::load`), and type → the regexes that split
the text before the merges (in the `llm_tokenizer_bpe` constructor). The Rust table keeps
every regex exactly as llama.cpp runs it, with every non-ASCII character written as an
escape, so that no editor's Unicode normalization can change a character range.

Types whose regex only triggers a hand-written splitter in llama.cpp's unicode.cpp, with no
regex equivalent, are listed without regexes (qforge refuses them with a clear error).

From the converter (convert_hf_to_gguf.py, or conversion/base.py where it was split up) it
takes how a Hugging Face tokenizer's pre-tokenizer is identified: the check text, and the
table of SHA-256 hashes of its token ids → `tokenizer.ggml.pre` name.

usage: tools/gen_pre_tokenizers.py LLAMA_VOCAB_CPP CONVERTER_PY [LABEL]
  e.g. pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36, unpack, then
  tools/gen_pre_tokenizers.py L/src/llama-vocab.cpp L/conversion/base.py 0.3.36
  with L = llama_cpp_python-0.3.36/vendor/llama.cpp
"""

import ast

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "src/formats/tokenizer/pre_tokenizers.rs")
# Regexes that llama.cpp's unicode.cpp answers with a hand-written splitter instead of running
# them, and the regex (for the `tokenizers` crate's engine) that splits exactly as that code:
# - "\\p{Han}+" triggers Kimi-K2's splitter. It follows the K2 regex of tokenization_kimi.py
#   (quoted in unicode.cpp) but, like llama.cpp's regexes, knows letters only as \\p{L}: a
#   word is any run of non-Han letters (Han: unicode_cpt_is_han's ranges);
# - AFMoE's and tiny_aya's digit triggers run one splitter: a run of \\p{N} cut into groups of
#   three from the right (the leading group 1-2 digits).
HAN = ("\\x{4E00}-\\x{9FFF}\\x{3400}-\\x{4DBF}\\x{20000}-\\x{2A6DF}\\x{2A700}-\\x{2B73F}"
       "\\x{2B740}-\\x{2B81F}\\x{2B820}-\\x{2CEAF}\\x{2CEB0}-\\x{2EBEF}\\x{F900}-\\x{FAFF}"
       "\\x{2F800}-\\x{2FA1F}")
DIGITS_FROM_RIGHT = "\\p{N}{1,3}(?=(?:\\p{N}{3})*(?!\\p{N}))"
CUSTOM_EQUIVALENT = {
    "\\p{Han}+": f"[{HAN}]+|[^\\r\\n\\p{{L}}\\p{{N}}]?[\\p{{L}}&&[^{HAN}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                  "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    "\\p{AFMoE_digits}": DIGITS_FROM_RIGHT,
    "\\d{1,3}(?=(?:\\d{3})*\\b)": DIGITS_FROM_RIGHT,
}
# llama.cpp's regex engine knows the letter subcategories only as letters (unicode_regex_split
# maps \\p{Lu}, \\p{Ll}, \\p{Lt}, \\p{Lm}, \\p{Lo} all to LETTER): so does the table.
LETTER_SUBCATEGORIES = re.compile(r"\\p\{L[ultmo]\}")
CUSTOM_ONLY = set()
# Types whose regexes alone do not give llama.cpp's ids (none now; tools/check_pre_tokenizers.py
# with llama-cpp-python 0.3.36 compares every entry). gemma4 and sarvam_moe merge raw UTF-8:
# qforge's SentencePiece engine runs them in merge-rank mode (flagged `raw_utf8`).
NOT_REPRODUCED = set()


def cpp_literals(block):
    """The string literals of a C++ block, adjacent ones concatenated, comments skipped."""
    out, i, cur, in_item = [], 0, None, False
    while i < len(block):
        c = block[i]
        if block.startswith("//", i):
            i = block.index("\n", i) if "\n" in block[i:] else len(block)
            continue
        if c == '"':
            j, buf = i + 1, bytearray()
            while block[j] != '"':
                if block[j] == "\\":
                    e = block[j + 1]
                    if e in "\\\"'?":
                        buf += e.encode()
                        j += 2
                    elif e in "nrt0":
                        buf += {"n": b"\n", "r": b"\r", "t": b"\t", "0": b"\0"}[e]
                        j += 2
                    elif e in "uU":
                        n = 4 if e == "u" else 8
                        buf += chr(int(block[j + 2:j + 2 + n], 16)).encode()
                        j += 2 + n
                    else:
                        raise ValueError(f"escape \\{e} at {block[j - 20:j + 20]!r}")
                else:
                    buf += block[j].encode()
                    j += 1
            s = buf.decode()
            cur = s if cur is None else cur + s
            i = j + 1
            continue
        if c == "," and cur is not None:
            out.append(cur)
            cur = None
        i += 1
    if cur is not None:
        out.append(cur)
    return out


def names_table(src):
    start = src.index('tokenizer_pre == "default"')
    blk = src[src.rindex("if (type == LLAMA_VOCAB_TYPE_BPE)", 0, start):src.index("} else if (type == LLAMA_VOCAB_TYPE_SPM)", start)]
    rows = []
    for part in re.split(r"\}\s*else if\s*\(", blk):
        names = re.findall(r'tokenizer_pre == "([^"]+)"', part)
        ty = re.findall(r"pre_type\s*=\s*LLAMA_VOCAB_PRE_TYPE_(\w+)", part)
        if not names or not ty:
            continue
        ignore = bool(re.search(r"ignore_merges\s*=\s*true", part))
        escape = bool(re.search(r"escape_whitespaces\s*=\s*true", part))
        # llama.cpp's BPE default is no BOS; these names turn it on unless the GGUF says.
        add_bos = bool(re.search(r"add_bos\s*=\s*true", part))
        rows.append((names, ty[0], ignore, add_bos, escape))
    return rows


def regex_table(src):
    ctor = src.index("struct llm_tokenizer_bpe : llm_tokenizer {")
    sw = src.index("switch (vocab.get_pre_type())", ctor)
    end = src.index("std::vector<std::string> regex_exprs;", sw)
    body = src[sw:end]
    table, pending = {}, []
    for m in re.finditer(r"case LLAMA_VOCAB_PRE_TYPE_(\w+):|default:|regex_exprs\s*=\s*\{(.*?)\};", body, re.S):
        if m.group(0).startswith("case"):
            pending.append(m.group(1))
        elif m.group(0) == "default:":
            pending.append("DEFAULT")
        else:
            # `byte_encode = false` after the regexes: merges over raw UTF-8 (SentencePiece-style
            # BPE with `▁` spaces and <0xNN> byte tokens) instead of GPT-2's byte alphabet.
            rest = body[m.end():body.find("break;", m.end())]
            raw = bool(re.search(r"byte_encode\s*=\s*false", rest))
            for t in pending:
                table[t] = (cpp_literals(m.group(2)), raw)
            pending = []
    return table


def converter_tables(src):
    """(check text, [(sha256 hex, pre name)]) from get_vocab_base_pre."""
    i = src.index("def get_vocab_base_pre")
    j = src.index("chktxt = ", i)
    text = ast.literal_eval(src[j + len("chktxt = "):src.index("\n", j)])
    end = src.index("if res is None", i)
    pairs = re.findall(r'if chkhsh == "([0-9a-f]{64})":\s*\n(?:\s*#[^\n]*\n)*\s*res = "([^"]+)"', src[i:end])
    if src[i:end].count("chkhsh ==") != len(pairs):
        sys.exit("could not read every hash of get_vocab_base_pre")
    return text, pairs


def rust_str(s):
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) > 0x7E:
            out.append(f"\\u{{{ord(ch):X}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    src = open(sys.argv[1], encoding="utf-8").read()
    check_text, hashes = converter_tables(open(sys.argv[2], encoding="utf-8").read())
    label = sys.argv[3] if len(sys.argv) > 3 else os.path.basename(sys.argv[1])
    names, regexes = names_table(src), regex_table(src)
    lines = [
        f"//! llama.cpp's BPE pre-tokenizers (llama-vocab.cpp of llama-cpp-python {label}), as data.",
        "//! GENERATED by tools/gen_pre_tokenizers.py: regenerate rather than edit.",
        "",
        "use super::PreTokenizer;",
        "",
        "pub const PRE_TOKENIZERS: &[PreTokenizer] = &[",
    ]
    for ns, ty, ignore, add_bos, escape in names:
        if ty not in regexes:
            sys.exit(f"no regexes for type {ty} ({ns})")
        rx, raw = regexes[ty]
        rx = [LETTER_SUBCATEGORIES.sub(r"\\p{L}", CUSTOM_EQUIVALENT.get(r, r)) for r in rx]
        custom = any(r in CUSTOM_ONLY for r in rx) or ty in NOT_REPRODUCED
        lines.append("    PreTokenizer {")
        lines.append("        names: &[" + ", ".join(rust_str(n) for n in ns) + "],")
        lines.append(f"        kind: {rust_str(ty.lower())},")
        if custom:
            lines.append("        regexes: &[], // llama.cpp's handling is not its regexes alone (see the generator)")
        else:
            lines.append("        regexes: &[")
            for r in rx:
                lines.append(f"            {rust_str(r)},")
            lines.append("        ],")
        lines.append(f"        ignore_merges: {'true' if ignore else 'false'},")
        lines.append(f"        add_bos: {'true' if add_bos else 'false'},")
        lines.append(f"        raw_utf8: {'true' if raw else 'false'},")
        lines.append(f"        escape_spaces: {'true' if escape else 'false'},")
        lines.append("    },")
    lines.append("];")
    lines += [
        "",
        "/// The text convert_hf_to_gguf.py encodes (special tokens added, as `tokenizer.encode`",
        "/// does) to identify a Hugging Face tokenizer's pre-tokenizer.",
        f"pub const CHECK_TEXT: &str = {rust_str(check_text)};",
        "",
        "/// SHA-256 of the check text's ids, written as Python prints the list (`[1, 2, 3]`) →",
        "/// `tokenizer.ggml.pre` name (several models share a name).",
        "pub const PRE_HASHES: &[(&str, &str)] = &[",
    ]
    lines += [f"    ({rust_str(h)}, {rust_str(n)})," for h, n in hashes]
    lines.append("];")
    open(OUT, "w").write("\n".join(lines) + "\n")
    print(f"{OUT}: {sum(len(r[0]) for r in names)} names, {len(names)} entries, {len(hashes)} hashes")


if __name__ == "__main__":
    main()
