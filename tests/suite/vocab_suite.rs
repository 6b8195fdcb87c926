//! llama.cpp's own tokenizer conformance suite (`../shared/fixtures/vocab`, and three newer
//! vocabularies of the same suite in `tests/fixtures/vocab`, from llama.cpp's `models/`
//! folder): for each vocab-only GGUF, every test string must tokenize to exactly the
//! ids llama.cpp's test-tokenizer-0 expects (no BOS/EOS added, special-token text taken as
//! text), and the ids must detokenize back to the string wherever llama.cpp's do.

use crate::common;

use std::path::PathBuf;

use qforge::formats::gguf::GgufHeader;
use qforge::formats::tokenizer::Vocab;
use qforge::runtime::TextTokenizer;

fn vocab_dir() -> PathBuf {
    common::shared_fixture("vocab", "ggml-vocab-gpt-2.gguf", "llama.cpp's vocab suite")
}

/// Where `name`'s files are: the vocabularies committed here (newer entries of the same suite,
/// from the llama.cpp that llama-cpp-python 0.3.36 vendors), else the shared fixtures. A GGUF
/// committed xz-compressed (gemma-4: 15.8 MB, 3.0 MB compressed) is unpacked once, with its
/// .inp/.out, into the target directory.
fn dir_of(name: &str) -> PathBuf {
    let here = common::root().join("tests/fixtures/vocab");
    let file = format!("ggml-vocab-{name}.gguf");
    let xz = here.join(format!("{file}.xz"));
    if xz.exists() {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vocab");
        std::fs::create_dir_all(&dir).unwrap();
        for ext in ["inp", "out"] {
            std::fs::copy(here.join(format!("{file}.{ext}")), dir.join(format!("{file}.{ext}"))).unwrap();
        }
        if !dir.join(&file).exists() {
            // Unpacked under a name of its own, then renamed: tests run side by side.
            let tmp = dir.join(format!("{file}.{}.part", std::process::id()));
            let py = "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))";
            let ok = std::process::Command::new("python3").args(["-c", py]).arg(&xz).arg(&tmp).status().unwrap();
            assert!(ok.success(), "cannot unpack {}", xz.display());
            std::fs::rename(&tmp, dir.join(&file)).unwrap();
        }
        return dir;
    }
    if here.join(&file).exists() {
        here
    } else {
        vocab_dir()
    }
}

/// (input, expected ids) of every case of `name`.
fn cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let dir = dir_of(name);
    let inp = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.inp"))).unwrap();
    let out = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.out"))).unwrap();
    let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    // Most suites end with a separator (gemma-4's does not).
    if texts.last() == Some(&"") {
        texts.pop();
    }
    let ids: Vec<Vec<u32>> = out.lines().map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect()).collect();
    assert_eq!(texts.len(), ids.len(), "{name}: {} inputs, {} outputs", texts.len(), ids.len());
    texts.into_iter().map(str::to_string).zip(ids).collect()
}

/// A copy of the tiny model's directory in `dir` (to change its tokenizer files).
fn copy_of_tiny(dir: &std::path::Path) -> PathBuf {
    let hf = dir.join("hf");
    std::fs::create_dir(&hf).unwrap();
    for f in std::fs::read_dir(common::tiny()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, hf.join(f.file_name().unwrap())).unwrap();
    }
    hf
}

fn tokenizer(name: &str) -> TextTokenizer {
    let path = dir_of(name).join(format!("ggml-vocab-{name}.gguf"));
    let bytes = std::fs::read(&path).unwrap();
    let h = GgufHeader::parse(&bytes, &path).unwrap();
    TextTokenizer::from_vocab(Vocab::from_gguf(&h).unwrap()).unwrap()
}

fn check(name: &str) {
    let tok = tokenizer(name);
    let mut bad = Vec::new();
    let all = cases(name);
    for (text, want) in &all {
        let got = tok.encode_whole(text).unwrap();
        if &got != want {
            bad.push(format!("  {text:?}\n    want {want:?}\n    got  {got:?}"));
        }
        // Every case of the suite round-trips (byte-level BPE is lossless; SentencePiece drops
        // the space it put before the text).
        let back = tok.decode(want).unwrap();
        if &back != text {
            bad.push(format!("  {text:?}\n    decodes to {back:?}"));
        }
    }
    println!("{name}: {}/{} cases equal llama.cpp's ids", all.len() - bad.len(), all.len());
    assert!(bad.is_empty(), "{name}: {} of {} cases differ from llama.cpp:\n{}", bad.len(), all.len(), bad.join("\n"));
}

