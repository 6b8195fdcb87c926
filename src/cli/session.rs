//! What the evaluation commands share: a loaded model with its tokenizer, and the text
//! turned into scoring windows.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::eval;
use crate::model::ModelFile;
use crate::runtime::TextTokenizer;

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

    /// Tokenize a text file, checking the window length against the model's context.
    pub fn tokenize_file(&self, text: &Path, ctx: usize) -> Result<Vec<u32>> {
        let max = self.file.config().context_length;
        if ctx > max {
            bail!("--ctx {ctx} is larger than the model's context length {max}");
        }
        let s = eval::read_text(text)?;
        Ok(self.tokenizer.encode(&s)?)
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
