use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;

use super::Ui;
use crate::convert::plan::{FileType, QuantPlan};
use crate::convert::{import, to_gguf, to_hf};
use crate::ggml_type::GgmlType;
use crate::model::ModelFile;
use crate::output::Sink;

/// `--outtype`: a float type, or a quantization target named as `quantize --type` names it
/// (one list, [`FileType`], serves both commands).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OutType {
    /// A type of the codec table's with `convert_uniform` (the float types, Q8_0, the legacy
    /// 32-weight types): every weight matrix in that type, as llama.cpp's converters write it.
    Uniform(GgmlType),
    /// The K-quants, IQ4_NL and the mixes (Q4_K_M, ...): llama-quantize's per-tensor plan,
    /// the same file `qforge quantize --type T` writes.
    Plan(FileType),
}

impl OutType {
    fn parse(s: &str) -> std::result::Result<OutType, String> {
        if let Some(t) = Self::uniform_types().find(|t| t.name().eq_ignore_ascii_case(s)) {
            return Ok(OutType::Uniform(t));
        }
        FileType::parse(s).map(OutType::Plan).ok_or_else(|| {
            format!(
                "unknown output type {s:?}; valid: {}, or a quantize --type ({})",
                Self::uniform_names(),
                FileType::valid_names()
            )
        })
    }

    /// The types `convert` writes in every matrix (the codec table's `convert_uniform`).
    fn uniform_types() -> impl Iterator<Item = GgmlType> {
        crate::quant::CODECS.iter().filter(|c| c.convert_uniform).map(|c| c.ty)
    }

    fn uniform_names() -> String {
        Self::uniform_types().map(|t| t.name().to_ascii_lowercase()).collect::<Vec<_>>().join(", ")
    }

    /// `--outtype`'s help, from the codec table and the file types.
    fn help() -> String {
        format!(
            "Storage type of the weight matrices (norms stay f32): {} (every matrix in that \
             type), or any other `quantize --type` ({}: llama-quantize's per-tensor plan, the \
             file `quantize` writes). Default: f16 for GGUF (a quantized checkpoint's own grid \
             where it is a GGML type's); for --to hf, the source's own float type (f32 for \
             quantized sources).",
            Self::uniform_names(),
            FileType::help_list_where(|f| !Self::uniform_types().any(|t| t.name() == f.name()))
        )
    }

    /// The type a `--to hf` float output or a re-packed import is asked for.
    fn uniform(self) -> Option<GgmlType> {
        match self {
            OutType::Uniform(t) => Some(t),
            OutType::Plan(_) => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            OutType::Uniform(t) => t.name(),
            OutType::Plan(f) => f.name(),
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
    qforge convert models/tiny-llama -o tiny-q4_k_m.gguf --outtype Q4_K_M  # = quantize --type Q4_K_M\n  \
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
    #[arg(long, visible_alias = "type", value_name = "TYPE", value_parser = OutType::parse, help = OutType::help())]
    pub outtype: Option<OutType>,
    /// What to write.
    #[arg(long, value_enum, default_value = "gguf")]
    pub to: Target,
    #[command(flatten)]
    pub out: crate::cli::OutputArgs,
}

pub fn run(args: &ConvertArgs, ui: &Ui) -> Result<()> {
    let start = Instant::now();
    let mut stages_log = super::stages::StageLog::new();
    stages_log.begin("convert");
    let model = ModelFile::open(&args.input).with_context(|| format!("cannot load {}", args.input.display()))?;
    let input_bytes: u64 = model.tensors()?.iter().map(|t| t.stored_bytes() as u64).sum();
    let report = match args.to {
        Target::Gguf => {
            let native = import::native_type_of(&model)?;
            let asked = args.outtype.and_then(OutType::uniform);
            let outtype = match args.outtype {
                Some(t) => t,
                None => OutType::Uniform(native.unwrap_or(GgmlType::F16)),
            };
            let mut sink =
                Sink::open(&args.output).with_context(|| format!("cannot create {}", args.output.display()))?;
            if sink.is_stdout() && ui.json {
                bail!("--json cannot be combined with `-o -`: standard output carries the GGUF");
            }
            let bar = ui.bytes_bar(input_bytes, "converting");
            let mut encoder = import::ImportEncoder::new(&model)?;
            let header = match outtype {
                // llama-quantize's plan for every tensor; a quantized checkpoint's codes are
                // re-packed wherever the plan picks their own grid.
                OutType::Plan(ftype) => to_gguf::plan_with(&model, &QuantPlan::new(ftype), args.out.name.clone())?,
                // A quantized checkpoint: the quantized weights in the chosen (or native)
                // type, the matrices it kept in float stay float unless a type was asked for.
                OutType::Uniform(t) if model.is_quantized_checkpoint() => {
                    to_gguf::plan_with(&model, &import::ImportPlan::new(&model, t, asked)?, args.out.name.clone())?
                }
                OutType::Uniform(t) => {
                    let opts = to_gguf::GgufOptions {
                        outtype: t,
                        allow_nonfinite: args.out.allow_nonfinite,
                        name: args.out.name.clone(),
                    };
                    let (writer, notes) = to_gguf::plan(&model, &opts)?;
                    to_gguf::Header { writer, notes, file_type: to_gguf::file_type_id(t)? }
                }
            };
            let wopts =
                to_gguf::WriteOptions { allow_nonfinite: args.out.allow_nonfinite, name: args.out.name.clone() };
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
                "fallbacks": summary.fallbacks, "seconds": start.elapsed().as_secs_f64(), "stages": stages_log.report(),
                "repacked": summary_notes.repacked, "requantized": summary_notes.requantized,
            })
        }
        Target::Hf => {
            if args.output.as_os_str() == "-" {
                bail!("--to hf writes a directory; `-o -` is only for GGUF");
            }
            if args.outtype.is_some_and(|t| !t.uniform().is_some_and(|t| t.is_float())) {
                bail!("--to hf writes float tensors: choose --outtype f32, f16 or bf16");
            }
            let opts = to_hf::HfOptions {
                dtype: args.outtype.and_then(OutType::uniform),
                allow_nonfinite: args.out.allow_nonfinite,
                max_shard_size: args.out.max_shard_size,
            };
            let bar = ui.bytes_bar(input_bytes, "converting");
            let summary = to_hf::write(&model, &args.output, &opts, &bar)
                .with_context(|| format!("converting {} to {}", args.input.display(), args.output.display()))?;
            bar.finish_and_clear();
            json!({
                "input": args.input, "output": args.output, "format": "hf", "dtype": summary.dtype,
                "tensors": summary.tensors, "bytes": summary.bytes, "seconds": start.elapsed().as_secs_f64(),
                "stages": stages_log.report(),
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
