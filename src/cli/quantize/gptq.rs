//! `qforge quantize --method gptq` (and `awq+gptq`): calibrate, run GPTQ layer by layer (after
//! folding AWQ's scales in), write an hf-gptq checkpoint or a GGUF whose block grids GPTQ chose.

use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;

use super::awq::{awq_options, write_hf_awq};
use super::encoder::MethodEncoder;
use super::{Device, Format, Method, QuantizeArgs};
use crate::calib::sequential::{self, Stages};
use crate::cli::Ui;
use crate::convert::hf_pack;
use crate::methods::awq::{self, AwqMethod};
use crate::methods::awq_gptq::AwqGptqMethod;
use crate::methods::gptq::{GptqMethod, Solved, Target};
use crate::methods::SpilledResults;
use crate::model::ModelConfig;
use crate::quant::gptq::{ColumnOrder, GptqOptions};
use crate::runtime::LlamaModel;

/// The fraction α of asymmetric calibration's correction, or `None` for GPTQ's standard
/// objective. Asymmetric calibration is the default (it lowered the KLD on every format of
/// BENCHMARKS.md's real-model table) except where it cannot run: `--true-sequential` (the
/// unquantized model's inputs come from one pass per layer), the CUDA backend (the input drift
/// is accumulated on the CPU only) and routed experts (the two models send a token to
/// different experts, so an expert's inputs do not pair up). There an explicit `--asymmetric`
/// is refused and the default falls back to the standard objective with a note.
/// With `--device auto` a usable GPU is passed over where asymmetric calibration runs, so
/// that the default gives the same result on every machine.
fn asymmetric_alpha(g: &super::GptqArgs, on_gpu: bool, cfg: &ModelConfig, ui: &Ui) -> Result<Option<f64>> {
    if g.no_asymmetric {
        return Ok(None);
    }
    match (asymmetric_blocker(g, on_gpu, cfg), g.asymmetric) {
        (None, alpha) => Ok(Some(alpha.unwrap_or(DEFAULT_ASYMMETRIC_ALPHA))),
        (Some(why), Some(_)) => bail!("--asymmetric: {why}"),
        (Some(why), None) => {
            ui.note(format!("note: GPTQ's standard objective, not asymmetric calibration: {why}"));
            Ok(None)
        }
    }
}

/// Why asymmetric calibration cannot run with these settings, if it cannot.
fn asymmetric_blocker(g: &super::GptqArgs, on_gpu: bool, cfg: &ModelConfig) -> Option<String> {
    if g.true_sequential {
        Some("--true-sequential quantizes a layer's linears in stages; it needs one pass per layer".into())
    } else if on_gpu {
        Some("the CUDA backend does not accumulate the input drift; add --device cpu for it".into())
    } else if cfg.moe.is_some() {
        let arch = cfg.arch.hf_model_type();
        Some(format!("{arch} routes tokens to experts, whose inputs do not pair up between the two models"))
    } else {
        None
    }
}

/// GPTAQ's default fraction of the correction (see `quant::gptq::asymmetric`).
const DEFAULT_ASYMMETRIC_ALPHA: f64 = 0.25;

