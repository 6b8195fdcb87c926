//! `AᵀB` of one batch of calibration rows, added to an f64 running sum: the product behind
//! the Hessian (`XᵀX`, lower triangle) and the asymmetric input drift (`X̃ᵀE`, full).
//!
//! Both factors arrive row-major (rows × n, one calibration token per row). faer multiplies
//! fastest when the left factor is column-major (`Aᵀ` of a row-major `A` is) and the right one
//! too (`B` is not). So the sum is cut into blocks of [`block_width`] columns, one task per
//! block: each task copies its columns of `B` into a column-major scratch (rows × w floats
//! against rows × n × w multiply-adds), runs one single-threaded faer GEMM, and adds the result
//! into its own columns of the sum. Tasks share nothing, so both cores run GEMMs all the time
//! (faer's own splitting of one triangular product kept them at ~25–60% of its peak), and the
//! sums do not depend on the thread count. For the lower triangle a task's product starts at
//! its first column's diagonal, so it computes `w²/2` entries it does not keep: `w/n` extra.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Columns of the sum per task, a function of `n` and the part only (never of the thread
/// count, so that the sums are the same on every machine). Wider blocks multiply faster
/// (faer packs the right factor once per task and streams the left one past it), but a
/// [`Part::Lower`] task also computes the upper half of its diagonal block, `w/n` of the
/// work. Measured on 2 threads against faer's own parallel GEMM with both operands
/// column-major (triangle flops for the Hessian): n = 512 at 64 columns 66–69% (at 256,
/// ~50%); n = 1536 at 128 columns 70–89% (at 64, 62–80%); n = 4096 at 256 columns 86% (at
/// 128 and 512, 82–87%); n = 11008 at 512 columns 108–111% (at 256, 84–96%).
fn block_width(n: usize, part: Part) -> usize {
    match (part, n) {
        (Part::Lower, 0..=1024) => 64,
        (Part::Lower, 1025..=2048) | (Part::Full, 0..=1024) => 128,
        (_, 0..=4096) => 256,
        _ => 512,
    }
}

/// Rows of a block's product computed at once (its f32 scratch is at most ROW_CHUNK × w).
const ROW_CHUNK: usize = 2048;

/// Which part of the n × n sum to update.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Part {
    /// Entries on and below the diagonal (`i ≥ j`): a symmetric product.
    Lower,
    Full,
}

/// `sum[j·n + i] += Σ_r a[r][i] · b(r, j)` for every column `j` of the n × n sum (column-major
/// in `j`) and every `i` (`i ≥ j` for [`Part::Lower`]), over `rows` rows of `a` (row-major
/// rows × n). `fill_b(j0, ld, out)` writes `B`'s columns `j0..` column-major into `out`, column
/// `c` at `out[c·ld..c·ld + rows]` (as many columns as `out` holds): the right factor is
/// produced block by block (a copy of `a`'s columns, or a difference of two inputs) and never
/// held whole.
pub(crate) fn add_product<F>(a: &[f32], rows: usize, n: usize, fill_b: F, sum: &mut [f64], part: Part)
where
    F: Fn(usize, usize, &mut [f32]) + Sync,
{
    debug_assert_eq!(a.len(), rows * n);
    debug_assert_eq!(sum.len(), n * n);
    if rows == 0 || n == 0 {
        return;
    }
    let width = block_width(n, part);
    let am = MatRef::from_row_major_slice(a, rows, n);
    // Scratch per rayon job (a few per thread and call; freed on return, not kept per thread:
    // a 7B down_proj's is 13 MB).
    let scratch = || (Vec::<f32>::new(), Vec::<f32>::new());
    sum.par_chunks_mut(width * n).enumerate().for_each_init(scratch, |(b, c), (block, acc)| {
        let j0 = block * width;
        let w = acc.len() / n;
        // The first row of the product this block keeps anything of.
        let i0 = if part == Part::Lower { j0 } else { 0 };
        // Column stride of the scratch: an odd number of 64-byte lines, so that the columns
        // the copy writes in turn fall into different cache sets (with a stride of 512 rows
        // every column of a block mapped to the same two L1 sets, and the copy took a third of
        // the time).
        let ld = odd_lines(rows);
        b.resize(ld * w, 0.0);
        c.resize(ROW_CHUNK.min(n - i0) * w, 0.0);
        let b = &mut b[..ld * w];
        fill_b(j0, ld, b);
        let bm = MatRef::from_column_major_slice_with_stride(b, rows, w, ld);
        // The block's rows in chunks, so that its f32 product stays ROW_CHUNK × w.
        for r0 in (i0..n).step_by(ROW_CHUNK) {
            let m = ROW_CHUNK.min(n - r0);
            let c = &mut c[..m * w];
            // faer overwrites `c` (Accum::Replace): what an earlier chunk left never matters.
            matmul(
                MatMut::from_column_major_slice_mut(c, m, w),
                Accum::Replace,
                am.subcols(r0, m).transpose(),
                bm,
                1.0f32,
                Par::Seq,
            );
            for (jj, col) in acc.chunks_exact_mut(n).enumerate() {
                // Lower: only rows at or below the diagonal (row j0 + jj) are kept.
                let first = if part == Part::Lower { (j0 + jj).max(r0) } else { r0 };
                if first < r0 + m {
                    add_widened(&mut col[first..r0 + m], &c[jj * m + first - r0..(jj + 1) * m]);
                }
            }
        }
    });
}

