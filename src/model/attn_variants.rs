//! Gemma's attention variants, read from config.json and GGUF metadata and written back:
//! sliding-window layers (and Gemma 3's local RoPE base), soft-capping of attention scores and
//! logits, and the query scale; Phi-3's window on every layer. Architectures whose
//! [`ArchSpec`](super::arch::ArchSpec) has no sliding window get the plain default, as llama.cpp
//! runs them (Mistral's `sliding_window` is ignored by llama.cpp's `llama` architecture too).

use serde_json::{json, Value as Json};

use crate::error::{Error, Result};
use crate::formats::gguf::{Array, GgufHeader, Value};
use crate::model::arch::Arch;

/// llama.cpp's RoPE base for sliding-window layers when GGUF names none (`rope_freq_base_train_swa`).
const LLAMA_CPP_SWA_THETA: f32 = 10000.0;

/// Gemma's attention variants: sliding-window layers (with their own RoPE base in Gemma 3),
/// soft-capped attention scores and logits, a query scale other than 1/√head_dim.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttnVariants {
    /// Tokens a sliding-window layer sees, its own included (`sliding_window`).
    pub sliding_window: Option<usize>,
    /// Per layer: whether it is a sliding-window layer (empty: none is).
    pub swa_layers: Vec<bool>,
    /// Attention scores become `cap·tanh(s/cap)` before the softmax.
    pub attn_softcap: Option<f32>,
    /// Logits become `cap·tanh(l/cap)`.
    pub final_softcap: Option<f32>,
    /// q·k is multiplied by this instead of 1/√head_dim (Gemma: query_pre_attn_scalar^-½).
    pub query_scale: Option<f32>,
    /// RoPE base of the sliding-window layers, which then run without RoPE scaling (Gemma 3's
    /// local layers); `None`: they rotate as the global ones.
    pub swa_rope_theta: Option<f32>,
}

/// llama.cpp's sliding-window layers for a pattern of `p`: all but every p-th layer.
fn pattern_layers(p: usize, n_layers: usize) -> Vec<bool> {
    (0..n_layers).map(|i| p == 0 || i % p < p - 1).collect()
}

/// query_pre_attn_scalar from a query scale (its -½ power), as the integer it nearly always is.
pub fn scalar_of(scale: f32) -> f64 {
    let v = 1.0 / (scale as f64 * scale as f64);
    if (v - v.round()).abs() < 1e-3 {
        v.round()
    } else {
        v
    }
}

fn positive(what: &str, v: Option<f64>) -> Result<Option<f32>> {
    match v {
        None => Ok(None),
        Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x as f32)),
        Some(x) => Err(Error::InvalidModel(format!("{what} = {x}"))),
    }
}

impl AttnVariants {
    /// A window on every layer (Phi-3), or none.
    fn every_layer(sliding_window: Option<usize>, n_layers: usize) -> AttnVariants {
        AttnVariants { sliding_window, swa_layers: vec![sliding_window.is_some(); n_layers], ..Default::default() }
    }

    /// Whether layer `li` attends through the sliding window.
    pub fn is_swa(&self, li: usize) -> bool {
        self.sliding_window.is_some() && self.swa_layers.get(li).copied().unwrap_or(false)
    }

