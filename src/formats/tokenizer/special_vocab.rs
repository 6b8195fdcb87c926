//! Special tokens of a Hugging Face checkpoint, found the way llama.cpp's converter finds them
//! (gguf-py's `SpecialVocab`): which ids are BOS, EOS, UNK, SEP, PAD, MASK (and EOT/EOM), and
//! whether BOS/EOS/SEP are added, from tokenizer.json's post-processor, tokenizer_config.json
//! and config.json; plus the chat template(s). The rules are the converter's, odd corners
//! included (a token named in tokenizer_config.json counts only if it is an *added* token;
//! config.json fills what is still missing), so that `convert` writes the ids it writes.

use serde_json::{Map, Value as Json};

use crate::error::{Error, Result};

/// A kind of special token, by the converter's name for it (`bos` → `bos_token`,
/// `add_bos_token`, `bos_token_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Bos,
    Eos,
    Unk,
    Sep,
    Pad,
    Cls,
    Mask,
    Eot,
    Eom,
}

impl Special {
    fn name(self) -> &'static str {
        match self {
            Special::Bos => "bos",
            Special::Eos => "eos",
            Special::Unk => "unk",
            Special::Sep => "sep",
            Special::Pad => "pad",
            Special::Cls => "cls",
            Special::Mask => "mask",
            Special::Eot => "eot",
            Special::Eom => "eom",
        }
    }
}

/// What the converter found, in the order it found it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialVocab {
    pub ids: Vec<(Special, u32)>,
    pub add: Vec<(Special, bool)>,
    /// The default chat template and the named ones (a list-valued `chat_template`, or
    /// chat_template.jinja plus additional_chat_templates/*.jinja).
    pub chat_template: Option<String>,
    pub named_chat_templates: Vec<(String, String)>,
}

impl SpecialVocab {
    pub fn id(&self, kind: Special) -> Option<u32> {
        self.ids.iter().find(|(k, _)| *k == kind).map(|&(_, id)| id)
    }

    pub fn adds(&self, kind: Special) -> Option<bool> {
        self.add.iter().find(|(k, _)| *k == kind).map(|&(_, on)| on)
    }

    fn set_add(&mut self, kind: Special, on: bool) {
        match self.add.iter_mut().find(|(k, _)| *k == kind) {
            Some(entry) => entry.1 = on,
            None => self.add.push((kind, on)),
        }
    }

    fn set_add_default(&mut self, kind: Special, on: bool) {
        if self.adds(kind).is_none() {
            self.add.push((kind, on));
        }
    }

    /// `_set_special_token`: the first id found for a kind wins; ids past the vocabulary are
    /// skipped (the converter warns); a negative id is an error, as there.
    fn set_id(&mut self, kind: Special, id: Option<&Json>, n_vocab: Option<usize>) -> Result<()> {
        let Some(id) = id.filter(|v| v.is_i64() || v.is_u64()) else { return Ok(()) };
        let Some(id) = id.as_u64() else {
            return Err(Error::Tokenizer(format!("invalid value for special token type {}: {id}", kind.name())));
        };
        if n_vocab.is_some_and(|n| id >= n as u64) || id > u32::MAX as u64 || self.id(kind).is_some() {
            return Ok(());
        }
        self.ids.push((kind, id as u32));
        Ok(())
    }

