//! Tokenization: chunked encoding equals whole-text encoding (and its prefixes, what
//! `--max-windows` encodes, are the whole's), and a GGUF's rebuilt tokenizer
//! equals the Hugging Face tokenizer.json, on all of WikiText-2.

use crate::common;

use common::*;
use qforge::model::ModelFile;
use qforge::runtime::TextTokenizer;

#[test]
fn chunked_and_gguf_tokenization_equal_the_hf_tokenizer_on_wikitext() {
    let text = std::fs::read_to_string(wiki()).unwrap();
    let hf = ModelFile::open(&tiny()).unwrap();
    let tok = TextTokenizer::for_model(&hf).unwrap();
    let whole = tok.encode_whole(&text).unwrap();
    assert_eq!(whole.len(), 379_676, "the fixture README's token count");
    let chunked = tok.encode(&text).unwrap();
    assert_eq!(chunked, whole, "chunked encoding changed the ids");
    // What `--max-windows` encodes: a prefix of the whole, at least as long as asked.
    for min in [0, 1, 511, 10 * 512, 300_000, 379_676, usize::MAX] {
        let prefix = tok.encode_prefix(&text, min).unwrap();
        assert!(prefix.len() >= min.min(whole.len()), "{min}: only {} ids", prefix.len());
        assert_eq!(prefix[..], whole[..prefix.len()], "{min}: not a prefix of the whole text's ids");
        if min <= 10 * 512 {
            assert!(prefix.len() < 40_000, "{min}: encoded {} ids, far more than asked", prefix.len());
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("t.gguf");
    qforge_ok(&[&"-q", &"convert", &tiny(), &"-o", &gguf, &"--outtype", &"q8_0"]);
    let g = ModelFile::open(&gguf).unwrap();
    let gtok = TextTokenizer::for_model(&g).unwrap();
    assert_eq!(gtok.encode(&text).unwrap(), whole, "GGUF-rebuilt tokenizer differs");
}

#[test]
fn safe_pieces_cover_the_text() {
    let text = "alpha beta, gamma.  delta\\n epsilon zeta eta theta iota kappa lambda mu nu xi";
    for target in [1, 3, 8, 20, 1000] {
        let pieces = qforge::runtime::tokenizer::safe_pieces(text, target);
        assert_eq!(pieces.concat(), text);
        for p in &pieces[1..] {
            assert!(p.starts_with(' '), "{p:?}");
        }
    }
}
