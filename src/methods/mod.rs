//! Calibration-driven quantization methods: what GPTQ and AWQ do with the activations the
//! sequential driver (`calib::sequential`) feeds them, and what they hand to the writers.

pub mod awq;
pub mod awq_gptq;
pub mod gptq;
mod resume;
pub mod spilled;

pub use awq::record::awq_results;
pub use gptq::record::gptq_results;
pub use spilled::SpilledResults;

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::model::{names, ModelConfig};
use crate::quant::gptq::IntQuant;

/// An MoE expert that fewer calibration tokens than this were routed to is not fitted to
/// them: GPTQ rounds it to nearest on its grid (an identity Hessian) and AWQ gives it no
/// scales or clipping of its own. A handful of tokens would make the solution fit those tokens
/// rather than the expert's inputs (GPTQModel's fail-safe does the same for experts no token
/// reaches).
pub const MIN_EXPERT_TOKENS: usize = 16;

/// A method's result for one matrix that the results of other rows can be appended to.
pub trait RowParts: Sized {
    /// Append `other`'s rows; false when the two cannot form one tensor (other grids).
    fn append(&mut self, other: Self) -> bool;
}

/// A method's result for one matrix, in the form a writer takes: GGML blocks for a GGUF, or
/// the neutral integer codes for a Hugging Face checkpoint; `None` for a result of the other
/// grid.
pub trait MatrixResult {
    /// Type, row count, bytes.
    fn into_ggml_rows(self) -> Option<(GgmlType, usize, Vec<u8>)>;
    fn into_int_quant(self) -> Option<IntQuant>;
}

/// Put the results of a joined weight's parts (Phi-3's q|k|v and gate|up; with `experts`, an
/// MoE layer's experts) together under the joined weight's name, rows in order: rows quantize
/// independently and the parts share their input (one Hessian, one set of AWQ scales), so this
/// is what the method on the joined weight gives.
pub fn fuse_results<T: RowParts>(results: &mut HashMap<String, T>, cfg: &ModelConfig, experts: bool) -> Result<()> {
    names::fuse_parts(results, cfg, experts, |name, parts| {
        let mismatch = || Error::tensor(name, "its parts were quantized differently");
        let mut parts = parts.into_iter();
        let mut joined = parts.next().ok_or_else(mismatch)?;
        for p in parts {
            if !joined.append(p) {
                return Err(mismatch());
            }
        }
        Ok(joined)
    })
}
