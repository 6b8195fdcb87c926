//! The GPTQ core: the damped factorization of `H` and the blocked column sweep, generic over
//! the quantization grid ([`ColumnGrid`]).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::reborrow::ReborrowMut;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::{damp_schedule, ColumnOrder, Hessian};
use crate::error::{Error, Result};

/// Most rows one sweep task takes (its f64 copy of the weights is rows × cols × 8 bytes, and
/// each task streams all of `U` once).
const MAX_CHUNK_ROWS: usize = 256;

/// Everything the sweep needs from `H`.
pub(crate) struct Factor {
    /// Sweep order: `perm[i]` is the original column visited i-th.
    pub perm: Vec<usize>,
    /// n × n row-major, upper triangular: the upper Cholesky factor `U` of `(P H Pᵀ + damp·I)⁻¹`
    /// (`UᵀU = H⁻¹`), in sweep order. The lower triangle is zero.
    pub u: Vec<f64>,
    /// By original column: `H[i,i] == 0`.
    pub dead: Vec<bool>,
    pub dead_columns: usize,
    pub damp_used: f64,
    pub retries: u32,
}

/// The sweep order (`perm[i]`: the column visited i-th) for `order`, from the Hessian's raw
/// diagonal (dead columns count as 1, as they get `H[i,i] = 1`); `group`: the columns
/// [`ColumnOrder::GroupAware`] keeps together (it divides `diag.len()`). The sorts are stable:
/// equal diagonals keep column order. Shared by the CPU and CUDA solvers.
pub(crate) fn sweep_order(raw_diag: &[f64], order: ColumnOrder, group: usize) -> Vec<usize> {
    let n = raw_diag.len();
    let diag: Vec<f64> = raw_diag.iter().map(|&d| if d == 0.0 { 1.0 } else { d }).collect();
    let by_diag = |a: &usize, b: &usize| diag[*b].total_cmp(&diag[*a]);
    let mut perm: Vec<usize> = (0..n).collect();
    match order {
        ColumnOrder::Natural => {}
        ColumnOrder::Activation => perm.sort_by(by_diag),
        ColumnOrder::GroupAware => {
            let group = group.clamp(1, n.max(1));
            for g in perm.chunks_mut(group) {
                g.sort_by(by_diag);
            }
            // After the inner sort each group's first column holds its largest diagonal.
            let mut groups: Vec<usize> = (0..n.div_ceil(group)).collect();
            groups.sort_by(|&a, &b| by_diag(&perm[a * group], &perm[b * group]));
            perm = groups.iter().flat_map(|&g| perm[g * group..((g + 1) * group).min(n)].to_vec()).collect();
        }
    }
    perm
}

