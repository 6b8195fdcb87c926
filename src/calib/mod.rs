//! Calibration: the token windows GPTQ and AWQ learn from, and the layer-by-layer
//! ("sequential") driver that feeds them through the model while it is being quantized.

pub mod resume;
pub mod sequential;
pub mod states;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::runtime::TextTokenizer;

/// The calibration text shipped in `calibration/` (see its README for source and license),
/// built into the binary so that the default works from any directory.
pub const DEFAULT_TEXT: &str = include_str!("../../calibration/calib.txt");

/// Calibration text: a file the user named, else `$QFORGE_CALIB`, else the built-in text.
/// GPTQ, AWQ and `imatrix` all find their default here.
pub struct CalibText {
    pub text: String,
    /// The file it was read from (`None`: built in).
    pub path: Option<PathBuf>,
}

impl CalibText {
    pub fn load(path: Option<&Path>) -> Result<CalibText> {
        let env = std::env::var_os("QFORGE_CALIB").map(PathBuf::from);
        Ok(match path.map(Path::to_path_buf).or(env) {
            Some(p) => CalibText { text: crate::formats::text::read_text(&p)?, path: Some(p) },
            None => CalibText { text: DEFAULT_TEXT.to_string(), path: None },
        })
    }

    /// Where the text came from, for reports.
    pub fn source(&self) -> String {
        self.path.as_ref().map_or_else(|| "built-in calibration/calib.txt".into(), |p| p.display().to_string())
    }

    /// The dataset name llama-imatrix would record (the file given, or the built-in's name).
    pub fn dataset_name(&self) -> String {
        self.path.as_ref().map_or_else(|| "calibration/calib.txt".into(), |p| p.to_string_lossy().into_owned())
    }
}

#[derive(Debug, Clone)]
pub struct CalibOptions {
    /// `None`: `$QFORGE_CALIB` if set, else the built-in text.
    pub path: Option<PathBuf>,
    pub nsamples: usize,
    pub seqlen: usize,
}

/// Token windows for calibration: the first `nsamples` non-overlapping windows of `seqlen`
/// tokens of the text (deterministic: the same text always gives the same set, which is how
/// the reference GPTQ results were made).
pub struct Calibration {
    pub windows: Vec<Vec<u32>>,
    pub seqlen: usize,
    /// Where the text came from, for reports and file metadata.
    pub source: String,
    /// Things the user should know (fewer windows than asked, capped length).
    pub notes: Vec<String>,
}

impl Calibration {
    pub fn load(tokenizer: &TextTokenizer, context_length: usize, opts: &CalibOptions) -> Result<Calibration> {
        if opts.nsamples == 0 || opts.seqlen < 2 {
            return Err(Error::InvalidArgument("--nsamples must be ≥ 1 and --seqlen ≥ 2".into()));
        }
        let mut notes = Vec::new();
        let calib = CalibText::load(opts.path.as_deref())?;
        let (text, source) = (&calib.text, calib.source());
        let seqlen = if opts.seqlen > context_length {
            notes.push(format!("--seqlen {} exceeds the model's context length; using {context_length}", opts.seqlen));
            context_length
        } else {
            opts.seqlen
        };
        let ids = tokenizer.encode(text)?;
        let windows: Vec<Vec<u32>> = ids.chunks_exact(seqlen).take(opts.nsamples).map(<[u32]>::to_vec).collect();
        if windows.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "calibration text {source} has {} tokens, fewer than one window of {seqlen}",
                ids.len()
            )));
        }
        if windows.len() < opts.nsamples {
            notes.push(format!(
                "calibration text {source} holds only {} windows of {seqlen} tokens ({} asked); using those",
                windows.len(),
                opts.nsamples
            ));
        }
        Ok(Calibration { windows, seqlen, source, notes })
    }

    pub fn tokens(&self) -> usize {
        self.windows.len() * self.seqlen
    }

    /// The source file name (for metadata such as `quantize.imatrix.dataset`).
    pub fn source_name(&self) -> String {
        Path::new(&self.source).file_name().map_or(self.source.clone(), |s| s.to_string_lossy().into_owned())
    }
}
