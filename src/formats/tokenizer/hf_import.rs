//! Hugging Face checkpoint → vocabulary, read as llama.cpp's converter (convert_hf_to_gguf.py)
//! reads it, so that `convert` writes the tokenizer metadata it writes:
//! - a SentencePiece `tokenizer.model` (`_set_vocab_sentencepiece`), wins where present;
//! - for LLaMA-family classes, a tokenizer.json that is SentencePiece-style BPE (byte
//!   fallback) with no tokenizer.model (`_set_vocab_llama_hf`, gguf-py's `LlamaHfVocab`);
//! - otherwise byte-level BPE (`_set_vocab_gpt2`), its pre-tokenizer identified by hash.
//!
//! Special tokens come from `special_vocab` (gguf-py's `SpecialVocab`) in every case.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value as Json};

use super::special_vocab::{Special, SpecialVocab};
use super::{token_type, Vocab, VocabModel};
use crate::error::{Error, Result};
use crate::formats::safetensors::read_json;
use crate::formats::sentencepiece::SentencePieceModel;
use crate::formats::tokenizer::pre_tokenizers::{CHECK_TEXT, PRE_HASHES};

/// Vocabularies beyond this are refused before anything is allocated for them.
const MAX_VOCAB: usize = 1 << 24;

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

/// The tokenizer files of a checkpoint directory, parsed.
#[derive(Default)]
pub struct HfTokenizerFiles {
    pub tokenizer_json: Option<Json>,
    pub tokenizer_config: Option<Json>,
    /// chat_template.jinja (a list with additional_chat_templates/*.jinja) or
    /// chat_template.json's template: used where tokenizer_config.json has none.
    pub alt_chat_template: Option<Json>,
    /// The bytes of tokenizer.model.
    pub sentencepiece: Option<Vec<u8>>,
    pub added_tokens_json: Option<Json>,
}

impl HfTokenizerFiles {
    pub fn read(dir: &Path) -> Result<HfTokenizerFiles> {
        let json_if_file = |name: &str| -> Result<Option<Json>> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(Some(read_json(&p)?))
            } else {
                Ok(None)
            }
        };
        let text = |p: &Path| std::fs::read_to_string(p).map_err(|e| Error::Tokenizer(format!("{}: {e}", p.display())));
        let jinja = dir.join("chat_template.jinja");
        let alt_chat_template = if jinja.is_file() {
            let default = text(&jinja)?;
            let mut extra: Vec<_> = std::fs::read_dir(dir.join("additional_chat_templates"))
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
                .collect();
            extra.sort();
            if extra.is_empty() {
                Some(Json::String(default))
            } else {
                let mut list = vec![json!({"name": "default", "template": default})];
                for p in &extra {
                    let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    list.push(json!({"name": name, "template": text(p)?}));
                }
                Some(Json::Array(list))
            }
        } else {
            json_if_file("chat_template.json")?.and_then(|j| j.get("chat_template").cloned())
        };
        let spm = dir.join("tokenizer.model");
        let sentencepiece = if spm.is_file() {
            Some(std::fs::read(&spm).map_err(|e| Error::Tokenizer(format!("{}: {e}", spm.display())))?)
        } else {
            None
        };
        Ok(HfTokenizerFiles {
            tokenizer_json: json_if_file("tokenizer.json")?,
            tokenizer_config: json_if_file("tokenizer_config.json")?,
            alt_chat_template,
            sentencepiece,
            added_tokens_json: json_if_file("added_tokens.json")?,
        })
    }
}

/// What a model's architecture changes in how its Hugging Face vocabulary is read (the
/// converter's per-model classes). The architecture table (`model::arch`) holds one per
/// architecture; an unknown architecture reads with the defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VocabRules {
    /// convert_hf_to_gguf.py converts this class with its `LlamaModel` (vocabulary rules for
    /// tokenizer.json-only SentencePiece, `add_prefix_space`, special vocabulary sizes).
    pub llama: bool,
    /// A SentencePiece vocabulary is written with `add_space_prefix = false` (Gemma).
    pub spm_no_space_prefix: bool,
}

