//! `qforge quantize`: the arguments, the plan, round-to-nearest; the calibrated methods'
//! pipelines are in the submodules (`gptq` also serves awq+gptq).

mod awq;
mod encoder;
mod gptq;
mod nf4;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::calib::resume::WorkDir;
use crate::calib::{CalibOptions, Calibration};
use crate::cli::session::Loaded;
use crate::cli::Ui;
use crate::convert::imatrix::{self as imatrix_use, ImatrixEncoder};
use crate::convert::plan::{self, FileType, QuantPlan};
use crate::convert::to_gguf::{self, Header, PlainEncoder, TensorEncoder, WriteOptions};
use crate::formats::imatrix::Imatrix;
use crate::ggml_type::GgmlType;
use crate::model::{names, ModelFile};
use crate::output::Sink;

/// `quantize --help`'s tail: the types (from the codec table and the mixes), then examples.
fn after_help() -> String {
    format!(
        "Types: {}. The _S/_M/_L mixes raise attn_v, ffn_down, attn_output and the output matrix \
         above the base type as llama.cpp's llama-quantize does; --pure gives every matrix the \
         base type.\n\n{EXAMPLES}",
        FileType::help_list()
    )
}

const EXAMPLES: &str = "Examples:\n  \
    qforge quantize models/llama -o llama-q4_k_m.gguf --type Q4_K_M\n  \
    qforge quantize llama-f16.gguf -o llama-q4_0.gguf --type q4_0 --pure\n  \
    qforge quantize models/llama --type Q3_K_M --dry-run                 # print the plan only\n  \
    qforge quantize models/llama -o m.gguf --type Q4_K_M --tensor-type 'attn_v=Q8_0'\n  \
    qforge quantize models/llama -o llama-nf4 --method nf4 --double-quant   # bitsandbytes 4-bit HF dir\n  \
    qforge quantize models/llama -o llama-gptq --method gptq --bits 4 --group-size 128\n  \
    qforge quantize models/llama -o m.gguf --method gptq --type Q4_K_M     # GPTQ on GGML grids\n  \
    qforge quantize models/llama -o m.gguf --method gptq --type Q5_0 --no-asymmetric  # the reference objective\n  \
    qforge quantize models/llama -o llama-awq --method awq\n  \
    qforge quantize models/llama -o m.gguf --method awq+gptq --type Q4_K_M  # AWQ, then GPTQ\n  \
    qforge imatrix models/llama -o llama.imatrix.gguf && \\\n    \
    qforge quantize models/llama -o m.gguf --type IQ4_NL --imatrix llama.imatrix.gguf";

