//! What the evaluation commands share: a loaded model with its tokenizer, and the text
//! turned into scoring windows.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::formats::text::read_text;
use crate::model::ModelFile;
use crate::runtime::TextTokenizer;

/// The text and windowing options shared by `perplexity` and `compare`.
#[derive(Args, Debug, Clone)]
pub struct WindowArgs {
    /// UTF-8 text to score (read as raw bytes: no newline conversion).
    #[arg(long)]
    pub text: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Tokens per forward pass inside a window (default: the whole window).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Score at most this many windows (from the start of the text).
    #[arg(long)]
    pub max_windows: Option<usize>,
}

impl WindowArgs {
    pub fn batch(&self) -> usize {
        self.batch.unwrap_or(self.ctx)
    }
}

pub struct Loaded {
    pub file: ModelFile,
    pub tokenizer: TextTokenizer,
}

impl Loaded {
    pub fn open(path: &Path) -> Result<Loaded> {
        let file = ModelFile::open(path).with_context(|| format!("cannot load {}", path.display()))?;
        let tokenizer =
            TextTokenizer::for_model(&file).with_context(|| format!("{}: no usable tokenizer", path.display()))?;
        Ok(Loaded { file, tokenizer })
    }

    /// Token ids of the text file, after checking `ctx` against the model. With `max_windows`,
    /// only as much of the text as those windows need is encoded (the ids are a prefix of the
    /// whole text's, so the windows are the same).
    pub fn tokenize_file(&self, text: &Path, ctx: usize, max_windows: Option<usize>) -> Result<Vec<u32>> {
        self.tokenize_text(&read_text(text)?, ctx, max_windows)
    }

    /// [`tokenize_file`](Self::tokenize_file) of a text in memory.
    pub fn tokenize_text(&self, text: &str, ctx: usize, max_windows: Option<usize>) -> Result<Vec<u32>> {
        let max = self.file.config().context_length;
        if ctx > max {
            bail!("--ctx {ctx} is larger than the model's context length {max}");
        }
        let min_tokens = max_windows.map_or(usize::MAX, |w| w.saturating_mul(ctx));
        Ok(self.tokenizer.encode_prefix(text, min_tokens)?)
    }
}

/// Two models can be compared only when they tokenize identically.
pub fn same_vocabulary(a: &Loaded, b: &Loaded) -> Result<()> {
    let (va, vb) = (&a.tokenizer.vocab, &b.tokenizer.vocab);
    if va.tokens != vb.tokens || va.merges != vb.merges || va.pre != vb.pre {
        bail!(
            "the models use different tokenizers ({} vs {} tokens); KL divergence needs the same vocabulary",
            va.tokens.len(),
            vb.tokens.len()
        );
    }
    Ok(())
}
