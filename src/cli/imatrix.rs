//! `qforge imatrix`: collect an importance matrix (llama.cpp's `llama-imatrix`) for
//! `quantize --imatrix`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::json;

use super::session::Loaded;
use super::Ui;
use crate::calib::CalibText;
use crate::eval::imatrix::ImatrixCollector;
use crate::eval::perplexity::{window_nll, NllAccumulator};
use crate::eval::windows;
use crate::formats::imatrix::Imatrix;
use crate::output::Sink;
use crate::runtime::{KvCache, LlamaModel};

/// Collect an importance matrix: run the model over calibration text and record, for every
/// linear layer, the mean square of each input column (what llama.cpp's llama-imatrix
/// measures). `quantize --imatrix` then spends the rounding error where the activations are
/// small. Writes llama.cpp's GGUF imatrix format, which llama-quantize reads too.
#[derive(Args, Debug)]
#[command(after_help = "The text is tokenized as `perplexity` does (no BOS unless the tokenizer asks for it) and cut \
    into non-overlapping windows of --ctx tokens, each run from an empty cache. The perplexity printed is \
    llama-imatrix's: the second half of every window, as a sanity check of the model.\n\n\
    Examples:\n  \
    qforge imatrix models/llama -o llama.imatrix.gguf                       # calibration/calib.txt\n  \
    qforge imatrix models/llama --text my-domain.txt --chunks 100 -o m.imatrix.gguf\n  \
    qforge quantize models/llama -o llama-q4_k_m.gguf --type Q4_K_M --imatrix llama.imatrix.gguf")]
pub struct ImatrixArgs {
    /// Hugging Face directory or GGUF file (the unquantized model, ideally).
    pub model: PathBuf,
    /// Calibration text, UTF-8 (default: $QFORGE_CALIB, else the calibration/calib.txt built
    /// into qforge, as for --method gptq/awq).
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Output file (GGUF imatrix), or `-` for standard output.
    #[arg(short, long, default_value = "imatrix.gguf", value_name = "FILE")]
    pub output: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Use at most this many windows (default: all of the text).
    #[arg(long, value_name = "N")]
    pub chunks: Option<usize>,
    /// Also collect output.weight (the vocabulary projection), as llama-imatrix
    /// --process-output does. A model whose output is tied to token_embd has none to collect.
    #[arg(long)]
    pub process_output: bool,
}

pub fn run(args: &ImatrixArgs, ui: &Ui) -> Result<()> {
    let start = Instant::now();
    let calib = CalibText::load(args.text.as_deref())?;
    if args.chunks == Some(0) {
        bail!("--chunks must be at least 1");
    }
    if args.output.as_os_str() == "-" && ui.json {
        bail!("--json cannot be combined with `-o -`: standard output carries the imatrix");
    }
    let loaded = Loaded::open(&args.model)?;
    let ids =
        loaded.tokenize_text(&calib.text, args.ctx, None).with_context(|| format!("tokenizing {}", calib.source()))?;
    let windows = windows(&ids, args.ctx, args.chunks)?;
    let model = LlamaModel::load(&loaded.file).with_context(|| format!("loading {}", args.model.display()))?;
    if args.process_output && loaded.file.config().tie_embeddings {
        ui.warn(
            "--process-output: the output projection of this model is token_embd.weight (tied), which \
             llama-imatrix does not collect either; no output.weight entry will be written",
        );
    }
    ui.note(format!(
        "computing the importance matrix over {} windows of {} tokens ({} tokens in the text)",
        windows.len(),
        args.ctx,
        ids.len()
    ));

    let vocab = model.vocab_size();
    let mut collector = ImatrixCollector::new(args.process_output).with_fused_names(&model.config);
    let mut cache = KvCache::new(&model.config, args.ctx);
    let mut acc = NllAccumulator::default();
    let mut window_ppl = Vec::with_capacity(windows.len());
    let bar = ui.count_bar(windows.len() as u64, "windows");
    // llama-imatrix scores the second half of each window (the first half has little context).
    let first = args.ctx / 2;
    for (w, window) in windows.iter().enumerate() {
        cache.clear();
        let logits = model.forward_observed(window, &mut cache, &mut collector)?;
        for nll in window_nll(&logits[first * vocab..], &window[first..], vocab) {
            acc.add(nll);
        }
        window_ppl.push(acc.ppl());
        bar.set_position(w as u64 + 1);
        bar.set_message(format!("ppl {:.4}", acc.ppl()));
        ui.detail(format!("[{}]{:.4}", w + 1, acc.ppl()));
    }
    bar.finish_and_clear();
    let n_entries = collector.len();
    if n_entries == 0 {
        bail!("no linear layer was observed: nothing to write");
    }
    let tokens = (windows.len() * args.ctx) as u64;
    let imatrix = collector
        .into_imatrix(vec![calib.dataset_name()], windows.len() as u32, args.ctx as u32)
        .map_err(|e| anyhow!("collecting the importance matrix: {e}"))?;
    let expected = imatrix.gguf_size()?;

    let mut sink = Sink::open(&args.output).with_context(|| format!("cannot create {}", args.output.display()))?;
    imatrix.write_gguf(&mut sink).with_context(|| format!("writing {}", args.output.display()))?;
    sink.commit(|p| {
        let back = Imatrix::read(p)?;
        let size = std::fs::metadata(p).map_err(|e| crate::error::Error::io(p, e))?.len();
        if back.entries.len() != n_entries || size != expected {
            return Err(crate::error::Error::malformed(
                p,
                "imatrix GGUF",
                format!(
                    "written file holds {} entries in {size} bytes, {n_entries} in {expected} planned",
                    back.entries.len()
                ),
            ));
        }
        Ok(())
    })
    .with_context(|| format!("writing {}", args.output.display()))?;

    let secs = start.elapsed().as_secs_f64();
    if ui.json {
        ui.print_json(&json!({
            "model": args.model, "text": calib.source(), "output": args.output,
            "ctx": args.ctx, "chunks": windows.len(), "tokens": tokens, "entries": n_entries,
            "process_output": args.process_output,
            "ppl": acc.ppl(), "window_ppl": window_ppl, "seconds": secs,
            "tokens_per_sec": tokens as f64 / secs.max(1e-9),
        }));
    } else if args.output.as_os_str() != "-" {
        println!(
            "wrote {} ({n_entries} matrices, {} windows of {} tokens) in {secs:.2}s; ppl {:.4} (second half of each window)",
            args.output.display(),
            windows.len(),
            args.ctx,
            acc.ppl()
        );
    }
    Ok(())
}