/// Quantize a model (Hugging Face directory or GGUF) to a GGUF quantization type or one of
/// llama.cpp's mixes (Q4_K_M etc.), with llama.cpp's per-tensor rules.
#[derive(Args, Debug, Clone)]
#[command(after_help = after_help())]
pub struct QuantizeArgs {
    /// A Hugging Face model directory or a GGUF file.
    pub input: PathBuf,
    /// Output GGUF file, or `-` for standard output (a directory for --method nf4).
    #[arg(short, long, required_unless_present = "dry_run")]
    pub output: Option<PathBuf>,
    /// Quantization type or mix (see below); for --method nf4: nf4 (default) or fp4.
    #[arg(long = "type", value_name = "TYPE")]
    pub quant_type: Option<String>,
    /// rtn: llama.cpp's quantizers (optionally importance-weighted with --imatrix);
    /// gptq: Hessian-based error feedback; awq: activation-aware scaling; awq+gptq: AWQ's
    /// scales, then GPTQ's rounding (llm-compressor's recipe; gguf, or hf-gptq / hf-awq 4-bit
    /// asymmetric); nf4: bitsandbytes 4-bit NormalFloat (or FP4).
    #[arg(long, value_enum, default_value_t = Method::Rtn)]
    pub method: Method,
    /// Output layout (default: gguf; nf4 writes hf-bnb).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Importance matrix (qforge or llama.cpp `llama-imatrix` output, GGUF or legacy .dat)
    /// for importance-weighted quantization.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    #[command(flatten)]
    pub calib: CalibArgs,
    #[command(flatten)]
    pub gptq: GptqArgs,
    #[command(flatten)]
    pub awq_opts: awq::AwqArgs,
    /// GPTQ: columns per lazy-update block (default 128). NF4: weights per absmax block
    /// (default 64; 64…4096, a power of two).
    #[arg(long, value_name = "N")]
    pub block_size: Option<usize>,
    /// NF4/FP4: quantize the absmax values too (8-bit, blocks of 256), as bitsandbytes'
    /// `bnb_4bit_use_double_quant`.
    #[arg(long)]
    pub double_quant: bool,
    /// Every weight matrix in the base type: no per-tensor mix rules.
    #[arg(long)]
    pub pure: bool,
    /// Type of output.weight (and of token_embd.weight when the model ties them).
    #[arg(long, value_name = "TYPE")]
    pub output_type: Option<String>,
    /// Type of token_embd.weight.
    #[arg(long, value_name = "TYPE")]
    pub embedding_type: Option<String>,
    /// Type for tensors whose GGUF name matches REGEX (repeatable; the first match wins).
    #[arg(long = "tensor-type", value_name = "REGEX=TYPE")]
    pub tensor_type: Vec<String>,
    /// Keep output.weight as stored in the input (not re-quantized).
    #[arg(long)]
    pub leave_output: bool,
    /// Print the plan (tensor → type, bits per weight, output size) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// GPTQ / AWQ / AWQ+GPTQ: save each finished layer in OUTPUT.qforge-resume/ and, when that
    /// directory holds finished layers of the same run (settings, inputs, calibration), go on
    /// from the first unfinished one. The output is byte-identical to an uninterrupted run's;
    /// the directory is removed once the output is complete.
    #[arg(long)]
    pub resume: bool,
    /// GPTQ / AWQ / AWQ+GPTQ: keep the calibration hidden states (nsamples × seqlen × hidden
    /// f32: 8.6 GB for 128 × 2048 tokens of a 70B model) in a file in DIR, mapped into memory,
    /// instead of in RAM. The file is unlinked as soon as it is made; outputs are identical.
    #[arg(long, value_name = "DIR")]
    pub offload_activations: Option<PathBuf>,
    #[command(flatten)]
    pub out: crate::cli::OutputArgs,
    /// Allow re-quantizing tensors that the input already stores quantized (their error
    /// compounds; llama-quantize refuses the same without this flag).
    #[arg(long)]
    pub allow_requantize: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Rtn,
    Gptq,
    Awq,
    /// AWQ's scales folded in, then GPTQ's rounding (llm-compressor's recipe).
    #[value(name = "awq+gptq")]
    AwqGptq,
    Nf4,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gguf,
    HfGptq,
    HfAwq,
    HfBnb,
}

impl Format {
    /// How errors name what this format writes.
    fn checkpoint_name(self) -> &'static str {
        match self {
            Format::Gguf => "a GGUF file",
            Format::HfGptq => "an hf-gptq checkpoint",
            Format::HfAwq => "an hf-awq checkpoint",
            Format::HfBnb => "a bitsandbytes checkpoint",
        }
    }
}

