use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Value as Json};

use super::Ui;
use crate::formats::gguf::GgufFile;
use crate::formats::safetensors::SafetensorsFile;
use crate::model::{names, ModelFile};
use crate::quant;

/// Show a model's architecture, metadata and tensors (GGUF file, HF directory or a single
/// .safetensors file).
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    qforge inspect models/tiny-llama\n  \
    qforge inspect tiny.gguf --json | jq '.metadata[\"general.architecture\"]'\n  \
    qforge inspect tiny.gguf --verify     # also decode every tensor and check its values")]
pub struct InspectArgs {
    pub path: PathBuf,
    /// Also check the model: expected tensors and shapes, and decode every tensor looking for
    /// NaN/Inf. Exits non-zero on any problem.
    #[arg(long)]
    pub verify: bool,
    /// Array metadata longer than this is summarized.
    #[arg(long, default_value_t = 8)]
    pub max_array: usize,
}

pub fn run(args: &InspectArgs, ui: &Ui) -> Result<()> {
    let p = &args.path;
    let report = if p.is_file() && p.extension().is_some_and(|e| e == "safetensors") {
        inspect_safetensors(args)?
    } else if p.is_file() {
        inspect_gguf(args)?
    } else {
        inspect_hf(args)?
    };
    if args.verify {
        verify(args, ui)?;
    }
    if ui.json {
        ui.print_json(&report);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn inspect_gguf(args: &InspectArgs) -> Result<Json> {
    let f = GgufFile::open(&args.path).with_context(|| format!("cannot read {}", args.path.display()))?;
    let mut metadata = serde_json::Map::new();
    let mut metadata_types = serde_json::Map::new();
    for (k, v) in &f.header.metadata {
        metadata.insert(k.clone(), v.to_json(args.max_array));
        metadata_types.insert(k.clone(), json!(v.value_type().name()));
    }
    let tensors: Vec<Json> = f
        .tensors()
        .iter()
        .map(|t| {
            json!({"name": t.name, "type": t.ggml_type.name(), "shape": t.shape(), "ne": t.ne,
                   "bytes": t.size, "offset": f.header.data_offset + t.offset})
        })
        .collect();
    Ok(json!({
        "path": args.path, "format": "gguf", "version": f.header.version,
        "architecture": f.architecture(), "alignment": f.header.alignment,
        "file_bytes": f.file_len(),
        "parameters": f.tensors().iter().map(|t| t.n_elements()).sum::<u64>(),
        "metadata": metadata, "metadata_types": metadata_types, "tensors": tensors,
    }))
}

fn inspect_hf(args: &InspectArgs) -> Result<Json> {
    let m = ModelFile::open(&args.path).with_context(|| format!("cannot load {}", args.path.display()))?;
    let ModelFile::Hf(c) = &m else { unreachable!("a directory opens as a Hugging Face checkpoint") };
    let mut tensors = Vec::new();
    for name in c.names() {
        let t = c.tensor(name).context("tensor vanished")?;
        tensors.push(json!({
            "name": name, "gguf_name": names::hf_to_gguf(name, c.config.arch).ok(), "type": format!("{:?}", t.dtype),
            "shape": t.shape, "bytes": t.data.len(),
        }));
    }
    let files: Vec<Json> = c.files().iter().map(|f| json!(f.path.file_name().map(|n| n.to_string_lossy()))).collect();
    Ok(json!({
        "path": args.path, "format": "hf", "architecture": c.config.arch.hf_class(),
        // A quantized checkpoint packs several weights per stored element: count the weights.
        "parameters": if c.quant.is_some() { m.parameter_count()? } else { c.parameter_count() }, "files": files, "config": c.config_json,
        "metadata": {}, "tensors": tensors,
    }))
}

fn inspect_safetensors(args: &InspectArgs) -> Result<Json> {
    let f = SafetensorsFile::open(&args.path).with_context(|| format!("cannot read {}", args.path.display()))?;
    let mut names: Vec<&str> = f.names().collect();
    names.sort();
    let tensors: Vec<Json> = names
        .iter()
        .filter_map(|n| {
            f.tensor(n)
                .map(|t| json!({"name": n, "type": format!("{:?}", t.dtype), "shape": t.shape, "bytes": t.data.len()}))
        })
        .collect();
    let params: usize = names.iter().filter_map(|n| f.tensor(n)).map(|t| t.shape.iter().product::<usize>()).sum();
    Ok(json!({"path": args.path, "format": "safetensors", "parameters": params, "metadata": {}, "tensors": tensors}))
}

/// Deep check: the model's tensors match its config, and every tensor decodes to finite values.
fn verify(args: &InspectArgs, ui: &Ui) -> Result<()> {
    let m = ModelFile::open(&args.path).with_context(|| format!("cannot load {}", args.path.display()))?;
    m.check_tensors()?;
    let tensors = m.tensors()?;
    let total: u64 = tensors.iter().map(|t| t.data.len() as u64).sum();
    let bar = ui.bytes_bar(total, "verifying");
    for t in &tensors {
        if t.packed.is_some() || quant::can_decode(t.ggml_type) {
            // Packed (GPTQ, bitsandbytes, ...) weights decode through their own layout.
            let v = match &t.packed {
                Some(p) => p.dequantize(),
                None => {
                    quant::decode(t.ggml_type, t.data, t.n_elements()).with_context(|| format!("tensor {}", t.name))?
                }
            };
            if let Some(i) = quant::find_nonfinite(&v) {
                anyhow::bail!("tensor {} holds a non-finite value ({}) at flat index {i}", t.name, v[i]);
            }
        } else {
            ui.warn(format!("tensor {}: {} values not checked (no decoder yet)", t.name, t.ggml_type));
        }
        bar.inc(t.data.len() as u64);
    }
    bar.finish_and_clear();
    ui.note(format!("{}: verified {} tensors", args.path.display(), tensors.len()));
    Ok(())
}

fn print_text(r: &Json) {
    println!("{}  ({})", r["path"].as_str().unwrap_or(""), r["format"].as_str().unwrap_or(""));
    if let Some(a) = r["architecture"].as_str() {
        println!("architecture: {a}");
    }
    if let Some(p) = r["parameters"].as_u64() {
        println!("parameters:   {p} ({})", crate::model::source::size_label(p));
    }
    if let Some(v) = r["version"].as_u64() {
        println!("GGUF version: {v}, alignment {}", r["alignment"]);
    }
    if let Some(md) = r["metadata"].as_object() {
        if !md.is_empty() {
            println!("\nmetadata ({} keys):", md.len());
            for (k, v) in md {
                let ty = r["metadata_types"][k].as_str().unwrap_or("");
                println!("  {k:<45} {ty:<8} {}", short(v));
            }
        }
    }
    if let Some(cfg) = r.get("config").filter(|c| c.is_object()) {
        println!("\nconfig.json: {}", short(cfg));
    }
    if let Some(ts) = r["tensors"].as_array() {
        println!("\ntensors ({}):", ts.len());
        for t in ts {
            println!(
                "  {:<40} {:<6} {:<16} {:>12} B",
                t["name"].as_str().unwrap_or(""),
                t["type"].as_str().unwrap_or(""),
                t["shape"].to_string(),
                t["bytes"]
            );
        }
    }
}

fn short(v: &Json) -> String {
    let s = v.to_string();
    if s.chars().count() > 100 {
        format!("{}…", s.chars().take(100).collect::<String>())
    } else {
        s
    }
}