/// Dead columns, damping (with retries) and `U` for the sweep order `perm`.
pub(crate) fn factor(h: &Hessian, perm: &[usize], damp: f64) -> Result<Factor> {
    let n = h.n();
    let raw_diag: Vec<f64> = (0..n).map(|i| h.get(i, i)).collect();
    let dead: Vec<bool> = raw_diag.iter().map(|&d| d == 0.0).collect();
    let diag: Vec<f64> = raw_diag.iter().map(|&d| if d == 0.0 { 1.0 } else { d }).collect();
    let perm = perm.to_vec();
    let mean = diag.iter().sum::<f64>() / n as f64;

    let par = Par::rayon(0);
    let mut m = vec![0f64; n * n];
    let mut u = vec![0f64; n * n];
    let mut tried = Vec::new();
    for (retry, frac) in damp_schedule(damp) {
        tried.push(frac);
        let add = frac * mean;
        // M = J·(P H Pᵀ + add·I)·J (J reverses the order), lower triangle, column-major,
        // gathered from a dense copy of H (in `u`, not needed yet) one column at a time.
        h.dense_into(&mut u);
        m.par_chunks_mut(n).enumerate().for_each(|(b, col)| {
            let j = perm[n - 1 - b];
            let hj = &u[j * n..(j + 1) * n];
            col[b] = diag[j] + add;
            for a in b + 1..n {
                col[a] = hj[perm[n - 1 - a]];
            }
        });
        let mut mm = MatMut::from_column_major_slice_mut(&mut m, n, n);
        let mut buf = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
        if cholesky_in_place(mm.rb_mut(), Default::default(), par, MemStack::new(&mut buf), Default::default()).is_err()
        {
            continue;
        }
        // With L the factor of J·H·J, J·L⁻¹·J is upper triangular and (J·L⁻¹·J)ᵀ(J·L⁻¹·J) =
        // J·(L·Lᵀ)⁻¹·J = H⁻¹: it is U. Writing L⁻¹ row-major and reversing the buffer applies
        // both J's.
        u.fill(0.0);
        invert_lower_triangular(MatMut::from_row_major_slice_mut(&mut u, n, n), mm.as_ref(), par);
        u.reverse();
        let ok = u.par_chunks(n).enumerate().all(|(i, row)| row[i] > 0.0 && row[i..].iter().all(|v| v.is_finite()));
        if !ok {
            continue;
        }
        return Ok(Factor {
            perm,
            u,
            dead_columns: dead.iter().filter(|&&d| d).count(),
            dead,
            damp_used: frac,
            retries: retry,
        });
    }
    let tried: Vec<String> = tried.iter().map(|f| format!("{f}")).collect();
    Err(Error::InvalidArgument(format!(
        "GPTQ: the Hessian is not positive definite even with damping {} × mean(diag H) (= {mean:e}); \
         the calibration activations may be degenerate",
        tried.join(", ")
    )))
}

/// A quantization grid as the sweep sees it. Per-chunk state (`State`) holds the rows' grid
/// parameters and codes; `set_params` fixes the parameters of one row's group or block,
/// `quantize` rounds one weight. Positions are sweep positions (`perm` order).
pub(crate) trait ColumnGrid: Sync {
    type State: Send;
    /// State for a chunk of rows: `w` is its rows × cols original weights (before the dead
    /// columns are zeroed), `dead` the dead columns.
    fn new_state(&self, w: &[f32], rows: usize, dead: &[bool]) -> Self::State;
    /// The positions whose current values `set_params` needs when the sweep reaches position
    /// `p` (empty: none). All are ≥ `p`.
    fn trigger(&self, p: usize) -> &[usize];
    fn set_params(&self, st: &mut Self::State, r: usize, p: usize, vals: &[f64]);
    /// Round row `r`'s weight at position `p` (current value `w`); returns the quantized value
    /// the error is computed with, and the f32 that goes into the output.
    fn quantize(&self, st: &mut Self::State, r: usize, p: usize, w: f64) -> (f64, f32);
}

/// Run the sweep over all rows. Returns the dequantized weights (rows × cols, original
/// order), each chunk's grid state (chunks of consecutive rows, in order) and the loss.
pub(crate) fn sweep<G: ColumnGrid>(
    w: &[f32],
    rows: usize,
    cols: usize,
    f: &Factor,
    block_size: usize,
    g: &G,
) -> (Vec<f32>, Vec<G::State>, f64) {
    let threads = rayon::current_num_threads().max(1);
    let chunk = rows.div_ceil(threads).clamp(1, MAX_CHUNK_ROWS);
    let mut out = vec![0f32; rows * cols];
    let results: Vec<(G::State, f64)> = out
        .par_chunks_mut(chunk * cols)
        .zip(w.par_chunks(chunk * cols))
        .map(|(o, wc)| sweep_chunk(wc, wc.len() / cols, cols, f, block_size, g, o))
        .collect();
    let loss = results.iter().map(|r| r.1).sum::<f64>() / 2.0;
    (out, results.into_iter().map(|r| r.0).collect(), loss)
}

