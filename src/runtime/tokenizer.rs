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
            ModelFile::Gguf { .. } => {
                let json = serde_json::to_vec(&vocab.to_hf_json()?).map_err(|e| Error::Tokenizer(e.to_string()))?;
                tokenizers::Tokenizer::from_bytes(json).map_err(|e| Error::Tokenizer(e.to_string()))?
            }
        };
        Ok(TextTokenizer { inner, vocab })
    }

    /// Token ids of `text` without special tokens, plus BOS when the model asks for it
    /// (`add_bos_token`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.vocab.add_bos {
            if let Some(b) = self.vocab.bos {
                ids.push(b);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.tokens.len()
    }
}
