//! The GGUF writer's view of a calibrated method's results (GPTQ's, AWQ's, AWQ+GPTQ's): the
//! GGML blocks the method chose for each linear, rows in the file's q/k layout, and the
//! vectors AWQ's fold changed (norms, v bias, router), encoded in place of the input's.

use std::collections::HashMap;

use crate::convert::to_gguf::TensorEncoder;
use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::methods::{MatrixResult, RowParts, SpilledResults};
use crate::model::{names, ModelConfig, RopeLayout};
use crate::quant;

pub(super) struct MethodEncoder<'r, 'w, R> {
    /// The method's name, for errors.
    method: &'static str,
    results: &'r mut SpilledResults<'w, R>,
    vectors: &'r mut HashMap<String, Vec<f32>>,
    cfg: &'r ModelConfig,
    /// The runtime's q/k row layout (the results') and the GGUF's.
    from: RopeLayout,
    to: RopeLayout,
}

impl<'r, 'w, R> MethodEncoder<'r, 'w, R> {
    /// `from`: the q/k row layout the method's results are in (the runtime's).
    pub fn new(
        method: &'static str,
        results: &'r mut SpilledResults<'w, R>,
        vectors: &'r mut HashMap<String, Vec<f32>>,
        cfg: &'r ModelConfig,
        from: RopeLayout,
    ) -> Self {
        let to = if cfg.arch.gguf_permutes_qk() { RopeLayout::Interleaved } else { RopeLayout::RotateHalf };
        MethodEncoder { method, results, vectors, cfg, from, to }
    }
}

impl<R: RowParts + MatrixResult> TensorEncoder for MethodEncoder<'_, '_, R> {
    fn encode(&mut self, name: &str, values: &[f32], ty: GgmlType) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.vectors.remove(name) {
            return encode_vector(name, &v, values, ty, self.cfg, self.from, self.to).map(Some);
        }
        let Some(result) = self.results.take(name)? else { return Ok(None) };
        let method = self.method;
        let (got, rows, bytes) = result
            .into_ggml_rows()
            .ok_or_else(|| Error::tensor(name, format!("{method} produced integer codes for a GGUF")))?;
        if got != ty {
            return Err(Error::tensor(name, format!("{method} produced {got}, the plan says {ty}")));
        }
        if values.is_empty() {
            return Err(Error::tensor(name, "is empty"));
        }
        file_rows(name, bytes, rows, self.cfg, self.from, self.to).map(Some)
    }

    fn finish(&mut self) -> Result<()> {
        self.results.finish()
    }
}

/// Encoded rows of a linear (`rows` of them) reordered from the runtime's q/k layout `from`
/// into the file's `to`.
fn file_rows(
    name: &str,
    data: Vec<u8>,
    rows: usize,
    cfg: &ModelConfig,
    from: RopeLayout,
    to: RopeLayout,
) -> Result<Vec<u8>> {
    let row_bytes = data.len() / rows.max(1);
    Ok(match names::row_order(name, rows, cfg.n_heads, cfg.n_kv_heads, from, to)? {
        Some(src) => names::reorder_rows(&data, row_bytes, &src),
        None => data,
    })
}

/// A vector AWQ's fold changed (a norm, the v bias, an MoE router or shared gate), encoded as
/// the plan's type in the file's layout in place of the input's `values`.
fn encode_vector(
    name: &str,
    v: &[f32],
    values: &[f32],
    ty: GgmlType,
    cfg: &ModelConfig,
    from: RopeLayout,
    to: RopeLayout,
) -> Result<Vec<u8>> {
    if v.len() != values.len() {
        return Err(Error::tensor(name, "folded vector has a different length"));
    }
    let bytes = quant::encode(ty, v).map_err(|e| Error::tensor(name, e.to_string()))?;
    file_rows(name, bytes, v.len(), cfg, from, to)
}