/// The sweep for one chunk of rows; writes the quantized weights into `out` (original order)
/// and returns the grid state and Σ err².
fn sweep_chunk<G: ColumnGrid>(
    w: &[f32],
    rows: usize,
    n: usize,
    f: &Factor,
    bs: usize,
    g: &G,
    out: &mut [f32],
) -> (G::State, f64) {
    let mut st = g.new_state(w, rows, &f.dead);
    let (perm, u) = (&f.perm, &f.u);
    // The working copy, in sweep order, dead columns zeroed.
    let mut wk = vec![0f64; rows * n];
    for (dst, src) in wk.chunks_exact_mut(n).zip(w.chunks_exact(n)) {
        for (d, &c) in dst.iter_mut().zip(perm) {
            *d = if f.dead[c] { 0.0 } else { src[c] as f64 };
        }
    }
    let bs = bs.min(n);
    let mut err = vec![0f64; rows * bs];
    let mut loss = 0f64;
    for i1 in (0..n).step_by(bs) {
        let i2 = (i1 + bs).min(n);
        let b = Block { n, bs, i1, i2, perm, u };
        loss += block_rows(&b, g, &mut st, &mut wk, &mut err, out);
        if i2 < n {
            // W[:, i2..] −= Err · U[i1..i2, i2..]
            let wm = MatMut::from_row_major_slice_mut(&mut wk, rows, n).subcols_mut(i2, n - i2);
            let em = MatRef::from_row_major_slice(&err, rows, bs).subcols(0, i2 - i1);
            let um = MatRef::from_row_major_slice(u, n, n).submatrix(i1, i2, i2 - i1, n - i2);
            matmul(wm, Accum::Add, em, um, -1.0, Par::Seq);
        }
    }
    (st, loss)
}

/// One sweep block's geometry and the factor.
struct Block<'a> {
    n: usize,
    bs: usize,
    i1: usize,
    i2: usize,
    perm: &'a [usize],
    u: &'a [f64],
}

/// The in-block part of the sweep for every row of a chunk, with AVX2 where the CPU has it
/// (the row updates then vectorize 4 wide and rounding is an instruction rather than a libm
/// call; the arithmetic, without FMA, is the same either way).
fn block_rows<G: ColumnGrid>(
    b: &Block,
    g: &G,
    st: &mut G::State,
    wk: &mut [f64],
    err: &mut [f64],
    out: &mut [f32],
) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { block_rows_avx2(b, g, st, wk, err, out) };
        }
    }
    block_rows_impl(b, g, st, wk, err, out)
}

// Deliberately block_rows_impl's signature again: the same body compiled with AVX2 enabled
// (function multiversioning), which `is_x86_feature_detected!` picks at run time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_rows_avx2<G: ColumnGrid>(
    b: &Block,
    g: &G,
    st: &mut G::State,
    wk: &mut [f64],
    err: &mut [f64],
    out: &mut [f32],
) -> f64 {
    block_rows_impl(b, g, st, wk, err, out)
}

