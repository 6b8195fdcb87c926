//! Weight matrices in their stored format, and the products the forward pass needs.
//!
//! A product streams the weight matrix through in tiles of 64 to 256 rows: each tile is decoded
//! into an f32 scratch buffer (per task; 64 rows of 4096 weights fill 1 MB) and multiplied against all the
//! activations at once with faer's GEMM. The weights are never expanded as a whole, and for
//! a window of hundreds of tokens the decode cost is negligible next to the GEMM.

use std::borrow::Cow;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::model::packed::Packed;
use crate::model::TensorRef;
use crate::quant;
use crate::quant::dot16::Acts16;

/// Rows of weights decoded and multiplied per task, at least (64 measured best on 2 cores for
/// small matrices: 128 left one core idle at their end); up to four times that on big ones.
const TILE: usize = 64;

/// Up to this many activation rows a product uses the codecs' fused dot instead of decoding
/// tiles for a GEMM (generation feeds one row per step).
const FUSED_MAX_ROWS: usize = 2;

/// A `[rows, cols]` weight matrix (row-major: one output feature per row).
pub struct Matrix<'a> {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    ty: GgmlType,
    data: Cow<'a, [u8]>,
    row_bytes: usize,
    /// Set for weights in a Hugging Face quantized layout (then `data` is unused).
    packed: Option<Packed<'a>>,
}

