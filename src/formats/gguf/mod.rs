//! The GGUF container (v3; v2 is read too). Hand-written rather than taken from `gguf-rs`:
//! that crate sizes BF16/IQ tensors wrongly and cannot stream (see README, design notes).

pub mod reader;
pub mod value;
pub mod writer;

#[cfg(test)]
mod tests;

pub use reader::{GgufFile, GgufHeader, TensorInfo};
pub use value::{Array, Value, ValueType};
pub use writer::{GgufStream, GgufWriter, PlannedTensor};

/// "GGUF" read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
pub const DEFAULT_ALIGNMENT: u64 = 32;
