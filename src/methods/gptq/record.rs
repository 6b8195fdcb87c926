//! GPTQ's fields of a `--resume` layer record (layout: `methods::resume`).

use serde_json::{json, Value};

use super::{GptqMethod, Solved};
use crate::calib::resume::LayerRecord;
use crate::error::Result;
use crate::methods::resume::{bad, entries, ggml_entry, ggml_of, layer_names, log_field};
use crate::quant::gptq::IntQuant;

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
