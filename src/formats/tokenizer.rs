//! Tokenizer metadata: Hugging Face `tokenizer.json` ↔ GGUF `tokenizer.ggml.*` keys, for
//! byte-level BPE vocabularies (GPT-2 style), as llama.cpp's converter writes them.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value as Json};

use crate::error::{Error, Result};
use crate::formats::gguf::{GgufHeader, Value, ValueType};
use crate::formats::pre_tokenizers::{CHECK_TEXT, PRE_HASHES, PRE_TOKENIZERS};
use crate::formats::safetensors::read_json;
use crate::formats::sentencepiece::SentencePieceModel;

/// llama.cpp's `llama_token_type`.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// Pre-tokenizer regexes that llama.cpp knows under a `tokenizer.ggml.pre` name. GPT-2's is
/// implied by a bare ByteLevel pre-tokenizer with `use_regex: true`.
const KNOWN_SPLIT_REGEXES: &[(&str, &str)] = &[
    (
        "llama-bpe",
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    (
        "qwen2",
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
];

/// How llama.cpp pre-tokenizes a BPE vocabulary, by `tokenizer.ggml.pre` name: the regexes
/// applied in turn, each splitting every piece the ones before left, matches and the text
/// between them both kept (Hugging Face's `Split` with `Isolated`), and whether a piece that
/// is itself a token skips the merges. The table (`pre_tokenizers.rs`) is generated from
/// llama.cpp's source by tools/gen_pre_tokenizers.py, regexes exactly as llama.cpp runs them.
pub struct PreTokenizer {
    pub names: &'static [&'static str],
    /// llama.cpp's pre-tokenizer type (several names share one).
    pub kind: &'static str,
    /// Empty where llama.cpp's handling is more than these regexes (a hand-written splitter,
    /// merges over raw UTF-8): qforge refuses those names.
    pub regexes: &'static [&'static str],
    pub ignore_merges: bool,
}

