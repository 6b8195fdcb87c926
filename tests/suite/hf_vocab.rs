//! `convert` writes the tokenizer metadata llama.cpp's converter writes, for the ways a
//! checkpoint ships its tokenizer: byte-level BPE tokenizer.json, SentencePiece tokenizer.model
//! only, SentencePiece-style tokenizer.json only (gguf-py's LlamaHfVocab), and special tokens
//! stated in every place the converter looks (post-processor templates, tokenizer_config.json,
//! config.json, chat_template.jinja). The authority is gguf-py's own SpecialVocab and
//! LlamaHfVocab with transformers and sentencepiece (tests/py/check_hf_vocab.py): every
//! `tokenizer.*` key must be equal.

use crate::common;

use std::path::{Path, PathBuf};

use qforge::formats::gguf::GgufHeader;
use qforge::formats::tokenizer::Vocab;
use serde_json::{json, Value as Json};

/// The tiny model's directory copied into `dir`, without the files named in `drop`.
fn tiny_copy(dir: &Path, drop: &[&str]) -> PathBuf {
    let hf = dir.join("hf");
    std::fs::create_dir(&hf).unwrap();
    for f in std::fs::read_dir(common::tiny()).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        if !drop.contains(&name.as_str()) {
            std::fs::copy(&f, hf.join(&name)).unwrap();
        }
    }
    hf
}

fn read_json(p: &Path) -> Json {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn write_json(p: &Path, j: &Json) {
    std::fs::write(p, serde_json::to_vec_pretty(j).unwrap()).unwrap();
}

/// Convert `hf` and compare its tokenizer metadata with the converter's; the GGUF's vocabulary.
fn convert_and_check(hf: &Path) -> (PathBuf, Vocab) {
    let gguf = hf.parent().unwrap().join("t.gguf");
    common::qforge_ok(&[&"-q", &"convert", &hf, &"-o", &gguf]);
    let out = common::python("check_hf_vocab.py", &[&hf, &gguf]);
    println!("{}", out.trim_end());
    let bytes = std::fs::read(&gguf).unwrap();
    let v = Vocab::from_gguf(&GgufHeader::parse(&bytes, &gguf).unwrap()).unwrap();
    (gguf, v)
}

/// The first 8192 pieces (the tiny model's vocabulary size) of llama.cpp's Llama-2 SentencePiece
/// vocabulary, as a tokenizer.json (transformers' LlamaConverter layout).
fn llama_spm_tokenizer_json() -> Json {
    let path = common::shared_fixture("vocab", "ggml-vocab-llama-spm.gguf", "llama.cpp's vocab suite")
        .join("ggml-vocab-llama-spm.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let mut v = Vocab::from_gguf(&GgufHeader::parse(&bytes, &path).unwrap()).unwrap();
    let n = 8192;
    v.tokens.truncate(n);
    v.scores.truncate(n);
    v.token_types.truncate(n);
    v.to_hf_json().unwrap()
}

/// The tiny model as it is: byte-level BPE, tokenizer_config.json naming BOS/EOS/PAD, a
/// ByteLevel post-processor (BOS not added).
#[test]
fn byte_level_bpe_metadata_is_the_converters() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny_copy(dir.path(), &[]);
    let (_, v) = convert_and_check(&hf);
    assert_eq!((v.bos, v.eos, v.pad, v.add_bos, v.add_eos), (Some(0), Some(1), Some(2), Some(false), Some(false)));
}

/// Special tokens where Llama-3-style checkpoints state them: a TemplateProcessing
/// post-processor that adds BOS (no `add_bos_token` in tokenizer_config.json), a template
/// ending in another token than EOS (which becomes EOS, the old one end-of-turn), config.json
/// with a list of EOS ids, a BOS named in tokenizer_config.json that is not an added token
/// (config.json's id is used), and chat templates as a named list.
#[test]
fn special_tokens_are_found_where_the_converter_finds_them() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny_copy(dir.path(), &[]);
    let mut tj = read_json(&hf.join("tokenizer.json"));
    let single = json!([
        {"SpecialToken": {"id": "<s>", "type_id": 0}},
        {"Sequence": {"id": "A", "type_id": 0}},
        {"SpecialToken": {"id": "<pad>", "type_id": 0}},
    ]);
    let pair = json!([
        {"SpecialToken": {"id": "<s>", "type_id": 0}},
        {"Sequence": {"id": "A", "type_id": 0}},
        {"SpecialToken": {"id": "</s>", "type_id": 0}},
        {"Sequence": {"id": "B", "type_id": 1}},
        {"SpecialToken": {"id": "<pad>", "type_id": 1}},
    ]);
    tj["post_processor"] = json!({
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": {
                "<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]},
                "</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]},
                "<pad>": {"id": "<pad>", "ids": [2], "tokens": ["<pad>"]},
            }},
        ],
    });
    write_json(&hf.join("tokenizer.json"), &tj);
    let tcfg = json!({
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<not-an-added-token>",
        "model_max_length": 512,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": [
            {"name": "default", "template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"},
            {"name": "tool use", "template": "{{ tools }}"},
        ],
    });
    write_json(&hf.join("tokenizer_config.json"), &tcfg);
    let mut config = read_json(&hf.join("config.json"));
    config["eos_token_id"] = json!([1, 2]);
    config["unk_token_id"] = json!(3);
    write_json(&hf.join("config.json"), &config);

    let (gguf, v) = convert_and_check(&hf);
    assert_eq!((v.bos, v.eos, v.eot, v.unk), (Some(0), Some(2), Some(1), Some(3)));
    assert_eq!((v.add_bos, v.add_eos, v.add_sep), (Some(true), Some(true), Some(false)));
    assert_eq!(v.named_chat_templates, vec![("tool_use".to_string(), "{{ tools }}".to_string())]);
    // The runtime follows the flags: BOS and the new EOS around the text.
    let j: Json = serde_json::from_str(&common::qforge_ok(&[&"--json", &"tokenize", &gguf, &"--text", &"hi"])).unwrap();
    let ids = j["ids"].as_array().unwrap();
    assert_eq!((ids.first(), ids.last()), (Some(&json!(0)), Some(&json!(2))), "{ids:?}");
}

