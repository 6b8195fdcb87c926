//! bitsandbytes 4-bit checkpoints (transformers `load_in_4bit`, NF4 or FP4), as
//! `Linear4bit._save_to_state_dict` writes them. For a linear layer `<prefix>`:
//!
//! | tensor | dtype, shape |
//! |---|---|
//! | `<prefix>.weight` | uint8 `[⌈n/2⌉, 1]`: the 4-bit codes of the row-major flattened weight, first of each pair in the high nibble |
//! | `weight.absmax` | f32 `[blocks]`, or uint8 `[blocks]` with double quantization |
//! | `weight.quant_map` | f32 `[16]`: the code table (NF4 or FP4) |
//! | `weight.nested_absmax`, `weight.nested_quant_map` | f32 `[⌈blocks/256⌉]`, f32 `[256]` (double quantization only) |
//! | `weight.quant_state.bitsandbytes__nf4` (or `__fp4`) | uint8: JSON with the quant type, block size, dtype, shape and nested parameters |
//!
//! Unquantized tensors (embeddings, norms, lm_head) are plain float tensors beside them.

use safetensors::Dtype;
use serde_json::Value;

use super::{expect_part, Packed, Part, Scheme};
use crate::error::{Error, Result};
use crate::quant::bnb::state::{state_suffix, QuantState, MAX_JSON_BYTES};
use crate::quant::bnb::{self, Bnb4Type};

/// A bitsandbytes 4-bit checkpoint: what `quantization_config` says, and, once a weight's
/// parts are grouped, that weight's own quant_state.
#[derive(Debug, Clone, PartialEq)]
pub struct BnbScheme {
    /// `bnb_4bit_quant_type` (each weight's quant_state has the final word).
    pub quant_type: Bnb4Type,
    pub double_quant: bool,
    /// The weight's quant_state (set by `Packed::new`).
    pub tensor: Option<Box<QuantState>>,
}

pub(super) fn suffixes() -> &'static [&'static str] {
    &[
        "weight",
        "weight.absmax",
        "weight.quant_map",
        "weight.nested_absmax",
        "weight.nested_quant_map",
        "weight.quant_state.bitsandbytes__nf4",
        "weight.quant_state.bitsandbytes__fp4",
    ]
}

/// `quantization_config` with `quant_method: "bitsandbytes"` (transformers' BitsAndBytesConfig).
pub(super) fn from_config(q: &Value) -> Result<BnbScheme> {
    let flag = |k: &str| q.get(k).or_else(|| q.get(format!("_{k}"))).and_then(Value::as_bool).unwrap_or(false);
    if flag("load_in_8bit") {
        return Err(Error::Unsupported(
            "8-bit bitsandbytes (LLM.int8, load_in_8bit) checkpoints are not supported; qforge reads the 4-bit \
             (load_in_4bit) NF4 and FP4 ones"
                .into(),
        ));
    }
    if !flag("load_in_4bit") {
        return Err(Error::InvalidModel(
            "quantization_config (bitsandbytes): neither load_in_4bit nor load_in_8bit is true".into(),
        ));
    }
    // transformers' default quant type is fp4.
    let qt = q.get("bnb_4bit_quant_type").and_then(Value::as_str).unwrap_or("fp4");
    let quant_type = Bnb4Type::parse(qt).ok_or_else(|| {
        Error::Unsupported(format!("bitsandbytes bnb_4bit_quant_type {qt:?} (qforge reads nf4 and fp4)"))
    })?;
    let storage = q.get("bnb_4bit_quant_storage").and_then(Value::as_str).unwrap_or("uint8");
    if storage != "uint8" {
        return Err(Error::Unsupported(format!(
            "bitsandbytes bnb_4bit_quant_storage {storage:?} (qforge reads uint8 storage)"
        )));
    }
    let double_quant = q.get("bnb_4bit_use_double_quant").and_then(Value::as_bool).unwrap_or(false);
    Ok(BnbScheme { quant_type, double_quant, tensor: None })
}

/// Whether `hf_name` belongs to a 4-bit weight: the parts after `.weight.` always; the
/// `weight` itself when a quant_state sits beside it or it is uint8 (a float `.weight` with
/// no quant_state, such as a norm or the embeddings, stays a plain tensor).
pub(super) fn split_packed(hf_name: &str, dtype_of: impl Fn(&str) -> Option<Dtype>) -> Option<(&str, &str)> {
    if let Some(prefix) = hf_name.strip_suffix(".weight") {
        let has_state = [Bnb4Type::Nf4, Bnb4Type::Fp4]
            .iter()
            .any(|&t| dtype_of(&format!("{prefix}.weight.{}", state_suffix(t))).is_some());
        let is_u8 = dtype_of(hf_name) == Some(Dtype::U8);
        return (has_state || is_u8).then_some((prefix, "weight"));
    }
    let at = hf_name.find(".weight.")?;
    let suffix = &hf_name[at + 1..];
    suffixes()[1..].contains(&suffix).then_some((&hf_name[..at], suffix))
}

