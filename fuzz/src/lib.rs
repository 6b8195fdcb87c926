//! The fuzzing harnesses: one function per target, shared by the cargo-fuzz binaries in
//! `fuzz_targets/` and by `tests/fuzz_regressions.rs` (which includes this file by path), so
//! a saved crashing input is replayed through exactly the code that found it.
//!
//! A harness must never panic on any input: a panic is either a bug in qforge (it panicked
//! on file data) or a broken invariant that the harness asserts (say, a tensor range that the
//! parser accepted but that lies outside the file). Each returns whether the main parse
//! succeeded, only for the regression test's report.
//!
//! Only `qforge` and `serde_json` may be used here: the integration test compiles this file
//! inside the main crate's test build.

use std::path::Path;

use qforge::formats::gguf::{Array, GgufHeader, GgufWriter};
use qforge::formats::safetensors::{parse_index, SafetensorsHeader};
use qforge::formats::tokenizer::Vocab;
use qforge::model::{names, Arch, ModelConfig};
use qforge::quant;
use qforge::runtime::tokenizer::TextTokenizer;
use qforge::GgmlType;

/// Under cargo-fuzz (`cfg(fuzzing)`) every allocation is counted, and a harness whose peak
/// heap use exceeds `ratio` × its input size (plus a fixed 16 MiB for lazily built statics
/// such as compiled regexes) fails: libFuzzer's memory limits only catch absolute blow-ups,
/// and with inputs of a few KB a parser that allocates 1000× what it reads would never reach
/// them. Outside fuzzing (the regression test) this just runs `f`.
#[cfg(fuzzing)]
mod budget {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    struct Counting;
    static CURRENT: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    fn grew(n: usize) {
        let now = CURRENT.fetch_add(n, Relaxed) + n;
        PEAK.fetch_max(now, Relaxed);
    }

    // SAFETY: forwards to the system allocator unchanged; only counts.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            let p = System.alloc(l);
            if !p.is_null() {
                grew(l.size());
            }
            p
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            let p = System.alloc_zeroed(l);
            if !p.is_null() {
                grew(l.size());
            }
            p
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            System.dealloc(p, l);
            CURRENT.fetch_sub(l.size(), Relaxed);
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
            let q = System.realloc(p, l, new);
            if !q.is_null() {
                CURRENT.fetch_sub(l.size(), Relaxed);
                grew(new);
            }
            q
        }
    }

    #[global_allocator]
    static ALLOC: Counting = Counting;

    pub fn run<T>(input_len: usize, ratio: usize, f: impl FnOnce() -> T) -> T {
        let base = CURRENT.load(Relaxed);
        PEAK.store(base, Relaxed);
        let r = f();
        let used = PEAK.load(Relaxed).saturating_sub(base);
        let limit = ratio * input_len + (16 << 20);
        assert!(used <= limit, "allocation blow-up: {used} bytes at peak for {input_len} input bytes (limit {limit})");
        r
    }
}

#[cfg(not(fuzzing))]
mod budget {
    pub fn run<T>(_input_len: usize, _ratio: usize, f: impl FnOnce() -> T) -> T {
        f()
    }
}

/// Decoded tensors are bounded by the input size anyway (a few bytes per weight at most); this
/// keeps one odd input from spending the whole time budget in a decoder.
const MAX_DECODE_WEIGHTS: u64 = 1 << 22;

/// A text with words, digits, punctuation, whitespace runs and non-ASCII, for the tokenizers.
const TEXT: &str = "Hello world! It's 2024: the cat's 12345 naïve façade,\n\n  tabs\tand  spaces — 日本語 🙂 end.";

/// `safetensors_header`: the input is both a safetensors image (header parsed and validated,
/// then every tensor's bytes borrowed and decoded) and, if it is JSON, a shard index.
pub fn safetensors_header(data: &[u8]) -> bool {
    budget::run(data.len(), 64, || safetensors_header_inner(data))
}

fn safetensors_header_inner(data: &[u8]) -> bool {
    let path = Path::new("fuzz.safetensors");
    let ok = match SafetensorsHeader::parse(data, path) {
        Ok(h) => {
            for name in h.names() {
                let t = h.tensor(data, name).expect("a tensor the header accepted lies outside the file");
                let n: usize = t.shape.iter().product();
                let _ = names::hf_to_gguf(name, Arch::Gemma2);
                if let Ok(ty) = t.ggml_type(name) {
                    // The header check guarantees bytes == dtype size × elements.
                    assert_eq!(t.data.len() as u64, ty.row_bytes(n as u64).unwrap(), "{name}");
                    if (n as u64) <= MAX_DECODE_WEIGHTS {
                        quant::decode(ty, t.data, n).expect("a float tensor of the right size decodes");
                    }
                }
            }
            true
        }
        Err(_) => false,
    };
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(pairs) = parse_index(&json, Path::new("model.safetensors.index.json")) {
            for (tensor, shard) in pairs {
                assert!(!shard.is_empty() && !shard.contains('/') && shard != "..", "{shard:?}");
                let _ = names::hf_to_gguf(tensor, Arch::Llama);
            }
        }
    }
    ok
}

