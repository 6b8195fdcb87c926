//! The CPU inference runtime: weights in their stored formats, the forward pass, and
//! tokenization.

pub mod chat;
pub mod matrix;
pub mod model;
pub mod moe;
pub mod simd;
pub mod spm;
pub mod tokenizer;

pub use matrix::Matrix;
pub use model::{KvCache, LinearObserver, LlamaModel, NoObserver, RopeTables};
pub use tokenizer::TextTokenizer;
