//! RoPE frequency scaling: how a checkpoint stretches its rotary embedding beyond the context
//! it was trained on, read from a Hugging Face config.json (`rope_scaling`, or transformers
//! 5's `rope_parameters`) and from GGUF (`{arch}.rope.scaling.*` keys, the `rope_freqs.weight`
//! tensor), as transformers and llama.cpp compute it.
//!
//! - `linear`: every position divided by `factor` (llama.cpp: `freq_scale = 1/factor`).
//! - `llama3` (Llama 3.1–3.3, 3.2): each frequency divided by its own factor — 1 for short
//!   wavelengths, `factor` for long ones, smoothly in between. llama.cpp's converter stores
//!   those per-frequency factors as the F32 tensor `rope_freqs.weight`; qforge writes the same
//!   tensor, and reading a GGUF recovers the parameters from it (for config.json).

use serde_json::{json, Value as Json};

use crate::error::{Error, Result};

/// The GGUF tensor holding per-frequency divisors.
pub const ROPE_FREQS: &str = "rope_freqs.weight";

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f32,
    },
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_context: usize,
    },
    /// A GGUF's `rope_freqs.weight` whose values no Llama-3 parameters reproduce: the runtime
    /// uses them as they are; exporting to Hugging Face is refused.
    FreqFactors,
}

const SUPPORTED: &str = "supported: default, linear, llama3";

impl RopeScaling {
    /// From config.json: `rope_scaling` (transformers 4.x) or `rope_parameters` (5.x), whose
    /// type is `rope_type` (or the older `type`). Where a file has both, `rope_scaling` wins,
    /// as in transformers 5 (`rope_scaling or rope_parameters`).
    pub fn from_hf(json: &Json) -> Result<RopeScaling> {
        let params = match (json.get("rope_scaling"), json.get("rope_parameters")) {
            (Some(s), _) if s.is_object() => s,
            (_, Some(p)) if p.is_object() => p,
            _ => return Ok(RopeScaling::None),
        };
        let ty = params.get("rope_type").or_else(|| params.get("type")).and_then(Json::as_str).unwrap_or("default");
        let num = |key: &str| params.get(key).and_then(Json::as_f64);
        let factor = |default: Option<f64>| -> Result<f32> {
            let f = num("factor")
                .or(default)
                .ok_or_else(|| Error::InvalidModel(format!("config.json: RoPE scaling {ty:?} without a \"factor\"")))?;
            if !(f.is_finite() && f > 0.0) {
                return Err(Error::InvalidModel(format!("config.json: RoPE scaling factor {f}")));
            }
            Ok(f as f32)
        };
        match ty {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear { factor: factor(None)? }),
            "llama3" => {
                let low = num("low_freq_factor").unwrap_or(1.0);
                let high = num("high_freq_factor").unwrap_or(4.0);
                let orig = num("original_max_position_embeddings").unwrap_or(8192.0);
                if !(low.is_finite() && high.is_finite() && low > 0.0 && high > low && orig >= 1.0 && orig < 1e9) {
                    return Err(Error::InvalidModel(format!(
                        "config.json: llama3 RoPE scaling with low_freq_factor {low}, high_freq_factor {high}, \
                         original_max_position_embeddings {orig}"
                    )));
                }
                Ok(RopeScaling::Llama3 {
                    factor: factor(Some(8.0))?,
                    low_freq_factor: low as f32,
                    high_freq_factor: high as f32,
                    original_context: orig as usize,
                })
            }
            other => Err(Error::Unsupported(format!("RoPE scaling type {other:?} is not supported ({SUPPORTED})"))),
        }
    }

    /// From GGUF metadata (`scaling_type`, `scaling_factor`: the `{arch}.rope.scaling.*` keys)
    /// and the values of `rope_freqs.weight` if the file has it.
    pub fn from_gguf(
        scaling_type: Option<&str>,
        scaling_factor: Option<f64>,
        freq_factors: Option<&[f32]>,
        theta: f32,
        head_dim: usize,
    ) -> Result<RopeScaling> {
        match (scaling_type.unwrap_or("none"), freq_factors) {
            ("none", None) => Ok(RopeScaling::None),
            ("none", Some(f)) => Ok(fit_llama3(f, theta, head_dim).unwrap_or(RopeScaling::FreqFactors)),
            ("linear", None) => match scaling_factor {
                Some(f) if f.is_finite() && f > 0.0 => Ok(RopeScaling::Linear { factor: f as f32 }),
                _ => Err(Error::InvalidModel(format!("linear RoPE scaling with factor {scaling_factor:?}"))),
            },
            ("linear", Some(_)) => {
                Err(Error::Unsupported("linear RoPE scaling together with rope_freqs.weight".into()))
            }
            (other, _) => {
                Err(Error::Unsupported(format!("GGUF RoPE scaling type {other:?} is not supported ({SUPPORTED})")))
            }
        }
    }

    /// The divisor of each of the `head_dim / 2` frequencies (None: all 1), as llama.cpp's
    /// converter computes `rope_freqs.weight` (in f32, as torch does).
    pub fn freq_factors(&self, theta: f32, head_dim: usize) -> Option<Vec<f32>> {
        let RopeScaling::Llama3 { factor, low_freq_factor: low, high_freq_factor: high, original_context } = *self
        else {
            return None;
        };
        let orig = original_context as f32;
        let (low_wavelen, high_wavelen) = (orig / low, orig / high);
        Some(
            (0..head_dim / 2)
                .map(|i| {
                    let freq = 1.0 / theta.powf((2 * i) as f32 / head_dim as f32);
                    let wavelen = 2.0 * std::f32::consts::PI / freq;
                    if wavelen < high_wavelen {
                        1.0
                    } else if wavelen > low_wavelen {
                        factor
                    } else {
                        let smooth = (orig / wavelen - low) / (high - low);
                        1.0 / ((1.0 - smooth) / factor + smooth)
                    }
                })
                .collect(),
        )
    }

    /// llama.cpp's `freq_scale`: positions are multiplied by it.
    pub fn freq_scale(&self) -> f32 {
        match *self {
            RopeScaling::Linear { factor } => 1.0 / factor,
            _ => 1.0,
        }
    }

    /// The GGUF metadata entries (`rope.scaling.*`, without the architecture prefix).
    pub fn gguf_keys(&self) -> Vec<(&'static str, crate::formats::gguf::Value)> {
        use crate::formats::gguf::Value;
        match *self {
            RopeScaling::Linear { factor } => {
                vec![("rope.scaling.type", Value::String("linear".into())), ("rope.scaling.factor", Value::F32(factor))]
            }
            _ => Vec::new(),
        }
    }

    /// `rope_parameters` for config.json (`rope_theta` included), or why it cannot be written.
    pub fn hf_parameters(&self, theta: f64) -> Result<Json> {
        Ok(match *self {
            RopeScaling::None => json!({"rope_theta": theta, "rope_type": "default"}),
            RopeScaling::Linear { factor } => {
                json!({"rope_theta": theta, "rope_type": "linear", "factor": shortest(factor)})
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context } => json!({
                "rope_theta": theta, "rope_type": "llama3", "factor": shortest(factor),
                "low_freq_factor": shortest(low_freq_factor), "high_freq_factor": shortest(high_freq_factor),
                "original_max_position_embeddings": original_context,
            }),
            RopeScaling::FreqFactors => {
                return Err(Error::Unsupported(
                    "this GGUF's rope_freqs.weight matches no Llama-3 RoPE scaling parameters, which config.json \
                     would need"
                        .into(),
                ))
            }
        })
    }
}

