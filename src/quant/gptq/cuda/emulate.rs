//! A CPU emulation of the CUDA backend, for machines without a GPU (CI): a [`Device`] whose
//! kernels are `kernels.rs` transcribed line by line into Rust (same names, arguments, index
//! arithmetic, operation order) and whose cuBLAS/cuSOLVER calls are plain column-major loops
//! with the arguments `solve.rs` and `hessian.rs` pass (m, n, k, offsets, leading
//! dimensions). The host sequence is not repeated here: the tests run `host.rs`'s, the one the
//! GPU runs, on this device, and compare the result with the CPU solver, which checks the
//! sequence, the layouts, the index arithmetic and the algorithm of the GPU path; what it
//! cannot check is the CUDA toolchain itself (NVRTC, the libraries, launch arguments), which
//! the probe's self-test and `tests/gptq_cuda.rs` do on a GPU. `hessian.rs`'s staging of
//! activation rows into batches is transcribed (`EmuHessian`): it overlaps page-locked
//! uploads with the caller, which has no CPU counterpart worth sharing.
//!
//! Compiled for tests only and without the `cuda` feature, so that CI runs it. Keep the
//! kernels in step with `kernels.rs` when they change.

// A transcription keeps the CUDA source's form (NaN-aware negated comparisons, `(maxq + 1) / 2`).
#![allow(clippy::neg_cmp_op_on_partial_ord, clippy::manual_div_ceil)]

use super::cuda_device::{Device, Elem, SweepBufs, SweepScalars};
use crate::error::Result;

type I64 = i64;

// ---------------------------------------------------------------------------------------
// The kernels (one loop iteration per CUDA thread; threads never share an element they
// write, so a sequential loop is an exact emulation).

fn finite_d(v: f64) -> bool {
    v.abs() <= f64::from_bits(0x7fef_ffff_ffff_ffff)
}

fn hess_accumulate(sum: &mut [f64], part: &[f32], n: I64) {
    for k in 0..n * n {
        let (c, r) = (k / n, k - (k / n) * n);
        if r >= c {
            sum[k as usize] += part[k as usize] as f64;
        }
    }
}

fn hess_diag(out: &mut [f64], sum: &[f64], scale: f64, n: I64) {
    for i in 0..n {
        out[i as usize] = sum[(i * n + i) as usize] * scale;
    }
}