/// SentencePiece-style BPE in a tokenizer.json (what transformers' LlamaConverter writes):
/// gguf-py's `LlamaHfVocab` takes such a file (BPE, byte fallback, a Sequence decoder).
fn is_llama_hf(tj: &Json) -> bool {
    let model = tj.get("model");
    model.and_then(|m| m.get("type")).and_then(Json::as_str) == Some("BPE")
        && model.and_then(|m| m.get("byte_fallback")).and_then(Json::as_bool) == Some(true)
        && tj.get("decoder").and_then(|d| d.get("type")).and_then(Json::as_str) == Some("Sequence")
}

impl Vocab {
    /// Read a model directory's tokenizer. `vocab_size` (config.json's; 0: unknown) pads the
    /// token list with unused `[PADn]` entries, as llama.cpp does when the embedding matrix is
    /// larger than the vocabulary.
    pub fn from_hf_dir(dir: &Path, vocab_size: usize, config: &Json, rules: VocabRules) -> Result<Vocab> {
        let files = HfTokenizerFiles::read(dir)?;
        if files.sentencepiece.is_none() && files.tokenizer_json.is_none() {
            return Err(Error::Tokenizer(format!(
                "{}: no tokenizer (neither tokenizer.json nor tokenizer.model)",
                dir.display()
            )));
        }
        Self::from_hf_files(&files, config, vocab_size, rules).map_err(|e| {
            let file = if files.sentencepiece.is_some() { "tokenizer.model" } else { "tokenizer.json" };
            Error::Tokenizer(format!("{}: {e}", dir.join(file).display()))
        })
    }

    /// A tokenizer.json (with its tokenizer_config.json and config.json) alone.
    pub fn from_hf_json(tj: &Json, tcfg: &Json, config: &Json, vocab_size: usize, rules: VocabRules) -> Result<Vocab> {
        let files = HfTokenizerFiles {
            tokenizer_json: Some(tj.clone()),
            tokenizer_config: Some(tcfg.clone()),
            ..Default::default()
        };
        Self::from_hf_files(&files, config, vocab_size, rules)
    }

    /// The converter's choice of vocabulary reader, then its architecture-specific touches.
    pub fn from_hf_files(
        files: &HfTokenizerFiles,
        config: &Json,
        vocab_size: usize,
        rules: VocabRules,
    ) -> Result<Vocab> {
        if vocab_size > MAX_VOCAB {
            return Err(Error::Tokenizer(format!("vocabulary of {vocab_size} tokens is absurd")));
        }
        let llama = rules.llama;
        let mut v = match (&files.sentencepiece, &files.tokenizer_json) {
            (Some(bytes), _) => sentencepiece_vocab(bytes, files, config, vocab_size)?,
            (None, Some(tj)) if llama && is_llama_hf(tj) => llama_hf_vocab(tj, files, config, vocab_size)?,
            (None, Some(tj)) => bpe_vocab(tj, files, config, vocab_size)?,
            (None, None) => return Err(Error::Tokenizer("no tokenizer.json and no tokenizer.model".into())),
        };
        // Gemma: the SentencePiece vocabulary is written without the space prefix.
        if rules.spm_no_space_prefix && v.model == VocabModel::Spm {
            v.add_space_prefix = Some(false);
        }
        if llama {
            let tcfg = files.tokenizer_config.as_ref();
            if let Some(on) = tcfg.and_then(|c| c.get("add_prefix_space")).and_then(Json::as_bool) {
                v.add_space_prefix = Some(on);
            }
            // CodeLlama's infill vocabulary: its end-of-turn token by position.
            if config.get("vocab_size").and_then(Json::as_u64) == Some(32016) && v.tokens.len() > 32010 {
                v.eot = v.eot.or(Some(32010));
            }
            // Granite's small models (and others of 49152 tokens, SmolLM among them): no BOS.
            if config.get("vocab_size").and_then(Json::as_u64) == Some(49152) {
                v.add_bos = Some(false);
            }
        }
        Ok(v)
    }
}

/// Special tokens and chat templates, as the converter's `SpecialVocab` finds them.
fn special_vocab(files: &HfTokenizerFiles, config: &Json, n_vocab: Option<usize>) -> Result<SpecialVocab> {
    SpecialVocab::read(
        files.tokenizer_json.as_ref(),
        files.tokenizer_config.as_ref(),
        Some(config),
        files.alt_chat_template.clone(),
        n_vocab,
    )
}

