use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use rayon::prelude::*;

use super::session::{Loaded, WindowArgs};
use super::Ui;
use crate::eval::logits_file::{self, LogitsWriter};
use crate::eval::perplexity::perplexity;
use crate::eval::{window_lanes, windows};
use crate::runtime::LlamaModel;

/// Perplexity of a model on a text: non-overlapping windows of --ctx tokens, no BOS unless
/// the tokenizer asks for it, logits at positions 0..ctx-2 scored against tokens 1..ctx-1.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    qforge perplexity models/tiny-llama --text wiki.test.raw\n  \
    qforge perplexity tiny-q8_0.gguf --text wiki.test.raw --max-windows 20 --json\n  \
    qforge perplexity tiny-f32.gguf --text wiki.test.raw --save-logits base.qflogits")]
pub struct PerplexityArgs {
    /// Hugging Face directory or GGUF file.
    pub model: PathBuf,
    #[command(flatten)]
    pub win: WindowArgs,
    /// Save the model's distributions (16-bit log-probabilities, 2 bytes per vocabulary
    /// entry per token) for later `compare` runs against this base.
    #[arg(long, value_name = "FILE")]
    pub save_logits: Option<PathBuf>,
}

pub fn run(args: &PerplexityArgs, ui: &Ui) -> Result<()> {
    let loaded = Loaded::open(&args.model)?;
    let ids = loaded.tokenize_file(&args.win.text, args.win.ctx, args.win.max_windows)?;
    let windows = windows(&ids, args.win.ctx, args.win.max_windows)?;
    let model = LlamaModel::load(&loaded.file)?;
    let batch = args.win.batch();
    let bar = ui.count_bar(windows.len() as u64, "windows");
    let vocab = model.vocab_size();
    let mut saver = match &args.save_logits {
        Some(path) => {
            let size = logits_file::file_len(vocab, args.win.ctx, windows.len());
            ui.note(format!("saving logits to {} ({:.1} MB)", path.display(), size as f64 / 1e6));
            Some((LogitsWriter::create(path, vocab, &windows)?, size))
        }
        None => None,
    };
    let lanes = window_lanes(&[&model.config], args.win.ctx, windows.len());
    ui.detail(format!("scoring {lanes} window(s) at a time"));
    let report = perplexity(&model, &windows, batch, lanes, |w, window, logits, acc| {
        if let Some((writer, _)) = saver.as_mut() {
            let encoded: Vec<Vec<u8>> = (0..window.len() - 1)
                .into_par_iter()
                .map(|p| {
                    let mut rec = Vec::new();
                    logits_file::encode_position(&logits[p * vocab..(p + 1) * vocab], window[p + 1] as usize, &mut rec);
                    rec
                })
                .collect();
            for rec in &encoded {
                writer.push_encoded(rec)?;
            }
        }
        bar.set_position(w as u64 + 1);
        bar.set_message(format!("ppl {:.4}", acc.ppl()));
        Ok(())
    })?;
    if let Some((writer, size)) = saver {
        writer.finish(size)?;
    }
    bar.finish_and_clear();
    if ui.json {
        ui.print_json(&serde_json::to_value(&report)?);
    } else {
        println!(
            "ppl {:.4}  (nll {:.6} ± {:.6}, {} tokens in {} windows of {}, {:.0} tokens/s)",
            report.ppl,
            report.nll_mean,
            report.nll_stderr,
            report.tokens_scored,
            report.windows,
            report.ctx,
            report.tokens_per_sec
        );
    }
    Ok(())
}
