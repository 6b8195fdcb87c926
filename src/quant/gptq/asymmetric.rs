//! Asymmetric calibration (the idea of GPTAQ, Li et al. 2025, here in closed form).
//!
//! GPTQ fits `Q·x̃` to `W·x̃`: the original layer applied to the *quantized* model's inputs
//! `x̃`. The error the earlier quantized layers left in `x̃` is therefore carried forward, never
//! corrected. Fitting `Q·x̃` to `W·x`, the original layer on the original model's input `x`
//! (the rows of X and X̃, one per calibration token), is the least-squares problem
//!
//! ```text
//!   ‖X Wᵀ − X̃ Qᵀ‖²  =  ‖X Wᵀ − X̃ W*ᵀ‖²  +  ‖X̃ (W* − Q)ᵀ‖²,   W* = W · XᵀX̃ · (X̃ᵀX̃)⁻¹
//! ```
//!
//! (the cross term vanishes because `W*` is the least-squares optimum). The first term does
//! not depend on `Q`, and the second is GPTQ's objective for the weights `W*` with the usual
//! Hessian of `x̃`: GPTQ run on `W*` minimizes the asymmetric objective. With `E = X − X̃`,
//! `XᵀX̃ = X̃ᵀX̃ + EᵀX̃`, so
//!
//! ```text
//!   W* = W + W · D · (H + λI)⁻¹,   D = EᵀX̃ = Σ (x − x̃) x̃ᵀ,   H = X̃ᵀX̃
//! ```
//!
//! `D` and `H` carry the same 2/N factor; λ is GPTQ's damping (a fraction of H's mean
//! diagonal), so `W* = W` exactly when the two models' inputs agree.
//!
//! Only a fraction α of the correction is applied (GPTAQ's `alpha`, default 0.25). The whole
//! of it (α = 1) fits the calibration windows so closely that the quantized model drifts
//! *further* from the original layer after layer: on SmolLM2-135M (Q5_0, 30 layers) the
//! correction grew from 3% of ‖W‖ in layer 1 to 80% by layer 15 and the result was garbage
//! (KLD 5.6), while α = 0.25 stayed at 1–2% of ‖W‖ throughout and lowered the KLD from GPTQ's
//! 0.0508 to 0.0405 (BENCHMARKS.md, issue 18's table).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
use faer::{Accum, Mat, MatMut, MatRef, Par};

use super::{gram, Hessian};
use crate::error::{Error, Result};

/// Rows per f32 product before it is added to the f64 sum (as the Hessian does).
const F32_ROWS: usize = 4096;

/// `D = 2/N · Σ (x − x̃) x̃ᵀ` over the calibration rows: how the original model's inputs of a
/// linear differ from the quantized model's, seen through the latter.
#[derive(Clone, Debug)]
pub struct InputDrift {
    n: usize,
    /// Row-major n × n: Σ (x − x̃) x̃ᵀ.
    sum: Vec<f64>,
    samples: usize,
}

impl InputDrift {
    pub fn new(n: usize) -> InputDrift {
        InputDrift { n, sum: vec![0.0; n * n], samples: 0 }
    }

    /// Add `rows` rows: `x` the quantized model's inputs, `x_ref` the original model's
    /// (row-major rows × n each).
    pub fn add(&mut self, x: &[f32], x_ref: &[f32], rows: usize) -> Result<()> {
        let n = self.n;
        if x.len() != rows * n || x_ref.len() != rows * n {
            return Err(Error::InvalidArgument(format!(
                "input drift of {n} features: {} and {} values for {rows} rows",
                x.len(),
                x_ref.len()
            )));
        }
        for (xb, rb) in x.chunks(F32_ROWS * n).zip(x_ref.chunks(F32_ROWS * n)) {
            // Row-major D[i][j] = Σ e_i·x̃_j is gram's column-major sum with B = E, A = X̃.
            let e: Vec<f32> = rb.iter().zip(xb).map(|(a, b)| a - b).collect();
            gram::add_product(xb, xb.len() / n, n, gram::columns_of(&e, n), &mut self.sum, gram::Part::Full);
        }
        self.samples += rows;
        Ok(())
    }

    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The drift of the inputs divided by `s` (AWQ's folded scales): `S⁻¹ D S⁻¹`, `S = diag(s)`,
    /// as the Hessian of those inputs is `S⁻¹ H S⁻¹`.
    pub fn scaled(&self, s: &[f32]) -> Result<InputDrift> {
        let n = self.n;
        if s.len() != n {
            return Err(Error::InvalidArgument(format!("{} input scales for a drift of {n} features", s.len())));
        }
        let mut sum = self.sum.clone();
        unscale_both_sides(&mut sum, s);
        Ok(InputDrift { n, sum, samples: self.samples })
    }

    pub fn has_nonfinite(&self) -> bool {
        self.sum.iter().any(|v| !v.is_finite())
    }
}

/// `S⁻¹ M S⁻¹` in place for the row-major n × n `m`, `S = diag(s)`: a second-moment matrix
/// of inputs once they are divided by `s` (AWQ's folded scales).
pub fn unscale_both_sides(m: &mut [f64], s: &[f32]) {
    let n = s.len();
    for (i, row) in m.chunks_exact_mut(n).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v /= s[i] as f64 * s[j] as f64;
        }
    }
}

