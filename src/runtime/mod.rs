//! The CPU inference runtime: weights in their stored formats, the forward pass, and
//! tokenization.

pub mod matrix;
pub mod model;
pub mod simd;
pub mod tokenizer;

pub use model::{KvCache, LlamaModel};
pub use tokenizer::TextTokenizer;
