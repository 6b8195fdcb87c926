use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;

use super::Ui;
use crate::convert::{import, to_gguf, to_hf};
use crate::ggml_type::GgmlType;
use crate::model::ModelFile;
use crate::output::Sink;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutType {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "q5_0")]
    Q5_0,
    #[value(name = "q5_1")]
    Q5_1,
}

impl OutType {
    fn ggml(self) -> GgmlType {
        match self {
            OutType::F32 => GgmlType::F32,
            OutType::F16 => GgmlType::F16,
            OutType::Bf16 => GgmlType::BF16,
            OutType::Q8_0 => GgmlType::Q8_0,
            OutType::Q4_0 => GgmlType::Q4_0,
            OutType::Q4_1 => GgmlType::Q4_1,
            OutType::Q5_0 => GgmlType::Q5_0,
            OutType::Q5_1 => GgmlType::Q5_1,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// A GGUF file for llama.cpp.
    Gguf,
    /// A Hugging Face directory (safetensors + config.json + tokenizer.json).
    Hf,
}

/// Convert a Hugging Face checkpoint to GGUF, or a GGUF back to a Hugging Face directory.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    qforge convert models/tiny-llama -o tiny.gguf                    # f16 GGUF\n  \
    qforge convert models/tiny-llama -o tiny-q8.gguf --outtype q8_0\n  \
    qforge convert models/tiny-llama -o - | ssh host 'cat > m.gguf'  # stream to stdout\n  \
    qforge convert tiny.gguf -o tiny-hf --to hf                      # back to safetensors\n  \
    qforge convert llama-gptq-4bit-g128 -o llama-q4_1.gguf           # GPTQ/AWQ import, re-packed\n\n\
    Quantized checkpoints (GPTQ, AWQ, bitsandbytes NF4/FP4) are imported too. Where the\n\
    checkpoint's grid is a GGML type's grid (4-bit asymmetric in groups of 32·k → q4_1; 4-bit\n\
    with zero point 8 → q4_0; 8-bit with zero point 128 → q8_0) the codes are re-packed, not\n\
    re-quantized; that type is the default for such inputs. Other targets dequantize and\n\
    quantize again, with a warning.")]
pub struct ConvertArgs {
    /// A Hugging Face model directory or a GGUF file.
    pub input: PathBuf,
    /// Output file (GGUF), directory (--to hf), or `-` for standard output (GGUF only).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Storage type of the weight matrices (norms stay f32). Default: f16 for GGUF; for
    /// --to hf, the source's own float type (f32 for quantized sources).
    #[arg(long, value_enum, visible_alias = "type")]
    pub outtype: Option<OutType>,
    /// What to write.
    #[arg(long, value_enum, default_value = "gguf")]
    pub to: Target,
    /// general.name to record (default: derived from the input's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Convert even if weights hold NaN or Inf (normally an error naming the tensor).
    #[arg(long)]
    pub allow_nonfinite: bool,
    /// Hugging Face output: at most this many bytes per safetensors file (B, KB, MB, GB or
    /// KiB, MiB, GiB), sharded with model.safetensors.index.json as transformers'
    /// save_pretrained does.
    #[arg(long, value_name = "SIZE", default_value = "5GB", value_parser = crate::convert::shards::parse_size)]
    pub max_shard_size: u64,
}

pub fn run(args: &ConvertArgs, ui: &Ui) -> Result<()> {
    let start = Instant::now();
    let model = ModelFile::open(&args.input).with_context(|| format!("cannot load {}", args.input.display()))?;
    let input_bytes: u64 = model.tensors()?.iter().map(|t| t.stored_bytes() as u64).sum();
    let report = match args.to {
        Target::Gguf => {
            let native = import::native_type_of(&model)?;
            let outtype = args.outtype.map(OutType::ggml).or(native).unwrap_or(GgmlType::F16);
            let opts = to_gguf::GgufOptions { outtype, allow_nonfinite: args.allow_nonfinite, name: args.name.clone() };
            let mut sink =
                Sink::open(&args.output).with_context(|| format!("cannot create {}", args.output.display()))?;
            if sink.is_stdout() && ui.json {
                bail!("--json cannot be combined with `-o -`: standard output carries the GGUF");
            }
            let bar = ui.bytes_bar(input_bytes, "converting");
            let mut encoder = import::ImportEncoder::new(&model)?;
            let header = if model.is_quantized_checkpoint() {
                // A quantized checkpoint: the quantized weights in the chosen (or native) type,
                // the matrices it kept in float stay float unless a type was asked for.
                let plan = import::ImportPlan::new(&model, outtype, args.outtype.map(OutType::ggml))?;
                to_gguf::plan_with(&model, &plan, args.name.clone())?
            } else {
                let (writer, notes) = to_gguf::plan(&model, &opts)?;
                to_gguf::Header { writer, notes, file_type: to_gguf::file_type_id(outtype)? }
            };
            let wopts = to_gguf::WriteOptions { allow_nonfinite: args.allow_nonfinite, name: args.name.clone() };
            let (_, summary) = to_gguf::write_header_with(&model, header, &wopts, &mut sink, &bar, &mut encoder)
                .with_context(|| format!("converting {} to {}", args.input.display(), args.output.display()))?;
            let summary_notes = encoder.report;
            bar.finish_and_clear();
            if !summary_notes.repacked.is_empty() {
                ui.note(format!(
                    "{} quantized tensors re-packed as {} without re-quantization",
                    summary_notes.repacked.len(),
                    outtype.name()
                ));
            }
            if !summary_notes.requantized.is_empty() {
                ui.warn(format!(
                    "{} quantized tensors were dequantized and quantized again as {}: that adds {}'s rounding \
                     error to the checkpoint's (measure it with `qforge compare {} {}`)",
                    summary_notes.requantized.len(),
                    outtype.name(),
                    outtype.name(),
                    args.input.display(),
                    args.output.display()
                ));
            }
            for f in &summary.fallbacks {
                ui.warn(f);
            }
            let (n, size) = (summary.tensors, summary.bytes);
            sink.commit(|p| to_gguf::validate_written(p, n, size))
                .with_context(|| format!("writing {}", args.output.display()))?;
            json!({
                "input": args.input, "output": args.output, "format": "gguf", "outtype": outtype.name(),
                "file_type": summary.file_type, "tensors": summary.tensors, "bytes": summary.bytes,
                "fallbacks": summary.fallbacks, "seconds": start.elapsed().as_secs_f64(),
                "repacked": summary_notes.repacked, "requantized": summary_notes.requantized,
            })
        }
        Target::Hf => {
            if args.output.as_os_str() == "-" {
                bail!("--to hf writes a directory; `-o -` is only for GGUF");
            }
            if args.outtype.is_some_and(|t| !t.ggml().is_float()) {
                bail!("--to hf writes float tensors: choose --outtype f32, f16 or bf16");
            }
            let opts = to_hf::HfOptions {
                dtype: args.outtype.map(OutType::ggml),
                allow_nonfinite: args.allow_nonfinite,
                max_shard_size: args.max_shard_size,
            };
            let bar = ui.bytes_bar(input_bytes, "converting");
            let summary = to_hf::write(&model, &args.output, &opts, &bar)
                .with_context(|| format!("converting {} to {}", args.input.display(), args.output.display()))?;
            bar.finish_and_clear();
            json!({
                "input": args.input, "output": args.output, "format": "hf", "dtype": summary.dtype,
                "tensors": summary.tensors, "bytes": summary.bytes, "seconds": start.elapsed().as_secs_f64(),
            })
        }
    };
    if ui.json {
        ui.print_json(&report);
    } else if args.output.as_os_str() != "-" {
        ui.note(format!(
            "wrote {} ({} tensors, {:.1} MB) in {:.2}s",
            args.output.display(),
            report["tensors"],
            report["bytes"].as_f64().unwrap_or(0.0) / 1e6,
            start.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}
