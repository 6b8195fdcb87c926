//! Text ↔ token ids. A Hugging Face directory uses its own tokenizer.json (through the
//! `tokenizers` crate); a GGUF's tokenizer is rebuilt from its `tokenizer.ggml.*` metadata
//! (the authoritative copy: a tokenizer.json lying beside a GGUF may belong to another model):
//! byte-level BPE through `tokenizers` with llama.cpp's pre-tokenizer for the vocabulary,
//! SentencePiece natively (`spm.rs`, llama.cpp's algorithm).

use crate::error::{Error, Result};
use crate::formats::tokenizer::{hf_tokenizer, pre_tokenizer, Vocab, VocabModel};
use crate::model::ModelFile;
use crate::runtime::spm::Spm;

pub struct TextTokenizer {
    engine: Engine,
    pub vocab: Vocab,
}

enum Engine {
    /// Byte-level BPE through `tokenizers`, twice: `plain` knows only the user-defined added
    /// tokens (special-token text in ordinary text stays text, as llama.cpp tokenizes it
    /// without `parse_special`), `special` knows them all (chat prompts).
    Hf {
        plain: Box<tokenizers::Tokenizer>,
        special: Box<tokenizers::Tokenizer>,
    },
    Spm(Box<Spm>),
}

/// Both `tokenizers` instances of [`Engine::Hf`] from one tokenizer.json.
fn hf_engine(json: &serde_json::Value) -> Result<Engine> {
    let build = |j: &serde_json::Value| -> Result<Box<tokenizers::Tokenizer>> { Ok(Box::new(hf_tokenizer(j)?)) };
    let mut plain = json.clone();
    if let Some(added) = plain.get_mut("added_tokens").and_then(serde_json::Value::as_array_mut) {
        added.retain(|t| !t.get("special").and_then(serde_json::Value::as_bool).unwrap_or(false));
    }
    Ok(Engine::Hf { plain: build(&plain)?, special: build(json)? })
}

impl TextTokenizer {
    pub fn for_model(model: &ModelFile) -> Result<TextTokenizer> {
        let vocab = model.vocab()?;
        let engine = match model {
            // A checkpoint with tokenizer.model runs its SentencePiece vocabulary natively: the
            // vocabulary is read from it (as llama.cpp's converter reads it), so the checkpoint
            // tokenizes as its GGUF does.
            ModelFile::Hf(c) if !c.dir.join("tokenizer.json").is_file() || vocab.model == VocabModel::Spm => {
                return Self::from_vocab(vocab)
            }
            ModelFile::Hf(c) => {
                let path = c.dir.join("tokenizer.json");
                let json = crate::formats::safetensors::read_json(&path)?;
                hf_engine(&json).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?
            }
            ModelFile::Gguf { .. } => return Self::from_vocab(vocab),
        };
        Ok(TextTokenizer { engine, vocab })
    }

    /// A tokenizer rebuilt from a vocabulary alone (what a GGUF's metadata holds).
    pub fn from_vocab(vocab: Vocab) -> Result<TextTokenizer> {
        let engine = match vocab.model {
            VocabModel::Spm => Engine::Spm(Box::new(Spm::new(&vocab)?)),
            // BPE over raw UTF-8 (SentencePiece-style): the SentencePiece engine in rank mode.
            VocabModel::Bpe | VocabModel::Gemma4 if pre_tokenizer(&vocab.pre)?.raw_utf8 => {
                Engine::Spm(Box::new(Spm::raw_bpe(&vocab, pre_tokenizer(&vocab.pre)?)?))
            }
            VocabModel::Bpe | VocabModel::Gemma4 => hf_engine(&vocab.to_hf_json()?)?,
        };
        Ok(TextTokenizer { engine, vocab })
    }