#[test]
fn llama_spm() {
    check("llama-spm");
}

#[test]
fn phi_3() {
    check("phi-3");
}

#[test]
fn llama_bpe() {
    check("llama-bpe");
}

#[test]
fn qwen2() {
    check("qwen2");
}

#[test]
fn gpt_2() {
    check("gpt-2");
}

#[test]
fn falcon() {
    check("falcon");
}

#[test]
fn starcoder() {
    check("starcoder");
}

#[test]
fn deepseek_llm() {
    check("deepseek-llm");
}

#[test]
fn mpt() {
    check("mpt");
}

#[test]
fn deepseek_coder() {
    check("deepseek-coder");
}

#[test]
fn refact() {
    check("refact");
}

#[test]
fn qwen35() {
    check("qwen35");
}

#[test]
fn gemma_4() {
    check("gemma-4");
}

/// The real-model path: SentencePiece text round trip and BOS handling through `encode`.
#[test]
fn spm_encode_adds_bos_and_decodes_back() {
    let tok = tokenizer("llama-spm");
    let text = "Hello world\n  indented\tline ½ 🦙 and unknown-ish 龖";
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids[0], 1, "Llama-2 vocabularies add <s>");
    assert_eq!(&ids[1..], &tok.encode_whole(text).unwrap()[..]);
    assert_eq!(tok.decode(&ids).unwrap(), text);
}