/// For each row: quantize columns i1..i2 in turn, each time subtracting `err · U[i, i+1..i2]`
/// from the rest of the block. Returns Σ err².
#[inline(always)]
fn block_rows_impl<G: ColumnGrid>(
    b: &Block,
    g: &G,
    st: &mut G::State,
    wk: &mut [f64],
    err: &mut [f64],
    out: &mut [f32],
) -> f64 {
    let Block { n, bs, i1, i2, perm, u } = *b;
    let rows = wk.len() / n;
    let mut vals = Vec::new();
    let mut loss = 0f64;
    for r in 0..rows {
        let row = &mut wk[r * n..(r + 1) * n];
        let er = &mut err[r * bs..(r + 1) * bs];
        for i in i1..i2 {
            let pos = g.trigger(i);
            if !pos.is_empty() {
                // Current values: inside the block they are up to date; beyond it they still
                // lack this block's updates so far.
                // (Row by row of U, for its cache lines; each value still subtracts its terms
                // in k order.)
                vals.clear();
                vals.extend(pos.iter().map(|&p| row[p]));
                for k in i1..i {
                    let (e, uk) = (er[k - i1], &u[k * n..(k + 1) * n]);
                    for (v, &p) in vals.iter_mut().zip(pos) {
                        if p >= i2 {
                            *v -= e * uk[p];
                        }
                    }
                }
                g.set_params(st, r, i, &vals);
            }
            let x = row[i];
            let (q, qo) = g.quantize(st, r, i, x);
            out[r * n + perm[i]] = qo;
            let e = (x - q) / u[i * n + i];
            er[i - i1] = e;
            loss += e * e;
            let urow = &u[i * n + i + 1..i * n + i2];
            for (v, &h) in row[i + 1..i2].iter_mut().zip(urow) {
                *v -= e * h;
            }
        }
    }
    loss
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random symmetric positive definite matrix with a wide spread of diagonal values.
    fn spd(n: usize) -> Vec<f64> {
        let mut s = 12345u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let k = n + 5;
        let a: Vec<f64> = (0..n * k).map(|i| next() * (1.0 + (i / k) as f64 * 0.1)).collect();
        let mut h = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = (0..k).map(|t| a[i * k + t] * a[j * k + t]).sum();
            }
        }
        h
    }

    /// Group-aware order: groups stay contiguous, visited by their largest diagonal, columns
    /// by descending diagonal inside; ties keep column order.
    #[test]
    fn group_aware_order_keeps_groups_together() {
        let diag = [1.0, 5.0, 2.0, 0.0, 9.0, 3.0, 3.0, 4.0, 1.0, 1.0];
        // Groups of 2: {0,1} max 5, {2,3} max 2 (dead = 1), {4,5} max 9, {6,7} max 4, {8,9} 1.
        assert_eq!(sweep_order(&diag, ColumnOrder::GroupAware, 2), [4, 5, 1, 0, 7, 6, 2, 3, 8, 9]);
        // A ragged last group (3 does not divide 10) stays last-sized but is ordered too.
        assert_eq!(sweep_order(&diag, ColumnOrder::GroupAware, 3), [4, 5, 3, 1, 2, 0, 7, 6, 8, 9]);
        assert_eq!(sweep_order(&diag, ColumnOrder::GroupAware, 10), sweep_order(&diag, ColumnOrder::Activation, 1));
        assert_eq!(sweep_order(&diag, ColumnOrder::Natural, 2), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn u_is_the_upper_cholesky_factor_of_the_damped_inverse() {
        let n = 70;
        let hd = spd(n);
        let h = Hessian::from_dense(hd.clone(), n);
        for order in [ColumnOrder::Natural, ColumnOrder::Activation] {
            let f = factor(&h, &sweep_order(&h.diagonal(), order, n), 0.01).unwrap();
            assert_eq!(f.retries, 0);
            if order == ColumnOrder::Activation {
                for i in 1..n {
                    assert!(hd[f.perm[i - 1] * (n + 1)] >= hd[f.perm[i] * (n + 1)]);
                }
            }
            let mean = (0..n).map(|i| hd[i * (n + 1)]).sum::<f64>() / n as f64;
            // (UᵀU)·(P H Pᵀ + damp) = I
            for i in 0..n {
                for j in 0..n {
                    let mut v = 0.0;
                    for k in 0..n {
                        let utu: f64 = (0..n).map(|t| f.u[t * n + i] * f.u[t * n + k]).sum();
                        let hk = hd[f.perm[k] * n + f.perm[j]] + if k == j { 0.01 * mean } else { 0.0 };
                        v += utu * hk;
                    }
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((v - want).abs() < 1e-9, "{order:?} [{i},{j}]: {v}");
                }
                assert!(f.u[i * n + i] > 0.0);
                assert!((0..i).all(|j| f.u[i * n + j] == 0.0));
            }
        }
    }
}
