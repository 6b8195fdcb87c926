//! What GPTQ and AWQ keep of a finished layer, into and out of a `--resume` layer record
//! (`calib::resume`): the results the writers need (integer codes, scales, zero points and
//! g_idx; GGML blocks; AWQ's folded vectors) as tensors named `gptq/NAME/PART` and
//! `awq/NAME/PART`, their shapes and types in the record's JSON, and the report lines (notes,
//! losses, guard verdicts, AWQ's scale reports) as a snapshot of the whole list so far (small;
//! the last layer loaded has the list up to it).
//!
//! This module holds the record layout both methods share; each method's own fields are
//! written and read in `gptq/record.rs` and `awq/record.rs`.

use serde_json::{json, Value};

use crate::calib::resume::LayerRecord;
use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;

pub(super) fn bad(what: &str) -> Error {
    Error::InvalidModel(format!("resume record: {what} is missing or malformed"))
}

/// The names in `keys` that belong to layer `layer`, sorted (a record is the same whatever
/// the map's order).
pub(super) fn layer_names<'a>(keys: impl Iterator<Item = &'a String>, layer: usize) -> Vec<&'a String> {
    let prefix = format!("blk.{layer}.");
    let mut names: Vec<&String> = keys.filter(|n| n.starts_with(&prefix)).collect();
    names.sort();
    names
}

pub(super) fn ggml_entry(
    rec: &mut LayerRecord,
    key: String,
    name: &str,
    ty: GgmlType,
    rows: usize,
    bytes: &[u8],
) -> Value {
    rec.put_u8(key, bytes);
    json!({"name": name, "type": ty.name(), "rows": rows})
}

/// `(type, rows, blocks)` of a GGML entry, `None` for an integer one.
pub(super) fn ggml_of(rec: &LayerRecord, key: &str, e: &Value) -> Result<Option<(GgmlType, usize, Vec<u8>)>> {
    let Some(t) = e["type"].as_str() else { return Ok(None) };
    let ty = GgmlType::parse(t).ok_or_else(|| bad("a GGML type"))?;
    let rows = e["rows"].as_u64().ok_or_else(|| bad("rows"))? as usize;
    Ok(Some((ty, rows, rec.u8(key)?)))
}

pub(super) fn entries<'r>(rec: &'r LayerRecord, key: &str) -> Result<&'r Vec<Value>> {
    rec.meta.get(key).and_then(Value::as_array).ok_or_else(|| bad(key))
}

pub(super) fn log_field<T: serde::de::DeserializeOwned>(rec: &LayerRecord, log: &str, field: &str) -> Result<T> {
    let v = rec.meta.get(log).and_then(|l| l.get(field)).ok_or_else(|| bad(field))?;
    serde_json::from_value(v.clone()).map_err(|_| bad(field))
}
