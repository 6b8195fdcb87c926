//! File formats: safetensors checkpoints, GGUF, tokenizer metadata, and the Hugging Face
//! directory writer.

pub mod gguf;
pub mod imatrix;
pub mod safetensors;
pub mod st_writer;
pub mod tokenizer;