/// A vocabulary of `model` from its token table and the special tokens found for it.
fn assemble(model: VocabModel, tokens: Vec<String>, token_types: Vec<i32>, sv: SpecialVocab) -> Vocab {
    Vocab {
        model,
        pre: "default".into(),
        tokens,
        token_types,
        scores: Vec::new(),
        merges: Vec::new(),
        bos: sv.id(Special::Bos),
        eos: sv.id(Special::Eos),
        unk: sv.id(Special::Unk),
        sep: sv.id(Special::Sep),
        pad: sv.id(Special::Pad),
        mask: sv.id(Special::Mask),
        eot: sv.id(Special::Eot),
        eom: sv.id(Special::Eom),
        add_bos: sv.adds(Special::Bos),
        add_eos: sv.adds(Special::Eos),
        add_sep: sv.adds(Special::Sep),
        add_space_prefix: None,
        ignore_merges: false,
        chat_template: sv.chat_template,
        named_chat_templates: sv.named_chat_templates,
    }
}

/// `_create_vocab_sentencepiece`: the pieces with their scores and types, padded to
/// `vocab_size` with unused `[PADn]`; `added_tokens.json` and tokenizer_config.json's
/// `added_tokens_decoder` as user-defined (or control, when special) tokens of score -1000.
fn sentencepiece_vocab(bytes: &[u8], files: &HfTokenizerFiles, config: &Json, vocab_size: usize) -> Result<Vocab> {
    let sp = SentencePieceModel::parse(bytes)?;
    if sp.model_type != 2 {
        return Err(Error::Unsupported(format!(
            "SentencePiece model type {} (llama.cpp's \"llama\" tokenizer is SentencePiece BPE, type 2; unigram \
             models are its \"t5\"/UGM tokenizer, which qforge does not have)",
            sp.model_type
        )));
    }
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
    for (text, id) in files.added_tokens_json.as_ref().and_then(Json::as_object).into_iter().flatten() {
        if let Some(id) = id.as_u64().map(|v| v as usize).filter(|&v| v < n) {
            tokens[id] = text.clone();
            scores[id] = -1000.0;
            token_types[id] = token_type::USER_DEFINED;
        }
    }
    let decoder = files.tokenizer_config.as_ref().and_then(|c| c.get("added_tokens_decoder"));
    for (id, data) in decoder.and_then(Json::as_object).into_iter().flatten() {
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
    let sv = special_vocab(files, config, Some(n))?;
    let mut v = assemble(VocabModel::Spm, tokens, token_types, sv);
    v.scores = scores;
    if !sp.add_dummy_prefix {
        v.add_space_prefix = Some(false);
    }
    Ok(v)
}

/// The token texts of a tokenizer.json by id: the model's vocabulary, then the added tokens
/// (an added token's text wins for its id, as in transformers' `get_vocab`).
fn tokens_by_id(tj: &Json) -> Result<HashMap<u64, String>> {
    let model = tj.get("model").ok_or_else(|| Error::Tokenizer("no \"model\" section".into()))?;
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| Error::Tokenizer("model.vocab is missing".into()))?;
    let mut by_id = HashMap::with_capacity(vocab.len());
    for (tok, id) in vocab {
        let id = id.as_u64().ok_or_else(|| Error::Tokenizer(format!("token {tok:?} has no integer id")))?;
        by_id.insert(id, tok.clone());
    }
    for added in added_tokens(tj)? {
        by_id.insert(added.id, added.content.to_string());
    }
    Ok(by_id)
}

struct AddedToken<'a> {
    id: u64,
    content: &'a str,
    special: bool,
}

fn added_tokens(tj: &Json) -> Result<Vec<AddedToken<'_>>> {
    let mut out = Vec::new();
    for added in tj.get("added_tokens").and_then(Json::as_array).into_iter().flatten() {
        let (Some(id), Some(content)) =
            (added.get("id").and_then(Json::as_u64), added.get("content").and_then(Json::as_str))
        else {
            return Err(Error::Tokenizer("added token without id or content".into()));
        };
        let special = added.get("special").and_then(Json::as_bool).unwrap_or(false);
        out.push(AddedToken { id, content, special });
    }
    Ok(out)
}

