//! Tokenizer vocabularies as GGUF stores them (`tokenizer.ggml.*`): SentencePiece (`llama`)
//! and byte-level BPE (`gpt2`) with llama.cpp's pre-tokenizers. Read from GGUF metadata here,
//! from a Hugging Face checkpoint in `hf_import` (as convert_hf_to_gguf.py reads it, special
//! tokens in `special_vocab`), written back as a tokenizer.json in `hf_export`.

mod hf_export;
mod hf_import;
pub mod pre_tokenizers;
pub mod special_vocab;

pub use hf_import::{identify_pre, VocabRules};

use crate::error::{Error, Result};
use crate::formats::gguf::{Array, GgufHeader, Value};
use crate::formats::tokenizer::pre_tokenizers::PRE_TOKENIZERS;

/// llama.cpp's `llama_token_type`.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

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
    /// llama.cpp adds BOS for this pre-tokenizer unless the GGUF says otherwise (its BPE
    /// default is no BOS).
    pub add_bos: bool,
    /// Merges over raw UTF-8 characters with `<0xNN>` byte tokens (SentencePiece-style BPE:
    /// gemma4, sarvam-moe) instead of GPT-2's byte alphabet.
    pub raw_utf8: bool,
    /// Spaces are written `▁` before the merges (with `raw_utf8`).
    pub escape_spaces: bool,
}

/// The only split the raw-UTF-8 entries use: runs of newlines and runs of anything else.
pub const NEWLINE_RUNS: &str = "[^\\n]+|[\\n]+";

impl PreTokenizer {
    /// Whether qforge reproduces llama.cpp's handling: regexes (the table holds none where
    /// llama.cpp's is more than that), and raw-UTF-8 merges only after the newline split
    /// (the SentencePiece engine's).
    pub fn supported(&self) -> bool {
        !self.regexes.is_empty() && (!self.raw_utf8 || self.regexes == [NEWLINE_RUNS])
    }
}

