//! Model architecture descriptions: hyper-parameters, tensor naming, and a single view over
//! the containers a model can come in.

pub mod arch;
pub mod attn_variants;
pub mod checkpoint;
pub mod config;
pub mod names;
pub mod packed;
pub mod rope;
pub mod source;

pub use config::{Arch, ModelConfig};
pub use source::{ModelFile, RopeLayout, TensorRef};