/// The right-hand side of the target's solve, `α · 2/N · (W · D)ᵀ` (cols × rows), or `None`
/// when no drift was seen. Kept apart from [`target_weights`] so that the caller can free the
/// drift (a cols² f64 matrix) before the Hessian is factored into another one.
pub fn drift_product(w: &[f32], rows: usize, cols: usize, drift: &InputDrift, alpha: f64) -> Result<Option<Mat<f64>>> {
    if drift.n != cols || w.len() != rows * cols {
        return Err(Error::InvalidArgument(format!(
            "asymmetric target: {rows} × {cols} weights and a drift of {} features",
            drift.n
        )));
    }
    if drift.samples == 0 {
        return Ok(None);
    }
    let scale = alpha * 2.0 / drift.samples as f64;
    let wf: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let wm = MatRef::from_row_major_slice(&wf, rows, cols);
    let dm = MatRef::from_row_major_slice(&drift.sum, cols, cols);
    let mut mt = Mat::<f64>::zeros(cols, rows);
    matmul(mt.as_mut(), Accum::Replace, dm.transpose(), wm.transpose(), scale, Par::rayon(0));
    Ok(Some(mt))
}

/// `W + α · W · D · (H + λI)⁻¹` (see the module comment; α = 1 gives `W*`, the unquantized
/// weights that best reproduce the original model's outputs from the quantized model's
/// inputs, α = 0 gives `W`), from `rhs` = [`drift_product`]'s `α · 2/N · (W · D)ᵀ`. `h` is
/// the Hessian of those inputs (2/N · X̃ᵀX̃, over the same rows as the drift), `damp` GPTQ's
/// fraction of its mean diagonal; tenfold more is tried (three times) if `H + λI` is not
/// positive definite. One cols² f64 buffer beside `h`: `H + λI` is factored in place.
pub fn target_weights(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &Hessian,
    mut rhs: Mat<f64>,
    damp: f64,
) -> Result<Vec<f32>> {
    if h.n() != cols || w.len() != rows * cols || rhs.nrows() != cols || rhs.ncols() != rows {
        return Err(Error::InvalidArgument(format!(
            "asymmetric target: {rows} × {cols} weights, a Hessian of {} and a {} × {} right-hand side",
            h.n(),
            rhs.nrows(),
            rhs.ncols()
        )));
    }
    let mean = (0..cols).map(|i| h.get(i, i)).sum::<f64>() / cols as f64;
    let par = faer::get_global_parallelism();
    let mut factor = vec![0f64; cols * cols];
    let mut frac = if damp > 0.0 { damp } else { 0.01 };
    loop {
        // H is symmetric: its row-major copy is its column-major one.
        h.dense_into(&mut factor);
        factor.iter_mut().step_by(cols + 1).for_each(|d| *d += frac * mean);
        let fm = MatMut::from_column_major_slice_mut(&mut factor, cols, cols);
        let mut buf = MemBuffer::new(cholesky_in_place_scratch::<f64>(cols, par, Default::default()));
        match cholesky_in_place(fm, Default::default(), par, MemStack::new(&mut buf), Default::default()) {
            Ok(_) => break,
            Err(_) if frac < damp.max(0.01) * 1e3 => frac *= 10.0,
            Err(_) => {
                return Err(Error::InvalidModel(
                    "asymmetric target: the Hessian is not positive definite even with damping".into(),
                ))
            }
        }
    }
    // (H + λI) · Yᵀ = Mᵀ solved in place as L · Lᵀ · Yᵀ = Mᵀ (the lower triangle of `factor`
    // holds L; what is above it is left over from H and never read).
    let l = MatRef::from_column_major_slice(&factor, cols, cols);
    solve_lower_triangular_in_place(l, rhs.as_mut(), par);
    solve_upper_triangular_in_place(l.transpose(), rhs.as_mut(), par);
    let mut out = w.to_vec();
    for (r, row) in out.chunks_exact_mut(cols).enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = (*v as f64 + rhs[(c, r)]) as f32;
        }
    }
    if out.iter().any(|v| !v.is_finite()) {
        return Err(Error::InvalidModel("asymmetric target: the corrected weights hold NaN or Inf".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On synthetic inputs, W* reproduces the original outputs from the drifted inputs better
    /// than W does, and equals W when nothing drifted.
    #[test]
    fn target_fits_the_original_outputs() {
        let (rows, cols, n) = (5, 8, 400);
        let mut s = 12345u64;
        let mut rnd = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let x_ref: Vec<f32> = (0..n * cols).map(|_| rnd()).collect();
        // The quantized model's inputs: the original ones mixed across features, plus noise.
        let x: Vec<f32> = (0..n)
            .flat_map(|t| {
                let row = &x_ref[t * cols..(t + 1) * cols];
                (0..cols).map(|c| 0.9 * row[c] + 0.2 * row[(c + 1) % cols]).collect::<Vec<_>>()
            })
            .zip((0..n * cols).map(|_| 0.05 * rnd()))
            .map(|(a, b)| a + b)
            .collect();
        let w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
        let mut h = crate::quant::gptq::Hessian::new(cols);
        h.add(&x, n);
        let mut d = InputDrift::new(cols);
        d.add(&x, &x_ref, n).unwrap();
        let err = |wt: &[f32]| -> f64 {
            let mut e = 0.0;
            for t in 0..n {
                for r in 0..rows {
                    let dot = |w: &[f32], x: &[f32]| {
                        (0..cols).map(|c| w[r * cols + c] as f64 * x[t * cols + c] as f64).sum::<f64>()
                    };
                    e += (dot(&w, &x_ref) - dot(wt, &x)).powi(2);
                }
            }
            e
        };
        let target = |d: &InputDrift, damp: f64, alpha: f64| match drift_product(&w, rows, cols, d, alpha).unwrap() {
            Some(rhs) => target_weights(&w, rows, cols, &h, rhs, damp).unwrap(),
            None => w.clone(),
        };
        let ws = target(&d, 1e-6, 1.0);
        let (e_w, e_ws) = (err(&w), err(&ws));
        assert!(e_ws < 0.1 * e_w, "W* {e_ws} vs W {e_w}");

        let mut same = InputDrift::new(cols);
        same.add(&x, &x, n).unwrap();
        assert_eq!(target(&same, 0.01, 1.0), w);
        // A fraction of the correction: part of the way from W to W*.
        let wq = target(&d, 1e-6, 0.25);
        for ((a, b), c) in wq.iter().zip(&w).zip(&ws) {
            assert!((a - (b + 0.25 * (c - b))).abs() < 1e-5, "{a} {b} {c}");
        }
        assert!(err(&wq) < e_w);

        // AWQ's folded scales: the drift of the inputs divided by s is `scaled(s)`.
        let sc: Vec<f32> = (0..cols).map(|c| 0.5 + c as f32 * 0.25).collect();
        let div = |v: &[f32]| v.iter().enumerate().map(|(i, a)| a / sc[i % cols]).collect::<Vec<f32>>();
        let mut direct = InputDrift::new(cols);
        direct.add(&div(&x), &div(&x_ref), n).unwrap();
        let scaled = d.scaled(&sc).unwrap();
        for (a, b) in direct.sum.iter().zip(&scaled.sum) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "{a} vs {b}");
        }
        assert!(d.scaled(&sc[1..]).is_err());
    }
}
