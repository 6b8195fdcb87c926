//! File formats: safetensors checkpoints, GGUF, tokenizer metadata, and the Hugging Face
//! directory writer; `mapped` holds the input memory maps (and survives their truncation).

pub mod gguf;
pub mod imatrix;
pub mod mapped;
pub mod safetensors;
pub mod sentencepiece;
pub mod st_writer;
pub mod text;
pub mod tokenizer;