/// A checkpoint whose SentencePiece tokenizer ships only as tokenizer.json (byte fallback,
/// no tokenizer.model), as many Llama-2 derivatives do: read as gguf-py's LlamaHfVocab reads
/// it (every score -1000, byte tokens, control tokens), and the GGUF then tokenizes as
/// llama.cpp tokenizes that GGUF. The expected ids are llama.cpp's (llama-cpp-python 0.3.36,
/// `Llama(vocab_only=True).tokenize(text, add_bos=False, special=False)` on this GGUF,
/// 2026-12-04): with equal scores its SentencePiece merges the leftmost pair first.
#[test]
fn sentencepiece_tokenizer_json_alone_converts_as_llama_hf_vocab() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny_copy(dir.path(), &["tokenizer.json", "tokenizer_config.json"]);
    write_json(&hf.join("tokenizer.json"), &llama_spm_tokenizer_json());
    let tcfg = json!({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": true, "add_eos_token": false, "tokenizer_class": "LlamaTokenizer",
        "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}",
    });
    write_json(&hf.join("tokenizer_config.json"), &tcfg);
    let (gguf, v) = convert_and_check(&hf);
    assert_eq!(v.tokens.len(), 8192);
    assert!(v.scores.iter().all(|&s| s == -1000.0));
    assert_eq!((v.bos, v.eos, v.unk, v.add_bos), (Some(1), Some(2), Some(0), Some(true)));

    let cases: [(&str, &[u32]); 3] = [
        ("Hello world", &[6162, 417, 3186]),
        (
            " The quick brown fox, 1234 jumps.",
            &[259, 1576, 4996, 3347, 113, 1701, 123, 47, 229, 153, 132, 52, 53, 54, 55, 3623, 1526, 118, 49],
        ),
        ("unbelievable naïve café", &[443, 6596, 347, 1564, 569, 1055, 198, 178, 345, 5777, 105, 198, 172]),
    ];
    for (text, want) in cases {
        let j: Json = serde_json::from_str(&common::qforge_ok(&[
            &"--json",
            &"tokenize",
            &gguf,
            &"--text",
            &text,
            &"--no-special",
        ]))
        .unwrap();
        let got: Vec<u32> = serde_json::from_value(j["ids"].clone()).unwrap();
        assert_eq!(got, want, "{text:?}");
    }
    // On the checkpoint itself, its tokenizer.json runs (transformers' ids).
    common::qforge_ok(&[&"-q", &"tokenize", &hf, &"--text", &"Hello world"]);
}
