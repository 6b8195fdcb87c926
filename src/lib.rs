//! qforge: post-training quantization and conversion of LLaMA-family models.
//!
//! Layout: `formats` (safetensors, GGUF, tokenizer metadata), `model` (architecture config,
//! tensor names, a unified view over model files), `quant` (tensor encodings), `convert`
//! (format conversion pipelines), `output` (crash-safe output files), `cli` (the binary's
//! commands).

pub mod calib;
pub mod cli;
pub mod convert;
pub mod error;
pub mod eval;
pub mod formats;
pub mod ggml_type;
pub mod methods;
pub mod model;
pub mod output;
pub mod quant;
pub mod runtime;

pub use error::{Error, Result};
pub use ggml_type::GgmlType;