fn lower_nonfinite(flag: &mut i32, a: &[f64], n: I64) {
    for k in 0..n * n {
        let (c, r) = (k / n, k - (k / n) * n);
        if r >= c && !finite_d(a[k as usize]) {
            *flag = 1;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build_m(m: &mut [f64], hsum: &[f64], scale: f64, perm: &[u32], diag: &[f64], add: f64, n: I64) {
    for k in 0..n * n {
        let (b, a) = (k / n, k - (k / n) * n);
        if a < b {
            m[k as usize] = 0.0;
            continue;
        }
        let j = perm[(n - 1 - b) as usize] as I64;
        if a == b {
            m[k as usize] = diag[j as usize] + add;
        } else {
            let i = perm[(n - 1 - a) as usize] as I64;
            let (hi, lo) = if i > j { (i, j) } else { (j, i) };
            m[k as usize] = hsum[(lo * n + hi) as usize] * scale;
        }
    }
}

fn eye(x: &mut [f64], n: I64) {
    for k in 0..n * n {
        let (b, a) = (k / n, k - (k / n) * n);
        x[k as usize] = if a == b { 1.0 } else { 0.0 };
    }
}

fn reverse_copy(dst: &mut [f64], src: &[f64], total: I64) {
    for k in 0..total {
        dst[k as usize] = src[(total - 1 - k) as usize];
    }
}

fn check_upper(bad: &mut i32, u: &[f64], n: I64) {
    for k in 0..n * n {
        let (b, a) = (k / n, k - (k / n) * n);
        if a <= b {
            let v = u[k as usize];
            if !finite_d(v) || (a == b && !(v > 0.0)) {
                *bad = 1;
            }
        }
    }
}

fn init_w(wk: &mut [f64], w: &[f32], perm: &[u32], dead: &[u8], rows: I64, cols: I64) {
    for k in 0..rows * cols {
        let (p, r) = (k / rows, k - (k / rows) * rows);
        let c = perm[p as usize] as I64;
        wk[k as usize] = if dead[c as usize] != 0 { 0.0 } else { w[(r * cols + c) as usize] as f64 };
    }
}

/// `find_params` of the CUDA source (fmin/fmax, rint, the f32-range fix). Deliberately a copy
/// of `grid.rs`'s `params_for_range` in the kernel's form: the emulation checks the kernel.
fn find_params_dev(mut xmin: f64, mut xmax: f64, maxq: u32, sym: bool) -> (f64, u8) {
    if sym {
        xmax = xmax.max(xmin.abs());
        if xmin < 0.0 {
            xmin = -xmax;
        }
    }
    if xmin == 0.0 && xmax == 0.0 {
        xmin = -1.0;
        xmax = 1.0;
    }
    let mut scale = (xmax - xmin) / maxq as f64;
    let sf = scale as f32;
    let flt_max = f32::from_bits(0x7f7f_ffff);
    if !(sf > 0.0 && sf <= flt_max) {
        scale = if scale > 1.0 { flt_max as f64 } else { f32::from_bits(0x0080_0000) as f64 };
    }
    let zero = if sym {
        (maxq + 1) / 2
    } else {
        let z = (-xmin / scale).round_ties_even();
        z.max(0.0).min(maxq as f64) as u32
    };
    (scale, zero as u8)
}

#[allow(clippy::too_many_arguments)]
fn sweep_block(
    wk: &mut [f64],
    err: &mut [f64],
    u: &[f64],
    scales: &mut [f64],
    zeros: &mut [u8],
    codes: &mut [u8],
    loss: &mut [f64],
    perm: &[u32],
    group_of: &[u32],
    rows: I64,
    n: I64,
    i1: I64,
    i2: I64,
    gs: I64,
    dynamic_groups: i32,
    maxq: u32,
    sym: i32,
    imp: &[f64],
    n_cand: i32,
) {
    // group_value of the CUDA source.
    let group_value = |wk: &[f64], err: &[f64], r: I64, i: I64, p: I64| {
        let mut v = wk[(p * rows + r) as usize];
        if p >= i2 {
            for k in i1..i {
                v -= err[((k - i1) * rows + r) as usize] * u[(p * n + k) as usize];
            }
        }
        v
    };
    for r in 0..rows {
        let mut l = 0.0;
        for i in i1..i2 {
            let g = group_of[i as usize] as I64;
            if dynamic_groups != 0 && i % gs == 0 {
                let (mut xmin, mut xmax) = (0f64, 0f64);
                for p in i..i + gs {
                    let v = group_value(wk, err, r, i, p);
                    xmin = xmin.min(v);
                    xmax = xmax.max(v);
                }
                let mut best = (f64::INFINITY, find_params_dev(xmin, xmax, maxq, sym != 0));
                // search_params of the CUDA source.
                for c in 0..n_cand {
                    let pr = 1.0 - c as f64 / 100.0;
                    let (s, z) = find_params_dev(pr * xmin, pr * xmax, maxq, sym != 0);
                    let mut e = 0.0;
                    for p in i..i + gs {
                        let v = group_value(wk, err, r, i, p);
                        let t = ((v / s).round_ties_even() + z as f64).max(0.0).min(maxq as f64);
                        let d = v - s * (t as i32 - z as i32) as f64;
                        e += imp[p as usize] * d * d;
                    }
                    if e < best.0 {
                        best = (e, (s, z));
                    }
                }
                let (s, z) = best.1;
                scales[(g * rows + r) as usize] = s;
                zeros[(g * rows + r) as usize] = z;
            }
            let s = scales[(g * rows + r) as usize];
            let z = zeros[(g * rows + r) as usize] as i32;
            let x = wk[(i * rows + r) as usize];
            let mut t = (x / s).round_ties_even() + z as f64;
            t = t.max(0.0).min(maxq as f64);
            let q = t as i32;
            codes[(r * n + perm[i as usize] as I64) as usize] = q as u8;
            let e = (x - s * (q - z) as f64) / u[(i * n + i) as usize];
            err[((i - i1) * rows + r) as usize] = e;
            l += e * e;
            for j in i + 1..i2 {
                wk[(j * rows + r) as usize] -= e * u[(j * n + i) as usize];
            }
        }
        loss[r as usize] += l;
    }
}

// ---------------------------------------------------------------------------------------
// The library calls, column-major, with the arguments solve.rs / hessian.rs pass.

/// cublasSsyrk(LOWER, N, n, k, 1, a, lda = n, 0, c, ldc = n).
fn ssyrk_lower(n: usize, k: usize, a: &[f32], c: &mut [f32]) {
    for j in 0..n {
        for i in j..n {
            let mut s = 0f32;
            for t in 0..k {
                s += a[i + t * n] * a[j + t * n];
            }
            c[i + j * n] = s;
        }
    }
}

/// cusolverDnDpotrf(LOWER, n, m, lda = n): 0, or the order of the first non-positive minor.
fn dpotrf_lower(m: &mut [f64], n: usize) -> i32 {
    for j in 0..n {
        let mut d = m[j + j * n];
        for k in 0..j {
            d -= m[j + k * n] * m[j + k * n];
        }
        if !(d > 0.0) {
            return j as i32 + 1;
        }
        let d = d.sqrt();
        m[j + j * n] = d;
        for i in j + 1..n {
            let mut v = m[i + j * n];
            for k in 0..j {
                v -= m[i + k * n] * m[j + k * n];
            }
            m[i + j * n] = v / d;
        }
    }
    0
}

/// cublasDtrsm(LEFT, LOWER, N, NON_UNIT, n, n, 1, l, lda = n, x, ldb = n): x ← L⁻¹·x.
fn dtrsm_lower_left(l: &[f64], x: &mut [f64], n: usize) {
    for col in 0..n {
        for i in 0..n {
            let mut v = x[i + col * n];
            for k in 0..i {
                v -= l[i + k * n] * x[k + col * n];
            }
            x[i + col * n] = v / l[i + i * n];
        }
    }
}

/// cublasDgemm(N, N, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) on slices that start where
/// solve.rs's views start.
#[allow(clippy::too_many_arguments)]
fn dgemm_nn(
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: &[f64],
    lda: usize,
    b: &[f64],
    ldb: usize,
    beta: f64,
    c: &mut [f64],
    ldc: usize,
) {
    for j in 0..n {
        for i in 0..m {
            let mut s = 0.0;
            for t in 0..k {
                s += a[i + t * lda] * b[t + j * ldb];
            }
            c[i + j * ldc] = alpha * s + beta * c[i + j * ldc];
        }
    }
}

// ---------------------------------------------------------------------------------------
// The emulated device (solve.rs's operations), and hessian.rs's staging.

const F32_ROWS: usize = 4096;

/// CudaHessian::add / scale / diag / to_host: rows staged across calls into batches of
/// F32_ROWS, the staged rest submitted when the Hessian is read (`flush`).
pub(super) struct EmuHessian {
    n: usize,
    sum: Vec<f64>,
    samples: usize,
    /// The staging buffer (F32_ROWS × n) and the rows it holds.
    staged: Vec<f32>,
    pending: usize,
}

impl EmuHessian {
    pub(super) fn new(n: usize) -> Self {
        EmuHessian { n, sum: vec![0.0; n * n], samples: 0, staged: vec![0f32; F32_ROWS * n], pending: 0 }
    }

    pub(super) fn add(&mut self, x: &[f32], rows: usize) {
        let n = self.n;
        let mut rest = x;
        while !rest.is_empty() {
            let take = (F32_ROWS - self.pending).min(rest.len() / n);
            let (now, later) = rest.split_at(take * n);
            self.staged[self.pending * n..(self.pending + take) * n].copy_from_slice(now);
            self.pending += take;
            rest = later;
            if self.pending == F32_ROWS {
                self.submit();
            }
        }
        self.samples += rows;
    }

    fn submit(&mut self) {
        let n = self.n;
        let mut part = vec![0f32; n * n];
        ssyrk_lower(n, self.pending, &self.staged, &mut part);
        hess_accumulate(&mut self.sum, &part, n as I64);
        self.pending = 0;
    }

    /// CudaHessian::flushed: every read submits the staged rows first.
    pub(super) fn flush(&mut self) {
        if self.pending > 0 {
            self.submit();
        }
    }

    fn scale(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            2.0 / self.samples as f64
        }
    }
}

/// The emulated device: buffers are vectors, every operation the transcription above.
pub(super) struct Emu;

impl Device for Emu {
    type Buf<T: Elem> = Vec<T>;
    type Hessian = EmuHessian;

    fn upload<T: Elem>(&self, v: &[T], _: &'static str) -> Result<Vec<T>> {
        Ok(v.to_vec())
    }

    fn zeros<T: Elem>(&self, len: usize, _: &'static str) -> Result<Vec<T>> {
        Ok(vec![T::default(); len])
    }

    fn download<T: Elem>(&self, b: &Vec<T>, _: &'static str) -> Result<Vec<T>> {
        Ok(b.clone())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn hessian_n(h: &EmuHessian) -> usize {
        h.n
    }

    fn hessian_samples(h: &EmuHessian) -> usize {
        h.samples
    }

    fn hessian_nonfinite(&self, h: &EmuHessian) -> Result<bool> {
        assert_eq!(h.pending, 0, "flush the emulated Hessian before reading it");
        let mut flag = 0;
        lower_nonfinite(&mut flag, &h.sum, h.n as I64);
        Ok(flag != 0)
    }

    fn hessian_diag(&self, h: &EmuHessian) -> Result<Vec<f64>> {
        let mut d = vec![0f64; h.n];
        hess_diag(&mut d, &h.sum, h.scale(), h.n as I64);
        Ok(d)
    }

    fn with_hessian_sum<R>(&self, h: &EmuHessian, f: impl FnOnce(&Vec<f64>, f64) -> Result<R>) -> Result<R> {
        f(&h.sum, h.scale())
    }

    fn build_m(
        &self,
        m: &mut Vec<f64>,
        hsum: &Vec<f64>,
        scale: f64,
        perm: &Vec<u32>,
        diag: &Vec<f64>,
        add: f64,
        n: usize,
    ) -> Result<()> {
        build_m(m, hsum, scale, perm, diag, add, n as I64);
        Ok(())
    }

    fn potrf_lower(&self, m: &mut Vec<f64>, n: usize) -> Result<i32> {
        Ok(dpotrf_lower(m, n))
    }

    fn eye(&self, x: &mut Vec<f64>, n: usize) -> Result<()> {
        eye(x, n as I64);
        Ok(())
    }

    fn trsm_lower_inverse(&self, l: &Vec<f64>, x: &mut Vec<f64>, n: usize) -> Result<()> {
        dtrsm_lower_left(l, x, n);
        Ok(())
    }

    fn reverse_copy(&self, dst: &mut Vec<f64>, src: &Vec<f64>, total: usize) -> Result<()> {
        reverse_copy(dst, src, total as I64);
        Ok(())
    }

    fn upper_is_valid(&self, u: &Vec<f64>, n: usize) -> Result<bool> {
        let mut bad = 0;
        check_upper(&mut bad, u, n as I64);
        Ok(bad == 0)
    }

    fn init_w(
        &self,
        wk: &mut Vec<f64>,
        w: &Vec<f32>,
        perm: &Vec<u32>,
        dead: &Vec<u8>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        init_w(wk, w, perm, dead, rows as I64, cols as I64);
        Ok(())
    }

    fn sweep_block(
        &self,
        b: &mut SweepBufs<Self>,
        u: &Vec<f64>,
        perm: &Vec<u32>,
        s: SweepScalars,
        i1: usize,
        i2: usize,
    ) -> Result<()> {
        sweep_block(
            &mut b.wk,
            &mut b.err,
            u,
            &mut b.scales,
            &mut b.zeros,
            &mut b.codes,
            &mut b.loss,
            perm,
            &b.group_of,
            s.rows as I64,
            s.n as I64,
            i1 as I64,
            i2 as I64,
            s.gs as I64,
            s.dynamic as i32,
            s.maxq,
            s.sym as i32,
            &b.imp,
            s.n_cand,
        );
        Ok(())
    }

    fn gemm_update(
        &self,
        err: &Vec<f64>,
        u: &Vec<f64>,
        wk: &mut Vec<f64>,
        rows: usize,
        n: usize,
        i1: usize,
        i2: usize,
    ) -> Result<()> {
        // solve.rs's views: A from the start of err, B at U[i1, i2], C at column i2 of wk.
        let a = &err[0..rows * (i2 - i1)];
        let b = &u[i2 * n + i1..];
        let c = &mut wk[i2 * rows..];
        dgemm_nn(rows, n - i2, i2 - i1, -1.0, a, rows, b, n, 1.0, c, rows);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    use crate::quant::gptq::cuda_host::{factor, quantize_int as quantize_on, HessianOn};
    use crate::quant::gptq::{quantize, solver, ColumnOrder, GptqOptions, GptqResult, Grid, Hessian, XorShift as Rng};

    /// The integration tests' GPTQ problems (golden layers, the indefinite Hessian).
    #[allow(dead_code)]
    mod common_gptq {
        include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/gptq.rs"));
    }

    /// Where `common_gptq` finds the golden files (tests/common/mod.rs's `golden`).
    fn golden(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden").join(name)
    }

    /// `host.rs`'s sequence on the emulated device.
    fn quantize_int(
        w: &[f32],
        rows: usize,
        cols: usize,
        h: HessianOn<'_, EmuHessian>,
        bits: u8,
        sym: bool,
        opts: &GptqOptions,
    ) -> Result<GptqResult> {
        quantize_on(&Emu, w, rows, cols, h, bits, sym, opts)
    }

    fn problem(rows: usize, cols: usize, tokens: usize, dead: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let mut r = Rng(0x2545_f491_4f6c_dd1d);
        let w: Vec<f32> = (0..rows * cols).map(|_| (0.05 * r.next()) as f32).collect();
        let mut x = vec![0f32; tokens * cols];
        for t in 0..tokens {
            let mut prev = r.next();
            for c in 0..cols {
                prev = 0.85 * prev + r.next();
                x[t * cols + c] = if dead.contains(&c) { 0.0 } else { (prev * (0.5 + (c % 5) as f64)) as f32 };
            }
        }
        (w, x)
    }

    fn compare(what: &str, cpu: &GptqResult, emu: &GptqResult) {
        let (c, e) = (cpu.int.as_ref().unwrap(), emu.int.as_ref().unwrap());
        assert_eq!(c.g_idx, e.g_idx, "{what}");
        assert_eq!((c.bits, c.group_size), (e.bits, e.group_size), "{what}");
        let same = c.codes.iter().zip(&e.codes).filter(|(a, b)| a == b).count();
        let frac = same as f64 / c.codes.len() as f64;
        let dloss = (cpu.loss - emu.loss).abs() / cpu.loss;
        println!("{what}: codes equal {same}/{}, loss {:.6e} vs CPU {:.6e}", c.codes.len(), emu.loss, cpu.loss);
        assert!(frac >= 0.999, "{what}: only {frac} of the codes equal");
        assert!(dloss < 1e-6, "{what}: loss {} vs {}", emu.loss, cpu.loss);
        assert_eq!((emu.dead_columns, emu.damp_retries), (cpu.dead_columns, cpu.damp_retries), "{what}");
        // Dynamic groups take their range from the updated weights, which move with the
        // Hessian's last bits: close, not always bit-equal, scales.
        let close = c.scales.iter().zip(&e.scales).filter(|(a, b)| (*a - *b).abs() <= 1e-5 * a.abs()).count();
        assert!(close as f64 >= 0.999 * c.scales.len() as f64, "{what}: scales {close}/{}", c.scales.len());
    }

    /// `U` from the emulated device factor (column-major) is the CPU solver's (row-major).
    #[test]
    fn emulated_factor_is_the_cpu_factor() {
        let n = 90;
        let (_, x) = problem(1, n, 300, &[4, 50]);
        let mut h = Hessian::new(n);
        h.add(&x, 300);
        for order in [ColumnOrder::Natural, ColumnOrder::Activation, ColumnOrder::GroupAware] {
            let raw = h.diagonal();
            let perm = solver::sweep_order(&raw, order, 30);
            let cpu = solver::factor(&h, &perm, 0.01).unwrap();
            let emu = factor(&Emu, &h.to_dense(), 1.0, &raw, &perm, 0.01).unwrap();
            assert_eq!(cpu.perm, emu.perm);
            assert_eq!(cpu.dead, emu.dead);
            let scale = cpu.u.iter().fold(0f64, |m, v| m.max(v.abs()));
            for a in 0..n {
                for b in 0..n {
                    let (c, e) = (cpu.u[a * n + b], emu.u[b * n + a]);
                    assert!((c - e).abs() <= 1e-10 * scale, "{order:?} U[{a},{b}]: {c} vs {e}");
                }
            }
        }
    }

    /// The emulated device Hessian is the CPU's (f32 within a batch of ≤ 4096 rows, f64
    /// across), with the device's batches cut across calls (7 rows, then pieces of 600, one
    /// call crossing two batch boundaries, and a partial batch flushed at the read).
    #[test]
    fn emulated_hessian_is_the_cpu_hessian() {
        let n = 40;
        let (_, x) = problem(1, n, 9000, &[]);
        let mut h = Hessian::new(n);
        let mut e = EmuHessian::new(n);
        let mut at = 0;
        for rows in [7usize, 600, 600, 600, 5000, 1, 600, 600, 600, 392] {
            h.add(&x[at * n..(at + rows) * n], rows);
            e.add(&x[at * n..(at + rows) * n], rows);
            at += rows;
        }
        assert_eq!(at, 9000);
        assert_eq!(e.pending, 9000 % F32_ROWS);
        e.flush();
        let d = h.to_dense();
        let max = d.iter().fold(0f64, |m, v| m.max(v.abs()));
        let mut diag = vec![0f64; n];
        hess_diag(&mut diag, &e.sum, e.scale(), n as I64);
        for i in 0..n {
            for j in 0..=i {
                let v = e.sum[j * n + i] * e.scale();
                assert!((v - d[i * n + j]).abs() <= 1e-5 * max, "[{i},{j}] {v} vs {}", d[i * n + j]);
            }
            assert_eq!(diag[i], e.sum[i * n + i] * e.scale());
        }
    }

    /// The GPU path's algorithm against the CPU solver on every integer-grid option.
    #[test]
    fn emulated_gpu_path_matches_the_cpu_solver() {
        let (rows, cols, tokens) = (24, 384, 700);
        let (w, x) = problem(rows, cols, tokens, &[0, 9, 200]);
        let mut hc = Hessian::new(cols);
        hc.add(&x, tokens);
        let mut he = EmuHessian::new(cols);
        he.add(&x, tokens);
        he.flush();
        let o = |group_size, order, static_groups, block_size| GptqOptions {
            group_size,
            order,
            static_groups,
            block_size,
            ..Default::default()
        };
        // The searched group ranges (weighted scales), dynamic, static and per row.
        let wt = |o: GptqOptions| GptqOptions { weighted_scales: true, ..o };
        use ColumnOrder::{Activation as Act, GroupAware as Gar, Natural as Nat};
        let cases = [
            (4, false, o(Some(128), Nat, false, 128)),
            (4, false, o(Some(128), Act, false, 128)),
            (4, false, o(Some(128), Gar, false, 128)),
            (4, true, o(Some(64), Act, true, 128)),
            (3, false, o(Some(96), Nat, false, 128)),
            (3, false, o(Some(96), Act, false, 7)),
            (3, false, o(Some(96), Gar, false, 7)),
            (2, false, o(Some(32), Nat, false, 1000)),
            (8, true, o(None, Nat, false, 128)),
            (4, false, o(None, Act, false, 50)),
            (4, false, wt(o(Some(128), Gar, false, 128))),
            (3, false, wt(o(Some(96), Nat, false, 7))),
            (4, true, wt(o(Some(64), Act, true, 128))),
            (4, false, wt(o(None, Nat, false, 128))),
        ];
        for (bits, sym, opts) in cases {
            let grid = Grid::Int { bits, sym };
            let what = format!(
                "int{bits} sym {sym} group {:?} {:?} static {} block {} weighted {}",
                opts.group_size, opts.order, opts.static_groups, opts.block_size, opts.weighted_scales
            );
            let cpu = quantize(&w, rows, cols, &hc, &grid, &opts).unwrap();
            let host = quantize_int(&w, rows, cols, HessianOn::Host(&hc), bits, sym, &opts).unwrap();
            compare(&format!("{what} (host Hessian)"), &cpu, &host);
            let dev = quantize_int(&w, rows, cols, HessianOn::Device(&he), bits, sym, &opts).unwrap();
            compare(&format!("{what} (device Hessian)"), &cpu, &dev);
        }
    }

    /// The golden unit layers (4-bit, group 128; float64 reference): the CPU solver's
    /// acceptance (≥ 99.9% identical, nothing more than one step off), and the CPU's codes.
    #[test]
    fn emulated_gpu_path_on_the_golden_layers() {
        for name in ["golden_tiny_gptq_unit.safetensors", "golden_small_gptq_unit.safetensors"] {
            for (layer, w, h, golden, rows, cols) in common_gptq::load_golden(name) {
                let hess = Hessian::from_dense(h.iter().map(|&v| v as f64).collect(), cols);
                let o = GptqOptions { group_size: Some(128), ..Default::default() };
                let emu = quantize_int(&w, rows, cols, HessianOn::Host(&hess), 4, false, &o).unwrap();
                let cpu = quantize(&w, rows, cols, &hess, &Grid::Int { bits: 4, sym: false }, &o).unwrap();
                compare(&format!("{name} {layer}"), &cpu, &emu);
                let a = emu.agreement_with(&golden).unwrap();
                let (frac, worst) = (a.fraction(), a.worst_steps);
                println!(
                    "{name} {layer}: emulated GPU path vs reference: identical {:.4}%, worst {worst:.3} steps",
                    100.0 * frac
                );
                assert!(frac >= 0.999 && worst <= 1.0 + 1e-6, "{name} {layer}: {frac}, {worst} steps");
            }
        }
    }

    /// The GPU path refuses what the CPU solver refuses, with the same message: a Hessian
    /// without activations (on the host or the device) and one with a NaN.
    #[test]
    fn emulated_gpu_path_refuses_what_the_cpu_refuses() {
        let (rows, cols) = (4, 64);
        let (w, mut x) = problem(rows, cols, 50, &[]);
        let opts = GptqOptions::default();
        let grid = Grid::Int { bits: 4, sym: false };
        let err = |r: Result<GptqResult>| r.err().map(|e| e.to_string()).unwrap_or_default();
        let empty = Hessian::new(cols);
        let cpu = err(quantize(&w, rows, cols, &empty, &grid, &opts));
        assert!(cpu.contains("no activations"), "{cpu}");
        assert_eq!(err(quantize_int(&w, rows, cols, HessianOn::Host(&empty), 4, false, &opts)), cpu);
        assert_eq!(err(quantize_int(&w, rows, cols, HessianOn::Device(&EmuHessian::new(cols)), 4, false, &opts)), cpu);
        x[7] = f32::NAN;
        let mut nan = Hessian::new(cols);
        nan.add(&x, 50);
        let mut nan_dev = EmuHessian::new(cols);
        nan_dev.add(&x, 50);
        nan_dev.flush();
        let cpu = err(quantize(&w, rows, cols, &nan, &grid, &opts));
        assert!(cpu.contains("non-finite"), "{cpu}");
        assert_eq!(err(quantize_int(&w, rows, cols, HessianOn::Host(&nan), 4, false, &opts)), cpu);
        assert_eq!(err(quantize_int(&w, rows, cols, HessianOn::Device(&nan_dev), 4, false, &opts)), cpu);
    }

    /// Damping retries as on the CPU.
    #[test]
    fn emulated_damping_retries() {
        let cols = 64;
        let h = Hessian::from_dense(common_gptq::indefinite_hessian(cols), cols);
        let (w, _) = problem(4, cols, 1, &[]);
        let res = quantize_int(&w, 4, cols, HessianOn::Host(&h), 4, false, &GptqOptions::default()).unwrap();
        assert_eq!(res.damp_retries, 1);
        assert!((res.damp_used - 0.1).abs() < 1e-12);
    }
}