/// The pre-tokenizer llama.cpp uses for `name`, or why there is none.
pub fn pre_tokenizer(name: &str) -> Result<&'static PreTokenizer> {
    match PRE_TOKENIZERS.iter().find(|p| p.names.contains(&name)) {
        Some(p) if p.supported() => Ok(p),
        Some(p) if p.raw_utf8 => Err(Error::Unsupported(format!(
            "GGUF pre-tokenizer {name:?} (merges over raw UTF-8 after the regexes {:?}) is not supported",
            p.regexes
        ))),
        Some(_) => Err(Error::Unsupported(format!(
            "GGUF pre-tokenizer {name:?} needs llama.cpp's own handling (a hand-written splitter), which qforge \
             does not reproduce yet"
        ))),
        None => Err(Error::Unsupported(format!(
            "GGUF pre-tokenizer {name:?} is not supported (supported: {})",
            PRE_TOKENIZERS
                .iter()
                .filter(|p| p.supported())
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
    /// Gemma 4's (`gemma4`): BPE merges (by rank) over UTF-8 characters, `▁` for spaces,
    /// `<0xNN>` byte tokens; the pre-tokenizer is always `gemma4`.
    Gemma4,
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
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    /// End of turn / end of message (chat models whose template ends a turn with its own token).
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    /// Whether BOS / EOS / SEP are added, as the metadata says (None: the key is absent and
    /// llama.cpp's default applies, see [`Vocab::adds_bos`]).
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_sep: Option<bool>,
    /// SPM: a space is put before the text (and after each user-defined token). None: absent
    /// (llama.cpp's default: on for SentencePiece, off for BPE).
    pub add_space_prefix: Option<bool>,
    /// A pre-tokenized piece that is itself a token skips the merges (llama-bpe, tekken).
    pub ignore_merges: bool,
    /// The Jinja chat template (`tokenizer.chat_template`; transformers' `chat_template`).
    pub chat_template: Option<String>,
    /// Further named templates (`tokenizer.chat_template.NAME`, e.g. `tool_use`), in order.
    pub named_chat_templates: Vec<(String, String)>,
}

impl Vocab {
    /// The GGUF metadata entries, in the order llama.cpp's converter writes them. Flags and
    /// ids the vocabulary does not state are left out (llama.cpp's defaults then apply).
    pub fn to_gguf(&self) -> Vec<(String, Value)> {
        let mut kv: Vec<(String, Value)> = Vec::new();
        let mut put = |key: &str, v: Value| kv.push((key.to_string(), v));
        let (model, pre) = match self.model {
            VocabModel::Bpe => ("gpt2", self.pre.as_str()),
            VocabModel::Spm => ("llama", "default"),
            VocabModel::Gemma4 => ("gemma4", "gemma4"),
        };
        put("tokenizer.ggml.model", Value::String(model.into()));
        put("tokenizer.ggml.pre", Value::String(pre.into()));
        put("tokenizer.ggml.tokens", Value::string_array(self.tokens.iter().cloned()));
        if self.model == VocabModel::Spm {
            put("tokenizer.ggml.scores", Value::Array(Array::F32(self.scores.clone())));
        }
        put("tokenizer.ggml.token_type", Value::Array(Array::I32(self.token_types.clone())));
        if self.model != VocabModel::Spm {
            put("tokenizer.ggml.merges", Value::string_array(self.merges.iter().cloned()));
        }
        for (key, id) in [
            ("tokenizer.ggml.bos_token_id", self.bos),
            ("tokenizer.ggml.eos_token_id", self.eos),
            ("tokenizer.ggml.unknown_token_id", self.unk),
            ("tokenizer.ggml.seperator_token_id", self.sep), // sic: llama.cpp's spelling
            ("tokenizer.ggml.padding_token_id", self.pad),
            ("tokenizer.ggml.mask_token_id", self.mask),
            ("tokenizer.ggml.eot_token_id", self.eot),
            ("tokenizer.ggml.eom_token_id", self.eom),
        ] {
            if let Some(id) = id {
                put(key, Value::U32(id));
            }
        }
        for (key, flag) in [
            ("tokenizer.ggml.add_bos_token", self.add_bos),
            ("tokenizer.ggml.add_eos_token", self.add_eos),
            ("tokenizer.ggml.add_sep_token", self.add_sep),
            ("tokenizer.ggml.add_space_prefix", self.add_space_prefix),
        ] {
            if let Some(flag) = flag {
                put(key, Value::Bool(flag));
            }
        }
        for (name, t) in &self.named_chat_templates {
            put(&format!("tokenizer.chat_template.{name}"), Value::String(t.clone()));
        }
        if !self.named_chat_templates.is_empty() {
            let names = self.named_chat_templates.iter().map(|(n, _)| n.clone());
            put("tokenizer.chat_templates", Value::string_array(names));
        }
        if let Some(t) = &self.chat_template {
            put("tokenizer.chat_template", Value::String(t.clone()));
        }
        kv
    }

    /// Whether BOS is put before the text: the metadata's flag, else llama.cpp's default
    /// (SentencePiece: yes; BPE: what the pre-tokenizer's entry says).
    pub fn adds_bos(&self) -> bool {
        let pre = pre_tokenizer(&self.pre).ok();
        // llama.cpp turns BOS on for Gemma 4 whatever the metadata says.
        if pre.is_some_and(|p| p.kind == "gemma4") {
            return true;
        }
        self.add_bos.unwrap_or(match self.model {
            VocabModel::Spm => true,
            VocabModel::Bpe | VocabModel::Gemma4 => pre.is_some_and(|p| p.add_bos),
        })
    }

    /// Whether EOS is put after the text (llama.cpp's default: no).
    pub fn adds_eos(&self) -> bool {
        self.add_eos.unwrap_or(false)
    }

    /// Whether a space is put before the text (llama.cpp's default: SentencePiece only).
    pub fn space_prefix(&self) -> bool {
        self.add_space_prefix.unwrap_or(self.model == VocabModel::Spm)
    }

    /// Read the vocabulary back from GGUF metadata.
    pub fn from_gguf(h: &GgufHeader) -> Result<Vocab> {
        let model = h.get("tokenizer.ggml.model").and_then(Value::as_str).ok_or_else(|| {
            Error::Tokenizer("the GGUF carries no tokenizer (tokenizer.ggml.model is missing)".into())
        })?;
        let model = match model {
            "gpt2" => VocabModel::Bpe,
            "llama" => VocabModel::Spm,
            "gemma4" => VocabModel::Gemma4,
            other => {
                return Err(Error::Unsupported(format!(
                "GGUF tokenizer model {other:?} is not supported (supported: \"gpt2\" = byte-level BPE, \"llama\" = \
                     SentencePiece, \"gemma4\")"
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
        let flag = |k: &str| h.get(k).and_then(Value::as_bool);
        let spm = model == VocabModel::Spm;
        let (pre, ignore_merges) = match model {
            VocabModel::Spm => ("default".to_string(), false),
            VocabModel::Gemma4 => ("gemma4".to_string(), false),
            VocabModel::Bpe => {
                let pre = h.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
                let p = pre_tokenizer(pre)?;
                (pre.to_string(), p.ignore_merges)
            }
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
        // llama.cpp's default ids: SentencePiece <unk> 0, <s> 1, </s> 2; BPE BOS = EOS = 11.
        // (Gemma 4: none.)
        let or_default = |v: Option<u32>, spm_id: u32, bpe_id: Option<u32>| {
            let default = match model {
                VocabModel::Spm => Some(spm_id),
                VocabModel::Bpe => bpe_id,
                VocabModel::Gemma4 => None,
            };
            v.or(default).filter(|&d| (d as usize) < tokens.len())
        };
        let mut named_chat_templates = Vec::new();
        for name in h.get("tokenizer.chat_templates").and_then(Value::as_array).into_iter().flat_map(Array::iter) {
            let Some(name) = name.as_str() else { continue };
            if let Some(t) = h.get(&format!("tokenizer.chat_template.{name}")).and_then(Value::as_str) {
                named_chat_templates.push((name.to_string(), t.to_string()));
            }
        }
        Ok(Vocab {
            model,
            ignore_merges,
            pre,
            bos: or_default(id("tokenizer.ggml.bos_token_id"), 1, Some(11)),
            eos: or_default(id("tokenizer.ggml.eos_token_id"), 2, Some(11)),
            unk: or_default(id("tokenizer.ggml.unknown_token_id"), 0, None),
            sep: id("tokenizer.ggml.seperator_token_id"),
            pad: id("tokenizer.ggml.padding_token_id"),
            mask: id("tokenizer.ggml.mask_token_id"),
            eot: id("tokenizer.ggml.eot_token_id"),
            eom: id("tokenizer.ggml.eom_token_id"),
            add_bos: flag("tokenizer.ggml.add_bos_token"),
            add_eos: flag("tokenizer.ggml.add_eos_token"),
            add_sep: flag("tokenizer.ggml.add_sep_token"),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix"),
            chat_template: h.get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_string),
            named_chat_templates,
            tokens,
            token_types,
            scores,
            merges,
        })
    }
}

/// A `tokenizers` tokenizer from a tokenizer.json, never a panic: the library indexes some
/// inputs without checking them (a BPE `continuing_subword_prefix` longer than a merge's right
/// part panics while loading: huggingface/tokenizers#2198, found by the `tokenizer_metadata`
/// fuzzer), so those are refused here with a clear error, and any other panic while loading
/// becomes an error too.
pub fn hf_tokenizer(tj: &serde_json::Value) -> Result<tokenizers::Tokenizer> {
    use serde_json::Value as Json;
    let model = tj.get("model");
    if let Some(prefix) = model.and_then(|m| m.get("continuing_subword_prefix")).and_then(Json::as_str) {
        for m in model.and_then(|m| m.get("merges")).and_then(Json::as_array).into_iter().flatten() {
            let right = match m {
                Json::String(s) => s.split_once(' ').map(|(_, r)| r),
                Json::Array(pair) => pair.get(1).and_then(Json::as_str),
                _ => None,
            };
            if right.is_some_and(|r| !r.starts_with(prefix)) {
                return Err(Error::Tokenizer(format!(
                    "BPE merge {m} does not start its right part with the continuing_subword_prefix {prefix:?}"
                )));
            }
        }
    }
    let bytes = serde_json::to_vec(tj).map_err(|e| Error::Tokenizer(e.to_string()))?;
    match std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes)) {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(Error::Tokenizer(e.to_string())),
        Err(_) => Err(Error::Tokenizer("the tokenizers library could not load this tokenizer.json".into())),
    }
}
