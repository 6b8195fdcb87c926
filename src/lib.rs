//! qforge: post-training quantization and conversion of LLaMA-family models.
//!
//! Layers, each using only the ones before it (`tools/module_graph.py` checks that no module
//! imports back): `formats` (safetensors, GGUF, imatrix, text, tokenizer metadata), `quant`
//! (the codec table and the block codecs, the GPTQ solver), `model` (architecture table,
//! config, tensor names, Hugging Face checkpoints and their quantized layouts, one view over
//! model files), `runtime` (the
//! forward pass, tokenizers), `calib` (calibration windows, the layer-by-layer driver),
//! `methods` (GPTQ, AWQ, AWQ+GPTQ over a model), `eval` (perplexity, KLD, imatrix
//! collection), `convert` (format conversion and writing), `cli` (the binary's commands);
//! `output` (crash-safe output files), `error` and `ggml_type` serve all of them.

pub mod calib;
pub mod cli;
pub mod convert;
pub mod cpu;
pub mod error;
pub mod eval;
pub mod formats;
pub mod ggml_type;
pub mod methods;
pub mod model;
pub mod output;
pub mod quant;
pub mod runtime;

// The codec table's made-up test type through the layers above `quant` (tests only).
#[cfg(test)]
mod made_up_codec_tests;

pub use error::{Error, Result};
pub use ggml_type::GgmlType;
