use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use rayon::prelude::*;

use super::session::{Loaded, WindowArgs};
use super::Ui;
use crate::eval::logits_file::{self, LogitsWriter};
use crate::eval::perplexity::{perplexity, Protocol};
use crate::eval::{window_lanes, windows};
use crate::runtime::LlamaModel;

/// Perplexity of a model on a text: non-overlapping windows of --ctx tokens, no BOS unless
/// the tokenizer asks for it, logits at positions 0..ctx-2 scored against tokens 1..ctx-1
/// (`--protocol llama.cpp`: llama-perplexity's scoring instead).
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    qforge perplexity models/tiny-llama --text wiki.test.raw\n  \
    qforge perplexity tiny-q8_0.gguf --text wiki.test.raw --max-windows 20 --json\n  \
    qforge perplexity tiny-f32.gguf --text wiki.test.raw --save-logits base.qflogits\n  \
    qforge perplexity llama-q4_k_m.gguf --text wiki.test.raw --protocol llama.cpp   # as llama-perplexity")]
pub struct PerplexityArgs {
    /// Hugging Face directory or GGUF file.
    pub model: PathBuf,
    #[command(flatten)]
    pub win: WindowArgs,
    /// Save the model's distributions (16-bit log-probabilities, 2 bytes per vocabulary
    /// entry per token) for later `compare` runs against this base.
    #[arg(long, value_name = "FILE")]
    pub save_logits: Option<PathBuf>,
    /// qforge: score every position of each window (qforge's goldens, transformers' loss);
    /// llama.cpp: llama-perplexity's protocol (BOS first in every window when the vocabulary
    /// adds one, the second half of each window scored), comparable with published numbers.
    #[arg(long, value_enum, default_value_t = Protocol::Qforge)]
    pub protocol: Protocol,
}

pub fn run(args: &PerplexityArgs, ui: &Ui) -> Result<()> {
    let loaded = Loaded::open(&args.model)?;
    if args.protocol != Protocol::Qforge && args.save_logits.is_some() {
        anyhow::bail!("--save-logits saves every position's distribution: use it with --protocol qforge");
    }
    let ids = loaded.tokenize_file(&args.win.text, args.win.ctx, args.win.max_windows)?;
    let mut windows: Vec<Vec<u32>> =
        windows(&ids, args.win.ctx, args.win.max_windows)?.into_iter().map(<[u32]>::to_vec).collect();
    // llama-perplexity puts BOS in place of each window's first token.
    if let (Protocol::LlamaCpp, true, Some(bos)) =
        (args.protocol, loaded.tokenizer.vocab.adds_bos(), loaded.tokenizer.vocab.bos)
    {
        windows.iter_mut().for_each(|w| w[0] = bos);
    }
    let windows: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    let first = args.protocol.first_scored(args.win.ctx);
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
    let report = perplexity(&model, &windows, first, batch, lanes, |w, window, logits, acc| {
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
        let mut v = serde_json::to_value(&report)?;
        v["protocol"] = serde_json::json!(if args.protocol == Protocol::Qforge { "qforge" } else { "llama.cpp" });
        ui.print_json(&v);
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
