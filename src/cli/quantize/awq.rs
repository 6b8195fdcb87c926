//! `qforge quantize --method awq`: calibrate, search AWQ's scales and clipping layer by layer,
//! and write an hf-awq checkpoint (AutoAWQ gemm layout) or a GGUF whose weights were scaled
//! and clipped before llama.cpp's quantizers ran.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::json;

use super::encoder::MethodEncoder;
use super::{Format, QuantizeArgs};
use crate::calib::sequential::{self, Stages};
use crate::cli::Ui;
use crate::convert::hf_pack;
use crate::convert::to_hf_quant::PackedLinears;
use crate::methods::awq::{AwqMethod, AwqOptions, Target};
use crate::methods::SpilledResults;
use crate::model::{ModelFile, RopeLayout};
use crate::runtime::LlamaModel;

/// AWQ options.
#[derive(Args, Debug, Clone)]
pub struct AwqArgs {
    /// AWQ: calibration tokens the scale and clipping searches run on (an evenly strided
    /// sample; the attention search uses ⌈N / seqlen⌉ whole windows). The mean activation
    /// magnitudes always come from every calibration token.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub awq_sample_tokens: usize,
    /// AWQ: skip the activation-aware scale search (s = 1).
    #[arg(long)]
    pub no_awq_scale: bool,
    /// AWQ: search plain s = x̄^α instead of AutoAWQ's default duo scaling, s = x̄^α / w̄^(1−α)
    /// (w̄: mean of |w| / group max per input column). Duo scaling gave the lower perplexity on
    /// the small fixture (BENCHMARKS.md); s = 1 stays a candidate either way.
    #[arg(long)]
    pub no_awq_duo_scaling: bool,
    /// AWQ: skip the clipping search. With --no-awq-scale too, this is plain round-to-nearest
    /// on the same grid (a baseline).
    #[arg(long)]
    pub no_awq_clip: bool,
}