/// Read the weight's quant_state and keep it in the scheme.
pub(super) fn with_tensor_state(name: &str, mut scheme: BnbScheme, parts: &[Part<'_>]) -> Result<BnbScheme> {
    let states: Vec<&Part<'_>> = parts.iter().filter(|p| p.suffix.starts_with("weight.quant_state.")).collect();
    let st = match states.as_slice() {
        [one] => *one,
        [] => {
            return Err(Error::tensor(
                name,
                "the 4-bit weight has no `weight.quant_state.bitsandbytes__nf4` (or `__fp4`) tensor",
            ))
        }
        _ => return Err(Error::tensor(name, "the 4-bit weight has both an nf4 and an fp4 quant_state")),
    };
    if st.dtype != Dtype::U8 || st.shape.len() != 1 || st.data.len() != st.shape[0] {
        return Err(Error::tensor(
            name,
            format!("quant_state has dtype {:?} shape {:?}, expected uint8 [len]", st.dtype, st.shape),
        ));
    }
    if st.data.len() > MAX_JSON_BYTES {
        return Err(Error::tensor(
            name,
            format!("quant_state is {} bytes, at most {MAX_JSON_BYTES} expected", st.data.len()),
        ));
    }
    let state = QuantState::from_json_bytes(name, st.data)?;
    if st.suffix != format!("weight.{}", state_suffix(state.quant_type)) {
        return Err(Error::tensor(name, format!("`{}` holds a {} state", st.suffix, state.quant_type.name())));
    }
    scheme.tensor = Some(Box::new(state));
    Ok(scheme)
}

fn state<'p>(p: &'p Packed<'_>) -> Option<&'p QuantState> {
    match &p.scheme {
        Scheme::Bnb(b) => b.tensor.as_deref(),
        _ => None,
    }
}

/// `(rows, cols)` from the quant_state's shape.
pub(super) fn shape(name: &str, scheme: &BnbScheme) -> Result<(usize, usize)> {
    let s = scheme.tensor.as_deref().ok_or_else(|| Error::tensor(name, "no quant_state"))?;
    Ok((s.shape[0], s.shape[1]))
}

/// Check every part against the quant_state, so that decoding can index without checks.
pub(super) fn validate(name: &str, p: &Packed<'_>) -> Result<()> {
    let s = state(p).ok_or_else(|| Error::tensor(name, "no quant_state"))?;
    let n = p.rows * p.cols;
    let blocks = bnb::n_blocks(n, s.blocksize);
    if let Some(extra) = p.parts.iter().find(|q| q.suffix.starts_with("weight.nested_")) {
        if s.nested.is_none() {
            return Err(Error::tensor(
                name,
                format!("`{}` is present but the quant_state has no nested_* keys", extra.suffix),
            ));
        }
    }
    let w = expect_part(name, &p.parts, "weight", &[Dtype::U8], None)?;
    if w.shape != [n.div_ceil(2), 1] && w.shape != [n.div_ceil(2)] {
        return Err(Error::tensor(
            name,
            format!("4-bit `weight` has shape {:?}; {n} weights ({:?}) need [{}, 1]", w.shape, s.shape, n.div_ceil(2)),
        ));
    }
    let qmap = expect_part(name, &p.parts, "weight.quant_map", &[Dtype::F32], Some(&[16]))?;
    // bitsandbytes' kernels decode with their built-in table whatever quant_map says; a map
    // that differs would decode differently elsewhere, so refuse it rather than guess.
    let table = s.quant_type.table();
    if let Some(k) = (0..16).find(|&k| (qmap.f32_at(k) - table[k]).abs() > 1e-6) {
        return Err(Error::Unsupported(format!(
            "tensor {name}: quant_map[{k}] = {} is not bitsandbytes' {} value {}",
            qmap.f32_at(k),
            s.quant_type.name(),
            table[k]
        )));
    }
    match &s.nested {
        None => {
            let a = expect_part(name, &p.parts, "weight.absmax", &[Dtype::F32], Some(&[blocks]))?;
            if let Some(b) = (0..blocks).find(|&b| !a.f32_at(b).is_finite()) {
                return Err(Error::tensor(name, format!("absmax[{b}] is {}", a.f32_at(b))));
            }
        }
        Some(nested) => {
            expect_part(name, &p.parts, "weight.absmax", &[Dtype::U8], Some(&[blocks]))?;
            let nb = blocks.div_ceil(nested.blocksize);
            let na = expect_part(name, &p.parts, "weight.nested_absmax", &[Dtype::F32], Some(&[nb]))?;
            let code = expect_part(name, &p.parts, "weight.nested_quant_map", &[Dtype::F32], Some(&[256]))?;
            if let Some(b) = (0..nb).find(|&b| !na.f32_at(b).is_finite()) {
                return Err(Error::tensor(name, format!("nested_absmax[{b}] is {}", na.f32_at(b))));
            }
            if let Some(k) = (0..256).find(|&k| !code.f32_at(k).is_finite()) {
                return Err(Error::tensor(name, format!("nested_quant_map[{k}] is {}", code.f32_at(k))));
            }
        }
    }
    if let Some(q) = p.parts.iter().find(|q| !suffixes().contains(&q.suffix.as_str())) {
        return Err(Error::tensor(name, format!("unexpected part `{}`", q.suffix)));
    }
    Ok(())
}

/// Decode rows `r0..r0+n`: elements `r0·cols …` of the flattened weight.
pub(super) fn decode_rows(p: &Packed<'_>, r0: usize, n: usize, out: &mut [f32]) {
    // Parts were validated in `Packed::new`.
    let (Some(s), Some(w), Some(a)) = (state(p), p.part("weight"), p.part("weight.absmax")) else {
        return;
    };
    let out = &mut out[..n * p.cols];
    let start = r0 * p.cols;
    match &s.nested {
        None => bnb::dequantize_range(s.quant_type, w.data, |b| a.f32_at(b), s.blocksize, start, out),
        Some(nested) => {
            let (Some(na), Some(cm)) = (p.part("weight.nested_absmax"), p.part("weight.nested_quant_map")) else {
                return;
            };
            let code: [f32; 256] = std::array::from_fn(|k| cm.f32_at(k));
            let absmax = |b: usize| code[a.data[b] as usize] * na.f32_at(b / nested.blocksize) + nested.offset;
            bnb::dequantize_range(s.quant_type, w.data, absmax, s.blocksize, start, out)
        }
    }
}