pub fn run(args: &QuantizeArgs, ui: &Ui) -> Result<()> {
    let start = Instant::now();
    let format = super::method_format(args, Format::HfGptq);
    let with_awq = args.method == Method::AwqGptq;
    let method_name = if with_awq { "awq+gptq" } else { "gptq" };
    match format {
        Format::Gguf | Format::HfGptq => {}
        Format::HfAwq if with_awq => {}
        _ if with_awq => bail!("--method awq+gptq writes --format hf-gptq, hf-awq or gguf"),
        _ => bail!("--method gptq writes --format hf-gptq or gguf"),
    }
    if args.imatrix.is_some() {
        bail!("--imatrix applies to --method rtn; GPTQ calibrates on its own activations");
    }
    let g = &args.gptq;
    if format != Format::HfGptq && g.checkpoint_format.is_some() {
        bail!("--checkpoint-format applies to --format hf-gptq");
    }
    if format == Format::HfGptq && ![2, 3, 4, 8].contains(&g.bits) {
        bail!("--bits must be 2, 3, 4 or 8 for hf-gptq");
    }
    if with_awq {
        // AWQ's scale search fake-quantizes on 4-bit asymmetric groups (its only integer grid).
        if format != Format::Gguf && (g.bits != 4 || g.sym) {
            bail!("--method awq+gptq writes 4-bit asymmetric groups (AWQ's grid); drop --bits/--sym, or use --method gptq");
        }
        if format == Format::HfAwq && g.column_order() == ColumnOrder::Activation && !g.static_groups {
            bail!("hf-awq has no g_idx: --order act needs --static-groups there (or use --order group)");
        }
        if g.true_sequential {
            bail!("--true-sequential does not apply to --method awq+gptq: AWQ observes a whole layer at once");
        }
        if args.awq_opts.awq_sample_tokens == 0 {
            bail!("--awq-sample-tokens must be positive");
        }
    }
    if let Some(alpha) = g.asymmetric {
        if !(alpha > 0.0 && alpha <= 1.0) {
            bail!("--asymmetric {alpha}: the fraction of the correction must be in (0, 1]");
        }
    }
    let order = g.column_order();
    if g.static_groups && order != ColumnOrder::Activation {
        ui.warn("--static-groups only matters with --order act");
    }
    let group_size = g.groups()?;
    let options = GptqOptions {
        block_size: args.block_size.unwrap_or(128),
        damp: g.damp,
        order,
        static_groups: g.static_groups,
        group_size,
        weighted_scales: g.block_scales == super::BlockScales::Weighted,
    };
    if options.block_size == 0 || !(g.damp > 0.0 && g.damp.is_finite()) {
        bail!("--block-size must be positive and --damp a positive number");
    }
    let (output, mut stages_log, loaded) = super::open_for_method(args, ui, format)?;
    let file = &loaded.file;
    let cfg = file.config().clone();
    let device = if g.device == Device::Auto && !g.no_asymmetric && asymmetric_blocker(g, false, &cfg).is_none() {
        ui.detail("device: the CPU (asymmetric calibration; --no-asymmetric lets GPTQ use a GPU)");
        None
    } else {
        select_device(g.device, ui)?
    };
    let asymmetric = asymmetric_alpha(g, device.is_some(), &cfg, ui)?;
    super::check_requantize(args, ui, super::quantized_kinds(file)?)?;
    match format {
        Format::HfGptq => super::check_group_size(&cfg, group_size)?,
        Format::HfAwq => super::check_awq_shapes(&cfg, group_size)?,
        _ => {}
    }
    let calib = super::load_calibration(args, ui, &loaded)?;

    // GGUF: the per-tensor types come from llama.cpp's mix rules, planned before anything runs.
    let (gguf_header, target) = match format {
        Format::Gguf => {
            let (header, types) = super::gguf_plan(args, ui, file)?;
            (Some(header), Target::Ggml(types))
        }
        _ => (None, Target::Int { bits: g.bits, sym: g.sym }),
    };

    let model = LlamaModel::load(file)?;
    let layout = model.rope_layout();
    #[cfg(feature = "cuda")]
    if device.is_some() && matches!(target, Target::Ggml(_)) {
        ui.note("note: the CUDA backend accumulates the Hessians; GPTQ with GGML grids is solved on the CPU");
    }
    let device_name = if device.is_some() { "cuda" } else { "cpu" };
    // AWQ searches on the same grid GPTQ then rounds onto.
    let awq = with_awq.then(|| {
        let awq_target = match &target {
            Target::Ggml(types) => awq::Target::Ggml(types.clone()),
            Target::Int { .. } => awq::Target::Int4 { group_size },
        };
        AwqMethod::new(awq_options(args), awq_target, &calib)
    });
    let method = GptqMethod::new(options.clone(), target);
    #[cfg(feature = "cuda")]
    let method = method.with_cuda(device);
    let mut method = method;
    method.guard = !g.no_rtn_guard;
    method.asymmetric = asymmetric;
    let stages = if g.true_sequential { Stages::TrueSequential } else { Stages::OneShot };
    let bar = ui.count_bar(cfg.n_layers as u64, if with_awq { "AWQ+GPTQ layers" } else { "GPTQ layers" });
    ui.detail(format!("calibration: {} windows of {} tokens from {}", calib.windows.len(), calib.seqlen, calib.source));
    let work = super::work_dir(args, output, &calib)?;
    let calib_start = Instant::now();
    stages_log.begin("calibrate");
    let (mut awq, resumed) = match awq {
        Some(awq) => {
            let mut both = AwqGptqMethod { awq, gptq: method };
            let resumed = sequential::run(model, &calib, stages, &mut both, &work, &mut |_| bar.inc(1))?;
            method = both.gptq;
            (Some(both.awq), resumed)
        }
        None => (None, sequential::run(model, &calib, stages, &mut method, &work, &mut |_| bar.inc(1))?),
    };
    super::report_resumed(ui, resumed, &work);
    // The vectors AWQ's scales were folded into (norms, v bias, router), by GGUF name.
    let mut vectors = awq.as_mut().map(|a| std::mem::take(&mut a.vectors)).unwrap_or_default();
    bar.finish_and_clear();
    let gptq_secs = calib_start.elapsed().as_secs_f64();
    let zero_point_zero =
        method.zero_point_zero || method.results.values().any(|s| matches!(s, Solved::Int(q) if q.zeros.contains(&0)));
    let mut results = SpilledResults::new(
        std::mem::take(&mut method.results),
        &work,
        crate::methods::gptq_results,
        &cfg,
        format == Format::Gguf,
    )?;
    for n in awq.iter().flat_map(|a| &a.notes).chain(&method.notes) {
        ui.warn(n);
    }
    for r in awq.iter().flat_map(|a| &a.reports) {
        ui.detail(format!(
            "layer {} {}: AWQ alpha {:.2}, block MSE {:.3e} (round-to-nearest {:.3e})",
            r.layer, r.group, r.alpha, r.loss, r.loss_rtn
        ));
    }
    let kept_rtn = method.guarded.iter().filter(|g| g.kept_rtn).count();
    if kept_rtn > 0 {
        ui.note(format!(
            "round-to-nearest had the lower calibration error on {kept_rtn} of {} matrices and was kept there \
             (-v lists them; --no-rtn-guard keeps GPTQ's)",
            method.guarded.len()
        ));
    }
    for g in &method.guarded {
        ui.detail(format!(
            "{}: output error GPTQ {:.4e}, round-to-nearest {:.4e}: kept {}",
            g.name,
            g.gptq,
            g.rtn,
            if g.kept_rtn { "round-to-nearest" } else { "GPTQ" }
        ));
    }
    for (name, loss) in &method.losses {
        ui.detail(format!("{name}: GPTQ loss {loss:.4}"));
    }

    stages_log.begin("write");
    let (n_tensors, bytes) = match format {
        Format::Gguf => {
            let header = gguf_header.ok_or_else(|| anyhow!("no GGUF plan"))?;
            let mut enc = MethodEncoder::new(method_name, &mut results, &mut vectors, &cfg, layout);
            let summary = super::write_gguf(args, ui, file, header, output, &mut enc)?;
            (summary.tensors, summary.bytes)
        }
        Format::HfAwq => {
            let packed = hf_pack::pack_layers(&mut results, &cfg, layout, hf_pack::Layout::Awq, work.path())?;
            write_hf_awq(file, output, packed, &mut vectors, layout, args, ui)?
        }
        _ => {
            // GPTQModel (the only loader of quantized MoE experts on transformers 5, which holds
            // experts as 3-D parameters) reads asymmetric v1 checkpoints only from its own
            // quantizer: asymmetric grids are written as v2 unless v1 is asked for.
            let want_v2 = match g.checkpoint_format {
                Some(f) => f == super::CheckpointFormat::GptqV2,
                None => !g.sym,
            };
            let v2 = want_v2 || zero_point_zero;
            let gptq = hf_pack::Layout::Gptq { v2 };
            let linears = hf_pack::pack_layers(&mut results, &cfg, layout, gptq, work.path())?;
            if v2 && !want_v2 {
                ui.warn("some groups have zero point 0, which the v1 \"gptq\" format cannot store; wrote checkpoint_format \"gptq_v2\"");
            }
            let qc = json!({
                "quant_method": "gptq", "bits": g.bits, "group_size": g.group_size, "desc_act": order == ColumnOrder::Activation,
                "act_group_aware": order == ColumnOrder::GroupAware,
                "static_groups": g.static_groups, "sym": g.sym, "damp_percent": g.damp, "true_sequential": g.true_sequential,
                "checkpoint_format": if v2 { "gptq_v2" } else { "gptq" }, "quantizer": [format!("qforge:{}", env!("CARGO_PKG_VERSION"))],
            });
            let extra = vec![("quantize_config.json".to_string(), {
                let mut q = qc.clone();
                q["model_file_base_name"] = json!("model");
                q
            })];
            let wbar = ui.bytes_bar(0, "writing");
            let max_shard = args.out.max_shard_size;
            let s = hf_pack::write(file, output, linears, &mut vectors, layout, qc, extra, max_shard, &wbar)
                .with_context(|| format!("writing {}", output.display()))?;
            wbar.finish_and_clear();
            (s.tensors, s.bytes)
        }
    };

    work.remove()?;
    let secs = start.elapsed().as_secs_f64();
    if ui.json {
        ui.print_json(&json!({
            "input": args.input, "output": output, "method": method_name, "resumed_layers": resumed, "format": format!("{format:?}"),
            "bits": g.bits, "group_size": g.group_size, "act_order": order == ColumnOrder::Activation, "order": format!("{order:?}"), "block_scales": format!("{:?}", g.block_scales), "sym": g.sym, "damp": g.damp, "true_sequential": g.true_sequential, "asymmetric": asymmetric,
            "type": args.quant_type, "calibration": {"source": calib.source, "windows": calib.windows.len(), "seqlen": calib.seqlen},
            "tensors": n_tensors, "bytes": bytes, "device": device_name, "gptq_seconds": gptq_secs, "seconds": secs, "stages": stages_log.report(), "notes": method.notes,
            "rtn_guard": {"matrices": method.guarded.len(), "kept_rtn": kept_rtn, "per_matrix": method.guarded},
            "awq_scales": awq.as_ref().map(|a| &a.reports),
        }));
    } else {
        ui.note(format!(
            "wrote {} ({}, {} tensors, {:.1} MB) in {secs:.1}s ({gptq_secs:.1}s calibrating and solving)",
            output.display(),
            method_name.to_uppercase(),
            n_tensors,
            bytes as f64 / 1e6
        ));
    }
    Ok(())
}