pub fn run(args: &QuantizeArgs, ui: &Ui) -> Result<()> {
    let start = Instant::now();
    let format = super::method_format(args, Format::HfAwq);
    if !matches!(format, Format::Gguf | Format::HfAwq) {
        bail!("--method awq writes --format hf-awq or gguf");
    }
    if args.imatrix.is_some() {
        bail!("--imatrix applies to --method rtn; AWQ calibrates on its own activations");
    }
    let g = &args.gptq;
    let group_size = g.groups()?;
    if format == Format::HfAwq {
        if g.bits != 4 {
            bail!("hf-awq (AutoAWQ gemm layout) stores 4-bit weights only; --bits {} is not possible", g.bits);
        }
        if g.sym {
            bail!("hf-awq stores asymmetric weights with zero points; --sym is not possible");
        }
        if args.quant_type.is_some() {
            bail!("--type chooses GGML types for --format gguf; hf-awq is 4-bit with --group-size");
        }
    }
    if g.checkpoint_format.is_some() {
        bail!("--checkpoint-format applies to --method gptq --format hf-gptq");
    }
    if args.awq_opts.awq_sample_tokens == 0 {
        bail!("--awq-sample-tokens must be positive");
    }
    let (output, mut stages_log, loaded) = super::open_for_method(args, ui, format)?;
    let file = &loaded.file;
    let cfg = file.config().clone();
    if format == Format::HfAwq {
        super::check_awq_shapes(&cfg, group_size)?;
    }
    super::check_requantize(args, ui, super::quantized_kinds(file)?)?;

    // GGUF: the per-tensor types come from llama.cpp's mix rules, planned before anything runs,
    // and each linear is searched on its own planned type.
    let (gguf_header, target) = match format {
        Format::Gguf => {
            let (header, types) = super::gguf_plan(args, ui, file)?;
            (Some(header), Target::Ggml(types))
        }
        _ => (None, Target::Int4 { group_size }),
    };

    let calib = super::load_calibration(args, ui, &loaded)?;
    let options = awq_options(args);
    if cfg.n_kv_heads != cfg.n_heads && options.scale {
        ui.detail("grouped-query attention: o_proj's scales cannot fold into v_proj, so o_proj is only clipped");
    }
    let model = LlamaModel::load(file)?;
    let layout = model.rope_layout();
    let mut method = AwqMethod::new(options.clone(), target, &calib);
    let bar = ui.count_bar(cfg.n_layers as u64, "AWQ layers");
    ui.detail(format!("calibration: {} windows of {} tokens from {}", calib.windows.len(), calib.seqlen, calib.source));
    let work = super::work_dir(args, output, &calib)?;
    let calib_start = Instant::now();
    stages_log.begin("calibrate");
    let resumed = sequential::run(model, &calib, Stages::OneShot, &mut method, &work, &mut |_| bar.inc(1))?;
    super::report_resumed(ui, resumed, &work);
    bar.finish_and_clear();
    let awq_secs = calib_start.elapsed().as_secs_f64();
    let mut results = SpilledResults::new(
        std::mem::take(&mut method.results),
        &work,
        crate::methods::awq_results,
        &cfg,
        format == Format::Gguf,
    )?;
    for n in &method.notes {
        ui.warn(n);
    }
    for r in &method.reports {
        ui.detail(format!(
            "layer {} {}: alpha {:.2}, block MSE {:.3e} (round-to-nearest {:.3e})",
            r.layer, r.group, r.alpha, r.loss, r.loss_rtn
        ));
    }
    for (name, before, after) in &method.clips {
        ui.detail(format!("{name}: clipping output error {after:.3e} (unclipped {before:.3e})"));
    }

    stages_log.begin("write");
    let (n_tensors, bytes) = match format {
        Format::Gguf => {
            let header = gguf_header.ok_or_else(|| anyhow!("no GGUF plan"))?;
            let mut enc = MethodEncoder::new("AWQ", &mut results, &mut method.vectors, &cfg, layout);
            let summary = super::write_gguf(args, ui, file, header, output, &mut enc)?;
            (summary.tensors, summary.bytes)
        }
        _ => {
            let packed = hf_pack::pack_layers(&mut results, &cfg, layout, hf_pack::Layout::Awq, work.path())?;
            write_hf_awq(file, output, packed, &mut method.vectors, layout, args, ui)?
        }
    };
    work.remove()?;
    let secs = start.elapsed().as_secs_f64();
    if ui.json {
        ui.print_json(&json!({
            "input": args.input, "output": output, "method": "awq", "resumed_layers": resumed, "format": format!("{format:?}"),
            "bits": if format == Format::HfAwq { json!(4) } else { json!(null) },
            "group_size": if format == Format::HfAwq { json!(g.group_size) } else { json!(null) },
            "type": args.quant_type, "scale_search": options.scale, "clip_search": options.clip,
            "sample_tokens": options.sample_tokens, "duo_scaling": options.duo,
            "calibration": {"source": calib.source, "windows": calib.windows.len(), "seqlen": calib.seqlen},
            "scales": method.reports, "notes": method.notes, "tensors": n_tensors, "bytes": bytes, "awq_seconds": awq_secs, "seconds": secs, "stages": stages_log.report(),
        }));
    } else if output.as_os_str() != "-" {
        ui.note(format!(
            "wrote {} (AWQ, {} tensors, {:.1} MB) in {secs:.1}s ({awq_secs:.1}s calibrating and searching)",
            output.display(),
            n_tensors,
            bytes as f64 / 1e6
        ));
    }
    Ok(())
}

/// The AWQ options the flags ask for.
pub(super) fn awq_options(args: &QuantizeArgs) -> AwqOptions {
    AwqOptions {
        scale: !args.awq_opts.no_awq_scale,
        clip: !args.awq_opts.no_awq_clip,
        sample_tokens: args.awq_opts.awq_sample_tokens,
        duo: !args.awq_opts.no_awq_duo_scaling,
    }
}

/// Write an hf-awq checkpoint (AutoAWQ's gemm layout) of the packed 4-bit `linears`, with the
/// folded `vectors` in place of the input's. Returns the tensor count and bytes written.
pub(super) fn write_hf_awq(
    file: &ModelFile,
    output: &Path,
    linears: PackedLinears,
    vectors: &mut HashMap<String, Vec<f32>>,
    layout: RopeLayout,
    args: &QuantizeArgs,
    ui: &Ui,
) -> Result<(usize, u64)> {
    let qc = json!({
        "quant_method": "awq", "bits": 4, "group_size": args.gptq.group_size, "zero_point": true,
        "version": "gemm", "modules_to_not_convert": null,
    });
    let wbar = ui.bytes_bar(0, "writing");
    let s = hf_pack::write(file, output, linears, vectors, layout, qc, Vec::new(), args.out.max_shard_size, &wbar)
        .with_context(|| format!("writing {}", output.display()))?;
    wbar.finish_and_clear();
    Ok((s.tensors, s.bytes))
}
