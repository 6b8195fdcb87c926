//! SentencePiece-style tokenization (`tokenizer.ggml.model = "llama"`), exactly as llama.cpp's
//! `llm_tokenizer_spm` does it, so that ids match llama.cpp's token for token:
//!
//! 1. user-defined tokens are cut out of the text first (llama.cpp does this even when special
//!    tokens are not parsed; control and unknown tokens are left as text);
//! 2. each remaining piece gets a leading space when it starts the text or follows a token
//!    cut out in step 1 (`add_space_prefix`), and every space becomes `▁`;
//! 3. the piece is split into UTF-8 characters, and the adjacent pair whose concatenation is
//!    the vocabulary token with the highest score is merged, again and again (ties: the
//!    leftmost pair);
//! 4. a symbol that is not a token is emitted as byte tokens `<0xNN>` (byte fallback), or as
//!    the unknown token where the vocabulary has no byte tokens.
//!
//! SentencePiece-style BPE (Gemma 4, sarvam-moe: `raw_utf8` pre-tokenizers) runs the same loop
//! with llama.cpp's `llm_tokenizer_bpe` rules instead: the pair merged next is the one of lowest
//! merge rank (ties: leftmost), merged whether or not the result is a token; the text is split
//! into runs of newlines and of other characters first (Gemma 4: a run of newlines that is a
//! token stays whole); no space prefix; a symbol that is no token becomes its `<0xNN>` tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use ahash::AHashMap;

use crate::error::{Error, Result};
use crate::formats::tokenizer::{token_type, PreTokenizer, Vocab};

/// `▁` (U+2581), SentencePiece's visible space.
const SPACE: &str = "\u{2581}";

pub struct Spm {
    token_to_id: AHashMap<Vec<u8>, u32>,
    scores: Vec<f32>,
    types: Vec<i32>,
    tokens: Vec<String>,
    byte_tokens: Vec<Option<u32>>,
    unk: Option<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    /// User-defined tokens, longest first (llama.cpp's order for cutting them out).
    user_defined: Vec<(String, u32)>,
    /// The same with control and unknown tokens, cut out too when special tokens are parsed.
    special: Vec<(String, u32)>,
    /// SentencePiece-style BPE: merge ranks keyed by `left ++ 0xFF ++ right` (0xFF never
    /// occurs in UTF-8 text). None: SentencePiece (merges by the score of the result).
    ranks: Option<AHashMap<Vec<u8>, u32>>,
    /// Spaces become `▁` (SentencePiece always; BPE where the pre-tokenizer says).
    escape_spaces: bool,
    /// Gemma 4: a run of newlines that is itself a token is not merged from characters.
    whole_newline_runs: bool,
}

/// A symbol of the merge: `n` bytes of the text from `start`, linked to its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    prev: isize,
    next: isize,
    start: usize,
    n: usize,
}

/// A candidate merge of `left` and its right neighbour into a token of `score`.
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// The heap's maximum is the highest score, then the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then_with(|| o.left.cmp(&self.left))
    }
}

/// A piece of the input: text to tokenize, or a token cut out of it.
enum Fragment<'a> {
    Text(&'a [u8]),
    Token(u32),
}

impl Spm {
    pub fn new(v: &Vocab) -> Result<Spm> {
        let n = v.tokens.len();
        if v.scores.len() != n || v.token_types.len() != n {
            return Err(Error::Tokenizer(format!(
                "SPM vocabulary: {} tokens, {} scores, {} token types",
                n,
                v.scores.len(),
                v.token_types.len()
            )));
        }
        Self::build(v, v.scores.clone())
    }

    /// The engine over `v`'s tokens with these merge scores (token types checked by callers).
    fn build(v: &Vocab, scores: Vec<f32>) -> Result<Spm> {
        let n = v.tokens.len();
        // Later duplicates win, as in llama.cpp's token_to_id map.
        let mut token_to_id = AHashMap::with_capacity(n);
        for (i, t) in v.tokens.iter().enumerate() {
            token_to_id.insert(t.as_bytes().to_vec(), i as u32);
        }
        let byte_tokens =
            (0..=255u8).map(|b| token_to_id.get(format!("<0x{b:02X}>").as_bytes()).copied()).collect::<Vec<_>>();
        let cut = |types: &[i32]| {
            let mut list: Vec<(String, u32)> = v
                .tokens
                .iter()
                .zip(&v.token_types)
                .enumerate()
                .filter(|(_, (t, ty))| types.contains(ty) && !t.is_empty())
                .map(|(i, (t, _))| (t.clone(), i as u32))
                .collect();
            list.sort_by_key(|t| std::cmp::Reverse(t.0.len()));
            list
        };
        let user_defined = cut(&[token_type::USER_DEFINED]);
        let special = cut(&[token_type::USER_DEFINED, token_type::CONTROL, token_type::UNKNOWN]);
        Ok(Spm {
            ranks: None,
            escape_spaces: true,
            whole_newline_runs: false,
            token_to_id,
            scores,
            types: v.token_types.clone(),
            tokens: v.tokens.clone(),
            byte_tokens,
            unk: v.unk,
            bos: v.bos,
            eos: v.eos,
            add_bos: v.adds_bos(),
            add_eos: v.adds_eos(),
            add_space_prefix: v.space_prefix(),
            user_defined,
            special,
        })
    }