    /// Read the special tokens from a checkpoint's parsed files. `n_vocab`: ids at or past it
    /// are skipped (None: no limit, as for BPE vocabularies in the converter).
    /// `alt_chat_template`: chat_template.jinja (or the list with additional templates) or
    /// chat_template.json's, used when tokenizer_config.json has no `chat_template`.
    pub fn read(
        tokenizer_json: Option<&Json>,
        tokenizer_config: Option<&Json>,
        config: Option<&Json>,
        alt_chat_template: Option<Json>,
        n_vocab: Option<usize>,
    ) -> Result<SpecialVocab> {
        let mut sv = SpecialVocab::default();
        let mut kinds =
            vec![Special::Bos, Special::Eos, Special::Unk, Special::Sep, Special::Pad, Special::Cls, Special::Mask];
        // The converter edits its copy of tokenizer_config.json as it goes.
        let mut tcfg: Option<Map<String, Json>> = tokenizer_config.and_then(Json::as_object).cloned();
        let empty = Vec::new();
        let added_tokens =
            tokenizer_json.and_then(|t| t.get("added_tokens")).and_then(Json::as_array).unwrap_or(&empty);
        if let Some(tj) = tokenizer_json {
            sv.read_post_processor(tj, &mut tcfg, &mut kinds);
        }
        if let Some(tcfg) = tcfg.as_ref().filter(|c| !c.is_empty()) {
            let template = match tcfg.get("chat_template") {
                Some(t) => Some(t.clone()),
                None => alt_chat_template,
            };
            match template {
                Some(Json::String(t)) => sv.chat_template = Some(t),
                Some(Json::Array(list)) => {
                    for choice in &list {
                        let name = choice.get("name").and_then(Json::as_str).unwrap_or("");
                        // Only letters, digits and underscores in key names, as the writer does.
                        let name: String =
                            name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
                        let Some(t) = choice.get("template").and_then(Json::as_str) else { continue };
                        if name == "default" {
                            sv.chat_template = Some(t.to_string());
                        } else if !name.is_empty() && !sv.named_chat_templates.iter().any(|(n, _)| *n == name) {
                            sv.named_chat_templates.push((name, t.to_string()));
                        }
                    }
                }
                _ => {}
            }
            for &kind in &kinds {
                if let Some(on) = tcfg.get(&format!("add_{}_token", kind.name())).and_then(Json::as_bool) {
                    // The post-processor's word wins over the flag (the converter warns).
                    sv.set_add_default(kind, on);
                }
                let content = match tcfg.get(&format!("{}_token", kind.name())) {
                    Some(Json::String(s)) => s.as_str(),
                    Some(Json::Object(o)) => match o.get("content") {
                        Some(Json::String(s)) => s.as_str(),
                        _ => continue,
                    },
                    _ => continue,
                };
                let id = added_tokens.iter().find(|t| t.get("content").and_then(Json::as_str) == Some(content));
                sv.set_id(kind, id.and_then(|t| t.get("id")), n_vocab)?;
            }
        }
        if let Some(config) = config {
            for &kind in &kinds {
                let key = format!("{}_token_id", kind.name());
                let id = config.get(&key).or_else(|| config.get("text_config").and_then(|t| t.get(&key)));
                sv.set_id(kind, id, n_vocab)?;
            }
        }
        Ok(sv)
    }

