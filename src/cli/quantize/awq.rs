//! `qforge quantize --method awq`: calibrate, search AWQ's scales and clipping layer by layer,
//! and write an hf-awq checkpoint (AutoAWQ gemm layout) or a GGUF whose weights were scaled
//! and clipped before llama.cpp's quantizers ran.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use safetensors::Dtype;
use serde_json::json;

use super::encoder::MethodEncoder;
use super::{Format, QuantizeArgs};
use crate::calib::resume::WorkDir;
use crate::calib::sequential::{self, Stages};
use crate::cli::session::Loaded;
use crate::cli::stages::StageLog;
use crate::cli::Ui;
use crate::convert::to_hf_quant::{self, OutTensor, PackedLinears};
use crate::methods::awq::{AwqMethod, AwqOptions, Quantized, Target};
use crate::methods::SpilledResults;
use crate::model::{names, ModelConfig, ModelFile, RopeLayout};
use crate::quant::packed::awq::pack;
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
    let format = match (args.format, &args.quant_type) {
        (Some(f), _) => f,
        (None, Some(_)) => Format::Gguf,
        (None, None) => Format::HfAwq,
    };
    if !matches!(format, Format::Gguf | Format::HfAwq) {
        bail!("--method awq writes --format hf-awq or gguf");
    }
    if args.imatrix.is_some() {
        bail!("--imatrix applies to --method rtn; AWQ calibrates on its own activations");
    }
    let g = &args.gptq;
    let group_size = match g.group_size {
        -1 => None,
        n if n > 0 => Some(n as usize),
        n => bail!("--group-size must be -1 or positive, got {n}"),
    };
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
    let output = super::output_path(args, ui, format == Format::Gguf, format.checkpoint_name())?;

    let mut stages_log = StageLog::new();
    stages_log.begin("load");
    let loaded = Loaded::open(&args.input)?;
    let file = &loaded.file;
    let cfg = file.config().clone();
    if format == Format::HfAwq {
        check_awq_shapes(&cfg, group_size)?;
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
            let packed = pack_awq(&mut results, &cfg, layout, &work, Ok)?;
            results.finish()?;
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

/// Pack every layer's 4-bit results (each turned into AWQ's codes by `codes`) in AutoAWQ's gemm
/// layout into a [`PackedLinears`] file in `work`, one layer in memory at a time.
pub(super) fn pack_awq<T: crate::methods::RowParts>(
    results: &mut SpilledResults<'_, T>,
    cfg: &ModelConfig,
    layout: RopeLayout,
    work: &WorkDir,
    codes: impl Fn(T) -> Result<Quantized>,
) -> Result<PackedLinears> {
    let mut packed = PackedLinears::create(&work.path().join("packed.bin"))?;
    for li in 0..cfg.n_layers {
        let mut layer = HashMap::new();
        for (name, r) in results.take_layer(li)? {
            layer.insert(name, codes(r)?);
        }
        for (name, parts) in hf_linears(&mut layer, cfg, layout)? {
            packed.add(name, parts)?;
        }
    }
    Ok(packed)
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
    let cfg = file.config();
    let shapes: HashMap<String, Vec<usize>> =
        file.tensors()?.into_iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
    let replaced = hf_vectors(vectors, cfg, layout, &shapes)?;
    let qc = json!({
        "quant_method": "awq", "bits": 4, "group_size": args.gptq.group_size, "zero_point": true,
        "version": "gemm", "modules_to_not_convert": null,
    });
    let wbar = ui.bytes_bar(0, "writing");
    let s =
        to_hf_quant::write_replacing(file, output, linears, replaced, qc, Vec::new(), args.out.max_shard_size, &wbar)
            .with_context(|| format!("writing {}", output.display()))?;
    wbar.finish_and_clear();
    Ok((s.tensors, s.bytes))
}

/// The gemm layout packs 8 output rows per word and needs whole groups in every row.
pub(super) fn check_awq_shapes(cfg: &ModelConfig, group_size: Option<usize>) -> Result<()> {
    let mut outputs = vec![("q_proj", cfg.q_dim()), ("k/v_proj", cfg.kv_dim()), ("o/down_proj", cfg.hidden_size)];
    outputs.extend(cfg.ffn_widths().into_iter().map(|w| ("gate/up_proj", w)));
    for (what, rows) in outputs {
        if rows % 8 != 0 {
            bail!("{what} has {rows} output features, not a multiple of 8: it cannot be packed as AWQ gemm");
        }
    }
    super::check_group_size(cfg, group_size)
}

/// Hands the GGUF writer AWQ's blocks and folded vectors, rows in the file's layout.
type Linears = HashMap<String, Vec<(String, OutTensor<'static>)>>;

/// The hf-awq tensors of every quantized linear (rows back in Hugging Face order).
fn hf_linears(results: &mut HashMap<String, Quantized>, cfg: &ModelConfig, from: RopeLayout) -> Result<Linears> {
    let mut out = HashMap::new();
    for (name, q) in results.drain() {
        let Quantized::Int(q) = q else { bail!("{name}: expected integer codes") };
        let (rows, cols) = (q.rows, q.cols);
        let groups = cols / q.group_size;
        let order = names::row_order(&name, rows, cfg.n_heads, cfg.n_kv_heads, from, RopeLayout::RotateHalf)?;
        let (codes, scales, zeros) = match &order {
            Some(src) => (
                names::reorder_rows(&q.codes, cols, src),
                names::reorder_rows(&q.scales, groups, src),
                names::reorder_rows(&q.zeros, groups, src),
            ),
            None => (q.codes, q.scales, q.zeros),
        };
        let t = pack(rows, cols, q.group_size, &codes, &scales, &zeros)?;
        let part = |dtype, shape: Vec<usize>, data: Vec<u8>| OutTensor { dtype, shape, data: Cow::Owned(data) };
        out.insert(
            name,
            vec![
                ("qweight".to_string(), part(Dtype::I32, vec![cols, rows / 8], t.qweight)),
                ("qzeros".to_string(), part(Dtype::I32, vec![t.groups, rows / 8], t.qzeros)),
                ("scales".to_string(), part(Dtype::F16, vec![t.groups, rows], t.scales)),
            ],
        );
    }
    Ok(out)
}

/// The folded norms (and v bias, an MoE layer's router and shared gate) as f32 tensors of
/// their shapes in `shapes`: rounding them to the checkpoint's bf16 would add an error of up
/// to 2⁻⁹ per channel to what the fold computed exactly.
pub(super) fn hf_vectors(
    vectors: &mut HashMap<String, Vec<f32>>,
    cfg: &ModelConfig,
    from: RopeLayout,
    shapes: &HashMap<String, Vec<usize>>,
) -> Result<HashMap<String, OutTensor<'static>>> {
    let mut out = HashMap::new();
    for (name, v) in vectors.drain() {
        let n = v.len();
        let v = match names::row_order(&name, n, cfg.n_heads, cfg.n_kv_heads, from, RopeLayout::RotateHalf)? {
            Some(src) => names::reorder_rows(&v, 1, &src),
            None => v,
        };
        // Gemma's HF norms are offsets from 1.
        let shift = if crate::convert::hf_norm_offset(cfg, &name) { 1.0 } else { 0.0 };
        let data: Vec<u8> = v.iter().flat_map(|x| (x - shift).to_le_bytes()).collect();
        let shape = shapes.get(&name).cloned().unwrap_or_else(|| vec![n]);
        out.insert(name, OutTensor { dtype: Dtype::F32, shape, data: Cow::Owned(data) });
    }
    Ok(out)
}