#[test]
fn bad_vocabularies_are_clear_errors() {
    let path = vocab_dir().join("ggml-vocab-phi-3.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let spm = Vocab::from_gguf(&GgufHeader::parse(&bytes, &path).unwrap()).unwrap();
    let err = |v: Vocab| TextTokenizer::from_vocab(v).err().expect("must fail").to_string();
    let mut v = spm.clone();
    v.scores.pop();
    assert!(err(v).contains("scores"));

    let path = vocab_dir().join("ggml-vocab-gpt-2.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let mut bpe = Vocab::from_gguf(&GgufHeader::parse(&bytes, &path).unwrap()).unwrap();
    bpe.pre = "no-such-pre".into();
    let e = err(bpe);
    assert!(e.contains("\"no-such-pre\"") && e.contains("smollm") && e.contains("deepseek-llm"), "{e}");
}

/// Every pre-tokenizer of llama.cpp's table builds a working tokenizer here (its regexes
/// compile in the `tokenizers` crate's engine) and splits a mixed text; the ones llama.cpp
/// handles with its own code (a hand-written splitter, raw-UTF-8 merges after other regexes
/// than newline runs) are refused by name.
#[test]
fn every_pre_tokenizer_in_the_table_works() {
    use qforge::formats::tokenizer::pre_tokenizers::PRE_TOKENIZERS;
    let path = vocab_dir().join("ggml-vocab-gpt-2.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let base = Vocab::from_gguf(&GgufHeader::parse(&bytes, &path).unwrap()).unwrap();
    let text = "Hello World! It's 12345 café, 東京 and \t tabs\n\n  spaces 🦙 <sentinel:1> IMGIMGAZ";
    let mut supported = 0;
    for p in PRE_TOKENIZERS {
        for name in p.names {
            let mut v = base.clone();
            v.pre = name.to_string();
            match TextTokenizer::from_vocab(v) {
                Ok(tok) => {
                    let ids = tok.encode_whole(text).unwrap();
                    // Raw-UTF-8 merges cannot round-trip GPT-2's byte alphabet (in llama.cpp
                    // neither); gemma-4's own suite covers them.
                    if !p.raw_utf8 {
                        assert_eq!(tok.decode(&ids).unwrap(), text, "{name}: byte-level BPE round trip");
                    }
                    supported += 1;
                }
                Err(e) if p.raw_utf8 => assert!(e.to_string().contains("raw UTF-8"), "{name}: {e}"),
                Err(e) => {
                    assert!(p.regexes.is_empty(), "{name}: {e}");
                    assert!(e.to_string().contains("own handling"), "{name}: {e}");
                }
            }
        }
    }
    assert!(supported >= 90, "only {supported} names work");
}

/// A GGUF whose pre-tokenizer llama.cpp does not know: one line naming it and the supported
/// ones, exit 1, no panic (the tiny model's "gpt-2" patched to "gpt-x").
#[test]
fn unknown_pre_tokenizer_in_a_gguf_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.gguf");
    common::qforge_ok(&[&"-q", &"convert", &common::tiny(), &"-o", &p, &"--outtype", &"q8_0"]);
    let mut b = std::fs::read(&p).unwrap();
    let key = b"tokenizer.ggml.pre";
    let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4 + 8;
    assert_eq!(&b[at..at + 5], b"gpt-2");
    b[at..at + 5].copy_from_slice(b"gpt-x");
    std::fs::write(&p, &b).unwrap();
    let e = common::qforge_err(&[&"perplexity", &p, &"--text", &common::wiki(), &"--max-windows", &"1"]);
    assert!(e.contains("\"gpt-x\"") && e.contains("supported: default,") && e.contains("smollm"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

/// `qforge tokenize` on vocab-only GGUFs: the suite's ids with `--no-special`, BOS as the
/// vocabulary asks without it, `--ids` back to the text, and clean errors.
#[test]
fn tokenize_command() {
    let json = |args: &[&dyn AsRef<std::ffi::OsStr>]| -> serde_json::Value {
        serde_json::from_str(&common::qforge_ok(args)).unwrap()
    };
    for name in ["llama-spm", "starcoder"] {
        let gguf = vocab_dir().join(format!("ggml-vocab-{name}.gguf"));
        for (text, want) in cases(name).into_iter().filter(|(t, _)| !t.is_empty()).take(12) {
            let j = json(&[&"--json", &"tokenize", &gguf, &"--text", &text, &"--no-special"]);
            let got: Vec<u32> = serde_json::from_value(j["ids"].clone()).unwrap();
            assert_eq!(got, want, "{name} {text:?}");
        }
    }
    let spm = vocab_dir().join("ggml-vocab-llama-spm.gguf");
    let j = json(&[&"--json", &"tokenize", &spm, &"--text", &"Hello world"]);
    assert_eq!(j["ids"], serde_json::json!([1, 15043, 3186]));
    assert_eq!(j["pieces"], serde_json::json!(["<s>", "\u{2581}Hello", "\u{2581}world"]));
    let j = json(&[&"--json", &"tokenize", &spm, &"--ids", &"1,15043 3186"]);
    assert_eq!(j["text"], "Hello world");
    let e = common::qforge_err(&[&"tokenize", &spm, &"--ids", &"5 99999999"]);
    assert!(e.contains("99999999") && e.contains("32000"), "{e}");
    let e = common::qforge_err(&[&"tokenize", &spm, &"--ids", &"x"]);
    assert!(e.contains("\"x\""), "{e}");
}

/// The converter's pre-tokenizer identification (convert_hf_to_gguf.py's hash of the check
/// text's ids): the tokenizer.json qforge rebuilds from a suite vocabulary whose original adds
/// no BOS tokenizes the check text as the original does, so its hash must be the one in
/// llama.cpp's table and name the same pre-tokenizer.
#[test]
fn converter_hash_identifies_the_pre_tokenizer() {
    use qforge::formats::tokenizer::identify_pre;
    for name in ["gpt-2", "starcoder", "falcon", "mpt", "qwen2", "refact"] {
        let path = dir_of(name).join(format!("ggml-vocab-{name}.gguf"));
        let bytes = std::fs::read(&path).unwrap();
        let v = Vocab::from_gguf(&GgufHeader::parse(&bytes, &path).unwrap()).unwrap();
        let (pre, hash) = identify_pre(&v.to_hf_json().unwrap()).unwrap();
        assert_eq!(pre, Some(name), "{name}: hash {hash}");
    }
}

/// A tokenizer.json whose hash llama.cpp does not know: recognized by its structure when it
/// is exactly a pre-tokenizer llama.cpp implements (the tiny fixture: GPT-2's, as llama.cpp's
/// converter wrote it), refused with the hash and what to do otherwise.
#[test]
fn unknown_hash_falls_back_to_the_structure_or_is_refused() {
    use qforge::formats::tokenizer::identify_pre;
    let tj: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::tiny().join("tokenizer.json")).unwrap()).unwrap();
    let (pre, hash) = identify_pre(&tj).unwrap();
    assert_eq!(pre, None, "{hash}");
    let cfg = serde_json::json!({});
    assert_eq!(Vocab::from_hf_json(&tj, &cfg, &cfg, 8192, Default::default()).unwrap().pre, "gpt-2");
    let mut odd = tj.clone();
    odd["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{L}+|\\s"}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
    let e = Vocab::from_hf_json(&odd, &cfg, &cfg, 8192, Default::default()).unwrap_err().to_string();
    assert!(e.contains("not recognized") && e.contains("gen_pre_tokenizers.py"), "{e}");
    let (_, odd_hash) = identify_pre(&odd).unwrap();
    assert!(e.contains(&odd_hash), "{e}");
}

/// Chat prompts: the template's special-token text becomes those tokens (llama.cpp's
/// parse_special), and BOS is not doubled when the template writes it.
#[test]
fn chat_prompts_parse_special_tokens() {
    use qforge::runtime::chat::{render, Message};
    let chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + \
                  '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let qwen = tokenizer("qwen2");
    let text = render(chatml, &[Message { role: "user", content: "Hi there" }], "", "", true).unwrap();
    let ids = qwen.encode_chat(&text).unwrap();
    let (start, end) = (151_644u32, 151_645u32);
    assert_eq!(qwen.vocab.tokens[start as usize], "<|im_start|>");
    assert_eq!(ids.iter().filter(|&&i| i == start).count(), 2, "{ids:?}");
    assert_eq!(ids.iter().filter(|&&i| i == end).count(), 1, "{ids:?}");
    assert_eq!(ids[0], start);
    // As plain text (no parse_special) the same string has no special token at all.
    assert!(!qwen.encode_whole(&text).unwrap().contains(&start));

    let spm = tokenizer("llama-spm");
    let llama2 =
        "{{ bos_token }}{% for m in messages %}{{ '[INST] ' + m['content'].strip() + ' [/INST]' }}{% endfor %}";
    let text = render(llama2, &[Message { role: "user", content: " Hello " }], "<s>", "</s>", true).unwrap();
    let ids = spm.encode_chat(&text).unwrap();
    assert_eq!(ids[0], 1, "{ids:?}");
    assert_ne!(ids[1], 1, "BOS doubled: {ids:?}");
    assert_eq!(spm.decode(&ids).unwrap(), "[INST] Hello [/INST]");
}

/// The chat template travels: tokenizer_config.json → GGUF `tokenizer.chat_template` → back.
#[test]
fn chat_template_is_converted_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let hf = copy_of_tiny(dir.path());
    let cfg_path = hf.join("tokenizer_config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    let template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}";
    cfg["chat_template"] = serde_json::json!(template);
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let gguf = dir.path().join("t.gguf");
    common::qforge_ok(&[&"-q", &"convert", &hf, &"-o", &gguf]);
    let j: serde_json::Value = serde_json::from_str(&common::qforge_ok(&[&"--json", &"inspect", &gguf])).unwrap();
    assert_eq!(j["metadata"]["tokenizer.chat_template"], template);
    let back = dir.path().join("back");
    common::qforge_ok(&[&"-q", &"convert", &gguf, &"-o", &back, &"--to", &"hf"]);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["chat_template"], template);
    // generate --chat renders it; a model without a template says so.
    common::qforge_ok(&[&"generate", &gguf, &"--chat", &"--prompt", &"Hello", &"-n", &"3"]);
    let e = common::qforge_err(&[&"generate", &common::tiny(), &"--chat", &"--prompt", &"Hello"]);
    assert!(e.contains("no chat template"), "{e}");
}

/// A vocabulary as the Hugging Face tokenizer files `convert --to hf` writes (tokenizer.json,
/// tokenizer_config.json): `tokenizers` and transformers' AutoTokenizer both give llama.cpp's
/// ids on the suite, and they decode back; transformers adds BOS where llama.cpp does.
#[test]
fn exported_tokenizer_tokenizes_as_llama_cpp_in_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["llama-spm", "phi-3", "llama-bpe", "qwen2", "gpt-2", "deepseek-llm", "starcoder"] {
        let path = dir_of(name).join(format!("ggml-vocab-{name}.gguf"));
        let bytes = std::fs::read(&path).unwrap();
        let v = Vocab::from_gguf(&GgufHeader::parse(&bytes, &path).unwrap()).unwrap();
        let hf = dir.path().join(name);
        std::fs::create_dir(&hf).unwrap();
        let tj = hf.join("tokenizer.json");
        std::fs::write(&tj, serde_json::to_vec(&v.to_hf_json().unwrap()).unwrap()).unwrap();
        let cfg = v.to_hf_tokenizer_config(4096);
        std::fs::write(hf.join("tokenizer_config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        let (inp, out) = (path.with_extension("gguf.inp"), path.with_extension("gguf.out"));
        if v.model == qforge::formats::tokenizer::VocabModel::Spm {
            let res = common::python("check_vocab_suite.py", &[&tj, &inp, &out]);
            println!("{name} tokenizers: {}", res.lines().last().unwrap_or(""));
        }
        let bos = match (v.adds_bos(), v.bos) {
            (true, Some(b)) => b.to_string(),
            _ => "none".to_string(),
        };
        let res = common::python("check_vocab_suite.py", &[&"--transformers", &hf, &inp, &out, &bos]);
        println!("{name} transformers: {}", res.lines().last().unwrap_or(""));
    }
}

/// A SentencePiece checkpoint (only `tokenizer.model`, the tiny model's weights with the first
/// 8192 pieces of the Llama-2 vocabulary): `convert` writes llama.cpp's SentencePiece metadata
/// (every tokenizer key as the converter's, tests/py/check_hf_vocab.py), and the GGUF and the
/// checkpoint itself tokenize WikiText exactly as the `sentencepiece` package does.
#[test]
fn sentencepiece_checkpoint_converts_and_tokenizes_as_sentencepiece() {
    let dir = tempfile::tempdir().unwrap();
    let src = tokenizer("llama-spm").vocab;
    let n = 8192;
    let pieces: Vec<serde_json::Value> =
        (0..n).map(|i| serde_json::json!([src.tokens[i], src.scores[i], src.token_types[i]])).collect();
    let pieces_json = dir.path().join("pieces.json");
    std::fs::write(&pieces_json, serde_json::to_vec(&pieces).unwrap()).unwrap();
    let hf = copy_of_tiny(dir.path());
    std::fs::remove_file(hf.join("tokenizer.json")).unwrap();
    // tokenizer_config.json names <s> and </s>, but with no tokenizer.json they are no added
    // tokens: the converter takes config.json's ids.
    let cfg_path = hf.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) = (1.into(), 2.into(), serde_json::Value::Null);
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let model = hf.join("tokenizer.model");
    common::python("check_sentencepiece.py", &[&"make", &pieces_json, &model]);
    let gguf = dir.path().join("t.gguf");
    common::qforge_ok(&[&"-q", &"convert", &hf, &"-o", &gguf]);
    println!("{}", common::python("check_hf_vocab.py", &[&hf, &gguf]).trim_end());
    let j: serde_json::Value = serde_json::from_str(&common::qforge_ok(&[&"--json", &"inspect", &gguf])).unwrap();
    assert_eq!(j["metadata"]["tokenizer.ggml.model"], "llama");
    assert_eq!(j["metadata"]["tokenizer.ggml.pre"], "default");
    assert_eq!(j["metadata_types"]["tokenizer.ggml.scores"], "ARRAY");
    let bytes = std::fs::read(&gguf).unwrap();
    let v = Vocab::from_gguf(&GgufHeader::parse(&bytes, &gguf).unwrap()).unwrap();
    assert_eq!(&v.tokens[..], &src.tokens[..n]);
    assert_eq!(&v.scores[..], &src.scores[..n]);
    assert_eq!(&v.token_types[..], &src.token_types[..n]);
    assert_eq!((v.bos, v.eos, v.unk), (Some(1), Some(2), Some(0)));

    let text = std::fs::read_to_string(common::wiki()).unwrap();
    let cut = (0..=30_000).rev().find(|&i| text.is_char_boundary(i)).unwrap();
    let sample = dir.path().join("sample.txt");
    std::fs::write(&sample, &text[..cut]).unwrap();
    let want: Vec<u32> =
        serde_json::from_str(&common::python("check_sentencepiece.py", &[&"encode", &model, &sample])).unwrap();
    assert!(want.len() > 5000, "{}", want.len());
    for model in [&gguf, &hf] {
        let got: serde_json::Value = serde_json::from_str(&common::qforge_ok(&[
            &"--json",
            &"tokenize",
            model,
            &"--file",
            &sample,
            &"--no-special",
        ]))
        .unwrap();
        let got: Vec<u32> = serde_json::from_value(got["ids"].clone()).unwrap();
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(got.len(), want.len(), "{}: first difference at {first:?}", model.display());
        assert_eq!(first, None);
    }
}

/// Long texts are encoded in pieces cut where every pre-tokenizer splits anyway
/// (`safe_pieces`, also what `perplexity` does): the ids equal the whole text's, on all of
/// WikiText-2, for every BPE vocabulary of the suite (one pre-tokenizer each).
#[test]
fn pieces_tokenize_as_the_whole_text() {
    let text = std::fs::read_to_string(common::wiki()).unwrap();
    for name in
        ["llama-bpe", "qwen2", "gpt-2", "falcon", "starcoder", "deepseek-llm", "deepseek-coder", "refact", "qwen35"]
    {
        let tok = tokenizer(name);
        let whole = tok.encode_whole(&text).unwrap();
        let plain = tok.encode_plain(&text).unwrap();
        let first = plain.iter().zip(&whole).position(|(a, b)| a != b);
        assert!(plain.len() == whole.len() && first.is_none(), "{name}: pieces differ from the whole at {first:?}");
        // `encode_prefix` (what perplexity reads) adds BOS where the vocabulary asks.
        let prefix = tok.encode_prefix(&text, 1000).unwrap();
        let prefix = if tok.vocab.adds_bos() { &prefix[1..] } else { &prefix[..] };
        assert!(prefix.len() >= 999 && prefix == &whole[..prefix.len()], "{name}: prefix");
    }
}

/// Text that is not UTF-8 (`tokenize --file`), tokenized as llama.cpp does: SentencePiece by
/// lead bytes with byte fallback, byte-level BPE with one U+FFFD per invalid byte. The expected
/// ids are llama.cpp's (llama-cpp-python 0.3.36, `Llama(vocab_only=True).tokenize(bytes,
/// add_bos=False, special=False)`, 2026-12-04).
#[test]
fn invalid_utf8_tokenizes_as_llama_cpp() {
    let inputs: [&[u8]; 5] = [b"abc\xffdef", b"x\xc3", b"\xe2\x82 y", b"\x80\x80z", b"ok \xf0\x9f\xa6 llama"];
    let expected: [(&str, [&[u32]; 5]); 3] = [
        (
            "llama-spm",
            [
                &[25638, 258, 103, 104, 105],
                &[921, 198],
                &[29871, 229, 133, 229, 153, 132, 29891],
                &[29871, 131, 131, 29920],
                &[3431, 29871, 243, 162, 169, 229, 153, 132, 645, 3304],
            ],
        ),
        ("llama-bpe", [&[13997, 5809, 755], &[87, 5809], &[10178, 379], &[10178, 89], &[564, 220, 58432, 94776]]),
        ("gpt-2", [&[39305, 4210, 4299], &[87, 4210], &[6353, 331], &[6353, 89], &[482, 220, 48585, 32660, 1689]]),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, want) in expected {
        let tok = tokenizer(name);
        for (input, want) in inputs.iter().zip(want) {
            assert_eq!(tok.encode_plain_bytes(input).unwrap(), want, "{name} {input:?}");
        }
        // Through the CLI, from a file.
        let f = dir.path().join("t.bin");
        std::fs::write(&f, inputs[0]).unwrap();
        let gguf = dir_of(name).join(format!("ggml-vocab-{name}.gguf"));
        let j: serde_json::Value =
            serde_json::from_str(&common::qforge_ok(&[&"--json", &"tokenize", &gguf, &"--file", &f, &"--no-special"]))
                .unwrap();
        assert_eq!(j["ids"], serde_json::json!(want[0]), "{name}");
    }
}