/// Calibration data for GPTQ and AWQ.
#[derive(Args, Debug, Clone)]
pub struct CalibArgs {
    /// Calibration text (default: $QFORGE_CALIB, else the calibration/calib.txt built into
    /// qforge).
    #[arg(long, value_name = "FILE")]
    pub calib: Option<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub nsamples: usize,
    /// Tokens per calibration window (capped at the model's context length).
    #[arg(long, default_value_t = 512, value_name = "L")]
    pub seqlen: usize,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockScales {
    Weighted,
    Plain,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderArg {
    Group,
    Act,
    Natural,
}

impl GptqArgs {
    /// `--group-size` as columns per group (`None` for -1: one group per row).
    pub(super) fn groups(&self) -> Result<Option<usize>> {
        match self.group_size {
            -1 => Ok(None),
            n if n > 0 => Ok(Some(n as usize)),
            n => bail!("--group-size must be -1 or positive, got {n}"),
        }
    }

    /// The sweep order `--order` / `--act-order` ask for.
    pub fn column_order(&self) -> crate::quant::gptq::ColumnOrder {
        use crate::quant::gptq::ColumnOrder;
        match (self.act_order, self.order) {
            (true, _) | (_, OrderArg::Act) => ColumnOrder::Activation,
            (_, OrderArg::Group) => ColumnOrder::GroupAware,
            (_, OrderArg::Natural) => ColumnOrder::Natural,
        }
    }
}

/// GPTQ and AWQ grid options.
#[derive(Args, Debug, Clone)]
pub struct GptqArgs {
    /// Bits per weight for hf-gptq / hf-awq output (2, 3, 4, 8).
    #[arg(long, default_value_t = 4)]
    pub bits: u8,
    /// Input columns per quantization group (-1: one group per row).
    #[arg(long, default_value_t = 128, allow_negative_numbers = true, value_name = "N")]
    pub group_size: i64,
    /// GPTQ: the order the columns are quantized in. `group`: group-aware activation order
    /// (GPTQModel's act_group_aware): groups, or GGML blocks, by their largest Hessian
    /// diagonal, columns by decreasing diagonal inside each; g_idx stays monotone (the
    /// default, as in GPTQModel). `act`: all columns by decreasing diagonal (desc_act; g_idx is
    /// permuted). `natural`: column order (the original GPTQ's, qforge's earlier default).
    #[arg(long, value_enum, default_value_t = OrderArg::Group, value_name = "ORDER")]
    pub order: OrderArg,
    /// GPTQ: the same as --order act.
    #[arg(long, conflicts_with = "order")]
    pub act_order: bool,
    /// GPTQ with --order act: fix every group's grid from the unquantized weights first.
    #[arg(long)]
    pub static_groups: bool,
    /// Symmetric grid (zero point in the middle).
    #[arg(long)]
    pub sym: bool,
    /// GPTQ dampening, as a fraction of the mean Hessian diagonal.
    #[arg(long, default_value_t = 0.01)]
    pub damp: f64,
    /// GPTQ: quantize q/k/v, then o, then gate/up, then down within each layer, re-running
    /// the layer in between so that each sub-block sees the quantized ones before it.
    #[arg(long)]
    pub true_sequential: bool,
    /// GPTQ (and awq+gptq): asymmetric calibration (GPTQv2/GPTAQ's objective), on by default:
    /// fit each quantized linear, fed the quantized model's activations, towards the original
    /// linear fed the original model's, so that the error earlier layers left is partly
    /// compensated rather than carried on. `--asymmetric=ALPHA` sets the fraction of the
    /// least-squares correction applied (default 0.25, GPTAQ's; 1 overfits). Runs the windows
    /// through the unquantized model too (twice the hidden states, one more pass per layer,
    /// ~1.5–2× the time). Where it cannot run (--true-sequential, a CUDA device, MoE layers)
    /// GPTQ's standard objective is used, with a note; asked for explicitly there, an error
    #[arg(long, value_name = "ALPHA", num_args = 0..=1, require_equals = true, default_missing_value = "0.25")]
    pub asymmetric: Option<f64>,
    /// GPTQ: the standard objective (the reference GPTQ's, and qforge's before asymmetric
    /// calibration became the default): each linear fitted to the original layer on the
    /// quantized model's own inputs
    #[arg(long, conflicts_with = "asymmetric")]
    pub no_asymmetric: bool,
    /// GPTQ: keep GPTQ's solution for every matrix. By default each is compared with
    /// round-to-nearest on the same grid by the calibration inputs' output error, and the
    /// better one is kept (GPTQ can lose on weights that already sit on the grid). Not
    /// applied with --act-order on an integer grid without --static-groups.
    #[arg(long)]
    pub no_rtn_guard: bool,
    /// GPTQ: how each block's or group's scale is chosen when the sweep reaches it.
    /// `weighted`: by the rounding error weighted with the Hessian's diagonal (each column's
    /// mean squared input, what an imatrix holds): GGML block headers (scale, min, sub-block
    /// scales) by llama.cpp's importance-weighted quantizer, integer groups (hf-gptq, hf-awq
    /// with awq+gptq) by a search over their min-max range shrunk by 1 − i/100, i < 80
    /// (quant.py's `mse` grid). `plain`: llama.cpp's plain quantizer, and min-max ranges as
    /// the GPTQ reference takes them.
    #[arg(long, value_enum, default_value_t = BlockScales::Weighted, value_name = "HOW")]
    pub block_scales: BlockScales,
    /// Where GPTQ runs: auto (a CUDA GPU when one is usable, else the CPU), cpu, cuda.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// hf-gptq: how zero points are stored. gptq_v2 (the default for asymmetric grids) is what
    /// GPTQModel loads from any producer and transformers loads too; gptq (v1, zero − 1) is
    /// the older kernels' format, which GPTQModel reads for asymmetric grids only from its
    /// own quantizer (and which cannot hold a zero point of 0: such checkpoints become v2).
    /// Symmetric grids default to gptq.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub checkpoint_format: Option<CheckpointFormat>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointFormat {
    #[value(name = "gptq")]
    Gptq,
    #[value(name = "gptq_v2")]
    GptqV2,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Auto,
    Cpu,
    Cuda,
}

impl QuantizeArgs {
    /// The --type value, required by the GGUF methods.
    pub fn type_name(&self) -> Result<&str> {
        self.quant_type
            .as_deref()
            .ok_or_else(|| anyhow!("--type is required for GGUF output; valid types: {}", FileType::valid_names()))
    }
}

/// Check every option before touching the input, so that a typo fails at once.
pub(super) fn build_plan(args: &QuantizeArgs) -> Result<QuantPlan> {
    let name = args.type_name()?;
    let ftype = FileType::parse(name)
        .ok_or_else(|| anyhow!("unknown quantization type {name:?}; valid types: {}", FileType::valid_names()))?;
    let mut p = QuantPlan::new(ftype);
    p.pure = args.pure;
    p.leave_output = args.leave_output;
    p.has_imatrix = args.imatrix.is_some();
    p.output_type = args.output_type.as_deref().map(plan::parse_tensor_type).transpose().context("--output-type")?;
    p.embedding_type =
        args.embedding_type.as_deref().map(plan::parse_tensor_type).transpose().context("--embedding-type")?;
    for s in &args.tensor_type {
        p.overrides.push(plan::parse_tensor_override(s)?);
    }
    Ok(p)
}

pub fn run(args: &QuantizeArgs, ui: &Ui) -> Result<()> {
    if args.imatrix.is_some() && args.method != Method::Rtn {
        bail!("--imatrix applies to --method rtn (llama.cpp's quantizers), not {:?}", args.method);
    }
    if args.resume && !matches!(args.method, Method::Gptq | Method::Awq | Method::AwqGptq) {
        bail!("--resume applies to the calibrated methods (gptq, awq, awq+gptq), which run layer by layer");
    }
    if let Some(dir) = &args.offload_activations {
        if !matches!(args.method, Method::Gptq | Method::Awq | Method::AwqGptq) {
            bail!("--offload-activations applies to the calibrated methods (gptq, awq, awq+gptq)");
        }
        if !dir.is_dir() {
            bail!("--offload-activations {}: not a directory", dir.display());
        }
    }
    if args.dry_run && matches!(args.method, Method::Gptq | Method::Awq | Method::AwqGptq) {
        // The calibrated methods follow the same per-tensor plan as round-to-nearest.
        if args.quant_type.is_none() || args.format.is_some_and(|f| f != Format::Gguf) {
            bail!("--dry-run prints the plan of a GGUF (--type T); a Hugging Face checkpoint has none");
        }
        return run_rtn(args, ui);
    }
    match (args.method, args.format) {
        (Method::Nf4, _) => nf4::run(args, ui),
        (Method::Gptq | Method::AwqGptq, _) => gptq::run(args, ui),
        (Method::Awq, _) => awq::run(args, ui),
        (Method::Rtn, None | Some(Format::Gguf)) => run_rtn(args, ui),
        (Method::Rtn, Some(f)) => {
            bail!("--format {f:?} needs --method gptq, awq or nf4; round-to-nearest writes GGUF")
        }
    }
}

/// The work directory of this run (`calib::resume`): with `--resume`, the one that records
/// what makes its layers reusable (the settings, the inputs' names, sizes and modification
/// times, the calibration tokens); otherwise a scratch directory removed when the run ends.
pub(super) fn work_dir(args: &QuantizeArgs, output: &Path, calib: &Calibration) -> Result<WorkDir> {
    let offload = args.offload_activations.clone();
    if !args.resume {
        return Ok(WorkDir::scratch(output)?.offload_states_to(offload));
    }
    if output.as_os_str() == "-" {
        bail!("--resume needs an output file or directory, not standard output");
    }
    // Where the states live changes no result, so a run may resume with another placement.
    let settings = format!("{:?}", QuantizeArgs { resume: false, offload_activations: None, ..args.clone() });
    let files: Vec<PathBuf> = if args.input.is_dir() {
        let mut f: Vec<PathBuf> = std::fs::read_dir(&args.input)
            .with_context(|| format!("reading {}", args.input.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        f.sort();
        f
    } else {
        vec![args.input.clone()]
    };
    let inputs: Vec<serde_json::Value> = files
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok();
            let mtime =
                m.as_ref().and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            json!({"file": p.file_name().map(|n| n.to_string_lossy().into_owned()), "bytes": m.map(|m| m.len()),
                   "mtime_ns": mtime.map(|d| d.as_nanos() as u64)})
        })
        .collect();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&calib.windows, &mut h);
    let job = json!({
        "qforge": env!("CARGO_PKG_VERSION"), "settings": settings, "inputs": inputs,
        "calibration": {"windows": calib.windows.len(), "seqlen": calib.seqlen, "tokens_hash": format!("{:016x}", std::hash::Hasher::finish(&h))},
    });
    Ok(WorkDir::open(output, &job)?.offload_states_to(offload))
}

/// Say where a resumed run picked up.
/// A calibrated method's GGUF plan: llama.cpp's mix rules give every tensor its type before
/// anything runs (each linear is then quantized onto its own planned type; the parts of a
/// fused weight get the whole's). Returns the header to write and the types by name.
fn gguf_plan(args: &QuantizeArgs, ui: &Ui, file: &ModelFile) -> Result<(to_gguf::Header, HashMap<String, GgmlType>)> {
    let plan = build_plan(args)?;
    let header = to_gguf::plan_with(file, &plan, args.out.name.clone())?;
    ui.warn_per_kind(&header.notes);
    let mut types: HashMap<String, GgmlType> =
        header.writer.tensors().iter().map(|t| (t.name.clone(), t.ggml_type)).collect();
    names::extend_to_parts(&mut types, file.config());
    Ok((header, types))
}

/// The calibration windows of a calibrated method (`--calib`, `--nsamples`, `--seqlen`),
/// with their notes shown.
fn load_calibration(args: &QuantizeArgs, ui: &Ui, loaded: &Loaded) -> Result<Calibration> {
    let opts =
        CalibOptions { path: args.calib.calib.clone(), nsamples: args.calib.nsamples, seqlen: args.calib.seqlen };
    let calib =
        Calibration::load(&loaded.tokenizer, loaded.file.config().context_length, &opts).context("calibration")?;
    for n in &calib.notes {
        ui.warn(n);
    }
    Ok(calib)
}

/// Write the GGUF a calibrated method produced (`encoder` hands over its results) to
/// `output`, atomically.
fn write_gguf(
    args: &QuantizeArgs,
    ui: &Ui,
    file: &ModelFile,
    header: to_gguf::Header,
    output: &Path,
    encoder: &mut dyn TensorEncoder,
) -> Result<to_gguf::GgufSummary> {
    let sink = Sink::open(output).with_context(|| format!("cannot create {}", output.display()))?;
    let wopts = WriteOptions { allow_nonfinite: args.out.allow_nonfinite, name: args.out.name.clone() };
    let bar = ui.bytes_bar(0, "writing");
    to_gguf::write_and_commit(file, header, &wopts, sink, &bar, encoder)
        .with_context(|| format!("writing {}", output.display()))
}

/// `--format`, or what a calibrated method writes without one: GGUF when `--type` names a
/// GGML type, else `hf` (the method's own checkpoint layout).
pub(super) fn method_format(args: &QuantizeArgs, hf: Format) -> Format {
    match (args.format, &args.quant_type) {
        (Some(f), _) => f,
        (None, Some(_)) => Format::Gguf,
        (None, None) => hf,
    }
}

/// A calibrated method's start, once its flags are checked: the output path checked, the
/// "load" stage begun and the model opened.
pub(super) fn open_for_method<'a>(
    args: &'a QuantizeArgs,
    ui: &Ui,
    format: Format,
) -> Result<(&'a Path, crate::cli::stages::StageLog, Loaded)> {
    let output = output_path(args, ui, format == Format::Gguf, format.checkpoint_name())?;
    let mut stages_log = crate::cli::stages::StageLog::new();
    stages_log.begin("load");
    Ok((output, stages_log, Loaded::open(&args.input)?))
}

