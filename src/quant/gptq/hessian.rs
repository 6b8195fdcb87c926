//! The layer-input Hessian `H = 2/N · Σ xᵀx` that GPTQ weighs rounding errors with.
//!
//! Accumulation is the expensive part of GPTQ on a CPU (N · n² multiply-adds per layer input),
//! so each batch's `XᵀX` is computed in f32 by faer's GEMM, one block of columns per task, and
//! only the lower triangle (`H` is symmetric; `gram`); each block is then added into an f64
//! running sum. The f64 sum keeps the total exact to ~1e-16 relative however many batches are
//! added; within a batch the f32 products are summed over at most [`F32_ROWS`] rows.
//!
//! The reference keeps a running average (`H *= N_old/N_new; H += 2/N_new · XᵀX`); keeping
//! the plain sum and scaling by `2/N` when read is the same matrix with one rounding less.

use rayon::prelude::*;

use super::gram;

/// Rows summed in f32 before a block is added to the f64 accumulator.
const F32_ROWS: usize = 4096;

/// `H = 2/N · Σ xᵀx` over every activation row `x` (length `n`) seen so far.
#[derive(Clone, Debug)]
pub struct Hessian {
    n: usize,
    /// Column-major n × n; only the lower triangle (column `j`, rows `j..n`) is kept up to
    /// date. Holds Σ xᵀx, or `H` itself for [`Hessian::from_dense`].
    sum: Vec<f64>,
    samples: usize,
    /// `sum` is `H` itself (from [`Hessian::from_dense`]), not a sum to scale by 2/N.
    dense: bool,
}

impl Hessian {
    /// An empty Hessian for layers with `n` input features.
    pub fn new(n: usize) -> Hessian {
        Hessian { n, sum: vec![0.0; n * n], samples: 0, dense: false }
    }

    /// A Hessian given as a dense symmetric n × n matrix (tests, golden data, one computed
    /// elsewhere). Only its lower triangle (row ≥ column, row-major) is read. `samples()` is 0,
    /// and a later [`Hessian::add`] starts the average afresh, as the reference's running
    /// average does from N = 0.
    ///
    /// Panics if `h.len() != n · n`.
    pub fn from_dense(h: Vec<f64>, n: usize) -> Hessian {
        assert_eq!(h.len(), n * n, "Hessian::from_dense: {} values for a {n} × {n} matrix", h.len());
        // Row-major lower = column-major upper: transpose into our column-major lower.
        let mut sum = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                sum[j * n + i] = h[i * n + j];
            }
        }
        Hessian { n, sum, samples: 0, dense: true }
    }

    /// Add `rows` activation rows (`x` is row-major rows × n).
    ///
    /// Panics if `x.len() != rows · n`.
    pub fn add(&mut self, x: &[f32], rows: usize) {
        let n = self.n;
        assert_eq!(x.len(), rows * n, "Hessian::add: {} values for {rows} rows of {n}", x.len());
        if rows == 0 || n == 0 {
            return;
        }
        if self.dense {
            self.sum.fill(0.0);
            self.dense = false;
        }
        for batch in x.chunks(F32_ROWS * n) {
            self.add_batch(batch, batch.len() / n);
        }
        self.samples += rows;
    }

    /// sum += XᵀX (lower triangle), by [`gram::add_product`].
    fn add_batch(&mut self, x: &[f32], rows: usize) {
        gram::add_product(x, rows, self.n, gram::columns_of(x, self.n), &mut self.sum, gram::Part::Lower);
    }

    /// Activation rows added so far (0 for [`Hessian::from_dense`]).
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Neither built from a dense matrix nor given any activation rows.
    pub(crate) fn is_empty(&self) -> bool {
        !self.dense && self.samples == 0
    }

    /// Input features (H is n × n).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Whether any entry is NaN or infinite.
    pub fn has_nonfinite(&self) -> bool {
        let n = self.n;
        self.sum.par_chunks(n.max(1)).enumerate().any(|(j, col)| col[j..].iter().any(|v| !v.is_finite()))
    }

    /// The factor that turns `sum` into `H`.
    fn factor(&self) -> f64 {
        if self.dense {
            1.0
        } else if self.samples == 0 {
            0.0
        } else {
            2.0 / self.samples as f64
        }
    }

    /// `H[i, j]`.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        let (r, c) = if i >= j { (i, j) } else { (j, i) };
        self.sum[c * self.n + r] * self.factor()
    }

    /// `H[i,i]` for every i.
    pub fn diagonal(&self) -> Vec<f64> {
        (0..self.n()).map(|i| self.get(i, i)).collect()
    }

    /// `H` as a dense symmetric n × n matrix (row-major, which is also column-major).
    pub fn to_dense(&self) -> Vec<f64> {
        let mut h = vec![0.0; self.n * self.n];
        self.dense_into(&mut h);
        h
    }

    /// Write `H` as a dense symmetric n × n matrix into `out`. Each task fills a band of
    /// columns: the part on and below the diagonal is a copy of the stored column, the part
    /// above it is read across the stored columns of the rows above (the mirror image), 8 bytes
    /// from each, which the band keeps in cache.
    pub(crate) fn dense_into(&self, out: &mut [f64]) {
        const BAND: usize = 64;
        let n = self.n;
        let f = self.factor();
        out.par_chunks_mut(BAND * n).enumerate().for_each(|(b, band)| {
            let j0 = b * BAND;
            let w = band.len() / n;
            for i in 0..j0 + w {
                let src = &self.sum[i * n..(i + 1) * n];
                for jj in 0..w {
                    let j = j0 + jj;
                    if i < j {
                        band[jj * n + i] = src[j] * f;
                    }
                }
            }
            for jj in 0..w {
                let j = j0 + jj;
                for (o, &v) in band[jj * n + j..(jj + 1) * n].iter_mut().zip(&self.sum[j * n + j..(j + 1) * n]) {
                    *o = v * f;
                }
            }
        });
    }
}
