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
//! - `yarn` (Qwen2.5 and others): frequencies blended between interpolated (÷ factor) and
//!   original along a ramp between the "correction dimensions" of `beta_fast`/`beta_slow`, and
//!   cos/sin multiplied by 0.1·ln(factor) + 1. transformers and llama.cpp agree on this when the
//!   config sets no `attention_factor`/`mscale` of its own (they then differ, so those are
//!   refused).
//! - `longrope` (Phi-3, older configs: `su`): each frequency divided by its own factor from
//!   `short_factor` while the sequence stays within `original_max_position_embeddings` and
//!   from `long_factor` beyond it, cos/sin multiplied by an attention factor. llama.cpp's
//!   converter stores the factors as `rope_factors_short.weight`/`rope_factors_long.weight`
//!   and the attention factor as `rope.scaling.attn_factor`.

use serde_json::{json, Value as Json};

use crate::error::{Error, Result};

/// The GGUF tensor holding per-frequency divisors.
pub const ROPE_FREQS: &str = "rope_freqs.weight";

/// The GGUF tensors holding LongRoPE's per-frequency divisors.
pub const ROPE_FACTORS_LONG: &str = "rope_factors_long.weight";
pub const ROPE_FACTORS_SHORT: &str = "rope_factors_short.weight";

/// The `{arch}.rope.scaling.*` keys of a GGUF.
#[derive(Debug, Clone, Default)]
pub struct GgufRopeKeys {
    pub scaling_type: Option<String>,
    pub factor: Option<f64>,
    pub original_context: Option<usize>,
    pub yarn_beta_fast: Option<f64>,
    pub yarn_beta_slow: Option<f64>,
    pub yarn_attn_factor: Option<f64>,
    pub yarn_ext_factor: Option<f64>,
    pub attn_factor: Option<f64>,
}

impl GgufRopeKeys {
    pub fn read(h: &crate::formats::gguf::GgufHeader, arch: &str) -> GgufRopeKeys {
        use crate::formats::gguf::Value;
        let f = |k: &str| h.get(&format!("{arch}.rope.scaling.{k}")).and_then(Value::as_f64);
        GgufRopeKeys {
            scaling_type: h.get(&format!("{arch}.rope.scaling.type")).and_then(Value::as_str).map(str::to_string),
            factor: f("factor"),
            original_context: h
                .get(&format!("{arch}.rope.scaling.original_context_length"))
                .and_then(Value::as_u64)
                .map(|v| v as usize),
            yarn_beta_fast: f("yarn_beta_fast"),
            yarn_beta_slow: f("yarn_beta_slow"),
            yarn_attn_factor: f("yarn_attn_factor"),
            yarn_ext_factor: f("yarn_ext_factor"),
            attn_factor: f("attn_factor"),
        }
    }
}

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
    Yarn {
        factor: f32,
        original_context: usize,
        beta_fast: f32,
        beta_slow: f32,
    },
    /// Phi-3's LongRoPE (see the module notes). The factor lists have one entry per rotated
    /// pair.
    LongRope {
        short: Vec<f32>,
        long: Vec<f32>,
        original_context: usize,
        attn_factor: f32,
    },
    /// A GGUF's `rope_freqs.weight` whose values no Llama-3 parameters reproduce: the runtime
    /// uses them as they are; exporting to Hugging Face is refused.
    FreqFactors,
}

