//! Text ↔ token ids with the `tokenizers` crate. A Hugging Face directory uses its own
//! tokenizer.json; a GGUF's tokenizer is rebuilt from its `tokenizer.ggml.*` metadata (the
//! authoritative copy: a tokenizer.json lying beside a GGUF may belong to another model).

use crate::error::{Error, Result};
use crate::formats::tokenizer::BpeVocab;
use crate::model::ModelFile;

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    pub vocab: BpeVocab,
}

impl TextTokenizer {
    pub fn for_model(model: &ModelFile) -> Result<TextTokenizer> {
        let vocab = model.vocab()?;
        let inner = match model {
            ModelFile::Hf(c) => {
                let path = c.dir.join("tokenizer.json");
                tokenizers::Tokenizer::from_file(&path)
                    .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?
            }
            ModelFile::Gguf { .. } => return Self::from_vocab(vocab),
        };
        Ok(TextTokenizer { inner, vocab })
    }

    /// A tokenizer rebuilt from a vocabulary alone (what a GGUF's metadata holds).
    pub fn from_vocab(vocab: BpeVocab) -> Result<TextTokenizer> {
        let json = serde_json::to_vec(&vocab.to_hf_json()?).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let inner = tokenizers::Tokenizer::from_bytes(json).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(TextTokenizer { inner, vocab })
    }

    /// Token ids of `text` without special tokens, plus BOS when the model asks for it
    /// (`add_bos_token`).
    ///
    /// Long texts are encoded in pieces: `tokenizers` keeps ~100 bytes of bookkeeping per
    /// input byte while encoding (150 MB for WikiText-2's 1.3 MB), so the text is cut at
    /// boundaries where every supported pre-tokenizer splits anyway, and the ids are the same
    /// as encoding it whole (checked on WikiText-2 in tests/tokenizer.rs).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_prefix(text, usize::MAX)
    }

    /// The first ids of [`Self::encode`], at least `min_tokens` of them when the text has that
    /// many: encoding stops after the piece that reaches the count. The pieces tokenize as the
    /// whole, so these ids are exactly a prefix of the whole text's; `perplexity --max-windows
    /// 10` on a large text then reads only what it scores.
    pub fn encode_prefix(&self, text: &str, min_tokens: usize) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity((text.len() / 3 + 1).min(min_tokens.saturating_add(CHUNK_BYTES)));
        if self.vocab.add_bos {
            if let Some(b) = self.vocab.bos {
                ids.push(b);
            }
        }
        for piece in safe_pieces(text, CHUNK_BYTES) {
            let enc = self.inner.encode(piece, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
            ids.extend_from_slice(enc.get_ids());
            if ids.len() >= min_tokens {
                break;
            }
        }
        Ok(ids)
    }

    /// Encode in one call, however long the text (for tests of [`Self::encode`]).
    pub fn encode_whole(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.tokens.len()
    }
}

const CHUNK_BYTES: usize = 32 * 1024;

/// Split `text` into pieces of about `target` bytes, cutting only between an ASCII letter,
/// digit or punctuation mark and a space that starts a word (`word| next`). The GPT-2,
/// Llama-3 and Qwen2 pre-tokenizer regexes all end a piece there without looking further
/// (the only lookahead, `\s+(?!\S)`, concerns whitespace runs), and the space stays with
/// the next word, so the pieces tokenize exactly as the whole. Without such a boundary the
/// text stays whole.
pub fn safe_pieces(text: &str, target: usize) -> Vec<&str> {
    let b = text.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    while b.len() - start > target {
        let mut cut = None;
        let mut p = start + target;
        while p + 1 < b.len() {
            let prev = b[p - 1];
            if b[p] == b' '
                && b[p + 1].is_ascii_alphabetic()
                && (prev.is_ascii_alphanumeric() || prev.is_ascii_punctuation())
            {
                cut = Some(p);
                break;
            }
            p += 1;
        }
        match cut {
            Some(c) => {
                pieces.push(&text[start..c]);
                start = c;
            }
            None => break,
        }
    }
    pieces.push(&text[start..]);
    pieces
}