/// The size of the token table: config.json's `vocab_size` (0: unknown, then the ids must be
/// dense). Ids index the embedding matrix: without this check, a 70-byte tokenizer.json
/// holding one id of 16777215 had us create 16 million placeholder tokens (GBs) before
/// anything failed; llama.cpp's converter refuses such ids too.
fn table_size(by_id: &HashMap<u64, String>, vocab_size: usize) -> Result<usize> {
    let max_id = by_id.keys().copied().max().unwrap_or(0) as usize;
    if max_id >= MAX_VOCAB {
        return Err(Error::Tokenizer(format!("vocabulary of {max_id} tokens is absurd")));
    }
    let limit = if vocab_size > 0 { vocab_size } else { by_id.len() };
    if !by_id.is_empty() && max_id >= limit {
        return Err(Error::Tokenizer(format!(
            "token id {max_id} is outside the vocabulary of {limit} tokens{}",
            if vocab_size > 0 { " that config.json declares" } else { "" }
        )));
    }
    Ok(vocab_size.max(max_id + 1))
}

/// The names transformers gives a tokenizer's special tokens (`all_special_tokens`): the
/// named ones of tokenizer_config.json (a Llama tokenizer's `<s>`, `</s>`, `<unk>` when it
/// names none) and its additional/extra special tokens.
fn hf_special_names(tcfg: Option<&Json>) -> Vec<String> {
    let content = |v: &Json| v.as_str().or_else(|| v.get("content").and_then(Json::as_str)).map(str::to_string);
    let mut names = Vec::new();
    for (key, default) in [
        ("bos_token", Some("<s>")),
        ("eos_token", Some("</s>")),
        ("unk_token", Some("<unk>")),
        ("sep_token", None),
        ("pad_token", None),
        ("cls_token", None),
        ("mask_token", None),
    ] {
        match tcfg.and_then(|c| c.get(key)) {
            Some(v) => names.extend(content(v)),
            None => names.extend(default.map(str::to_string)),
        }
    }
    for key in ["additional_special_tokens", "extra_special_tokens"] {
        let list = tcfg.and_then(|c| c.get(key));
        names.extend(list.and_then(Json::as_array).into_iter().flatten().filter_map(content));
    }
    names
}

/// gguf-py's `LlamaHfVocab` (`_set_vocab_llama_hf`): a SentencePiece vocabulary known only
/// through its tokenizer.json. The base vocabulary in id order, `<0xNN>` as byte tokens, the
/// tokenizer's special tokens as control tokens, then the added tokens past it; every score
/// -1000 (tokenizer.json keeps no scores: llama.cpp then merges leftmost pairs first, which can
/// tokenize differently from transformers; `perplexity` on the checkpoint itself uses its
/// tokenizer.json). Padded to `vocab_size` where the embedding matrix is larger.
fn llama_hf_vocab(tj: &Json, files: &HfTokenizerFiles, config: &Json, vocab_size: usize) -> Result<Vocab> {
    let by_id = tokens_by_id(tj)?;
    let n = table_size(&by_id, vocab_size)?;
    let base = tj.get("model").and_then(|m| m.get("vocab")).and_then(Json::as_object).map_or(0, |v| v.len());
    let special_ids: Vec<u64> = {
        let text_to_id: HashMap<&str, u64> = by_id.iter().map(|(&id, t)| (t.as_str(), id)).collect();
        hf_special_names(files.tokenizer_config.as_ref())
            .iter()
            .filter_map(|t| text_to_id.get(t.as_str()).copied())
            .collect()
    };
    let is_byte = |t: &str| {
        t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
    };
    let mut tokens = Vec::with_capacity(n);
    let mut token_types = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let Some(t) = by_id.get(&i) else {
            if (i as usize) < base {
                return Err(Error::Tokenizer(format!("token id {i} is missing from the vocabulary")));
            }
            tokens.push(format!("[PAD{i}]"));
            token_types.push(token_type::UNUSED);
            continue;
        };
        let ty = if is_byte(t) {
            token_type::BYTE
        } else if special_ids.contains(&i) {
            token_type::CONTROL
        } else if i as usize >= base {
            token_type::USER_DEFINED
        } else {
            token_type::NORMAL
        };
        tokens.push(t.clone());
        token_types.push(ty);
    }
    let sv = special_vocab(files, config, Some(n))?;
    let mut v = assemble(VocabModel::Spm, tokens, token_types, sv);
    v.scores = vec![-1000.0; n];
    Ok(v)
}