    /// What tokenizer.json's post-processor says about added BOS/EOS/SEP (and, through the
    /// tokens its template names, about which tokens those are).
    fn read_post_processor(&mut self, tj: &Json, tcfg: &mut Option<Map<String, Json>>, kinds: &mut Vec<Special>) {
        let get =
            |c: &Option<Map<String, Json>>, k: &str| c.as_ref().and_then(|c| c.get(k)).cloned().unwrap_or(Json::Null);
        let mut bos = get(tcfg, "bos_token");
        let mut cls = get(tcfg, "cls_token");
        let mut eos = get(tcfg, "eos_token");
        let mut sep = get(tcfg, "sep_token");
        let has_cfg = |c: &Option<Map<String, Json>>| c.as_ref().is_some_and(|c| !c.is_empty());
        let set = |c: &mut Option<Map<String, Json>>, k: &str, v: &Json| {
            if let Some(c) = c.as_mut() {
                c.insert(k.to_string(), v.clone());
            }
        };
        if !truthy(&bos) && truthy(&cls) && has_cfg(tcfg) {
            bos = cls.clone();
            set(tcfg, "bos_token", &bos);
        }
        if !truthy(&eos) && truthy(&sep) && has_cfg(tcfg) {
            eos = sep.clone();
            set(tcfg, "eos_token", &eos);
        }
        let Some(post) = tj.get("post_processor").filter(|p| truthy(p)) else { return };
        let processors: Vec<&Json> = match post.get("processors") {
            Some(Json::Array(list)) => list.iter().collect(),
            Some(_) => Vec::new(),
            None => vec![post],
        };
        for processor in processors {
            match processor.get("type").and_then(Json::as_str) {
                Some("ByteLevel") => {
                    self.set_add_default(Special::Bos, false);
                    self.set_add_default(Special::Eos, false);
                }
                Some("RobertaProcessing") => {
                    self.set_add(Special::Bos, true);
                    self.set_add(Special::Eos, true);
                    self.set_add(Special::Sep, true);
                    if !truthy(&cls) && has_cfg(tcfg) {
                        cls = processor.get("cls").and_then(|c| c.get(0)).cloned().unwrap_or_else(|| bos.clone());
                        set(tcfg, "cls_token", &cls);
                    }
                    if !truthy(&sep) && has_cfg(tcfg) {
                        sep = processor.get("sep").and_then(|c| c.get(0)).cloned().unwrap_or_else(|| eos.clone());
                        set(tcfg, "sep_token", &sep);
                    }
                }
                Some("TemplateProcessing") => {
                    let special_id = |item: Option<&Json>| -> Option<Json> {
                        item?.get("SpecialToken")?.get("id").filter(|v| truthy(v)).cloned()
                    };
                    let empty = Vec::new();
                    let single = processor.get("single").and_then(Json::as_array).unwrap_or(&empty);
                    let pair = processor.get("pair").and_then(Json::as_array).unwrap_or(&empty);
                    let mut first = None;
                    let mut last = None;
                    if single.len() > 1 {
                        first = special_id(single.first());
                        if let Some(f) = &first {
                            if !has_cfg(tcfg) {
                                bos = f.clone();
                            } else if *f != bos && *f != cls {
                                if !truthy(&bos) {
                                    bos = f.clone();
                                    set(tcfg, "bos_token", &bos);
                                }
                                if !truthy(&cls) {
                                    cls = f.clone();
                                    set(tcfg, "cls_token", &cls);
                                }
                            }
                            self.set_add(Special::Bos, *f == bos || *f == cls);
                        }
                        last = special_id(single.last());
                        if let Some(l) = &last {
                            if !has_cfg(tcfg) {
                                eos = l.clone();
                            } else if *l != eos {
                                // The template ends with another token than EOS: the old EOS
                                // becomes end-of-turn (or end-of-message), the new one EOS.
                                if !kinds.contains(&Special::Eot) {
                                    kinds.push(Special::Eot);
                                    set(tcfg, "eot_token", &eos);
                                } else if !kinds.contains(&Special::Eom) {
                                    kinds.push(Special::Eom);
                                    set(tcfg, "eom_token", &eos);
                                }
                                eos = l.clone();
                                set(tcfg, "eos_token", &eos);
                            }
                            self.set_add(Special::Eos, *l == eos);
                        }
                    }
                    if !pair.is_empty() {
                        let start = usize::from(first.is_some() && special_id(pair.first()) == first);
                        let stop = if last.is_some() && special_id(pair.last()) == last { 1 } else { 0 };
                        let inner = pair.get(start..pair.len().saturating_sub(stop)).unwrap_or(&[]);
                        fn seq(item: Option<&Json>) -> Option<&str> {
                            item?.get("Sequence")?.get("id")?.as_str()
                        }
                        if !inner.is_empty() && seq(inner.first()) == Some("A") && seq(inner.last()) == Some("B") {
                            let middle = &inner[1..inner.len() - 1];
                            if !middle.is_empty() {
                                let mut add_sep = false;
                                if let Some(entry) = special_id(middle.first()) {
                                    if (entry == sep || entry == eos) && last.is_none() {
                                        add_sep = true;
                                    }
                                }
                                if middle.len() == 2 {
                                    if let Some(entry) = special_id(middle.get(1)) {
                                        if entry == sep || entry == eos {
                                            add_sep = true;
                                        }
                                    }
                                }
                                self.set_add(Special::Sep, add_sep);
                                if add_sep && !truthy(&sep) && has_cfg(tcfg) {
                                    set(tcfg, "sep_token", &eos);
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// Python's truthiness of a JSON value (the converter tests `if not special_bos`).
fn truthy(v: &Json) -> bool {
    match v {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64() != Some(0.0),
        Json::String(s) => !s.is_empty(),
        Json::Array(a) => !a.is_empty(),
        Json::Object(o) => !o.is_empty(),
    }
}