/// `gguf_reader`: parse a GGUF image; on success, check every tensor's range, decode every
/// decodable tensor, render every metadata value, and check that the writer re-emits the
/// metadata in a form the reader parses back identically.
pub fn gguf_reader(data: &[u8]) -> bool {
    budget::run(data.len(), 64, || gguf_reader_inner(data))
}

fn gguf_reader_inner(data: &[u8]) -> bool {
    let Ok(h) = GgufHeader::parse(data, Path::new("fuzz.gguf")) else {
        return false;
    };
    for t in &h.tensors {
        let bytes = h.tensor_data(data, t).expect("a tensor the header accepted lies outside the file");
        assert_eq!(bytes.len() as u64, t.size);
        // Checked here (not only by overflow checks, which the regression test's release
        // build lacks): an accepted tensor's element count must be representable.
        let n = t.ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).expect("element count overflows");
        assert_eq!(n, t.n_elements());
        let _ = t.shape();
        if quant::can_decode(t.ggml_type) && n <= MAX_DECODE_WEIGHTS {
            quant::decode(t.ggml_type, bytes, n as usize).expect("a validated tensor decodes");
        }
        let _ = names::gguf_to_hf(&t.name, Arch::Gemma3);
    }
    let mut w = GgufWriter::new();
    for (k, v) in &h.metadata {
        let _ = v.to_json(4);
        let _ = v.to_string();
        let _ = (v.as_u64(), v.as_i64(), v.as_f64(), v.as_str(), v.as_bool(), v.as_array().map(Array::len));
        w.set(k, v.clone());
    }
    let first = w.header_bytes();
    let again = GgufHeader::parse(&first, Path::new("rewritten.gguf")).expect("the writer's header parses");
    let mut w2 = GgufWriter::new();
    for (k, v) in &again.metadata {
        w2.set(k, v.clone());
    }
    assert!(w2.header_bytes() == first, "metadata changed in a write/read round trip");
    true
}

/// `config_json`: a Hugging Face config.json, or a GGUF's metadata, to a ModelConfig; a
/// config that parses must survive a trip through config.json unchanged.
pub fn config_json(data: &[u8]) -> bool {
    budget::run(data.len(), 64, || config_json_inner(data))
}

fn config_json_inner(data: &[u8]) -> bool {
    let mut ok = false;
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(cfg) = ModelConfig::from_hf_json(&json) {
            check_config(&cfg);
            ok = true;
        }
    }
    if let Ok(h) = GgufHeader::parse(data, Path::new("fuzz.gguf")) {
        if let Ok(cfg) = ModelConfig::from_gguf(&h) {
            check_config(&cfg);
            ok = true;
        }
    }
    ok
}

fn check_config(cfg: &ModelConfig) {
    // Validated configs keep every size below 2^24, so these cannot overflow.
    let _ = (cfg.q_dim(), cfg.kv_dim());
    // The list is lazy: a config may claim 16 million layers.
    for (_, shape) in cfg.expected_tensors().take(64) {
        let _ = shape.iter().product::<usize>();
    }
    // A GGUF's RoPE divisors that match no Llama-3 parameters have no config.json form.
    if let Ok(json) = cfg.to_hf_json("bfloat16") {
        let back = ModelConfig::from_hf_json(&json).expect("a valid config round-trips");
        assert_eq!(&back, cfg, "config changed in a config.json round trip");
    }
}

/// `tokenizer_metadata`: GGUF tokenizer metadata → Vocab → the runtime's tokenizer (the
/// path `TextTokenizer::for_model` takes for a GGUF), `tokenizer.json` (optionally
/// followed by a NUL byte and `tokenizer_config.json`) → Vocab → GGUF metadata and back, and
/// the same bytes as a SentencePiece `tokenizer.model`.
pub fn tokenizer_metadata(data: &[u8]) -> bool {
    budget::run(data.len(), 256, || tokenizer_metadata_inner(data))
}

