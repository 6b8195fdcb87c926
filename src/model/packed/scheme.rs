//! Which packed layout a Hugging Face checkpoint uses, from `quantization_config` in its
//! config.json.

use serde_json::Value;

use super::bad;
use super::bnb::{self, BnbScheme};
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Scheme {
    /// AutoGPTQ / GPTQModel: `qweight` int32 [cols·bits/32, rows] packed along the input
    /// dimension (lowest index in the lowest bits), `qzeros` int32 [groups, rows·bits/32],
    /// `scales` f16 [groups, rows], `g_idx` int32 [cols].
    Gptq {
        bits: u8,
        /// Input columns per group (`cols` when the config says -1).
        group_size: Option<usize>,
        sym: bool,
        desc_act: bool,
        /// `checkpoint_format` "gptq_v2" stores the zero point itself; "gptq" (v1, what
        /// AutoGPTQ writes) stores zero − 1.
        v2: bool,
    },
    /// bitsandbytes 4-bit (NF4 / FP4), see `bnb.rs`.
    Bnb(BnbScheme),
    /// AutoAWQ "gemm": `qweight` int32 [cols, rows/8] packed along the output dimension in
    /// the order [0, 2, 4, 6, 1, 3, 5, 7], `qzeros` int32 [groups, rows/8] the same way,
    /// `scales` f16 [groups, rows]; asymmetric 4-bit (see `awq.rs`).
    Awq {
        /// Input columns per group (`cols` when the config says -1).
        group_size: Option<usize>,
    },
}

impl Scheme {
    /// The scheme of a checkpoint, `None` for an unquantized one.
    pub fn from_config(config: &Value) -> Result<Option<Scheme>> {
        // transformers 5 writes `"quantization_config": null` when a model loaded from a
        // quantized file is saved with its quantization cleared (the usual way to dequantize).
        let Some(q) = config.get("quantization_config").filter(|q| !q.is_null()) else { return Ok(None) };
        let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("");
        let int = |k: &str| q.get(k).and_then(Value::as_i64);
        match method {
            "gptq" => {
                let bits = int("bits").ok_or_else(|| bad("gptq", "no integer `bits`"))?;
                if ![2, 3, 4, 8].contains(&bits) {
                    return Err(Error::Unsupported(format!("GPTQ with {bits} bits (qforge reads 2, 3, 4 and 8)")));
                }
                let group_size = match int("group_size").unwrap_or(-1) {
                    -1 => None,
                    g if g > 0 => Some(g as usize),
                    g => return Err(bad("gptq", &format!("group_size {g}"))),
                };
                let format = q.get("checkpoint_format").and_then(Value::as_str).unwrap_or("gptq");
                let v2 = match format {
                    "gptq" => false,
                    "gptq_v2" => true,
                    other => {
                        return Err(Error::Unsupported(format!(
                            "GPTQ checkpoint_format {other:?} (qforge reads \"gptq\" and \"gptq_v2\")"
                        )))
                    }
                };
                Ok(Some(Scheme::Gptq {
                    bits: bits as u8,
                    group_size,
                    sym: q.get("sym").and_then(Value::as_bool).unwrap_or(true),
                    desc_act: q.get("desc_act").and_then(Value::as_bool).unwrap_or(false),
                    v2,
                }))
            }
            "bitsandbytes" => bnb::from_config(q).map(|b| Some(Scheme::Bnb(b))),
            "awq" => super::awq::from_config(q),
            "" => Err(bad("?", "no `quant_method`")),
            other => Err(Error::Unsupported(format!("quantization method {other:?} is not supported"))),
        }
    }

    /// The suffixes (after the layer prefix) of the tensors that make up one packed weight;
    /// the first one identifies a packed layer.
    pub fn suffixes(&self) -> &'static [&'static str] {
        match self {
            Scheme::Gptq { .. } => &["qweight", "qzeros", "scales", "g_idx"],
            Scheme::Bnb(_) => bnb::suffixes(),
            Scheme::Awq { .. } => &["qweight", "qzeros", "scales"],
        }
    }

    /// If `hf_name` is part of a packed weight: its layer prefix and its suffix.
    /// `dtype_of` gives the dtype of a tensor in the checkpoint (`None`: no such tensor).
    pub fn split_packed<'n>(
        &self,
        hf_name: &'n str,
        dtype_of: impl Fn(&str) -> Option<safetensors::Dtype>,
    ) -> Option<(&'n str, &'n str)> {
        if let Scheme::Bnb(_) = self {
            return bnb::split_packed(hf_name, dtype_of);
        }
        self.suffixes().iter().find_map(|s| {
            let prefix = hf_name.strip_suffix(s)?.strip_suffix('.')?;
            Some((prefix, &hf_name[prefix.len() + 1..]))
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Scheme::Gptq { .. } => "gptq",
            Scheme::Bnb(_) => "bitsandbytes",
            Scheme::Awq { .. } => "awq",
        }
    }
}