/// The CUDA backend for `--device`, if any. `auto` uses a usable device and otherwise says in
/// one line why GPTQ runs on the CPU; `cuda` without one is an error.
#[cfg(feature = "cuda")]
fn select_device(device: Device, ui: &Ui) -> Result<Option<crate::quant::gptq::cuda::CudaBackend>> {
    use crate::quant::gptq::cuda::CudaBackend;
    match device {
        Device::Cpu => Ok(None),
        Device::Cuda => match CudaBackend::probe() {
            Ok(be) => {
                ui.detail(format!("GPTQ runs on {}", be.describe()));
                Ok(Some(be))
            }
            Err(e) => bail!("--device cuda: no usable CUDA device ({e})"),
        },
        Device::Auto => match CudaBackend::probe() {
            Ok(be) => {
                ui.detail(format!("GPTQ runs on {}", be.describe()));
                Ok(Some(be))
            }
            Err(e) => {
                ui.note(format!("note: no usable CUDA device ({e}); GPTQ runs on the CPU"));
                Ok(None)
            }
        },
    }
}

/// Without the `cuda` feature: `auto` is the CPU, `cuda` an error.
#[cfg(not(feature = "cuda"))]
fn select_device(device: Device, ui: &Ui) -> Result<Option<std::convert::Infallible>> {
    match device {
        Device::Cuda => bail!(
            "--device cuda: this qforge was built without the `cuda` feature (rebuild with `cargo build --release \
             --features cuda`, or use --device cpu)"
        ),
        Device::Auto => ui.detail("GPTQ runs on the CPU (built without the `cuda` feature)"),
        Device::Cpu => {}
    }
    Ok(None)
}
