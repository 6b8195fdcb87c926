use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use super::Ui;
use crate::formats::gguf::GgufFile;
use crate::formats::tokenizer::Vocab;
use crate::model::ModelFile;
use crate::runtime::TextTokenizer;

/// Token ids of a text with a model's tokenizer (or, with --ids, the text of token ids), as
/// llama.cpp's llama-tokenize. Special-token text in the input (`<s>`, `<|eot_id|>`) is always
/// tokenized as text, never as the special token.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    qforge tokenize models/tiny-llama --text 'Hello world'\n  \
    qforge tokenize ggml-vocab-llama-spm.gguf --file wiki.test.raw --no-special --json | jq '.ids | length'\n  \
    qforge tokenize model.gguf --ids '1 15043 3186'")]
pub struct TokenizeArgs {
    /// A GGUF file (vocab-only files too) or a Hugging Face model directory.
    pub model: PathBuf,
    /// The text to tokenize.
    #[arg(long, conflicts_with_all = ["file", "ids"], required_unless_present_any = ["file", "ids"])]
    pub text: Option<String>,
    /// Tokenize this file's contents, read as is (no newline conversion; bytes that are not
    /// UTF-8 are tokenized as llama.cpp does: byte tokens, or U+FFFD for byte-level BPE).
    #[arg(long, conflicts_with = "ids")]
    pub file: Option<PathBuf>,
    /// Detokenize these ids (separated by spaces or commas) instead.
    #[arg(long)]
    pub ids: Option<String>,
    /// Add no BOS/EOS (llama.cpp's add_special = false); by default they are added as the
    /// vocabulary asks (`tokenizer.ggml.add_bos_token`, `add_eos_token`).
    #[arg(long)]
    pub no_special: bool,
}

pub fn run(args: &TokenizeArgs, ui: &Ui) -> Result<()> {
    let tok = load(args)?;
    if let Some(list) = &args.ids {
        let ids = parse_ids(list, tok.vocab_size())?;
        let text = tok.decode(&ids)?;
        if ui.json {
            ui.print_json(&json!({ "ids": ids, "text": text }));
        } else {
            println!("{text}");
        }
        return Ok(());
    }
    // Files are taken as bytes: text that is not UTF-8 is tokenized as llama.cpp does it.
    let text: Vec<u8> = match (&args.text, &args.file) {
        (Some(t), _) => t.clone().into_bytes(),
        (None, Some(f)) => std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?,
        (None, None) => bail!("give --text, --file or --ids"),
    };
    let start = std::time::Instant::now();
    let ids = if args.no_special { tok.encode_plain_bytes(&text)? } else { tok.encode_with_special(&text)? };
    let seconds = start.elapsed().as_secs_f64();
    let pieces: Vec<&str> = ids.iter().map(|&i| tok.vocab.tokens[i as usize].as_str()).collect();
    if ui.json {
        ui.print_json(&json!({ "ids": ids, "pieces": pieces, "count": ids.len(), "seconds": seconds }));
    } else {
        for (id, piece) in ids.iter().zip(&pieces) {
            println!("{id:>7} -> {piece:?}");
        }
    }
    Ok(())
}

/// The tokenizer of a GGUF file (its metadata alone: vocab-only files work) or of a Hugging
/// Face directory.
fn load(args: &TokenizeArgs) -> Result<TextTokenizer> {
    let p = &args.model;
    let what = || format!("no usable tokenizer in {}", p.display());
    if p.is_file() {
        let f = GgufFile::open(p).with_context(|| format!("cannot read {}", p.display()))?;
        let vocab = Vocab::from_gguf(&f.header).with_context(what)?;
        return TextTokenizer::from_vocab(vocab).with_context(what);
    }
    let model = ModelFile::open(p).with_context(|| format!("cannot open {}", p.display()))?;
    TextTokenizer::for_model(&model).with_context(what)
}

fn parse_ids(list: &str, n: usize) -> Result<Vec<u32>> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            let id: u32 = s.parse().with_context(|| format!("--ids: {s:?} is not a token id"))?;
            if id as usize >= n {
                bail!("--ids: {id} is outside the vocabulary of {n} tokens");
            }
            Ok(id)
        })
        .collect()
}
