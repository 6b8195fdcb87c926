//! The quant_state JSON bitsandbytes packs into a uint8 tensor beside every 4-bit weight
//! (`<prefix>.weight.quant_state.bitsandbytes__nf4`): `QuantState.as_dict(packed=True)`'s
//! non-tensor items, `json.dumps`-ed. qforge writes the same keys in the same order and
//! format, and reads them back with every value checked.

use serde_json::Value;

use super::Bnb4Type;
use crate::error::{Error, Result};

/// Longest quant_state qforge reads (a real one is under 200 bytes).
pub const MAX_JSON_BYTES: usize = 64 * 1024;

/// Largest block size accepted when reading (bitsandbytes' kernels stop at 4096).
const MAX_BLOCKSIZE: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct QuantState {
    pub quant_type: Bnb4Type,
    pub blocksize: usize,
    /// The torch dtype the weight dequantizes to (`bfloat16`, `float16`, `float32`).
    pub dtype: String,
    /// The original weight's shape, `[out_features, in_features]`.
    pub shape: Vec<usize>,
    /// Double quantization, when the absmax values are stored in 8 bits.
    pub nested: Option<NestedState>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NestedState {
    pub blocksize: usize,
    pub dtype: String,
    pub offset: f32,
}

/// The tensor-name suffix bitsandbytes stores the state under (after `weight.`).
pub fn state_suffix(ty: Bnb4Type) -> String {
    format!("quant_state.bitsandbytes__{}", ty.name())
}

impl QuantState {
    /// The bytes `pack_dict_to_tensor` stores: `json.dumps` of the dict (Python's default
    /// `", "` and `": "` separators, keys in `as_dict` order, floats as Python's `repr`).
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let shape = self.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
        let mut s = format!(
            "{{\"quant_type\": \"{}\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{shape}]",
            self.quant_type.name(),
            self.blocksize,
            self.dtype
        );
        if let Some(n) = &self.nested {
            s += &format!(
                ", \"nested_blocksize\": {}, \"nested_dtype\": \"{}\", \"nested_offset\": {}",
                n.blocksize,
                n.dtype,
                py_float_repr(n.offset as f64)
            );
        }
        s.push('}');
        s.into_bytes()
    }

    /// Parse and check a stored state. `name` is the weight's name, for errors.
    pub fn from_json_bytes(name: &str, bytes: &[u8]) -> Result<QuantState> {
        let bad = |msg: String| Error::tensor(name, format!("bitsandbytes quant_state: {msg}"));
        if bytes.len() > MAX_JSON_BYTES {
            return Err(bad(format!("{} bytes (at most {MAX_JSON_BYTES} expected)", bytes.len())));
        }
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        let obj = v.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
        let str_key = |k: &str| -> Result<&str> {
            obj.get(k).and_then(Value::as_str).ok_or_else(|| bad(format!("no string `{k}`")))
        };
        let uint_key = |k: &str| -> Result<usize> {
            obj.get(k)
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| bad(format!("no non-negative integer `{k}`")))
        };
        let qt = str_key("quant_type")?;
        let quant_type = Bnb4Type::parse(qt).ok_or_else(|| {
            Error::Unsupported(format!("tensor {name}: bitsandbytes quant_type {qt:?} (qforge reads nf4 and fp4)"))
        })?;
        let blocksize = uint_key("blocksize")?;
        if !blocksize.is_power_of_two() || !(2..=MAX_BLOCKSIZE).contains(&blocksize) {
            return Err(bad(format!("blocksize {blocksize} (a power of two up to {MAX_BLOCKSIZE} expected)")));
        }
        let dtype = str_key("dtype")?;
        check_dtype(dtype).map_err(|m| bad(format!("dtype: {m}")))?;
        let shape_v = obj.get("shape").and_then(Value::as_array).ok_or_else(|| bad("no `shape` list".into()))?;
        if shape_v.len() != 2 {
            return Err(bad(format!("shape has {} dimensions; qforge reads 2-D weights", shape_v.len())));
        }
        let shape = shape_v
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()).filter(|&d| d > 0))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad(format!("shape {shape_v:?} is not a list of positive integers")))?;
        if shape[0].checked_mul(shape[1]).is_none_or(|n| n > isize::MAX as usize / 4) {
            return Err(bad(format!("shape {shape:?} is absurdly large")));
        }
        let nested_keys = ["nested_blocksize", "nested_dtype", "nested_offset"];
        let present = nested_keys.iter().filter(|k| obj.contains_key(**k)).count();
        let nested = match present {
            0 => None,
            3 => {
                let nb = uint_key("nested_blocksize")?;
                if nb == 0 || nb > MAX_BLOCKSIZE {
                    return Err(bad(format!("nested_blocksize {nb} (1 to {MAX_BLOCKSIZE} expected)")));
                }
                let nd = str_key("nested_dtype")?;
                check_dtype(nd).map_err(|m| bad(format!("nested_dtype: {m}")))?;
                let off = obj
                    .get("nested_offset")
                    .and_then(Value::as_f64)
                    .filter(|o| o.is_finite() && o.abs() <= f32::MAX as f64)
                    .ok_or_else(|| bad("nested_offset is not a finite number".into()))?;
                Some(NestedState { blocksize: nb, dtype: nd.to_string(), offset: off as f32 })
            }
            _ => return Err(bad(format!("only some of {nested_keys:?} are present"))),
        };
        Ok(QuantState { quant_type, blocksize, dtype: dtype.to_string(), shape, nested })
    }
}

