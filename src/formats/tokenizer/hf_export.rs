//! Vocabulary → Hugging Face tokenizer.json / tokenizer_config.json (what `convert --to hf`
//! writes, and how a GGUF's byte-level BPE vocabulary is run through `tokenizers`).

use std::collections::HashMap;

use serde_json::{json, Value as Json};

use super::{pre_tokenizer, token_type, Vocab, VocabModel};
use crate::error::{Error, Result};
use crate::formats::sentencepiece::{SentencePieceModel, SpecialIds};

impl Vocab {
    pub fn to_hf_json(&self) -> Result<Json> {
        match self.model {
            VocabModel::Spm => return self.spm_hf_json(),
            VocabModel::Gemma4 => {
                return Err(Error::Unsupported("exporting a Gemma 4 tokenizer as tokenizer.json".into()))
            }
            VocabModel::Bpe if pre_tokenizer(&self.pre)?.raw_utf8 => {
                return Err(Error::Unsupported(format!(
                    "exporting a {:?} (raw UTF-8 BPE) tokenizer as tokenizer.json",
                    self.pre
                )))
            }
            VocabModel::Bpe => {}
        }
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let pre_tokenizer = match self.pre.as_str() {
            // Hugging Face's own GPT-2 regex (the same split as llama.cpp's).
            "gpt-2" => byte_level(true),
            name => {
                let p = pre_tokenizer(name)?;
                let mut parts: Vec<Json> = p
                    .regexes
                    .iter()
                    .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
                    .collect();
                parts.push(byte_level(false));
                json!({"type": "Sequence", "pretokenizers": parts})
            }
        };
        let mut vocab = serde_json::Map::new();
        let mut added = Vec::new();
        for (i, (tok, &ty)) in self.tokens.iter().zip(&self.token_types).enumerate() {
            if ty == token_type::CONTROL || ty == token_type::USER_DEFINED {
                added.push(json!({
                    "id": i, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": ty == token_type::USER_DEFINED, "special": ty == token_type::CONTROL,
                }));
            }
            vocab.insert(tok.clone(), json!(i));
        }
        let byte_level_post =
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
        // BOS/EOS added by a template where llama.cpp adds them (Llama-3's layout).
        let post_processor = match self.template_post_processor() {
            Some(t) => json!({"type": "Sequence", "processors": [byte_level_post, t]}),
            None => byte_level_post,
        };
        let mut merges = Vec::with_capacity(self.merges.len());
        for m in &self.merges {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| Error::Tokenizer(format!("merge {m:?} is not two space-separated parts")))?;
            merges.push(json!([a, b]));
        }
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": self.ignore_merges, "vocab": vocab, "merges": merges,
            },
        }))
    }

    /// The tokenizer.json transformers writes for a SentencePiece model (its LlamaConverter):
    /// BPE with byte fallback, the merges derived from the scores (every split of a token into
    /// two tokens, highest-scoring result first, as its SentencePieceExtractor), `▁` for spaces
    /// and a `▁` put before the text by the normalizer when `add_space_prefix`.
    fn spm_hf_json(&self) -> Result<Json> {
        let mut ids: HashMap<&str, usize> = HashMap::with_capacity(self.tokens.len());
        for (i, t) in self.tokens.iter().enumerate() {
            ids.entry(t.as_str()).or_insert(i);
        }
        let mut merges: Vec<(&str, &str, f32)> = Vec::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if ids.get(t.as_str()) != Some(&i) {
                continue; // a duplicate: Python's dict keeps the first position
            }
            let mut local: Vec<(&str, &str, f32)> = t
                .char_indices()
                .skip(1)
                .map(|(at, _)| (&t[..at], &t[at..]))
                .filter(|(l, r)| ids.contains_key(l) && ids.contains_key(r))
                .map(|(l, r)| (l, r, self.scores.get(i).copied().unwrap_or(0.0)))
                .collect();
            local.sort_by_key(|&(l, r, _)| (ids[l], ids[r]));
            merges.extend(local);
        }
        // Stable, highest score first.
        merges.sort_by(|a, b| b.2.total_cmp(&a.2));
        let space = "\u{2581}";
        let mut vocab = serde_json::Map::new();
        let mut added = Vec::new();
        for (i, (tok, &ty)) in self.tokens.iter().zip(&self.token_types).enumerate() {
            if matches!(ty, token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN) {
                added.push(json!({
                    "id": i, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": ty != token_type::USER_DEFINED,
                }));
            }
            if ids.get(tok.as_str()) == Some(&i) {
                vocab.insert(tok.clone(), json!(i));
            }
        }
        let replace_space = json!({"type": "Replace", "pattern": {"String": " "}, "content": space});
        let normalizer = if self.space_prefix() {
            json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": space}, replace_space]})
        } else {
            replace_space
        };
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": space}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if self.space_prefix() {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        let name = |id: Option<u32>| id.and_then(|i| self.tokens.get(i as usize)).cloned();
        let post = self.template_post_processor().unwrap_or(Json::Null);
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": null,
            "post_processor": post,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": name(self.unk), "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab, "merges": merges.iter().map(|(l, r, _)| json!([l, r])).collect::<Vec<_>>(),
            },
        }))
    }

    /// A TemplateProcessing post-processor that adds BOS / EOS where llama.cpp adds them
    /// (None: it adds neither).
    fn template_post_processor(&self) -> Option<Json> {
        let name = |id: Option<u32>| id.and_then(|i| self.tokens.get(i as usize)).cloned();
        let mut single = Vec::new();
        let mut specials = serde_json::Map::new();
        for (on, id) in [(self.adds_bos(), self.bos), (true, None), (self.adds_eos(), self.eos)] {
            match (on, id, name(id)) {
                (true, None, _) => single.push(json!({"Sequence": {"id": "A", "type_id": 0}})),
                (true, Some(i), Some(n)) => {
                    single.push(json!({"SpecialToken": {"id": n, "type_id": 0}}));
                    specials.insert(n.clone(), json!({"id": n, "ids": [i], "tokens": [n]}));
                }
                _ => {}
            }
        }
        if specials.is_empty() {
            return None;
        }
        Some(json!({"type": "TemplateProcessing", "single": single, "pair": single, "special_tokens": specials}))
    }

    /// `tokenizer.model` of a SentencePiece vocabulary (`None` for the others): what a
    /// SentencePiece checkpoint ships, and what llama.cpp's converter requires of some
    /// architectures (Gemma 2).
    pub fn to_sentencepiece(&self) -> Option<Vec<u8>> {
        if self.model != VocabModel::Spm || self.scores.len() != self.tokens.len() {
            return None;
        }
        let model = SentencePieceModel {
            pieces: (0..self.tokens.len())
                .map(|i| (self.tokens[i].clone(), self.scores[i], self.token_types.get(i).copied().unwrap_or(1)))
                .collect(),
            add_dummy_prefix: self.space_prefix(),
            model_type: 2,
        };
        let id = |t: Option<u32>| t.map_or(-1, i64::from);
        Some(model.to_bytes(SpecialIds { unk: id(self.unk), bos: id(self.bos), eos: id(self.eos), pad: id(self.pad) }))
    }

    /// `tokenizer_config.json` for a Hugging Face directory.
    pub fn to_hf_tokenizer_config(&self, model_max_length: usize) -> Json {
        let name = |id: Option<u32>| id.and_then(|i| self.tokens.get(i as usize)).cloned();
        let mut cfg = json!({
            "bos_token": name(self.bos),
            "eos_token": name(self.eos),
            "pad_token": name(self.pad),
            "add_bos_token": self.adds_bos(),
            "add_eos_token": self.adds_eos(),
            "model_max_length": model_max_length,
            "tokenizer_class": "PreTrainedTokenizerFast",
        });
        for (key, id) in [("unk_token", self.unk), ("sep_token", self.sep), ("mask_token", self.mask)] {
            if let Some(n) = name(id) {
                cfg[key] = json!(n);
            }
        }
        // Only "off" travels (llama.cpp's converter reads it back into add_space_prefix); "on"
        // would make transformers rewrite the pre-tokenizer of a byte-level tokenizer.
        if self.add_space_prefix == Some(false) {
            cfg["add_prefix_space"] = json!(false);
        }
        match (&self.chat_template, self.named_chat_templates.is_empty()) {
            (Some(t), true) => cfg["chat_template"] = json!(t),
            (default, _) => {
                // Several templates: transformers' (and the converter's) list of named ones.
                let mut list: Vec<Json> = default.iter().map(|t| json!({"name": "default", "template": t})).collect();
                list.extend(self.named_chat_templates.iter().map(|(n, t)| json!({"name": n, "template": t})));
                if !list.is_empty() {
                    cfg["chat_template"] = Json::Array(list);
                }
            }
        }
        cfg
    }
}