pub(super) fn report_resumed(ui: &Ui, resumed: usize, work: &WorkDir) {
    if resumed > 0 {
        ui.note(format!("resumed: layers 0–{} loaded from {}", resumed - 1, work.path().display()));
    }
}

/// The `-o` path every calibrated method and NF4 share: required, and `-` (standard output)
/// only for a GGUF and never with --json (both would go to standard output). `checkpoint`
/// names the directory format for the error ([`Format::checkpoint_name`]).
pub(super) fn output_path<'a>(args: &'a QuantizeArgs, ui: &Ui, gguf: bool, checkpoint: &str) -> Result<&'a Path> {
    let output = args.output.as_deref().ok_or_else(|| anyhow!("-o/--output is required"))?;
    if output.as_os_str() == "-" && !gguf {
        bail!("{checkpoint} is a directory; `-o -` only works with --format gguf");
    }
    if output.as_os_str() == "-" && ui.json {
        bail!("--json cannot be combined with `-o -`: standard output carries the GGUF");
    }
    Ok(output)
}

/// The requantize guard every method shares: `kinds` are the stored types (GGML types or
/// packed schemes) of the input tensors that would be quantized again. Without
/// --allow-requantize that is an error (llama-quantize refuses the same); with it, a warning.
pub(super) fn check_requantize(args: &QuantizeArgs, ui: &Ui, kinds: impl IntoIterator<Item = String>) -> Result<()> {
    let mut kinds: Vec<String> = kinds.into_iter().collect();
    kinds.sort();
    kinds.dedup();
    if kinds.is_empty() {
        return Ok(());
    }
    let (input, kinds) = (args.input.display(), kinds.join(", "));
    if !args.allow_requantize {
        bail!(
            "{input} is already quantized ({kinds}): requantizing compounds the error; quantize from the \
             f16/bf16/f32 model, or pass --allow-requantize"
        );
    }
    ui.warn(format!(
        "{input} is already quantized ({kinds}): weights are requantized from their decoded values, which \
         compounds the quantization error; quantize from the f16/bf16/f32 model when you can"
    ));
    Ok(())
}