    /// SentencePiece-style BPE (a `raw_utf8` pre-tokenizer: Gemma 4, sarvam-moe): the merges
    /// of the vocabulary by rank; `pre` is its pre-tokenizer entry.
    pub fn raw_bpe(v: &Vocab, pre: &PreTokenizer) -> Result<Spm> {
        if v.token_types.len() != v.tokens.len() {
            return Err(Error::Tokenizer(format!(
                "BPE vocabulary: {} tokens, {} token types",
                v.tokens.len(),
                v.token_types.len()
            )));
        }
        let mut ranks = AHashMap::with_capacity(v.merges.len());
        for (rank, m) in v.merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte (a part may start with one).
            let m = m.as_bytes();
            let Some(at) = m.iter().skip(1).position(|&b| b == b' ').map(|i| i + 1) else { continue };
            let mut key = Vec::with_capacity(m.len());
            key.extend_from_slice(&m[..at]);
            key.push(0xFF);
            key.extend_from_slice(&m[at + 1..]);
            // The first rule for a pair wins, as llama.cpp's emplace.
            ranks.entry(key).or_insert(rank as u32);
        }
        // Merges go by rank: the scores (which a GGUF may or may not carry) are not used.
        let mut spm = Spm::build(v, vec![0.0; v.tokens.len()])?;
        spm.ranks = Some(ranks);
        spm.escape_spaces = pre.escape_spaces;
        spm.whole_newline_runs = pre.kind == "gemma4";
        spm.add_space_prefix = false;
        Ok(spm)
    }

    /// Token ids of `text`; with `add_special`, BOS/EOS as the vocabulary asks (llama.cpp's
    /// `add_special`). Special-token text in the input is never parsed as a control token.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.encode_bytes(text.as_bytes(), add_special, false)
    }

    /// [`Spm::encode`] with control-token text (`<s>`, `<|user|>`) taken as those tokens, as
    /// llama.cpp's `parse_special` (for prompts made by a chat template).
    pub fn encode_parse_special(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.encode_bytes(text.as_bytes(), add_special, true)
    }

    /// The same over raw bytes, which need not be UTF-8: llama.cpp splits them into symbols by
    /// their lead bytes and emits what is no token as byte tokens, and so does this.
    pub fn encode_bytes(&self, text: &[u8], add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut prev_special = true;
        let mut escaped = Vec::new();
        let cut = if parse_special { &self.special } else { &self.user_defined };
        for f in partition(text, cut) {
            match f {
                Fragment::Text(t) => {
                    escaped.clear();
                    if self.add_space_prefix && prev_special {
                        escaped.extend_from_slice(SPACE.as_bytes());
                    }
                    for &b in t {
                        if b == b' ' && self.escape_spaces {
                            escaped.extend_from_slice(SPACE.as_bytes());
                        } else {
                            escaped.push(b);
                        }
                    }
                    if self.ranks.is_some() {
                        self.tokenize_newline_runs(&escaped, &mut out)?;
                    } else {
                        self.tokenize(&escaped, &mut out)?;
                    }
                    prev_special = false;
                }
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// BPE's pre-tokenization for raw UTF-8 (`[^\n]+|[\n]+`): each run of newlines and each
    /// run of other characters merged on its own.
    fn tokenize_newline_runs(&self, text: &[u8], out: &mut Vec<u32>) -> Result<()> {
        let mut start = 0;
        while start < text.len() {
            let newline = text[start] == b'\n';
            let len = text[start..].iter().position(|&b| (b == b'\n') != newline).unwrap_or(text.len() - start);
            let run = &text[start..start + len];
            match self.token_to_id.get(run) {
                Some(&id) if newline && self.whole_newline_runs => out.push(id),
                _ => self.tokenize(run, out)?,
            }
            start += len;
        }
        Ok(())
    }

    /// The merge loop over one escaped piece of text.
    fn tokenize(&self, text: &[u8], out: &mut Vec<u32>) -> Result<()> {
        let mut syms: Vec<Symbol> = Vec::with_capacity(text.len());
        let mut offs = 0;
        while offs < text.len() {
            let n = utf8_len(text[offs]).min(text.len() - offs);
            let i = syms.len() as isize;
            offs += n;
            syms.push(Symbol { prev: i - 1, next: if offs == text.len() { -1 } else { i + 1 }, start: offs - n, n });
        }
        let mut heap = BinaryHeap::new();
        let mut key = Vec::new();
        let mut try_add = |l: isize, r: isize, syms: &[Symbol], heap: &mut BinaryHeap<Bigram>| {
            if l < 0 || r < 0 {
                return;
            }
            let (l, r) = (l as usize, r as usize);
            let (ls, rs) = (syms[l], syms[r]);
            let piece = &text[ls.start..ls.start + ls.n + rs.n];
            // The heap pops the highest score: SentencePiece's score of the merged token, or
            // minus BPE's merge rank (exact in f32: ranks stay below 2^24).
            let score = match &self.ranks {
                None => match self.token_to_id.get(piece) {
                    Some(&id) => self.scores[id as usize],
                    None => return,
                },
                Some(ranks) => {
                    key.clear();
                    key.extend_from_slice(&text[ls.start..ls.start + ls.n]);
                    key.push(0xFF);
                    key.extend_from_slice(&text[rs.start..rs.start + rs.n]);
                    match ranks.get(&key) {
                        Some(&rank) => -(rank as f32),
                        None => return,
                    }
                }
            };
            heap.push(Bigram { left: l, right: r, score, size: piece.len() });
        };
        for i in 1..syms.len() {
            try_add(i as isize - 1, i as isize, &syms, &mut heap);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (syms[b.left], syms[b.right]);
            if l.n == 0 || r.n == 0 || l.n + r.n != b.size {
                continue; // one side was merged elsewhere since
            }
            syms[b.left].n += r.n;
            syms[b.right].n = 0;
            syms[b.left].next = r.next;
            if r.next >= 0 {
                syms[r.next as usize].prev = b.left as isize;
            }
            let (prev, next) = (syms[b.left].prev, syms[b.left].next);
            try_add(prev, b.left as isize, &syms, &mut heap);
            try_add(b.left as isize, next, &syms, &mut heap);
        }
        // SentencePiece: every merged symbol is a token (a pair is only queued when its text is
        // one), so llama.cpp's "resegment" reduces to: a token as it is, else (a single
        // character missing from the vocabulary) its bytes. Its reverse-merge table only
        // matters for invalid UTF-8, which a &str cannot hold. BPE: a symbol that is no token
        // becomes its byte tokens, and a byte without one is dropped (as llama.cpp does).
        let mut i = if syms.is_empty() { -1 } else { 0 };
        while i >= 0 {
            let s = syms[i as usize];
            let piece = &text[s.start..s.start + s.n];
            match self.token_to_id.get(piece) {
                Some(&id) => out.push(id),
                None if self.ranks.is_some() => out.extend(piece.iter().filter_map(|&b| self.byte_tokens[b as usize])),
                None => {
                    for &byte in piece {
                        out.push(self.byte_token(byte)?);
                    }
                }
            }
            i = s.next;
        }
        Ok(())
    }

    fn byte_token(&self, b: u8) -> Result<u32> {
        self.byte_tokens[b as usize].or(self.unk).ok_or_else(|| {
            Error::Tokenizer(format!("SPM vocabulary has no byte token <0x{b:02X}> and no unknown token"))
        })
    }

    /// Text of `ids` (llama.cpp's token_to_piece without special tokens, then the leading
    /// space that `add_space_prefix` put there removed).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let Some(tok) = self.tokens.get(id as usize) else { continue };
            match self.types[id as usize] {
                token_type::NORMAL => bytes.extend_from_slice(tok.replace(SPACE, " ").as_bytes()),
                token_type::USER_DEFINED => bytes.extend_from_slice(tok.as_bytes()),
                token_type::UNKNOWN => bytes.extend_from_slice("\u{2585}".as_bytes()),
                // "<0xNN>": the byte itself.
                token_type::BYTE => match tok.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')) {
                    Some(hex) if hex.len() == 2 => match u8::from_str_radix(hex, 16) {
                        Ok(b) => bytes.push(b),
                        Err(_) => bytes.extend_from_slice(tok.as_bytes()),
                    },
                    _ => bytes.extend_from_slice(tok.as_bytes()),
                },
                _ => {} // control and unused tokens have no text
            }
        }
        if self.add_space_prefix && bytes.first() == Some(&b' ') {
            bytes.remove(0);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The text with the tokens of `cut` taken out (longest first, each over all pieces left by
/// the ones before, as llama.cpp's tokenizer_st_partition).
fn partition<'a>(text: &'a [u8], cut: &[(String, u32)]) -> Vec<Fragment<'a>> {
    let mut frags = if text.is_empty() { Vec::new() } else { vec![Fragment::Text(text)] };
    for (tok, id) in cut {
        let finder = memchr::memmem::Finder::new(tok.as_bytes());
        if !frags.iter().any(|f| matches!(f, Fragment::Text(t) if finder.find(t).is_some())) {
            continue;
        }
        let mut next = Vec::with_capacity(frags.len() + 2);
        for f in frags {
            let Fragment::Text(mut t) = f else {
                next.push(f);
                continue;
            };
            while let Some(at) = finder.find(t) {
                if at > 0 {
                    next.push(Fragment::Text(&t[..at]));
                }
                next.push(Fragment::Token(*id));
                t = &t[at + tok.len()..];
            }
            if !t.is_empty() {
                next.push(Fragment::Text(t));
            }
        }
        frags = next;
    }
    frags
}

/// Bytes of the UTF-8 sequence a lead byte starts (llama.cpp's unicode_len_utf8: a stray
/// continuation byte counts as one).
fn utf8_len(b: u8) -> usize {
    const LEN: [usize; 16] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4];
    LEN[(b >> 4) as usize]
}