fn check_dtype(d: &str) -> std::result::Result<(), String> {
    match d {
        "bfloat16" | "float16" | "float32" => Ok(()),
        other => Err(format!("{other:?} (bfloat16, float16 or float32 expected)")),
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, in scientific notation when
/// the decimal exponent is below −4 or at least 16 (`1e-05`, `1.5e+16`), else positional with
/// at least one decimal (`0.0123`, `3.0`).
pub fn py_float_repr(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN".into()
        } else if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let sci = format!("{x:e}"); // shortest round-trip digits: "1.2345e-2", "-5e0"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if x != 0.0 && !(-4..16).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let plain = format!("{x}");
    if plain.contains('.') {
        plain
    } else {
        plain + ".0"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (x, want) in [
            (0.0, "0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (123456.0, "123456.0"),
            (1e16, "1e+16"),
            (-0.02, "-0.02"),
            (0.012345f32 as f64, "0.01234500017017126"),
        ] {
            assert_eq!(py_float_repr(x), want);
        }
    }

    #[test]
    fn json_roundtrip_matches_python_layout() {
        let s = QuantState {
            quant_type: Bnb4Type::Nf4,
            blocksize: 64,
            dtype: "bfloat16".into(),
            shape: vec![256, 768],
            nested: Some(NestedState { blocksize: 256, dtype: "float32".into(), offset: 0.25 }),
        };
        let b = s.to_json_bytes();
        assert_eq!(
            std::str::from_utf8(&b).unwrap(),
            "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [256, 768], \
             \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.25}"
        );
        assert_eq!(QuantState::from_json_bytes("w", &b).unwrap(), s);
    }

    #[test]
    fn hostile_states_are_errors() {
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{\"quant_type\": \"nf4\"}",
            b"{\"quant_type\": \"int4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [2, 2]}",
            b"{\"quant_type\": \"nf4\", \"blocksize\": 63, \"dtype\": \"float32\", \"shape\": [2, 2]}",
            b"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"int8\", \"shape\": [2, 2]}",
            b"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [2, -2]}",
            b"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [4294967296, 4294967296]}",
            b"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [2, 2], \"nested_offset\": 1}",
        ] {
            assert!(QuantState::from_json_bytes("w", bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