    /// Token ids of `text` without special tokens, plus BOS when the model asks for it
    /// (`add_bos_token`).
    ///
    /// Long texts are encoded in pieces (BPE): `tokenizers` keeps ~100 bytes of bookkeeping
    /// per input byte while encoding (150 MB for WikiText-2's 1.3 MB), so the text is cut at
    /// boundaries where every supported pre-tokenizer splits anyway, and the ids are the same
    /// as encoding it whole (checked on WikiText-2 in tests/suite/tokenizer.rs).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_prefix(text, usize::MAX)
    }

    /// The first ids of [`Self::encode`], at least `min_tokens` of them when the text has that
    /// many: encoding stops after the piece that reaches the count. The pieces tokenize as the
    /// whole, so these ids are exactly a prefix of the whole text's; `perplexity --max-windows
    /// 10` on a large text then reads only what it scores.
    pub fn encode_prefix(&self, text: &str, min_tokens: usize) -> Result<Vec<u32>> {
        let inner = match &self.engine {
            // SentencePiece puts a space before the text, so pieces would not tokenize as the
            // whole: one pass (its bookkeeping is a few dozen bytes per character).
            Engine::Spm(spm) => return spm.encode(text, true),
            Engine::Hf { plain, .. } => plain,
        };
        let mut ids = Vec::with_capacity((text.len() / 3 + 1).min(min_tokens.saturating_add(CHUNK_BYTES)));
        if self.vocab.adds_bos() {
            if let Some(b) = self.vocab.bos {
                ids.push(b);
            }
        }
        for piece in safe_pieces(text, CHUNK_BYTES) {
            let enc = inner.encode(piece, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
            ids.extend_from_slice(enc.get_ids());
            if ids.len() >= min_tokens {
                break;
            }
        }
        Ok(ids)
    }

    /// Ids of `text` with no special tokens added (llama.cpp's `add_special = false`,
    /// `parse_special = false`): [`Self::encode_whole`]'s ids, the pieces of a long BPE text
    /// encoded side by side (rayon; the pieces tokenize as the whole, see [`safe_pieces`]).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let plain = match &self.engine {
            Engine::Spm(spm) => return spm.encode(text, false),
            Engine::Hf { plain, .. } => plain,
        };
        use rayon::prelude::*;
        let parts: Vec<Vec<u32>> = safe_pieces(text, CHUNK_BYTES)
            .par_iter()
            .map(|p| plain.encode(*p, false).map(|e| e.get_ids().to_vec()).map_err(|e| Error::Tokenizer(e.to_string())))
            .collect::<Result<_>>()?;
        Ok(parts.concat())
    }

    /// [`Self::encode_plain`] of bytes that need not be UTF-8, as llama.cpp tokenizes them:
    /// SentencePiece splits the raw bytes by their lead bytes (what is no token becomes byte
    /// tokens); byte-level BPE first replaces every byte that does not start a valid UTF-8
    /// sequence by U+FFFD, one each (llama.cpp's unicode_cpts_from_utf8).
    pub fn encode_plain_bytes(&self, bytes: &[u8]) -> Result<Vec<u32>> {
        match (&self.engine, std::str::from_utf8(bytes)) {
            (_, Ok(text)) => self.encode_plain(text),
            (Engine::Spm(spm), Err(_)) => spm.encode_bytes(bytes, false, false),
            (Engine::Hf { .. }, Err(_)) => self.encode_plain(&replace_invalid_bytes(bytes)),
        }
    }

    /// Ids of `text` in one call with no special tokens added (llama.cpp's `add_special =
    /// false`, `parse_special = false`), however long the text.
    pub fn encode_whole(&self, text: &str) -> Result<Vec<u32>> {
        match &self.engine {
            Engine::Spm(spm) => spm.encode(text, false),
            Engine::Hf { plain, .. } => {
                let enc = plain.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
                Ok(enc.get_ids().to_vec())
            }
        }
    }

    /// [`Self::encode_plain_bytes`] with BOS and EOS added as the vocabulary asks (llama.cpp's
    /// `add_special = true`).
    pub fn encode_with_special(&self, text: &[u8]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.vocab.adds_bos() {
            ids.extend(self.vocab.bos);
        }
        ids.extend(self.encode_plain_bytes(text)?);
        if self.vocab.adds_eos() {
            ids.extend(self.vocab.eos);
        }
        Ok(ids)
    }

    /// Ids of a prompt made by a chat template: special-token text in it (`<|im_start|>`,
    /// `<s>`) is taken as those tokens (llama.cpp's `parse_special`), and BOS is added when the
    /// vocabulary asks for it unless the template already put it first.
    pub fn encode_chat(&self, prompt: &str) -> Result<Vec<u32>> {
        let bos_text = self.vocab.bos.and_then(|b| self.vocab.tokens.get(b as usize)).map(String::as_str);
        let add_bos = self.vocab.adds_bos() && !bos_text.is_some_and(|t| !t.is_empty() && prompt.starts_with(t));
        let mut ids = Vec::new();
        if add_bos {
            ids.extend(self.vocab.bos);
        }
        match &self.engine {
            Engine::Spm(spm) => ids.extend(spm.encode_parse_special(prompt, false)?),
            Engine::Hf { special, .. } => ids.extend_from_slice(
                special.encode(prompt, false).map_err(|e| Error::Tokenizer(e.to_string()))?.get_ids(),
            ),
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.engine {
            Engine::Spm(spm) => Ok(spm.decode(ids)),
            Engine::Hf { special, .. } => special.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string())),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.tokens.len()
    }
}

const CHUNK_BYTES: usize = 32 * 1024;

/// `bytes` as text with each byte that does not start a valid UTF-8 sequence replaced by
/// U+FFFD, one per byte (so a truncated sequence gives one per byte it has, as in llama.cpp).
fn replace_invalid_bytes(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 8);
    while !bytes.is_empty() {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                break;
            }
            Err(e) => {
                let ok = e.valid_up_to();
                out.push_str(std::str::from_utf8(&bytes[..ok]).unwrap_or_default());
                out.push('\u{FFFD}');
                bytes = &bytes[ok + 1..];
            }
        }
    }
    out
}

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