fn tokenizer_metadata_inner(data: &[u8]) -> bool {
    let mut ok = false;
    // A SentencePiece tokenizer.model (protobuf) read by hand.
    if let Ok(m) = qforge::formats::sentencepiece::SentencePieceModel::parse(data) {
        ok |= !m.pieces.is_empty();
    }
    if let Ok(h) = GgufHeader::parse(data, Path::new("fuzz.gguf")) {
        if let Ok(vocab) = Vocab::from_gguf(&h) {
            ok |= exercise_vocab(vocab);
        }
    }
    let (tj, tcfg) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(tj) = serde_json::from_slice::<serde_json::Value>(tj) {
        let tcfg = serde_json::from_slice(tcfg).unwrap_or_else(|_| serde_json::json!({}));
        let config = serde_json::json!({"bos_token_id": 0, "eos_token_id": 1});
        // The CLI passes config.json's vocab_size, which the embedding tensor backs (so it is
        // bounded by the file size); a `vocab_size` in the fuzzed tokenizer_config stands in
        // for it, bounded the same way. 0: unknown.
        let vocab_size = tcfg.get("vocab_size").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
        if let Ok(vocab) = Vocab::from_hf_json(
            &tj,
            &tcfg,
            &config,
            vocab_size.min(4 * data.len()),
            qforge::model::arch::Arch::vocab_rules(&config),
        ) {
            ok |= exercise_vocab(vocab);
        }
    }
    ok
}

/// Build the runtime tokenizer from a vocabulary and use it; also check that the GGUF
/// metadata written for the vocabulary reads back as the same vocabulary.
fn exercise_vocab(vocab: Vocab) -> bool {
    let mut w = GgufWriter::new();
    for (k, v) in vocab.to_gguf() {
        w.set(&k, v);
    }
    let h = GgufHeader::parse(&w.header_bytes(), Path::new("vocab.gguf")).expect("the writer's header parses");
    let back = Vocab::from_gguf(&h).expect("written tokenizer metadata reads back");
    // `from_gguf` drops special ids that point past the vocabulary; what remains must agree.
    assert_eq!(back.tokens, vocab.tokens);
    assert_eq!(back.token_types, vocab.token_types);
    assert_eq!(back.merges, vocab.merges);
    let _ = vocab.to_hf_tokenizer_config(512);
    let Ok(tok) = TextTokenizer::from_vocab(vocab) else {
        return false;
    };
    if let Ok(ids) = tok.encode(TEXT) {
        let _ = tok.decode(&ids);
    }
    let _ = tok.decode(&[0, 1, 2, u32::MAX]);
    true
}

/// The storage types `quant::decode_slice` handles, in a fixed order (`ALL` order).
pub fn decodable_types() -> Vec<GgmlType> {
    GgmlType::ALL.iter().copied().filter(|&t| quant::can_decode(t)).collect()
}

/// `block_decoders`: byte 0 picks the type, byte 1 how to tamper with the blocks, byte 2 an
/// output length for the mismatched-length check; the rest is blocks. Mode 0 decodes the
/// bytes as they are; modes 1-5 first overwrite every 16-bit word with +inf, NaN, -inf, the
/// largest f16 or the smallest subnormal, so that every f16 scale (wherever a codec keeps it)
/// is non-finite or extreme. Decoding must never panic, and must fill exactly the output.
pub fn block_decoders(data: &[u8]) -> bool {
    budget::run(data.len(), 64, || block_decoders_inner(data))
}

fn block_decoders_inner(data: &[u8]) -> bool {
    let [sel, mode, len_byte, rest @ ..] = data else {
        return false;
    };
    let types = decodable_types();
    let t = types[*sel as usize % types.len()];
    let (qk, bb) = (t.block_size(), t.block_bytes());
    let n_blocks = rest.len() / bb;
    let mut src = rest[..n_blocks * bb].to_vec();
    let word: Option<u16> = match mode % 6 {
        1 => Some(0x7c00),
        2 => Some(0x7e00),
        3 => Some(0xfc00),
        4 => Some(0x7bff),
        5 => Some(0x0001),
        _ => None,
    };
    if let Some(w) = word {
        for c in src.chunks_exact_mut(2) {
            c.copy_from_slice(&w.to_le_bytes());
        }
    }
    let n = n_blocks * qk;
    let mut out = vec![f32::from_bits(0x7fa5_5a5a); n];
    quant::decode_slice(t, &src, &mut out).expect("whole blocks decode");
    if t != GgmlType::F32 {
        // No other decoder can produce this NaN payload: an output still holding it was
        // never written.
        assert!(out.iter().all(|v| v.to_bits() != 0x7fa5_5a5a), "{t}: an output was left unwritten");
    }
    // The parallel whole-tensor path gives the same values (bit for bit, NaNs included).
    let whole = quant::decode(t, &src, n).expect("whole blocks decode");
    assert!(whole.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()), "decode and decode_slice differ");
    // A wrong output length is an error, never a panic or a partial write past the end.
    let m = (*len_byte as usize) % (n + qk + 1);
    let mut short = vec![0f32; m];
    let r = quant::decode_slice(t, &src, &mut short);
    if m != n {
        assert!(r.is_err(), "{t}: {m} outputs for {n} weights accepted");
    }
    true
}
