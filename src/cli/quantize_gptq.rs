//! `qforge quantize --method gptq`: calibrate, run GPTQ layer by layer, write an hf-gptq
//! checkpoint or a GGUF whose block grids GPTQ chose.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use safetensors::Dtype;
use serde_json::json;

use super::quantize::{build_plan, Device, Format, QuantizeArgs};
use super::session::Loaded;
use super::Ui;
use crate::calib::sequential::{self, Stages};
use crate::calib::{CalibOptions, Calibration};
use crate::convert::to_gguf::{self, TensorEncoder, WriteOptions};
use crate::convert::to_hf_quant::{self, OutTensor};
use crate::error::Error;
use crate::ggml_type::GgmlType;
use crate::methods::gptq::{GptqMethod, Solved, Target};
use crate::model::{names, ModelConfig, RopeLayout};
use crate::output::Sink;
use crate::quant::gptq::{ColumnOrder, GptqOptions};
use crate::quant::packed::gptq::pack;
use crate::runtime::LlamaModel;

pub fn run(args: &QuantizeArgs, ui: &Ui) -> Result<()> {
    let start = Instant::now();
    let format = match (args.format, &args.quant_type) {
        (Some(f), _) => f,
        (None, Some(_)) => Format::Gguf,
        (None, None) => Format::HfGptq,
    };
    if !matches!(format, Format::Gguf | Format::HfGptq) {
        bail!("--method gptq writes --format hf-gptq or gguf");
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
    let order = g.column_order();
    if g.static_groups && order != ColumnOrder::Activation {
        ui.warn("--static-groups only matters with --order act");
    }
    let group_size = match g.group_size {
        -1 => None,
        n if n > 0 => Some(n as usize),
        n => bail!("--group-size must be -1 or positive, got {n}"),
    };
    let options = GptqOptions {
        block_size: args.block_size.unwrap_or(128),
        damp: g.damp,
        order,
        static_groups: g.static_groups,
        group_size,
    };
    if options.block_size == 0 || !(g.damp > 0.0 && g.damp.is_finite()) {
        bail!("--block-size must be positive and --damp a positive number");
    }
    let device = select_device(g.device, ui)?;
    let output = args.output.as_ref().ok_or_else(|| anyhow!("-o is required"))?;
    if output.as_os_str() == "-" && format != Format::Gguf {
        bail!("an hf-gptq checkpoint is a directory; `-o -` only works with --format gguf");
    }

    let loaded = Loaded::open(&args.input)?;
    let file = &loaded.file;
    let cfg = file.config().clone();
    if format == Format::HfGptq {
        super::quantize::check_group_size(&cfg, group_size)?;
    }
    let calib_opts =
        CalibOptions { path: args.calib.calib.clone(), nsamples: args.calib.nsamples, seqlen: args.calib.seqlen };
    let calib = Calibration::load(&loaded.tokenizer, cfg.context_length, &calib_opts).context("calibration")?;
    for n in &calib.notes {
        ui.warn(n);
    }

    // GGUF: the per-tensor types come from llama.cpp's mix rules, planned before anything runs.
    let mut gguf_header = None;
    let target = match format {
        Format::Gguf => {
            let plan = build_plan(args)?;
            let header = to_gguf::plan_with(file, &plan, args.name.clone())?;
            ui.warn_per_kind(&header.notes);
            let mut types: HashMap<String, GgmlType> =
                header.writer.tensors().iter().map(|t| (t.name.clone(), t.ggml_type)).collect();
            names::extend_to_parts(&mut types, &cfg);
            gguf_header = Some(header);
            Target::Ggml(types)
        }
        _ => Target::Int { bits: g.bits, sym: g.sym },
    };

    let mut model = LlamaModel::load(file)?;
    let layout = model.rope_layout();
    #[cfg(feature = "cuda")]
    if device.is_some() && matches!(target, Target::Ggml(_)) {
        ui.note("note: the CUDA backend accumulates the Hessians; GPTQ with GGML grids is solved on the CPU");
    }
    let device_name = if device.is_some() { "cuda" } else { "cpu" };
    let method = GptqMethod::new(options.clone(), target);
    #[cfg(feature = "cuda")]
    let method = method.with_cuda(device);
    let mut method = method;
    method.guard = !g.no_rtn_guard;
    let stages = if g.true_sequential { Stages::TrueSequential } else { Stages::OneShot };
    let bar = ui.count_bar(cfg.n_layers as u64, "GPTQ layers");
    ui.detail(format!("calibration: {} windows of {} tokens from {}", calib.windows.len(), calib.seqlen, calib.source));
    let calib_start = Instant::now();
    sequential::run(&mut model, &calib, stages, &mut method, &mut |_| bar.inc(1))?;
    crate::methods::fuse_results(&mut method.results, &cfg, format == Format::Gguf)?;
    bar.finish_and_clear();
    let gptq_secs = calib_start.elapsed().as_secs_f64();
    drop(model);
    for n in &method.notes {
        ui.warn(n);
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

    let (n_tensors, bytes) = match format {
        Format::Gguf => {
            let header = gguf_header.ok_or_else(|| anyhow!("no GGUF plan"))?;
            let target_layout =
                if cfg.arch.gguf_permutes_qk() { RopeLayout::Interleaved } else { RopeLayout::RotateHalf };
            let mut enc = SolvedEncoder { results: &mut method.results, cfg: &cfg, from: layout, to: target_layout };
            let mut sink = Sink::open(output).with_context(|| format!("cannot create {}", output.display()))?;
            let wopts = WriteOptions { allow_nonfinite: args.allow_nonfinite, name: args.name.clone() };
            let wbar = ui.bytes_bar(0, "writing");
            let (_, summary) = to_gguf::write_header_with(file, header, &wopts, &mut sink, &wbar, &mut enc)
                .with_context(|| format!("writing {}", output.display()))?;
            wbar.finish_and_clear();
            let (n, size) = (summary.tensors, summary.bytes);
            sink.commit(|p| to_gguf::validate_written(p, n, size))
                .with_context(|| format!("writing {}", output.display()))?;
            (n, size)
        }
        _ => {
            // GPTQModel (the only loader of quantized MoE experts on transformers 5, which holds
            // experts as 3-D parameters) reads asymmetric v1 checkpoints only from its own
            // quantizer: asymmetric grids are written as v2 unless v1 is asked for.
            let want_v2 = match g.checkpoint_format {
                Some(f) => f == super::quantize::CheckpointFormat::GptqV2,
                None => !g.sym,
            };
            let (linears, v2) = hf_linears(&mut method.results, &cfg, layout, g.bits, want_v2)?;
            if v2 && !want_v2 {
                ui.warn("some groups have zero point 0, which the v1 \"gptq\" format cannot store; wrote checkpoint_format \"gptq_v2\"");
            }
            let qc = json!({
                "quant_method": "gptq", "bits": g.bits, "group_size": g.group_size, "desc_act": order == ColumnOrder::Activation,
                "static_groups": g.static_groups, "sym": g.sym, "damp_percent": g.damp, "true_sequential": g.true_sequential,
                "checkpoint_format": if v2 { "gptq_v2" } else { "gptq" }, "quantizer": [format!("qforge:{}", env!("CARGO_PKG_VERSION"))],
            });
            let extra = vec![("quantize_config.json".to_string(), {
                let mut q = qc.clone();
                q["model_file_base_name"] = json!("model");
                q
            })];
            let wbar = ui.bytes_bar(0, "writing");
            let s = to_hf_quant::write(file, output, linears, qc, extra, &wbar)
                .with_context(|| format!("writing {}", output.display()))?;
            wbar.finish_and_clear();
            (s.tensors, s.bytes)
        }
    };

    let secs = start.elapsed().as_secs_f64();
    if ui.json {
        ui.print_json(&json!({
            "input": args.input, "output": output, "method": "gptq", "format": format!("{format:?}"),
            "bits": g.bits, "group_size": g.group_size, "act_order": order == ColumnOrder::Activation, "order": format!("{order:?}"), "sym": g.sym, "damp": g.damp,
            "type": args.quant_type, "calibration": {"source": calib.source, "windows": calib.windows.len(), "seqlen": calib.seqlen},
            "tensors": n_tensors, "bytes": bytes, "device": device_name, "gptq_seconds": gptq_secs, "seconds": secs, "notes": method.notes,
            "rtn_guard": {"matrices": method.guarded.len(), "kept_rtn": kept_rtn, "per_matrix": method.guarded},
        }));
    } else {
        ui.note(format!(
            "wrote {} (GPTQ, {} tensors, {:.1} MB) in {secs:.1}s ({gptq_secs:.1}s calibrating and solving)",
            output.display(),
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

/// Hands the GGUF writer the blocks GPTQ chose, with q/k rows in the file's layout.
struct SolvedEncoder<'r> {
    results: &'r mut HashMap<String, Solved>,
    cfg: &'r ModelConfig,
    from: RopeLayout,
    to: RopeLayout,
}

impl TensorEncoder for SolvedEncoder<'_> {
    fn encode(&mut self, name: &str, values: &[f32], ty: GgmlType) -> crate::error::Result<Option<Vec<u8>>> {
        let Some(Solved::Ggml { ty: solved_ty, rows, bytes }) = self.results.remove(name) else { return Ok(None) };
        if solved_ty != ty {
            return Err(Error::tensor(name, format!("GPTQ produced {solved_ty}, the plan says {ty}")));
        }
        if values.is_empty() {
            return Err(Error::tensor(name, "is empty"));
        }
        let row_bytes = bytes.len() / rows.max(1);
        Ok(Some(match names::row_order(name, rows, self.cfg.n_heads, self.cfg.n_kv_heads, self.from, self.to)? {
            Some(src) => names::reorder_rows(&bytes, row_bytes, &src),
            None => bytes,
        }))
    }
}

type Linears = HashMap<String, Vec<(String, OutTensor<'static>)>>;

/// The hf-gptq tensors of every quantized linear (rows back in Hugging Face order), in the v2
/// format when `force_v2` or when it is needed (a zero point of 0 cannot be stored as
/// zero − 1). Returns whether v2 was written.
fn hf_linears(
    results: &mut HashMap<String, Solved>,
    cfg: &ModelConfig,
    from: RopeLayout,
    bits: u8,
    force_v2: bool,
) -> Result<(Linears, bool)> {
    let v2 = force_v2 || results.values().any(|s| matches!(s, Solved::Int(q) if q.zeros.contains(&0)));
    let mut out = HashMap::new();
    for (name, solved) in results.drain() {
        let Solved::Int(q) = solved else { bail!("{name}: expected integer codes") };
        let rows = q.codes.len() / q.g_idx.len().max(1);
        let cols = q.g_idx.len();
        let groups = q.scales.len() / rows.max(1);
        let order = names::row_order(&name, rows, cfg.n_heads, cfg.n_kv_heads, from, RopeLayout::RotateHalf)?;
        let (codes, scales, zeros) = match &order {
            Some(src) => (
                names::reorder_rows(&q.codes, cols, src),
                names::reorder_rows(&q.scales, groups, src),
                names::reorder_rows(&q.zeros, groups, src),
            ),
            None => (q.codes, q.scales, q.zeros),
        };
        let t = pack(rows, cols, bits as u32, &codes, &scales, &zeros, &q.g_idx, v2)?;
        let part = |dtype, shape: Vec<usize>, data: Vec<u8>| OutTensor { dtype, shape, data: Cow::Owned(data) };
        out.insert(
            name,
            vec![
                ("qweight".to_string(), part(Dtype::I32, vec![cols * bits as usize / 32, rows], t.qweight)),
                ("qzeros".to_string(), part(Dtype::I32, vec![t.groups, rows * bits as usize / 32], t.qzeros)),
                ("scales".to_string(), part(Dtype::F16, vec![t.groups, rows], t.scales)),
                ("g_idx".to_string(), part(Dtype::I32, vec![cols], t.g_idx)),
            ],
        );
    }
    Ok((out, v2))
}