/// `_set_vocab_gpt2`: byte-level BPE. Every id below `vocab_size` (unused `[PADn]` where the
/// tokenizer has none), added tokens as control (special, or looking special) or user-defined
/// tokens, the merges, and the pre-tokenizer's name from the hash of the check text's ids.
fn bpe_vocab(tj: &Json, files: &HfTokenizerFiles, config: &Json, vocab_size: usize) -> Result<Vocab> {
    let model = tj.get("model").ok_or_else(|| Error::Tokenizer("no \"model\" section".into()))?;
    let mtype = model.get("type").and_then(Json::as_str).unwrap_or("BPE");
    if mtype != "BPE" {
        return Err(Error::Unsupported(format!(
            "tokenizer model {mtype:?} is not supported (qforge converts byte-level BPE and SentencePiece)"
        )));
    }
    if model.get("byte_fallback").and_then(Json::as_bool).unwrap_or(false) {
        return Err(Error::Unsupported(
            "a SentencePiece-style (byte fallback) BPE tokenizer.json without tokenizer.model is read as llama.cpp \
             reads it only for LLaMA-family models (LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM)"
                .into(),
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
                "the BPE pre-tokenizer was not recognized: the hash of its ids for the check text ({hash}) is not \
                 in llama.cpp's table (convert_hf_to_gguf.py refuses it too), and {e}. If llama.cpp supports this \
                 model in a newer version, regenerate qforge's table with tools/gen_pre_tokenizers.py"
            ))
        })?,
    };
    let by_id = tokens_by_id(tj)?;
    let n = table_size(&by_id, vocab_size)?;
    let added: HashMap<&str, bool> = added_tokens(tj)?.into_iter().map(|a| (a.content, a.special)).collect();
    let mut tokens = Vec::with_capacity(n);
    let mut token_types = Vec::with_capacity(n);
    for i in 0..n as u64 {
        match by_id.get(&i) {
            None => {
                tokens.push(format!("[PAD{i}]"));
                token_types.push(token_type::UNUSED);
            }
            Some(t) => match added.get(t.as_str()) {
                Some(&special) if special || looks_special(t) => {
                    tokens.push(t.clone());
                    token_types.push(token_type::CONTROL);
                }
                // llama.cpp expects user-defined tokens pre-normalized: `▁` is a space.
                Some(_) => {
                    tokens.push(t.replace('\u{2581}', " "));
                    token_types.push(token_type::USER_DEFINED);
                }
                None => {
                    tokens.push(t.clone());
                    token_types.push(token_type::NORMAL);
                }
            },
        }
    }
    let mut merges = Vec::new();
    for m in model.get("merges").and_then(Json::as_array).into_iter().flatten() {
        match m {
            Json::String(s) => merges.push(s.clone()),
            // Pairs (newer tokenizers) may hold spaces, which GGUF's "a b" form cannot: the
            // converter writes them as U+0120, the byte-level alphabet's space.
            Json::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                (Some(a), Some(b)) => {
                    merges.push(format!("{} {}", a.replace(' ', "\u{120}"), b.replace(' ', "\u{120}")))
                }
                _ => return Err(Error::Tokenizer("merge pair is not two strings".into())),
            },
            _ => return Err(Error::Tokenizer("merge is neither a string nor a pair".into())),
        }
    }
    // The converter reads BPE special tokens with no vocabulary limit.
    let sv = special_vocab(files, config, None)?;
    let mut v = assemble(VocabModel::Bpe, tokens, token_types, sv);
    // Ids past the table would index nothing here.
    for id in [&mut v.bos, &mut v.eos, &mut v.unk, &mut v.sep, &mut v.pad, &mut v.mask, &mut v.eot, &mut v.eom] {
        if id.is_some_and(|i| i as usize >= n) {
            *id = None;
        }
    }
    v.pre = pre;
    v.merges = merges;
    v.ignore_merges = model.get("ignore_merges").and_then(Json::as_bool).unwrap_or(false);
    Ok(v)
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

/// The `tokenizer.ggml.pre` name llama.cpp's converter gives this tokenizer.json, found as
/// convert_hf_to_gguf.py finds it: the check text is encoded with special tokens added, the
/// ids are written as Python prints a list, and the SHA-256 of that is looked up in llama.cpp's
/// table. Returns the name (None when the hash is not in the table) and the hash.
pub fn identify_pre(tj: &Json) -> Result<(Option<&'static str>, String)> {
    use sha2::{Digest, Sha256};
    let tok = super::hf_tokenizer(tj)?;
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