fn shortest(x: f32) -> f64 {
    format!("{x}").parse().unwrap_or(x as f64)
}

/// The Llama-3 parameters whose factors are `f` (within f32 rounding), trying the values real
/// checkpoints use: `factor` is the largest divisor; the original context and the low/high
/// frequency factors from the Llama 3.x / 4 configurations and their powers of two.
fn fit_llama3(f: &[f32], theta: f32, head_dim: usize) -> Option<RopeScaling> {
    let factor = f.iter().copied().fold(f32::NAN, f32::max);
    if f.len() != head_dim / 2 || !(factor.is_finite() && factor > 0.0) {
        return None;
    }
    // Factors fix only the wavelengths original/low and original/high, so parameter sets that
    // scale all three alike are the same model: Llama's low 1 / high 4 is tried first.
    for (low, high) in [(1.0, 4.0), (1.0, 2.0), (1.0, 8.0), (2.0, 8.0), (1.0, 1.5)] {
        for original_context in [8192, 4096, 2048, 1024, 16384, 32768, 65536, 131072, 512, 256, 128, 64, 32, 16] {
            let s = RopeScaling::Llama3 { factor, low_freq_factor: low, high_freq_factor: high, original_context };
            let g = s.freq_factors(theta, head_dim)?;
            if g.iter().zip(f).all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0)) {
                return Some(s);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_factors_fit_back() {
        let s =
            RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_context: 8192 };
        let f = s.freq_factors(500000.0, 128).unwrap();
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0));
        assert_eq!(fit_llama3(&f, 500000.0, 128), Some(s));
        let odd: Vec<f32> = f.iter().map(|x| x * 1.01).collect();
        assert_eq!(fit_llama3(&odd, 500000.0, 128), None);
    }

    #[test]
    fn unknown_types_are_refused_by_name() {
        let e = RopeScaling::from_hf(&json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})).unwrap_err();
        assert!(e.to_string().contains("\"yarn\"") && e.to_string().contains("llama3"), "{e}");
        let top = json!({"rope_scaling": {"type": "linear", "factor": 2.0}});
        assert_eq!(RopeScaling::from_hf(&top).unwrap(), RopeScaling::Linear { factor: 2.0 });
    }
}
