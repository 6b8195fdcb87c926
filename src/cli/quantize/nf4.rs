//! `qforge quantize --method nf4`: bitsandbytes 4-bit (NF4 or FP4) Hugging Face directories.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::{Format, QuantizeArgs};
use crate::cli::Ui;
use crate::convert::to_bnb::{self, BnbOptions};
use crate::model::ModelFile;
use crate::quant::bnb::{Bnb4Type, BLOCK_SIZES};

/// Check the options before touching the input.
fn options(args: &QuantizeArgs) -> Result<BnbOptions> {
    match args.format {
        None | Some(Format::HfBnb) => {}
        Some(Format::Gguf) => bail!(
            "GGUF has no NF4/FP4 type, so --method nf4 writes a Hugging Face directory (--format hf-bnb); for \
             GGUF's non-linear 4-bit type use `--method rtn --type IQ4_NL`"
        ),
        Some(f) => bail!("--method nf4 writes --format hf-bnb, not {f:?}"),
    }
    let name = args.quant_type.as_deref().unwrap_or("nf4");
    let quant_type = Bnb4Type::parse(name).with_context(|| {
        format!("--method nf4 takes --type nf4 or fp4, not {name:?} (GGUF types need --method rtn)")
    })?;
    let blocksize = args.block_size.unwrap_or(64);
    if !BLOCK_SIZES.contains(&blocksize) {
        bail!("--block-size {blocksize}: bitsandbytes uses blocks of {BLOCK_SIZES:?} weights");
    }
    let not_for_nf4 = [
        ("--imatrix", args.imatrix.is_some()),
        ("--pure", args.pure),
        ("--output-type", args.output_type.is_some()),
        ("--embedding-type", args.embedding_type.is_some()),
        ("--tensor-type", !args.tensor_type.is_empty()),
        ("--leave-output", args.leave_output),
        ("--dry-run", args.dry_run),
    ];
    if let Some((flag, _)) = not_for_nf4.iter().find(|(_, set)| *set) {
        bail!(
            "{flag} does not apply to --method nf4 (it quantizes what bitsandbytes quantizes: every layer's linears)"
        );
    }
    Ok(BnbOptions {
        quant_type,
        blocksize,
        double_quant: args.double_quant,
        allow_nonfinite: args.out.allow_nonfinite,
        max_shard_size: args.out.max_shard_size,
    })
}

pub fn run(args: &QuantizeArgs, ui: &Ui) -> Result<()> {
    let start = Instant::now();
    let mut stages_log = crate::cli::stages::StageLog::new();
    stages_log.begin("quantize");
    let opts = options(args)?;
    let output = super::output_path(args, ui, false, super::Format::HfBnb.checkpoint_name())?;
    let model = ModelFile::open(&args.input).with_context(|| format!("cannot load {}", args.input.display()))?;
    let tensors = model.tensors()?;
    let input_bytes: u64 = tensors.iter().map(|t| t.stored_bytes() as u64).sum();
    let linear_bytes: u64 =
        tensors.iter().filter(|t| to_bnb::is_quantized_linear(&t.name)).map(|t| t.stored_bytes() as u64).sum();
    let requantized: Vec<String> = tensors
        .iter()
        .filter(|t| to_bnb::is_quantized_linear(&t.name) && (t.packed.is_some() || !t.ggml_type.is_float()))
        .map(|t| t.packed.as_ref().map_or(t.ggml_type.name().to_string(), |p| p.scheme.name().to_string()))
        .collect();
    drop(tensors);
    super::check_requantize(args, ui, requantized)?;

    // Each linear is read twice (a third time for the double-quantization offsets).
    let passes = if opts.double_quant { 2 } else { 1 };
    let bar = ui.bytes_bar(input_bytes + passes * linear_bytes, "quantizing");
    let summary = to_bnb::write(&model, output, &opts, &bar)
        .with_context(|| format!("quantizing {} to {}", args.input.display(), output.display()))?;
    bar.finish_and_clear();

    let secs = start.elapsed().as_secs_f64();
    if ui.json {
        ui.print_json(&json!({
            "input": args.input, "output": output, "format": "hf-bnb", "method": "nf4",
            "type": opts.quant_type.name(), "block_size": opts.blocksize, "double_quant": opts.double_quant,
            "tensors": summary.tensors, "quantized_tensors": summary.quantized,
            "quantized_weights": summary.quantized_weights, "quantized_bytes": summary.quantized_bytes,
            "linear_bits_per_weight": summary.linear_bits_per_weight(),
            "weights": summary.weights, "bytes": summary.bytes, "bits_per_weight": summary.bits_per_weight(),
            "input_bytes": input_bytes, "dtype": summary.dtype, "seconds": secs, "stages": stages_log.report(),
        }));
    } else {
        ui.note(format!(
            "wrote {} ({}{}, block {}, {} linears at {:.3} bits per weight; {:.1} MB, {:.2} bits per weight overall) in {secs:.2}s",
            output.display(),
            opts.quant_type.name().to_uppercase(),
            if opts.double_quant { " + double quant" } else { "" },
            opts.blocksize,
            summary.quantized,
            summary.linear_bits_per_weight(),
            summary.bytes as f64 / 1e6,
            summary.bits_per_weight()
        ));
    }
    Ok(())
}