/// The stored types of the tensors of `file` that are quantized (GGML types or packed HF
/// schemes), for [`check_requantize`] when every weight matrix is quantized again.
pub(super) fn quantized_kinds(file: &crate::model::ModelFile) -> Result<Vec<String>> {
    Ok(file
        .tensors()?
        .iter()
        .filter(|t| t.packed.is_some() || !t.ggml_type.is_float())
        .map(|t| t.packed.as_ref().map_or(t.ggml_type.name().to_string(), |p| p.scheme.name().to_string()))
        .collect())
}

/// Round-to-nearest GGUF quantization with llama.cpp's quantizers.
fn run_rtn(args: &QuantizeArgs, ui: &Ui) -> Result<()> {
    let start = Instant::now();
    let types = build_plan(args)?;
    if let Some(out) = &args.output {
        if out.as_os_str() == "-" && ui.json && !args.dry_run {
            bail!("--json cannot be combined with `-o -`: standard output carries the GGUF");
        }
    }
    // The importance matrix first: a bad file should fail before the model is read.
    let imatrix = match &args.imatrix {
        Some(p) => {
            Some(Imatrix::read(p).with_context(|| format!("cannot read the importance matrix {}", p.display()))?)
        }
        None => None,
    };
    let mut stages_log = crate::cli::stages::StageLog::new();
    stages_log.begin("plan");
    let model = ModelFile::open(&args.input).with_context(|| format!("cannot load {}", args.input.display()))?;
    let tensors = model.tensors()?;
    let input_bytes: u64 = tensors.iter().map(|t| t.stored_bytes() as u64).sum();
    drop(tensors);

    let mut header = to_gguf::plan_with(&model, &types, args.out.name.clone())
        .with_context(|| format!("planning {}", args.input.display()))?;
    let mut imatrix_encoder = None;
    if let (Some(m), Some(path)) = (&imatrix, &args.imatrix) {
        let (enc, usage) = ImatrixEncoder::new(m, &model, &header)
            .with_context(|| format!("matching {} to {}", path.display(), args.input.display()))?;
        report_imatrix_use(ui, path, &usage);
        imatrix_use::record_metadata(&mut header.writer, &path.to_string_lossy(), m);
        imatrix_encoder = Some((enc, usage));
    }
    let imatrix_json = imatrix_encoder.as_ref().map(|(_, u)| json!(u));
    let report_plan = plan_report(&model, &header)?;
    ui.warn_per_kind(&header.notes);

    if args.dry_run {
        if ui.json {
            let mut j = report_plan.json(args, &types, true);
            j["seconds"] = json!(start.elapsed().as_secs_f64());
            j["imatrix"] = json!(imatrix_json);
            ui.print_json(&j);
        } else {
            report_plan.print_table(&types);
        }
        return Ok(());
    }

    // Tensors stored quantized in the input and re-encoded to another type: their error adds
    // to the one already there. (A tensor planned in its own type is copied unchanged.)
    let quantized_in = report_plan
        .rows
        .iter()
        .filter(|r| r.source_quantized && r.source_type != r.ggml_type)
        .map(|r| r.source_type.clone());
    check_requantize(args, ui, quantized_in)?;
    let output = args.output.as_ref().expect("clap requires -o without --dry-run");
    stages_log.begin("quantize");
    let sink = Sink::open(output).with_context(|| format!("cannot create {}", output.display()))?;
    let bar = ui.bytes_bar(input_bytes, "quantizing");
    let wopts = WriteOptions { allow_nonfinite: args.out.allow_nonfinite, name: args.out.name.clone() };
    let mut plain = PlainEncoder;
    let encoder: &mut dyn TensorEncoder = match imatrix_encoder.as_mut() {
        Some((enc, _)) => enc,
        None => &mut plain,
    };
    let summary = to_gguf::write_and_commit(&model, header, &wopts, sink, &bar, encoder)
        .with_context(|| format!("quantizing {} to {}", args.input.display(), output.display()))?;
    let (n, size) = (summary.tensors, summary.bytes);

    let secs = start.elapsed().as_secs_f64();
    if ui.json {
        let mut j = report_plan.json(args, &types, false);
        j["seconds"] = json!(secs);
        j["stages"] = stages_log.report();
        j["imatrix"] = json!(imatrix_json);
        ui.print_json(&j);
    } else if output.as_os_str() != "-" {
        ui.note(format!(
            "wrote {} ({} {}{}, {} tensors, {:.1} MB, {:.2} bits per weight) in {secs:.2}s",
            output.display(),
            types.ftype.name(),
            if types.pure { "pure" } else { "mix" },
            match &imatrix_encoder {
                Some((_, u)) => format!(", {} matrices importance-weighted", u.weighted.len()),
                None => String::new(),
            },
            n,
            size as f64 / 1e6,
            report_plan.bits_per_weight()
        ));
    }
    Ok(())
}