/// The pre-tokenizer llama.cpp uses for `name`, or why there is none.
pub fn pre_tokenizer(name: &str) -> Result<&'static PreTokenizer> {
    match PRE_TOKENIZERS.iter().find(|p| p.names.contains(&name)) {
        Some(p) if !p.regexes.is_empty() => Ok(p),
        Some(_) => Err(Error::Unsupported(format!(
            "GGUF pre-tokenizer {name:?} needs llama.cpp's own handling (a hand-written splitter or merges over raw \
             UTF-8), which qforge does not reproduce yet"
        ))),
        None => Err(Error::Unsupported(format!(
            "GGUF pre-tokenizer {name:?} is not supported (supported: {})",
            PRE_TOKENIZERS
                .iter()
                .filter(|p| !p.regexes.is_empty())
                .flat_map(|p| p.names.iter().copied())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The tokenizer model of a vocabulary (`tokenizer.ggml.model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabModel {
    /// Byte-level BPE (`gpt2`): merges over bytes mapped to printable characters.
    Bpe,
    /// SentencePiece (`llama`): score-driven merges over UTF-8 characters, byte fallback.
    Spm,
}

/// A tokenizer vocabulary as GGUF stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    pub model: VocabModel,
    /// llama.cpp's pre-tokenizer name (`gpt-2`, `llama-bpe`, `qwen2`, …; BPE only).
    pub pre: String,
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    /// Per-token scores (SPM: the merge priorities; empty for BPE).
    pub scores: Vec<f32>,
    /// "left right" pairs in merge priority order (BPE).
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// SPM: a space is put before the text (and after each user-defined token).
    pub add_space_prefix: bool,
    /// A pre-tokenized piece that is itself a token skips the merges (llama-bpe, tekken).
    pub ignore_merges: bool,
    /// The Jinja chat template (`tokenizer.chat_template`; transformers' `chat_template`).
    pub chat_template: Option<String>,
}

impl Vocab {
    /// Read `tokenizer.json` (and `tokenizer_config.json` if present) from a model directory.
    /// `vocab_size` pads the token list with unused `[PADn]` entries, as llama.cpp does when
    /// the embedding matrix is larger than the vocabulary.
    pub fn from_hf_dir(dir: &Path, vocab_size: usize, config: &Json) -> Result<Vocab> {
        // As convert_hf_to_gguf.py: a SentencePiece model file wins over tokenizer.json.
        let spm = dir.join("tokenizer.model");
        if spm.is_file() {
            return Self::from_sentencepiece_dir(dir, vocab_size, config)
                .map_err(|e| Error::Tokenizer(format!("{}: {e}", spm.display())));
        }
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::Tokenizer(format!("{}: missing tokenizer.json", dir.display())));
        }
        let tj = read_json(&path)?;
        let cfg_path = dir.join("tokenizer_config.json");
        let tcfg = if cfg_path.exists() { read_json(&cfg_path)? } else { json!({}) };
        let mut v = Self::from_hf_json(&tj, &tcfg, config, vocab_size)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        // Newer transformers save the template beside tokenizer_config.json.
        let jinja = dir.join("chat_template.jinja");
        if v.chat_template.is_none() && jinja.is_file() {
            v.chat_template = Some(
                std::fs::read_to_string(&jinja).map_err(|e| Error::Tokenizer(format!("{}: {e}", jinja.display())))?,
            );
        }
        Ok(v)
    }

    /// A SentencePiece checkpoint (`tokenizer.model`), as convert_hf_to_gguf.py's
    /// `_set_vocab_sentencepiece` reads it: the pieces with their scores and types, padded to
    /// `vocab_size` with unused `[PADn]`; `added_tokens.json` and tokenizer_config.json's
    /// `added_tokens_decoder` as user-defined (or control, when special) tokens of score -1000;
    /// special ids, add_bos/add_eos and the chat template from tokenizer_config.json.
    pub fn from_sentencepiece_dir(dir: &Path, vocab_size: usize, config: &Json) -> Result<Vocab> {
        let bytes = std::fs::read(dir.join("tokenizer.model")).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let sp = SentencePieceModel::parse(&bytes)?;
        if sp.model_type != 2 {
            return Err(Error::Unsupported(format!(
                "SentencePiece model type {} (llama.cpp's \"llama\" tokenizer is SentencePiece BPE, type 2; unigram \
                 models are its \"t5\"/UGM tokenizer, which qforge does not have)",
                sp.model_type
            )));
        }
        const MAX_VOCAB: usize = 1 << 24;
        let n = if vocab_size > 0 { vocab_size } else { sp.pieces.len() };
        if n > MAX_VOCAB {
            return Err(Error::Tokenizer(format!("vocabulary of {n} tokens is absurd")));
        }
        let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
        let mut scores = vec![-10000f32; n];
        let mut token_types = vec![token_type::UNUSED; n];
        for (i, (piece, score, ty)) in sp.pieces.iter().enumerate().take(n) {
            tokens[i] = piece.clone();
            scores[i] = *score;
            // SentencePiece's type numbers are llama.cpp's. Only unknown, control, unused and
            // byte pieces keep theirs (user-defined pieces of the model become normal ones).
            token_types[i] = match *ty {
                t @ (token_type::UNKNOWN | token_type::CONTROL | token_type::UNUSED | token_type::BYTE) => t,
                _ => token_type::NORMAL,
            };
        }
        let added = dir.join("added_tokens.json");
        if added.is_file() {
            let j = read_json(&added)?;
            for (text, id) in j.as_object().into_iter().flatten() {
                if let Some(id) = id.as_u64().map(|v| v as usize).filter(|&v| v < n) {
                    tokens[id] = text.clone();
                    scores[id] = -1000.0;
                    token_types[id] = token_type::USER_DEFINED;
                }
            }
        }
        let cfg_path = dir.join("tokenizer_config.json");
        let tcfg = if cfg_path.exists() { read_json(&cfg_path)? } else { json!({}) };
        for (id, data) in tcfg.get("added_tokens_decoder").and_then(Json::as_object).into_iter().flatten() {
            let (Some(id), Some(content)) =
                (id.parse::<usize>().ok().filter(|&v| v < n), data.get("content").and_then(Json::as_str))
            else {
                continue;
            };
            let special = data.get("special").and_then(Json::as_bool).unwrap_or(false) || looks_special(content);
            scores[id] = -1000.0;
            if special {
                token_types[id] = token_type::CONTROL;
                tokens[id] = content.to_string();
            } else {
                token_types[id] = token_type::USER_DEFINED;
                tokens[id] = content.replace('\u{2581}', " ");
            }
        }
        let token_id = |key: &str| -> Option<u32> {
            let v = tcfg.get(key)?;
            let content = v.as_str().or_else(|| v.get("content").and_then(Json::as_str))?;
            tokens.iter().position(|t| t == content).map(|i| i as u32)
        };
        let cfg_id = |key: &str| {
            config.get(key).and_then(Json::as_u64).and_then(|v| u32::try_from(v).ok()).filter(|&v| (v as usize) < n)
        };
        let first_of = |ty: i32| token_types.iter().position(|&t| t == ty).map(|i| i as u32);
        Ok(Vocab {
            model: VocabModel::Spm,
            pre: "default".into(),
            bos: token_id("bos_token").or_else(|| cfg_id("bos_token_id")),
            eos: token_id("eos_token").or_else(|| cfg_id("eos_token_id")),
            unk: token_id("unk_token").or_else(|| first_of(token_type::UNKNOWN)),
            pad: token_id("pad_token").or_else(|| cfg_id("pad_token_id")),
            add_bos: tcfg.get("add_bos_token").and_then(Json::as_bool).unwrap_or(true),
            add_eos: tcfg.get("add_eos_token").and_then(Json::as_bool).unwrap_or(false),
            add_space_prefix: sp.add_dummy_prefix,
            ignore_merges: false,
            chat_template: hf_chat_template(&tcfg),
            merges: Vec::new(),
            tokens,
            token_types,
            scores,
        })
    }

    pub fn from_hf_json(tj: &Json, tcfg: &Json, config: &Json, vocab_size: usize) -> Result<Vocab> {
        let model = tj.get("model").ok_or_else(|| Error::Tokenizer("no \"model\" section".into()))?;
        let mtype = model.get("type").and_then(Json::as_str).unwrap_or("BPE");
        if mtype != "BPE" {
            return Err(Error::Unsupported(format!(
                "tokenizer model {mtype:?} is not supported (qforge converts byte-level BPE)"
            )));
        }
        if model.get("byte_fallback").and_then(Json::as_bool).unwrap_or(false) {
            return Err(Error::Unsupported(
                "BPE with byte_fallback (SentencePiece-style) tokenizers are not supported yet".into(),
            ));
        }
        match tj.get("normalizer") {
            None | Some(Json::Null) => {}
            Some(n) if n.get("type").and_then(Json::as_str) == Some("NFC") => {}
            Some(n) => {
                return Err(Error::Unsupported(format!(
                    "tokenizer normalizer {} has no llama.cpp equivalent",
                    n.get("type").unwrap_or(n)
                )))
            }
        }
        let pre = match identify_pre(tj)? {
            (Some(name), _) => name.to_string(),
            // Not in llama.cpp's table (its converter refuses such a tokenizer). A pre-tokenizer
            // that is exactly one llama.cpp implements is still recognized by its structure.
            (None, hash) => detect_pre(tj.get("pre_tokenizer").unwrap_or(&Json::Null)).map_err(|e| {
                Error::Unsupported(format!(
                    "the BPE pre-tokenizer was not recognized: the hash of its ids for the check text ({hash}) is \
                     not in llama.cpp's table (convert_hf_to_gguf.py refuses it too), and {e}. If llama.cpp \
                     supports this model in a newer version, regenerate qforge's table with \
                     tools/gen_pre_tokenizers.py"
                ))
            })?,
        };

        let vocab = model
            .get("vocab")
            .and_then(Json::as_object)
            .ok_or_else(|| Error::Tokenizer("model.vocab is missing".into()))?;
        let mut by_id: HashMap<u64, (String, i32)> = HashMap::new();
        for (tok, id) in vocab {
            let id = id.as_u64().ok_or_else(|| Error::Tokenizer(format!("token {tok:?} has no integer id")))?;
            by_id.insert(id, (tok.clone(), token_type::NORMAL));
        }
        for added in tj.get("added_tokens").and_then(Json::as_array).into_iter().flatten() {
            let (Some(id), Some(content)) =
                (added.get("id").and_then(Json::as_u64), added.get("content").and_then(Json::as_str))
            else {
                return Err(Error::Tokenizer("added token without id or content".into()));
            };
            let special = added.get("special").and_then(Json::as_bool).unwrap_or(false);
            let ty = if special { token_type::CONTROL } else { token_type::USER_DEFINED };
            by_id.insert(id, (content.to_string(), ty));
        }
        let max_id = by_id.keys().copied().max().unwrap_or(0) as usize;
        const MAX_VOCAB: usize = 1 << 24;
        if max_id >= MAX_VOCAB || vocab_size > MAX_VOCAB {
            return Err(Error::Tokenizer(format!("vocabulary of {} tokens is absurd", max_id.max(vocab_size))));
        }
        // Ids index the embedding matrix, whose size `vocab_size` is (0: unknown, then the
        // ids must be dense). Without this, a 70-byte tokenizer.json holding one id of
        // 16777215 had us create 16 million placeholder tokens (GBs) before anything failed;
        // llama.cpp's converter refuses such ids too.
        let limit = if vocab_size > 0 { vocab_size } else { by_id.len() };
        if !by_id.is_empty() && max_id >= limit {
            return Err(Error::Tokenizer(format!(
                "token id {max_id} is outside the vocabulary of {limit} tokens{}",
                if vocab_size > 0 { " that config.json declares" } else { "" }
            )));
        }
        let n = vocab_size.max(max_id + 1);
        let mut tokens = Vec::with_capacity(n);
        let mut token_types = Vec::with_capacity(n);
        for i in 0..n {
            match by_id.remove(&(i as u64)) {
                Some((t, ty)) => {
                    tokens.push(t);
                    token_types.push(ty);
                }
                None => {
                    tokens.push(format!("[PAD{i}]"));
                    token_types.push(token_type::UNUSED);
                }
            }
        }

        let mut merges = Vec::new();
        for m in model.get("merges").and_then(Json::as_array).into_iter().flatten() {
            match m {
                Json::String(s) => merges.push(s.clone()),
                Json::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                    (Some(a), Some(b)) => merges.push(format!("{a} {b}")),
                    _ => return Err(Error::Tokenizer("merge pair is not two strings".into())),
                },
                _ => return Err(Error::Tokenizer("merge is neither a string nor a pair".into())),
            }
        }

        let token_id = |key: &str| -> Option<u32> {
            let v = tcfg.get(key)?;
            let content = v.as_str().or_else(|| v.get("content").and_then(Json::as_str))?;
            tokens.iter().position(|t| t == content).map(|i| i as u32)
        };
        let cfg_id = |key: &str| config.get(key).and_then(Json::as_u64).and_then(|v| u32::try_from(v).ok());
        Ok(Vocab {
            model: VocabModel::Bpe,
            pre,
            scores: Vec::new(),
            unk: None,
            add_space_prefix: false,
            bos: token_id("bos_token").or_else(|| cfg_id("bos_token_id")),
            eos: token_id("eos_token").or_else(|| cfg_id("eos_token_id")),
            pad: token_id("pad_token").or_else(|| cfg_id("pad_token_id")),
            add_bos: tcfg.get("add_bos_token").and_then(Json::as_bool).unwrap_or(false),
            add_eos: tcfg.get("add_eos_token").and_then(Json::as_bool).unwrap_or(false),
            ignore_merges: model.get("ignore_merges").and_then(Json::as_bool).unwrap_or(false),
            chat_template: hf_chat_template(tcfg),
            tokens,
            token_types,
            merges,
        })
    }

    /// The GGUF metadata entries, in llama.cpp's order.
    pub fn to_gguf(&self) -> Vec<(&'static str, Value)> {
        let mut kv = match self.model {
            VocabModel::Bpe => vec![
                ("tokenizer.ggml.model", Value::String("gpt2".into())),
                ("tokenizer.ggml.pre", Value::String(self.pre.clone())),
                ("tokenizer.ggml.tokens", Value::string_array(self.tokens.iter().cloned())),
            ],
            VocabModel::Spm => vec![
                ("tokenizer.ggml.model", Value::String("llama".into())),
                ("tokenizer.ggml.pre", Value::String("default".into())),
                ("tokenizer.ggml.tokens", Value::string_array(self.tokens.iter().cloned())),
                (
                    "tokenizer.ggml.scores",
                    Value::Array(ValueType::F32, self.scores.iter().map(|&s| Value::F32(s)).collect()),
                ),
            ],
        };
        kv.push((
            "tokenizer.ggml.token_type",
            Value::Array(ValueType::I32, self.token_types.iter().map(|&t| Value::I32(t)).collect()),
        ));
        if self.model == VocabModel::Bpe {
            kv.push(("tokenizer.ggml.merges", Value::string_array(self.merges.iter().cloned())));
        }
        for (key, id) in [
            ("tokenizer.ggml.bos_token_id", self.bos),
            ("tokenizer.ggml.eos_token_id", self.eos),
            ("tokenizer.ggml.unknown_token_id", self.unk),
            ("tokenizer.ggml.padding_token_id", self.pad),
        ] {
            if let Some(id) = id {
                kv.push((key, Value::U32(id)));
            }
        }
        kv.push(("tokenizer.ggml.add_bos_token", Value::Bool(self.add_bos)));
        kv.push(("tokenizer.ggml.add_eos_token", Value::Bool(self.add_eos)));
        // llama.cpp assumes the space prefix for SentencePiece; its converter writes the key
        // only for models that turn it off.
        if self.model == VocabModel::Spm && !self.add_space_prefix {
            kv.push(("tokenizer.ggml.add_space_prefix", Value::Bool(false)));
        }
        if let Some(t) = &self.chat_template {
            kv.push(("tokenizer.chat_template", Value::String(t.clone())));
        }
        kv
    }

    /// Read the vocabulary back from GGUF metadata.
    pub fn from_gguf(h: &GgufHeader) -> Result<Vocab> {
        let model = h.get("tokenizer.ggml.model").and_then(Value::as_str).ok_or_else(|| {
            Error::Tokenizer("the GGUF carries no tokenizer (tokenizer.ggml.model is missing)".into())
        })?;
        let model = match model {
            "gpt2" => VocabModel::Bpe,
            "llama" => VocabModel::Spm,
            other => {
                return Err(Error::Unsupported(format!(
                "GGUF tokenizer model {other:?} is not supported (supported: \"gpt2\" = byte-level BPE, \"llama\" = \
                     SentencePiece)"
            )))
            }
        };
        let strings = |key: &str| -> Result<Vec<String>> {
            let arr =
                h.get(key).and_then(Value::as_array).ok_or_else(|| Error::Tokenizer(format!("{key} is missing")))?;
            arr.iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| Error::Tokenizer(format!("{key} holds a non-string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges =
            if h.get("tokenizer.ggml.merges").is_some() { strings("tokenizer.ggml.merges")? } else { Vec::new() };
        let token_types = match h.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => {
                let t: Vec<i32> = a.iter().map(|v| v.as_i64().unwrap_or(1) as i32).collect();
                if t.len() != tokens.len() {
                    return Err(Error::Tokenizer(format!("{} token types for {} tokens", t.len(), tokens.len())));
                }
                t
            }
            None => vec![token_type::NORMAL; tokens.len()],
        };
        let id = |k: &str| {
            h.get(k)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| (v as usize) < tokens.len())
        };
        let flag = |k: &str, default: bool| h.get(k).and_then(Value::as_bool).unwrap_or(default);
        let spm = model == VocabModel::Spm;
        let (pre, ignore_merges) = if spm {
            ("default".to_string(), false)
        } else {
            let pre = h.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
            let p = pre_tokenizer(pre)?;
            (pre.to_string(), p.ignore_merges)
        };
        let scores = match h.get("tokenizer.ggml.scores").and_then(Value::as_array) {
            Some(a) => {
                let s: Vec<f32> = a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect();
                if s.len() != tokens.len() {
                    return Err(Error::Tokenizer(format!("{} scores for {} tokens", s.len(), tokens.len())));
                }
                s
            }
            None if spm => vec![0.0; tokens.len()],
            None => Vec::new(),
        };
        // llama.cpp's defaults for SentencePiece vocabularies: <unk> 0, <s> 1, </s> 2, BOS added,
        // a space put before the text.
        let or_spm = |v: Option<u32>, d: u32| v.or(if spm && (d as usize) < tokens.len() { Some(d) } else { None });
        Ok(Vocab {
            model,
            ignore_merges,
            pre,
            bos: or_spm(id("tokenizer.ggml.bos_token_id"), 1),
            eos: or_spm(id("tokenizer.ggml.eos_token_id"), 2),
            unk: or_spm(id("tokenizer.ggml.unknown_token_id"), 0),
            pad: id("tokenizer.ggml.padding_token_id"),
            add_bos: flag("tokenizer.ggml.add_bos_token", spm),
            add_eos: flag("tokenizer.ggml.add_eos_token", false),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix", spm),
            chat_template: h.get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_string),
            tokens,
            token_types,
            scores,
            merges,
        })
    }

    /// A Hugging Face `tokenizer.json` equivalent to this vocabulary.
    pub fn to_hf_json(&self) -> Result<Json> {
        if self.model == VocabModel::Spm {
            return self.spm_hf_json();
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
            "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
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
        let normalizer = if self.add_space_prefix {
            json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": space}, replace_space]})
        } else {
            replace_space
        };
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": space}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if self.add_space_prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        let name = |id: Option<u32>| id.and_then(|i| self.tokens.get(i as usize)).cloned();
        let mut single = Vec::new();
        let mut specials = serde_json::Map::new();
        for (on, id) in [(self.add_bos, self.bos), (true, None), (self.add_eos, self.eos)] {
            match (on, id, name(id)) {
                (true, None, _) => single.push(json!({"Sequence": {"id": "A", "type_id": 0}})),
                (true, Some(i), Some(n)) => {
                    single.push(json!({"SpecialToken": {"id": n, "type_id": 0}}));
                    specials.insert(n.clone(), json!({"id": n, "ids": [i], "tokens": [n]}));
                }
                _ => {}
            }
        }
        let post = if specials.is_empty() {
            Json::Null
        } else {
            json!({"type": "TemplateProcessing", "single": single, "pair": single, "special_tokens": specials})
        };
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

    /// `tokenizer_config.json` for a Hugging Face directory.
    pub fn to_hf_tokenizer_config(&self, model_max_length: usize) -> Json {
        let name = |id: Option<u32>| id.and_then(|i| self.tokens.get(i as usize)).cloned();
        let mut cfg = json!({
            "bos_token": name(self.bos),
            "eos_token": name(self.eos),
            "pad_token": name(self.pad),
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "model_max_length": model_max_length,
            "tokenizer_class": "PreTrainedTokenizerFast",
        });
        if let Some(t) = &self.chat_template {
            cfg["chat_template"] = json!(t);
        }
        cfg
    }
}

/// convert_hf_to_gguf.py's `does_token_look_special`: control-looking added tokens are control
/// tokens even when not marked special.
fn looks_special(t: &str) -> bool {
    let control = matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]");
    control
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// The chat template of a tokenizer_config.json: a string, or (older transformers) a list of
/// named templates of which llama.cpp's converter writes the one named "default".
fn hf_chat_template(tcfg: &Json) -> Option<String> {
    match tcfg.get("chat_template")? {
        Json::String(t) => Some(t.clone()),
        Json::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template").and_then(Json::as_str))
            .map(str::to_string),
        _ => None,
    }
}

/// The `tokenizer.ggml.pre` name llama.cpp's converter gives this tokenizer.json, found as
/// convert_hf_to_gguf.py finds it: the check text is encoded with special tokens added, the
/// ids are written as Python prints a list, and the SHA-256 of that is looked up in llama.cpp's
/// table. Returns the name (None when the hash is not in the table) and the hash.
pub fn identify_pre(tj: &Json) -> Result<(Option<&'static str>, String)> {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(tj).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let tok = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let enc = tok.encode(CHECK_TEXT, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let list = format!("[{}]", enc.get_ids().iter().map(u32::to_string).collect::<Vec<_>>().join(", "));
    let hash: String = Sha256::digest(list.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    Ok((PRE_HASHES.iter().find(|(h, _)| *h == hash).map(|&(_, n)| n), hash))
}

/// Map a `tokenizer.json` pre-tokenizer onto llama.cpp's `tokenizer.ggml.pre` name by its
/// structure (a bare GPT-2 ByteLevel, or the Llama-3/Qwen2 split regex), or refuse.
fn detect_pre(pre: &Json) -> Result<String> {
    let ty = pre.get("type").and_then(Json::as_str).unwrap_or("");
    if ty == "ByteLevel" {
        if pre.get("use_regex").and_then(Json::as_bool).unwrap_or(true) {
            return Ok("gpt-2".into());
        }
    } else if ty == "Sequence" {
        let parts = pre.get("pretokenizers").and_then(Json::as_array).map(Vec::as_slice).unwrap_or(&[]);
        if let [split, bl] = parts {
            let regex = split.get("pattern").and_then(|p| p.get("Regex")).and_then(Json::as_str);
            let bl_ok = bl.get("type").and_then(Json::as_str) == Some("ByteLevel")
                && !bl.get("use_regex").and_then(Json::as_bool).unwrap_or(true);
            if let (Some(regex), true) = (regex, bl_ok) {
                if let Some((name, _)) = KNOWN_SPLIT_REGEXES.iter().find(|(_, r)| *r == regex) {
                    return Ok(name.to_string());
                }
                return Err(Error::Unsupported(format!(
                    "pre-tokenizer regex {regex:?} is not one llama.cpp knows (gpt-2, llama-bpe, qwen2)"
                )));
            }
        }
    }
    Err(Error::Unsupported(format!(
        "pre-tokenizer {} cannot be mapped to a llama.cpp pre-tokenizer (supported: gpt-2, llama-bpe, qwen2)",
        serde_json::to_string(pre).unwrap_or_default()
    )))
}
