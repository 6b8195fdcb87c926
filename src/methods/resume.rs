//! What GPTQ and AWQ keep of a finished layer, into and out of a `--resume` layer record
//! (`calib::resume`): the results the writers need (integer codes, scales, zero points and
//! g_idx; GGML blocks; AWQ's folded vectors) as tensors named `gptq/NAME/PART` and
//! `awq/NAME/PART`, their shapes and types in the record's JSON, and the report lines (notes,
//! losses, guard verdicts, AWQ's scale reports) as a snapshot of the whole list so far (small;
//! the last layer loaded has the list up to it).

use serde_json::{json, Value};

use super::awq::{AwqMethod, Quantized};
use super::gptq::{GptqMethod, Solved};
use crate::calib::resume::LayerRecord;
use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::methods::awq::grid::IntCodes;
use crate::quant::gptq::IntQuant;

fn bad(what: &str) -> Error {
    Error::InvalidModel(format!("resume record: {what} is missing or malformed"))
}

/// The names in `keys` that belong to layer `layer`, sorted (a record is the same whatever
/// the map's order).
fn layer_names<'a>(keys: impl Iterator<Item = &'a String>, layer: usize) -> Vec<&'a String> {
    let prefix = format!("blk.{layer}.");
    let mut names: Vec<&String> = keys.filter(|n| n.starts_with(&prefix)).collect();
    names.sort();
    names
}

fn ggml_entry(rec: &mut LayerRecord, key: String, name: &str, ty: GgmlType, rows: usize, bytes: &[u8]) -> Value {
    rec.put_u8(key, bytes);
    json!({"name": name, "type": ty.name(), "rows": rows})
}

/// `(type, rows, blocks)` of a GGML entry, `None` for an integer one.
fn ggml_of(rec: &LayerRecord, key: &str, e: &Value) -> Result<Option<(GgmlType, usize, Vec<u8>)>> {
    let Some(t) = e["type"].as_str() else { return Ok(None) };
    let ty = GgmlType::parse(t).ok_or_else(|| bad("a GGML type"))?;
    let rows = e["rows"].as_u64().ok_or_else(|| bad("rows"))? as usize;
    Ok(Some((ty, rows, rec.u8(key)?)))
}

fn entries<'r>(rec: &'r LayerRecord, key: &str) -> Result<&'r Vec<Value>> {
    rec.meta.get(key).and_then(Value::as_array).ok_or_else(|| bad(key))
}

fn log_field<T: serde::de::DeserializeOwned>(rec: &LayerRecord, log: &str, field: &str) -> Result<T> {
    let v = rec.meta.get(log).and_then(|l| l.get(field)).ok_or_else(|| bad(field))?;
    serde_json::from_value(v.clone()).map_err(|_| bad(field))
}

pub fn save_gptq(m: &GptqMethod, layer: usize, rec: &mut LayerRecord) {
    let mut list = Vec::new();
    for name in layer_names(m.results.keys(), layer) {
        let key = |part: &str| format!("gptq/{name}/{part}");
        list.push(match &m.results[name] {
            Solved::Int(q) => {
                rec.put_u8(key("codes"), &q.codes);
                rec.put_f32(key("scales"), &q.scales);
                rec.put_u8(key("zeros"), &q.zeros);
                rec.put_u32(key("g_idx"), &q.g_idx);
                json!({"name": name, "bits": q.bits, "group_size": q.group_size})
            }
            Solved::Ggml { ty, rows, bytes } => ggml_entry(rec, key("blocks"), name, *ty, *rows, bytes),
        });
    }
    rec.meta.insert("gptq_results".into(), Value::from(list));
    rec.meta.insert("gptq_log".into(), json!({"notes": m.notes, "losses": m.losses, "guarded": m.guarded}));
}

pub fn load_gptq(m: &mut GptqMethod, rec: &LayerRecord) -> Result<()> {
    m.results.extend(gptq_results(rec)?);
    m.notes = log_field(rec, "gptq_log", "notes")?;
    m.losses = log_field(rec, "gptq_log", "losses")?;
    m.guarded = log_field(rec, "gptq_log", "guarded")?;
    Ok(())
}

/// GPTQ's results in a layer record, by GGUF name.
pub fn gptq_results(rec: &LayerRecord) -> Result<Vec<(String, Solved)>> {
    let mut out = Vec::new();
    for e in entries(rec, "gptq_results")? {
        let name = e["name"].as_str().ok_or_else(|| bad("a result name"))?;
        let key = |part: &str| format!("gptq/{name}/{part}");
        let solved = match ggml_of(rec, &key("blocks"), e)? {
            Some((ty, rows, bytes)) => Solved::Ggml { ty, rows, bytes },
            None => Solved::Int(IntQuant {
                bits: e["bits"].as_u64().ok_or_else(|| bad("bits"))? as u8,
                group_size: e["group_size"].as_u64().ok_or_else(|| bad("group_size"))? as usize,
                codes: rec.u8(&key("codes"))?,
                scales: rec.f32(&key("scales"))?,
                zeros: rec.u8(&key("zeros"))?,
                g_idx: rec.u32(&key("g_idx"))?,
            }),
        };
        out.push((name.to_string(), solved));
    }
    Ok(out)
}

// Deliberately the shape of save_gptq / load_gptq: the same record layout over AWQ's own
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