/// Tell the user how the importance matrix met the model (llama-quantize prints "did not find
/// weights for …" per tensor; one line per kind is enough).
fn report_imatrix_use(ui: &Ui, path: &std::path::Path, u: &imatrix_use::ImatrixUse) {
    ui.note(format!(
        "{}: {} entries; {} matrices will be importance-weighted",
        path.display(),
        u.entries,
        u.weighted.len()
    ));
    // The embedding table and the output projection have no entry unless the imatrix was made
    // with --process-output (llama-imatrix never collects token_embd): expected, so a note.
    let (expected, unexpected): (Vec<&String>, Vec<&String>) =
        u.missing.iter().partition(|n| *n == "token_embd.weight" || *n == "output.weight");
    if !expected.is_empty() {
        ui.note(format!(
            "no importance data for {} (quantized without it, as llama-quantize does)",
            expected.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    if !unexpected.is_empty() {
        ui.warn(format!(
            "no importance data for {} matrices, quantized without it: {}",
            unexpected.len(),
            unexpected.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    for n in &u.ignored {
        ui.warn(format!("{n}: the imatrix entry does not fit the tensor; ignored (as llama-quantize does)"));
    }
    if !u.unmatched.is_empty() {
        ui.warn(format!(
            "{} imatrix entries name no tensor of this model (e.g. {}): was it computed for another model?",
            u.unmatched.len(),
            u.unmatched[0]
        ));
    }
}

/// One planned tensor, for the report.
struct Row {
    name: String,
    shape: Vec<usize>,
    source_type: String,
    source_quantized: bool,
    ggml_type: String,
    bytes: u64,
    elements: u64,
}

struct PlanReport {
    rows: Vec<Row>,
    file_bytes: u64,
    file_type: u32,
    notes: Vec<String>,
}

fn plan_report(model: &ModelFile, header: &Header) -> Result<PlanReport> {
    let tensors = model.tensors()?;
    let mut rows = Vec::with_capacity(header.writer.tensors().len());
    for p in header.writer.tensors() {
        let src = tensors.iter().find(|t| t.name == p.name).map(|t| t.ggml_type);
        rows.push(Row {
            name: p.name.clone(),
            shape: p.ne.iter().rev().map(|&d| d as usize).collect(),
            source_type: src.map_or("?", |t| t.name()).to_string(),
            source_quantized: src.is_some_and(|t| !t.is_float()),
            ggml_type: p.ggml_type.name().to_string(),
            bytes: p.size,
            elements: p.ne.iter().product(),
        });
    }
    Ok(PlanReport {
        rows,
        file_bytes: header.writer.total_size(),
        file_type: header.file_type,
        notes: header.notes.clone(),
    })
}

impl PlanReport {
    fn tensor_bytes(&self) -> u64 {
        self.rows.iter().map(|r| r.bytes).sum()
    }

    fn elements(&self) -> u64 {
        self.rows.iter().map(|r| r.elements).sum()
    }

    /// Tensor data bits per weight, as llama-quantize reports it (header excluded).
    fn bits_per_weight(&self) -> f64 {
        self.tensor_bytes() as f64 * 8.0 / self.elements().max(1) as f64
    }

    fn json(&self, args: &QuantizeArgs, types: &QuantPlan, dry_run: bool) -> serde_json::Value {
        let tensors: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "name": r.name, "shape": r.shape, "source_type": r.source_type, "type": r.ggml_type,
                    "bytes": r.bytes, "bits_per_weight": r.bytes as f64 * 8.0 / r.elements.max(1) as f64,
                })
            })
            .collect();
        json!({
            "input": args.input, "output": args.output, "dry_run": dry_run,
            "type": types.ftype.name(), "pure": types.pure, "file_type": self.file_type,
            "tensors": tensors, "n_tensors": self.rows.len(), "weights": self.elements(),
            "tensor_bytes": self.tensor_bytes(), "bytes": self.file_bytes,
            "bits_per_weight": self.bits_per_weight(), "fallbacks": self.notes,
        })
    }

    fn print_table(&self, types: &QuantPlan) {
        let w = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(6).max(6);
        println!("{:<w$}  {:>14}  {:>6}  {:>6}  {:>5}  {:>12}", "tensor", "shape", "from", "type", "bpw", "bytes");
        for r in &self.rows {
            let shape = r.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
            println!(
                "{:<w$}  {:>14}  {:>6}  {:>6}  {:>5.2}  {:>12}",
                r.name,
                shape,
                r.source_type,
                r.ggml_type,
                r.bytes as f64 * 8.0 / r.elements.max(1) as f64,
                r.bytes
            );
        }
        println!(
            "{} {}: {} tensors, {} weights, {:.2} bits per weight, tensor data {:.2} MiB, file {} bytes ({:.2} MiB)",
            types.ftype.name(),
            if types.pure { "(pure)" } else { "mix" },
            self.rows.len(),
            self.elements(),
            self.bits_per_weight(),
            self.tensor_bytes() as f64 / (1 << 20) as f64,
            self.file_bytes,
            self.file_bytes as f64 / (1 << 20) as f64
        );
        if !self.notes.is_empty() {
            println!("{} tensor(s) fell back to another type (see warnings)", self.notes.len());
        }
    }
}

/// A group size every linear's input width divides, or an error naming the width and the
/// group size that would fit: the largest power of two up to the one asked for that divides
/// every width (SmolLM2-135M's 576 and 1536 take 64, not the default 128).
pub(crate) fn check_group_size(cfg: &crate::model::ModelConfig, group_size: Option<usize>) -> Result<()> {
    let Some(g) = group_size else { return Ok(()) };
    let mut widths = vec![("hidden size", cfg.hidden_size), ("attention width", cfg.q_dim())];
    widths.extend(cfg.ffn_widths().into_iter().map(|w| ("FFN width", w)));
    if let Some((what, w)) = widths.iter().find(|(_, w)| w % g != 0) {
        let fits = (0..=g.ilog2()).rev().map(|e| 1usize << e).find(|p| widths.iter().all(|(_, w)| w % p == 0));
        bail!(
            "--group-size {g} does not divide the model's {what} ({w} input columns); use --group-size {} (the \
             largest power of two up to {g} that divides every linear's width) or -1 (one group per row)",
            fits.unwrap_or(1)
        );
    }
    Ok(())
}

/// The gemm layout packs 8 output rows per word and needs whole groups in every row.
pub(super) fn check_awq_shapes(cfg: &crate::model::ModelConfig, group_size: Option<usize>) -> Result<()> {
    let mut outputs = vec![("q_proj", cfg.q_dim()), ("k/v_proj", cfg.kv_dim()), ("o/down_proj", cfg.hidden_size)];
    outputs.extend(cfg.ffn_widths().into_iter().map(|w| ("gate/up_proj", w)));
    for (what, rows) in outputs {
        if rows % 8 != 0 {
            bail!("{what} has {rows} output features, not a multiple of 8: it cannot be packed as AWQ gemm");
        }
    }
    check_group_size(cfg, group_size)
}