impl<'a> Matrix<'a> {
    /// A matrix whose values were dropped (see `LlamaModel::release_layer`): its name and
    /// shape only. Multiplying by it is a bug (it holds no rows).
    pub(crate) fn released(name: &str, rows: usize, cols: usize) -> Matrix<'a> {
        Matrix {
            name: name.to_string(),
            rows,
            cols,
            ty: GgmlType::F32,
            data: Cow::Borrowed(&[]),
            row_bytes: 0,
            packed: None,
        }
    }

    pub fn from_tensor(t: &TensorRef<'a>) -> Result<Matrix<'a>> {
        if t.shape.len() != 2 {
            return Err(Error::tensor(&t.name, format!("expected a matrix, got shape {:?}", t.shape)));
        }
        if let Some(p) = &t.packed {
            return Ok(Matrix {
                name: t.name.clone(),
                rows: p.rows,
                cols: p.cols,
                ty: GgmlType::F32,
                data: Cow::Borrowed(&[]),
                row_bytes: 0,
                packed: Some(p.clone()),
            });
        }
        if !quant::can_decode(t.ggml_type) {
            return Err(Error::Unsupported(format!(
                "tensor {}: the runtime cannot compute with {} weights yet",
                t.name, t.ggml_type
            )));
        }
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let row_bytes = t.ggml_type.row_bytes(cols as u64)? as usize;
        if row_bytes * rows != t.data.len() {
            return Err(Error::tensor(&t.name, "byte size does not match its shape"));
        }
        Ok(Matrix {
            name: t.name.clone(),
            rows,
            cols,
            ty: t.ggml_type,
            data: Cow::Borrowed(t.data),
            row_bytes,
            packed: None,
        })
    }

    /// An f32 matrix held in memory (quantized weights put back during calibration).
    pub fn from_f32(name: &str, rows: usize, cols: usize, values: Vec<f32>) -> Result<Matrix<'static>> {
        if values.len() != rows * cols {
            return Err(Error::tensor(name, "values do not match the shape"));
        }
        let data: Vec<u8> = bytemuck::cast_slice(&values).to_vec();
        Ok(Matrix {
            name: name.to_string(),
            rows,
            cols,
            ty: GgmlType::F32,
            data: Cow::Owned(data),
            row_bytes: cols * 4,
            packed: None,
        })
    }

    /// Consecutive row ranges of this matrix as matrices of their own, named and sized by
    /// `parts` (the parts of a fused weight: Phi-3's q|k|v and gate|up). Stored rows are
    /// borrowed as they are (every GGML row is whole blocks); a packed weight's rows are decoded
    /// to f32 first, as its packing spans rows.
    pub fn split_rows(self, parts: &[(String, usize)]) -> Result<Vec<Matrix<'a>>> {
        let total: usize = parts.iter().map(|(_, r)| r).sum();
        if total != self.rows {
            return Err(Error::tensor(&self.name, format!("{} rows cannot be split into {total}", self.rows)));
        }
        let mut out = Vec::with_capacity(parts.len());
        let mut r0 = 0;
        for (name, rows) in parts {
            let m = if self.packed.is_some() {
                let mut values = vec![0f32; rows * self.cols];
                self.decode_rows(r0, *rows, &mut values);
                Matrix::from_f32(name, *rows, self.cols, values)?
            } else {
                let range = r0 * self.row_bytes..(r0 + rows) * self.row_bytes;
                let data = match &self.data {
                    Cow::Borrowed(b) => Cow::Borrowed(&b[range]),
                    Cow::Owned(v) => Cow::Owned(v[range].to_vec()),
                };
                Matrix {
                    name: name.clone(),
                    rows: *rows,
                    cols: self.cols,
                    ty: self.ty,
                    data,
                    row_bytes: self.row_bytes,
                    packed: None,
                }
            };
            out.push(m);
            r0 += rows;
        }
        Ok(out)
    }

    /// All weights as f32 (rows × cols).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(TILE * self.cols.max(1))
            .enumerate()
            .for_each(|(t, o)| self.decode_rows(t * TILE, o.len() / self.cols.max(1), o));
        out
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// Decode rows `r0..r0+n` into `out` (n × cols).
    pub fn decode_rows(&self, r0: usize, n: usize, out: &mut [f32]) {
        if let Some(p) = &self.packed {
            p.decode_rows(r0, n, out);
            return;
        }
        let bytes = &self.data[r0 * self.row_bytes..(r0 + n) * self.row_bytes];
        // Types were checked in `from_tensor`, so decoding cannot fail.
        let _ = quant::decode_slice(self.ty, bytes, &mut out[..n * self.cols]);
    }

    /// One row as f32 (embedding lookup).
    pub fn row(&self, r: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.cols];
        self.decode_rows(r, 1, &mut out);
        out
    }

    /// The rows as an f32 slice when they are stored as aligned f32 (no decode needed).
    fn f32_rows(&self, r0: usize, n: usize) -> Option<&[f32]> {
        if self.ty != GgmlType::F32 || self.packed.is_some() {
            return None;
        }
        bytemuck::try_cast_slice(&self.data[r0 * self.row_bytes..(r0 + n) * self.row_bytes]).ok()
    }

    /// y = x · Wᵀ for `n` activation rows: `x` is n × cols, the result n × rows.
    pub fn matmul(&self, x: &[f32], n: usize) -> Vec<f32> {
        let (m, k) = (self.rows, self.cols);
        debug_assert_eq!(x.len(), n * k);
        if n <= FUSED_MAX_ROWS && self.packed.is_none() && crate::cpu::has_fma() {
            // Activations rounded to i16 where this CPU and type have a kernel (`quant::dot16`);
            // otherwise, or for activations it cannot round, the f32 fused dot.
            if let Some(dot16) = quant::dot16::kernel(self.ty) {
                let acts: Option<Vec<Acts16>> = x.chunks_exact(k.max(1)).map(Acts16::quantize).collect();
                if let Some(acts) = acts.filter(|a| a.len() == n) {
                    return self.matvec(|row, j| dot16(row, &acts[j]), n);
                }
            }
            if let Some(c) = quant::codec(self.ty) {
                return self.matvec(|row, j| (c.dot)(row, &x[j * k..(j + 1) * k]), n);
            }
        }
        let mut y = vec![0f32; n * m];
        let xm = MatRef::from_row_major_slice(x, n, k);
        // Each task owns a block of `tile` output columns (faer splits the view disjointly).
        // Bigger tiles for big matrices: each tile's GEMM packs the activations again, which
        // 256-row tiles do a quarter as often (+8% on the 7B-shaped layer); small matrices keep
        // 64-row tiles, enough of them to share among the threads.
        let tile = (m / (4 * rayon::current_num_threads())).clamp(TILE, 4 * TILE);
        MatMut::from_row_major_slice_mut(&mut y, n, m).par_col_chunks_mut(tile).enumerate().for_each(|(t, dst)| {
            let r0 = t * tile;
            let rows = dst.ncols();
            let mut scratch = Vec::new();
            let w: &[f32] = match self.f32_rows(r0, rows) {
                Some(w) => w,
                None => {
                    scratch.resize(rows * k, 0.0);
                    self.decode_rows(r0, rows, &mut scratch);
                    &scratch
                }
            };
            let wt = MatRef::from_row_major_slice(w, rows, k).transpose();
            matmul(dst, Accum::Replace, xm, wt, 1.0f32, Par::Seq);
        });
        y
    }

    /// y = x · Wᵀ for a few activation rows with a fused dot (`dot(row, j)`: the weight row
    /// against activation row j): each weight row is read once per activation row and never
    /// written out as f32.
    fn matvec(&self, dot: impl Fn(&[u8], usize) -> f32 + Sync, n: usize) -> Vec<f32> {
        let (m, k) = (self.rows, self.cols);
        // Tasks of at least ~16k weights (a rayon task costs about a microsecond to hand out)
        // and enough of them to share the rows among the threads unevenly loaded.
        let tasks = 4 * rayon::current_num_threads();
        let rows_per_task = m.div_ceil(tasks).max((16 * 1024usize).div_ceil(k.max(1))).max(1);
        // One output row per weight row (n values), transposed at the end when n > 1.
        let mut yt = vec![0f32; m * n];
        yt.par_chunks_mut(rows_per_task * n).enumerate().for_each(|(t, out)| {
            for (i, o) in out.chunks_exact_mut(n).enumerate() {
                let r = t * rows_per_task + i;
                let row = &self.data[r * self.row_bytes..(r + 1) * self.row_bytes];
                for (j, v) in o.iter_mut().enumerate() {
                    *v = dot(row, j);
                }
            }
        });
        if n == 1 {
            return yt;
        }
        let mut y = vec![0f32; n * m];
        for (r, v) in yt.chunks_exact(n).enumerate() {
            for (j, &value) in v.iter().enumerate() {
                y[j * m + r] = value;
            }
        }
        y
    }
}