crate::cpu::multiversion! {
    /// `acc[i] += src[i] as f64`: the same additions on every CPU, with the widest vectors it has
    /// (the baseline build converts two values per instruction).
    fn add_widened(acc: &mut [f64], src: &[f32]) {
        for (a, &v) in acc.iter_mut().zip(src) {
            *a += v as f64;
        }
    }
}

/// The smallest stride ≥ `len` floats that is an odd number of 64-byte lines.
fn odd_lines(len: usize) -> usize {
    len.div_ceil(16) / 2 * 32 + 16
}

/// `fill_b` for a right factor that is `x` itself (row-major rows × n): its columns from
/// `j0`, column-major with column stride `ld`.
pub(crate) fn columns_of(x: &[f32], n: usize) -> impl Fn(usize, usize, &mut [f32]) + Sync + '_ {
    move |j0, ld, out| {
        let w = out.len() / ld;
        transpose_rows(out, ld, x.len() / n.max(1), |r| &x[r * n + j0..r * n + j0 + w]);
    }
}

/// Writes rows `0..rows` (each `row(r)`, all of one length w) into `out` column-major, column
/// `c` at `out[c·ld..]`. Eight rows at a time, so that each column receives eight consecutive
/// values per visit (one store instead of eight scattered ones; the copy of one value per
/// store cost 12% of a 512-wide Hessian).
fn transpose_rows<'s>(out: &mut [f32], ld: usize, rows: usize, row: impl Fn(usize) -> &'s [f32]) {
    let mut r0 = 0;
    while r0 + 8 <= rows {
        let src: [&[f32]; 8] = std::array::from_fn(|k| row(r0 + k));
        let w = src[0].len();
        for (c, col) in out.chunks_exact_mut(ld).take(w).enumerate() {
            let dst = &mut col[r0..r0 + 8];
            for k in 0..8 {
                dst[k] = src[k][c];
            }
        }
        r0 += 8;
    }
    for r in r0..rows {
        for (c, &v) in row(r).iter().enumerate() {
            out[c * ld + r] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], rows: usize, n: usize) -> Vec<f64> {
        let mut s = vec![0f64; n * n];
        for r in 0..rows {
            for j in 0..n {
                for i in 0..n {
                    s[j * n + i] += a[r * n + i] as f64 * b[r * n + j] as f64;
                }
            }
        }
        s
    }

    /// Every block width, ragged last blocks, both parts: the same sums as a plain triple loop
    /// (to f32 rounding over `rows` products), and nothing written above the diagonal of
    /// [`Part::Lower`].
    #[test]
    fn blocked_products_match_the_definition() {
        let mut seed = 7u64;
        let mut rnd = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for (rows, n) in [(3, 1), (37, 70), (50, 130), (9, 1100), (5, 4200)] {
            let a: Vec<f32> = (0..rows * n).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..rows * n).map(|_| rnd()).collect();
            let want_full = naive(&a, &b, rows, n);
            let mut full = vec![0f64; n * n];
            add_product(&a, rows, n, columns_of(&b, n), &mut full, Part::Full);
            let want_lower = naive(&a, &a, rows, n);
            let mut lower = vec![1f64; n * n];
            add_product(&a, rows, n, columns_of(&a, n), &mut lower, Part::Lower);
            let tol = 1e-5 * rows as f64;
            for j in 0..n {
                for i in 0..n {
                    let k = j * n + i;
                    assert!((full[k] - want_full[k]).abs() <= tol, "{rows}×{n} full ({i},{j})");
                    if i >= j {
                        assert!((lower[k] - 1.0 - want_lower[k]).abs() <= tol, "{rows}×{n} lower ({i},{j})");
                    } else {
                        assert_eq!(lower[k], 1.0, "{rows}×{n}: ({i},{j}) above the diagonal was written");
                    }
                }
            }
        }
    }
}