    /// From config.json, transformers 4 (`sliding_window_pattern`, `rope_local_base_freq`) or 5
    /// (`layer_types`, per-layer-type `rope_parameters`).
    pub fn from_hf(json: &Json, arch: Arch, n_layers: usize) -> Result<AttnVariants> {
        let spec = arch.spec();
        let bad = |m: String| Error::InvalidModel(format!("config.json: {m}"));
        let window = || -> Result<Option<usize>> {
            match json.get("sliding_window") {
                None | Some(Json::Null) => Ok(None),
                Some(v) => {
                    Ok(Some(v.as_u64().filter(|&w| w > 0).ok_or_else(|| bad(format!("sliding_window {v}")))? as usize))
                }
            }
        };
        if spec.swa_every_layer {
            return Ok(AttnVariants::every_layer(window()?, n_layers));
        }
        if spec.swa_pattern == 0 {
            return Ok(AttnVariants::default());
        }
        let num = |k: &str| json.get(k).and_then(Json::as_f64);
        let sliding_window = window()?;
        let swa_layers = match json.get("layer_types").and_then(Json::as_array) {
            Some(types) => {
                if types.len() != n_layers {
                    return Err(bad(format!("{} layer_types for {n_layers} layers", types.len())));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("sliding_attention") => Ok(true),
                        Some("full_attention") => Ok(false),
                        _ => Err(Error::Unsupported(format!("config.json: layer type {t}"))),
                    })
                    .collect::<Result<Vec<bool>>>()?
            }
            None => {
                let p = json
                    .get("sliding_window_pattern")
                    .or_else(|| json.get("_sliding_window_pattern"))
                    .and_then(Json::as_u64)
                    .map_or(spec.swa_pattern, |p| p as usize);
                pattern_layers(p, n_layers)
            }
        };
        let attn_softcap = positive("attn_logit_softcapping", num("attn_logit_softcapping"))?;
        if attn_softcap.is_some() && arch == Arch::Gemma3 {
            return Err(Error::Unsupported(
                "Gemma 3 with attn_logit_softcapping (llama.cpp's gemma3 has no attention soft-capping)".into(),
            ));
        }
        let query_scale = positive("query_pre_attn_scalar", num("query_pre_attn_scalar"))?.map(|s| 1.0 / s.sqrt());
        let swa_rope_theta = if spec.swa_own_rope {
            let local = json.get("rope_parameters").and_then(|r| r.get("sliding_attention"));
            if let Some(ty) = local.and_then(|l| l.get("rope_type")).and_then(Json::as_str) {
                if ty != "default" {
                    return Err(Error::Unsupported(format!(
                        "RoPE scaling {ty:?} on sliding-window layers (llama.cpp scales only the global ones)"
                    )));
                }
            }
            let theta = local.and_then(|l| l.get("rope_theta")).and_then(Json::as_f64).or(num("rope_local_base_freq"));
            Some(positive("rope_local_base_freq", theta)?.unwrap_or(LLAMA_CPP_SWA_THETA))
        } else {
            None
        };
        Ok(AttnVariants {
            sliding_window,
            swa_layers,
            attn_softcap,
            final_softcap: positive("final_logit_softcapping", num("final_logit_softcapping"))?,
            query_scale,
            swa_rope_theta,
        })
    }

    /// From GGUF metadata, with llama.cpp's defaults where a key is absent.
    pub fn from_gguf(
        h: &GgufHeader,
        arch: Arch,
        n_layers: usize,
        hidden: usize,
        n_heads: usize,
        head_dim: usize,
    ) -> Result<AttnVariants> {
        let spec = arch.spec();
        let a = spec.gguf_name;
        let get = |k: &str| h.get(&format!("{a}.{k}"));
        if spec.swa_every_layer {
            let w = get("attention.sliding_window").and_then(Value::as_u64).filter(|&w| w > 0);
            return Ok(AttnVariants::every_layer(w.map(|w| w as usize), n_layers));
        }
        if spec.swa_pattern == 0 {
            return Ok(AttnVariants::default());
        }
        let f = |k: &str| get(k).and_then(Value::as_f64);
        let gemma2 = arch == Arch::Gemma2;
        let sliding_window = match get("attention.sliding_window").and_then(Value::as_u64) {
            Some(0) => None,
            Some(w) => Some(w as usize),
            None if gemma2 => Some(4096),
            None => None,
        };
        let swa_layers = match get("attention.sliding_window_pattern") {
            Some(Value::Array(items)) => {
                let layers: Vec<bool> =
                    items.iter().filter_map(|v| v.as_bool().or_else(|| v.as_u64().map(|b| b != 0))).collect();
                if layers.len() != n_layers {
                    return Err(Error::InvalidModel(format!(
                        "{a}.attention.sliding_window_pattern lists {} layers of {n_layers}",
                        items.len()
                    )));
                }
                layers
            }
            Some(v) => pattern_layers(v.as_u64().unwrap_or(spec.swa_pattern as u64) as usize, n_layers),
            None => pattern_layers(spec.swa_pattern, n_layers),
        };
        // llama.cpp applies Gemma 2's caps always (defaults 50 and 30), Gemma 3's logit cap
        // only when the key is there and not 0.
        let attn_softcap = if gemma2 { Some(f("attn_logit_softcapping").unwrap_or(50.0)) } else { None };
        let final_softcap = match f("final_logit_softcapping") {
            Some(c) if c != 0.0 => Some(c),
            Some(_) => None,
            None if gemma2 => Some(30.0),
            None => None,
        };
        let swa_rope_theta =
            spec.swa_own_rope.then(|| f("rope.freq_base_swa").map_or(LLAMA_CPP_SWA_THETA, |t| t as f32));
        Ok(AttnVariants {
            sliding_window,
            swa_layers,
            attn_softcap: positive(&format!("{a}.attn_logit_softcapping"), attn_softcap)?,
            final_softcap: positive(&format!("{a}.final_logit_softcapping"), final_softcap)?,
            query_scale: Some(Self::llama_cpp_query_scale(arch, n_layers, hidden, n_heads, head_dim)),
            swa_rope_theta: positive(&format!("{a}.rope.freq_base_swa"), swa_rope_theta.map(f64::from))?,
        })
    }

    /// The query scale llama.cpp uses for a GGUF of this model, which does not store it:
    /// 1/√(hidden/heads) for the 27B models (told apart by layer count), 1/√head_dim otherwise.
    pub fn llama_cpp_query_scale(arch: Arch, n_layers: usize, hidden: usize, n_heads: usize, head_dim: usize) -> f32 {
        let big = (arch == Arch::Gemma2 && n_layers == 46) || (arch == Arch::Gemma3 && n_layers == 62);
        let scalar = if big { hidden.checked_div(n_heads).unwrap_or(head_dim) } else { head_dim };
        1.0 / (scalar.max(1) as f32).sqrt()
    }

    /// The GGUF keys (without the `{arch}.` prefix) as llama.cpp's converter writes them, plus
    /// what llama.cpp reads but its converter leaves out: the layer list when it is not the
    /// default pattern.
    pub fn gguf_keys(&self, arch: Arch, n_layers: usize) -> Vec<(&'static str, Value)> {
        let spec = arch.spec();
        let mut keys = Vec::new();
        if spec.swa_every_layer {
            // llama.cpp's converter writes Phi-3's window, 0 for "none"; for `llama` models it
            // writes none, and qforge only writes one there is.
            match (self.sliding_window, spec.fused_linears) {
                (w, true) => keys.push(("attention.sliding_window", Value::U32(w.unwrap_or(0) as u32))),
                (Some(w), false) => keys.push(("attention.sliding_window", Value::U32(w as u32))),
                (None, false) => {}
            }
            return keys;
        }
        if spec.swa_pattern == 0 {
            return keys;
        }
        if let Some(c) = self.attn_softcap {
            keys.push(("attn_logit_softcapping", Value::F32(c)));
        }
        if let Some(c) = self.final_softcap {
            keys.push(("final_logit_softcapping", Value::F32(c)));
        }
        if let Some(w) = self.sliding_window {
            keys.push(("attention.sliding_window", Value::U32(w as u32)));
            if self.swa_layers != pattern_layers(spec.swa_pattern, n_layers) {
                let layers = Array::Bool(self.swa_layers.clone());
                keys.push(("attention.sliding_window_pattern", Value::Array(layers)));
            }
        }
        if let Some(t) = self.swa_rope_theta {
            keys.push(("rope.freq_base_swa", Value::F32(t)));
        }
        keys
    }

    /// The config.json keys of these variants (`rope_parameters` of Gemma 3 per layer type is
    /// built by the caller, which has the global parameters).
    pub fn hf_keys(&self, arch: Arch, head_dim: usize) -> Json {
        if arch.spec().swa_every_layer {
            return json!({ "sliding_window": self.sliding_window });
        }
        if arch.spec().swa_pattern == 0 {
            return json!({});
        }
        // transformers 5 validates it as an integer, which it always is in practice.
        let scalar = self.query_scale.map_or(head_dim as f64, scalar_of);
        let scalar = if scalar.fract() == 0.0 { Json::from(scalar as i64) } else { Json::from(scalar) };
        let types: Vec<&str> =
            self.swa_layers.iter().map(|&s| if s { "sliding_attention" } else { "full_attention" }).collect();
        json!({
            "sliding_window": self.sliding_window,
            "layer_types": types,
            "attn_logit_softcapping": self.attn_softcap.map(|c| c as f64),
            "final_logit_softcapping": self.final_softcap.map(|c| c as f64),
            "query_pre_attn_scalar": scalar,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_llama_cpps() {
        // Gemma 2: even layers slide; Gemma 3: five local layers, then a global one.
        assert_eq!(pattern_layers(2, 4), vec![true, false, true, false]);
        assert_eq!(pattern_layers(6, 7), vec![true, true, true, true, true, false, true]);
        assert_eq!(pattern_layers(1, 3), vec![false, false, false]);
    }

    #[test]
    fn transformers_4_and_5_configs_agree() {
        let v4 = json!({"sliding_window": 16, "sliding_window_pattern": 3, "rope_local_base_freq": 500.0,
                        "query_pre_attn_scalar": 64, "final_logit_softcapping": null});
        let v5 = json!({"sliding_window": 16, "query_pre_attn_scalar": 64,
                        "layer_types": ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
                        "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 500.0},
                                            "full_attention": {"rope_type": "default", "rope_theta": 1e6}}});
        let a = AttnVariants::from_hf(&v4, Arch::Gemma3, 4).unwrap();
        let b = AttnVariants::from_hf(&v5, Arch::Gemma3, 4).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.swa_rope_theta, Some(500.0));
        assert_eq!(a.query_scale, Some(0.125));
        assert!(a.is_swa(0) && !a.is_swa(2));
        // Qwen2 has no sliding-window layers (use_sliding_window is refused elsewhere);
        // Mistral's window covers every layer.
        assert_eq!(AttnVariants::from_hf(&v5, Arch::Qwen2, 4).unwrap(), AttnVariants::default());
        let mistral = AttnVariants::from_hf(&v5, Arch::Mistral, 4).unwrap();
        assert_eq!((mistral.sliding_window, mistral.swa_layers), (Some(16), vec![true; 4]));
        assert_eq!(mistral.query_scale, None);
        let bad = json!({"layer_types": ["chunked_attention"]});
        assert!(AttnVariants::from_hf(&bad, Arch::Gemma2, 1).is_err());
    }
}