const SUPPORTED: &str = "supported: default, linear, llama3, yarn, longrope";

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
                if !(low.is_finite() && high.is_finite() && low > 0.0 && high > low && (1.0..1e9).contains(&orig)) {
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
            "yarn" => {
                for key in ["attention_factor", "attn_factor", "mscale", "mscale_all_dim", "extrapolation_factor"] {
                    if params.get(key).is_some_and(|v| !v.is_null()) {
                        return Err(Error::Unsupported(format!(
                            "YaRN RoPE scaling with {key:?} (transformers and llama.cpp apply it differently; qforge \
                             supports YaRN without it)"
                        )));
                    }
                }
                if params.get("truncate").and_then(Json::as_bool) == Some(false) {
                    return Err(Error::Unsupported("YaRN RoPE scaling with \"truncate\": false".into()));
                }
                let orig = num("original_max_position_embeddings")
                    .or_else(|| json.get("original_max_position_embeddings").and_then(Json::as_f64))
                    .filter(|&o| (1.0..1e9).contains(&o))
                    .ok_or_else(|| {
                        Error::InvalidModel(
                            "config.json: YaRN RoPE scaling without original_max_position_embeddings".into(),
                        )
                    })?;
                let beta = |key: &str, default: f64| -> Result<f32> {
                    match num(key).filter(|&b| b != 0.0).unwrap_or(default) {
                        b if b.is_finite() && b > 0.0 => Ok(b as f32),
                        b => Err(Error::InvalidModel(format!("config.json: YaRN {key} {b}"))),
                    }
                };
                Ok(RopeScaling::Yarn {
                    factor: factor(None)?,
                    original_context: orig as usize,
                    beta_fast: beta("beta_fast", 32.0)?,
                    beta_slow: beta("beta_slow", 1.0)?,
                })
            }
            "longrope" | "su" => longrope_from_hf(json, params),
            other => Err(Error::Unsupported(format!("RoPE scaling type {other:?} is not supported ({SUPPORTED})"))),
        }
    }

    /// LongRoPE from GGUF: `keys` and the values of its two factor tensors.
    pub fn longrope_from_gguf(keys: &GgufRopeKeys, short: Vec<f32>, long: Vec<f32>) -> Result<RopeScaling> {
        let original_context = keys.original_context.filter(|&o| o > 0).ok_or_else(|| {
            Error::InvalidModel("LongRoPE factors without rope.scaling.original_context_length".into())
        })?;
        let attn_factor = keys.attn_factor.unwrap_or(1.0) as f32;
        if !(attn_factor.is_finite() && attn_factor > 0.0) {
            return Err(Error::InvalidModel(format!("rope.scaling.attn_factor {attn_factor}")));
        }
        check_factors(&short, &long)?;
        Ok(RopeScaling::LongRope { short, long, original_context, attn_factor })
    }

    /// From GGUF metadata (`scaling_type`, `scaling_factor`: the `{arch}.rope.scaling.*` keys)
    /// and the values of `rope_freqs.weight` if the file has it.
    pub fn from_gguf(
        keys: &GgufRopeKeys,
        freq_factors: Option<&[f32]>,
        theta: f32,
        head_dim: usize,
    ) -> Result<RopeScaling> {
        let scaling_factor = keys.factor;
        match (keys.scaling_type.as_deref().unwrap_or("none"), freq_factors) {
            ("none", None) => Ok(RopeScaling::None),
            ("none", Some(f)) => Ok(fit_llama3(f, theta, head_dim).unwrap_or(RopeScaling::FreqFactors)),
            ("linear", None) => match scaling_factor {
                Some(f) if f.is_finite() && f > 0.0 => Ok(RopeScaling::Linear { factor: f as f32 }),
                _ => Err(Error::InvalidModel(format!("linear RoPE scaling with factor {scaling_factor:?}"))),
            },
            ("yarn", None) => {
                if keys.yarn_attn_factor.is_some_and(|a| a != 1.0) || keys.yarn_ext_factor.is_some_and(|e| e != 1.0) {
                    return Err(Error::Unsupported(
                        "YaRN RoPE scaling with its own attention or extrapolation factor".into(),
                    ));
                }
                let factor = scaling_factor.filter(|f| f.is_finite() && *f > 0.0);
                let (Some(factor), Some(orig)) = (factor, keys.original_context) else {
                    return Err(Error::InvalidModel(
                        "YaRN RoPE scaling without a factor or an original context length".into(),
                    ));
                };
                let beta = |b: Option<f64>, d: f32| b.map_or(d, |b| b as f32);
                let (beta_fast, beta_slow) = (beta(keys.yarn_beta_fast, 32.0), beta(keys.yarn_beta_slow, 1.0));
                if !(beta_fast.is_finite() && beta_slow.is_finite() && beta_fast > 0.0 && beta_slow > 0.0 && orig > 0) {
                    return Err(Error::InvalidModel("YaRN RoPE scaling with invalid parameters".into()));
                }
                Ok(RopeScaling::Yarn { factor: factor as f32, original_context: orig, beta_fast, beta_slow })
            }
            ("linear" | "yarn", Some(_)) => {
                Err(Error::Unsupported("linear or YaRN RoPE scaling together with rope_freqs.weight".into()))
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
        Some(llama3_factors(factor, low, high, original_context, theta, head_dim))
    }

    /// The tensors llama.cpp's converter computes from this scaling, by GGUF name, as F32
    /// bytes in the order it writes them.
    pub fn gguf_tensors(&self, theta: f32, head_dim: usize) -> Vec<(&'static str, Vec<u8>)> {
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        match self {
            RopeScaling::LongRope { short, long, .. } => {
                vec![(ROPE_FACTORS_LONG, bytes(long)), (ROPE_FACTORS_SHORT, bytes(short))]
            }
            _ => self.freq_factors(theta, head_dim).map(|f| vec![(ROPE_FREQS, bytes(&f))]).unwrap_or_default(),
        }
    }

    /// The divisor of each frequency the runtime applies: llama3's (also what
    /// `rope_freqs.weight` stores) or YaRN's blend, 1 / ((1 - e)/factor + e) with `e` the
    /// extrapolation share of the ramp.
    pub fn runtime_divisors(&self, theta: f32, head_dim: usize) -> Option<Vec<f32>> {
        let RopeScaling::Yarn { factor, original_context, beta_fast, beta_slow } = *self else {
            return self.freq_factors(theta, head_dim);
        };
        // The correction range (in pair indices), as both transformers and ggml compute it.
        let corr = |rot: f32| {
            head_dim as f32 * (original_context as f32 / (rot * 2.0 * std::f32::consts::PI)).ln() / (2.0 * theta.ln())
        };
        let low = corr(beta_fast).floor().max(0.0);
        let high = corr(beta_slow).ceil().min(head_dim as f32 - 1.0);
        Some(
            (0..head_dim / 2)
                .map(|i| {
                    let ramp = ((i as f32 - low) / (high - low).max(0.001)).clamp(0.0, 1.0);
                    let extrapolation = 1.0 - ramp;
                    1.0 / ((1.0 - extrapolation) / factor + extrapolation)
                })
                .collect(),
        )
    }

    /// The factor YaRN multiplies cos and sin with (1 otherwise).
    pub fn attention_scale(&self) -> f32 {
        match *self {
            RopeScaling::Yarn { factor, .. } if factor > 1.0 => 0.1 * factor.ln() + 1.0,
            RopeScaling::LongRope { attn_factor, .. } => attn_factor,
            _ => 1.0,
        }
    }
}

/// LongRoPE as transformers reads it (its Phi3Config): the factor lists, the original context
/// (top-level `original_max_position_embeddings` first), `factor` (default: the context's
/// growth) and `attention_factor` (default √(1 + ln factor / ln original), as llama.cpp's
/// converter always computes it).
fn longrope_from_hf(json: &Json, params: &Json) -> Result<RopeScaling> {
    let bad = |m: String| Error::InvalidModel(format!("config.json: LongRoPE {m}"));
    let list = |key: &str| -> Result<Vec<f32>> {
        params
            .get(key)
            .and_then(Json::as_array)
            .and_then(|a| a.iter().map(|v| v.as_f64().map(|x| x as f32)).collect::<Option<Vec<f32>>>())
            .ok_or_else(|| bad(format!("without a list of numbers {key:?}")))
    };
    let (short, long) = (list("short_factor")?, list("long_factor")?);
    check_factors(&short, &long)?;
    let number = |key: &str| json.get(key).or_else(|| params.get(key)).and_then(Json::as_f64);
    let orig = number("original_max_position_embeddings")
        .filter(|&o| (1.0..1e9).contains(&o))
        .ok_or_else(|| bad("without original_max_position_embeddings".into()))?;
    let max = json.get("max_position_embeddings").and_then(Json::as_f64).unwrap_or(orig);
    let factor = params.get("factor").and_then(Json::as_f64).unwrap_or(max / orig);
    let attn = match params.get("attention_factor").and_then(Json::as_f64) {
        Some(a) => a,
        None if factor > 1.0 => (1.0 + factor.ln() / orig.ln()).sqrt(),
        None => 1.0,
    };
    if !(attn.is_finite() && attn > 0.0 && factor.is_finite() && factor > 0.0) {
        return Err(bad(format!("factor {factor}, attention_factor {attn}")));
    }
    Ok(RopeScaling::LongRope { short, long, original_context: orig as usize, attn_factor: attn as f32 })
}

fn check_factors(short: &[f32], long: &[f32]) -> Result<()> {
    if short.len() != long.len() || short.is_empty() {
        return Err(Error::InvalidModel(format!(
            "LongRoPE with {} short and {} long factors",
            short.len(),
            long.len()
        )));
    }
    if short.iter().chain(long).any(|f| !(f.is_finite() && *f > 0.0)) {
        return Err(Error::InvalidModel("LongRoPE factor that is not a positive number".into()));
    }
    Ok(())
}

/// Llama 3's per-frequency divisors (in f32, as torch computes them in the converter).
fn llama3_factors(factor: f32, low: f32, high: f32, original_context: usize, theta: f32, head_dim: usize) -> Vec<f32> {
    {
        let orig = original_context as f32;
        let (low_wavelen, high_wavelen) = (orig / low, orig / high);
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
            .collect()
    }
}

impl RopeScaling {
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
            RopeScaling::Yarn { factor, original_context, beta_fast, beta_slow } => vec![
                ("rope.scaling.type", Value::String("yarn".into())),
                ("rope.scaling.factor", Value::F32(factor)),
                ("rope.scaling.original_context_length", Value::U32(original_context as u32)),
                ("rope.scaling.yarn_beta_fast", Value::F32(beta_fast)),
                ("rope.scaling.yarn_beta_slow", Value::F32(beta_slow)),
            ],
            // llama.cpp's converter writes no type: the factor tensors say it all.
            RopeScaling::LongRope { attn_factor, .. } => vec![("rope.scaling.attn_factor", Value::F32(attn_factor))],
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
            RopeScaling::Yarn { factor, original_context, beta_fast, beta_slow } => json!({
                "rope_theta": theta, "rope_type": "yarn", "factor": shortest(factor),
                "original_max_position_embeddings": original_context, "beta_fast": shortest(beta_fast),
                "beta_slow": shortest(beta_slow),
            }),
            RopeScaling::LongRope { ref short, ref long, original_context, attn_factor } => json!({
                "rope_theta": theta, "rope_type": "longrope", "short_factor": short.iter().map(|&f| shortest(f)).collect::<Vec<_>>(),
                "long_factor": long.iter().map(|&f| shortest(f)).collect::<Vec<_>>(),
                "original_max_position_embeddings": original_context, "attention_factor": shortest(attn_factor),
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
        let e = RopeScaling::from_hf(&json!({"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}})).unwrap_err();
        assert!(e.to_string().contains("\"dynamic\"") && e.to_string().contains("yarn"), "{e}");
        // YaRN needs the context it was trained on.
        let e = RopeScaling::from_hf(&json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})).unwrap_err();
        assert!(e.to_string().contains("original_max_position_embeddings"), "{e}");
        let top = json!({"rope_scaling": {"type": "linear", "factor": 2.0}});
        assert_eq!(RopeScaling::from_hf(&top).unwrap(), RopeScaling::Linear { factor: 2.0 });
    }
}
