//! AWQ's fields of a `--resume` layer record (layout: `methods::resume`).

use serde_json::{json, Value};

use super::grid::IntCodes;
use super::{AwqMethod, Quantized};
use crate::calib::resume::LayerRecord;
use crate::error::Result;
use crate::methods::resume::{bad, entries, ggml_entry, ggml_of, layer_names, log_field};

// Deliberately the shape of gptq/record.rs's save_gptq / load_gptq: the same record layout over AWQ's own
// result type (`Quantized`, whose integer codes carry their shape, unlike GPTQ's `IntQuant`).
pub fn save_awq(m: &AwqMethod, layer: usize, rec: &mut LayerRecord) {
    let mut list = Vec::new();
    for name in layer_names(m.results.keys(), layer) {
        let key = |part: &str| format!("awq/{name}/{part}");
        list.push(match &m.results[name] {
            Quantized::Int(q) => {
                rec.put_u8(key("codes"), &q.codes);
                rec.put_f32(key("scales"), &q.scales);
                rec.put_u8(key("zeros"), &q.zeros);
                json!({"name": name, "rows": q.rows, "cols": q.cols, "group_size": q.group_size})
            }
            Quantized::Ggml { ty, rows, bytes } => ggml_entry(rec, key("blocks"), name, *ty, *rows, bytes),
        });
    }
    let vectors: Vec<&String> = layer_names(m.vectors.keys(), layer);
    for name in &vectors {
        rec.put_f32(format!("awq/{name}/vector"), &m.vectors[*name]);
    }
    rec.meta.insert("awq_results".into(), Value::from(list));
    rec.meta.insert("awq_vectors".into(), json!(vectors));
    rec.meta.insert("awq_log".into(), json!({"notes": m.notes, "reports": m.reports, "clips": m.clips}));
}

pub fn load_awq(m: &mut AwqMethod, rec: &LayerRecord) -> Result<()> {
    m.results.extend(awq_results(rec)?);
    for name in entries(rec, "awq_vectors")? {
        let name = name.as_str().ok_or_else(|| bad("a vector name"))?;
        m.vectors.insert(name.to_string(), rec.f32(&format!("awq/{name}/vector"))?);
    }
    m.notes = log_field(rec, "awq_log", "notes")?;
    m.reports = log_field(rec, "awq_log", "reports")?;
    m.clips = log_field(rec, "awq_log", "clips")?;
    Ok(())
}

/// AWQ's results in a layer record, by GGUF name.
pub fn awq_results(rec: &LayerRecord) -> Result<Vec<(String, Quantized)>> {
    let mut out = Vec::new();
    for e in entries(rec, "awq_results")? {
        let name = e["name"].as_str().ok_or_else(|| bad("a result name"))?;
        let key = |part: &str| format!("awq/{name}/{part}");
        let q = match ggml_of(rec, &key("blocks"), e)? {
            Some((ty, rows, bytes)) => Quantized::Ggml { ty, rows, bytes },
            None => {
                let dim = |k: &str| e[k].as_u64().map(|v| v as usize).ok_or_else(|| bad(k));
                Quantized::Int(IntCodes {
                    rows: dim("rows")?,
                    cols: dim("cols")?,
                    group_size: dim("group_size")?,
                    codes: rec.u8(&key("codes"))?,
                    scales: rec.f32(&key("scales"))?,
                    zeros: rec.u8(&key("zeros"))?,
                })
            }
        };
        out.push((name.to_string(), q));
    }
    Ok(out)
}
