//! The CUDA backend as a [`Device`]: the kernels of `kernels.rs` launched on the stream, and
//! cuSOLVER DPOTRF / cuBLAS DTRSM and DGEMM for the factorization and the lazy batch update.
//! The sequence that calls them (checks, damping retries, blocked sweep) is `host.rs`'s,
//! shared with the CPU emulation.

use std::ffi::c_int;

use cudarc::cublas::sys as cublas;
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::cusolver::sys as cusolver;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};

use super::hessian::CudaHessian;
use super::kernels::{grid_for, sweep_grid};
use super::{cu, Inner};
use crate::error::{Error, Result};
use crate::quant::gptq::cuda_device::{Device, Elem, SweepBufs, SweepScalars};

impl Device for Inner {
    type Buf<T: Elem> = CudaSlice<T>;
    type Hessian = CudaHessian;

    fn upload<T: Elem>(&self, v: &[T], what: &'static str) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(v).map_err(cu(what))
    }

    fn zeros<T: Elem>(&self, len: usize, what: &'static str) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros::<T>(len).map_err(cu(what))
    }

    fn download<T: Elem>(&self, b: &CudaSlice<T>, what: &'static str) -> Result<Vec<T>> {
        self.stream.clone_dtoh(b).map_err(cu(what))
    }

    fn sync(&self) -> Result<()> {
        Inner::sync(self)
    }

    fn hessian_n(h: &CudaHessian) -> usize {
        h.n()
    }

    fn hessian_samples(h: &CudaHessian) -> usize {
        h.samples()
    }

    fn hessian_nonfinite(&self, h: &CudaHessian) -> Result<bool> {
        h.has_nonfinite_locked(self)
    }

    fn hessian_diag(&self, h: &CudaHessian) -> Result<Vec<f64>> {
        h.diag_locked(self)
    }

    fn with_hessian_sum<R>(&self, h: &CudaHessian, f: impl FnOnce(&CudaSlice<f64>, f64) -> Result<R>) -> Result<R> {
        let sum = h.sum_locked(self)?;
        f(sum.sum(), h.scale())
    }

    fn build_m(
        &self,
        m: &mut CudaSlice<f64>,
        hsum: &CudaSlice<f64>,
        scale: f64,
        perm: &CudaSlice<u32>,
        diag: &CudaSlice<f64>,
        add: f64,
        n: usize,
    ) -> Result<()> {
        let nn = n as i64;
        let mut b = self.stream.launch_builder(&self.kernels.build_m);
        b.arg(m).arg(hsum).arg(&scale).arg(perm).arg(diag).arg(&add).arg(&nn);
        // SAFETY: matches `build_m(double*, const double*, double, const u32*, const double*,
        // double, i64)`; m and hsum hold n·n values, perm and diag n, and every perm entry
        // is < n.
        unsafe { b.launch(grid_for(n * n)) }.map_err(cu("build_m"))?;
        Ok(())
    }

    fn potrf_lower(&self, m: &mut CudaSlice<f64>, n: usize) -> Result<i32> {
        potrf_lower(self, m, n)
    }

    fn eye(&self, x: &mut CudaSlice<f64>, n: usize) -> Result<()> {
        let nn = n as i64;
        let mut b = self.stream.launch_builder(&self.kernels.eye);
        b.arg(x).arg(&nn);
        // SAFETY: matches `eye(double*, i64)`; x holds n·n values.
        unsafe { b.launch(grid_for(n * n)) }.map_err(cu("eye"))?;
        Ok(())
    }

    fn trsm_lower_inverse(&self, l: &CudaSlice<f64>, x: &mut CudaSlice<f64>, n: usize) -> Result<()> {
        trsm_lower_inverse(self, l, x, n)
    }

    fn reverse_copy(&self, dst: &mut CudaSlice<f64>, src: &CudaSlice<f64>, total: usize) -> Result<()> {
        let t = total as i64;
        let mut b = self.stream.launch_builder(&self.kernels.reverse_copy);
        b.arg(dst).arg(src).arg(&t);
        // SAFETY: matches `reverse_copy(double*, const double*, i64)`; both hold `total` values.
        unsafe { b.launch(grid_for(total)) }.map_err(cu("reverse_copy"))?;
        Ok(())
    }

    fn upper_is_valid(&self, u: &CudaSlice<f64>, n: usize) -> Result<bool> {
        let mut bad = self.stream.alloc_zeros::<i32>(1).map_err(cu("allocating a flag"))?;
        let nn = n as i64;
        {
            let mut b = self.stream.launch_builder(&self.kernels.check_upper);
            b.arg(&mut bad).arg(u).arg(&nn);
            // SAFETY: matches `check_upper(int*, const double*, i64)`; u holds n·n values.
            unsafe { b.launch(grid_for(n * n)) }.map_err(cu("check_upper"))?;
        }
        let flag = self.stream.clone_dtoh(&bad).map_err(cu("downloading a flag"))?;
        Inner::sync(self)?;
        Ok(flag.first().copied() == Some(0))
    }

    fn init_w(
        &self,
        wk: &mut CudaSlice<f64>,
        w: &CudaSlice<f32>,
        perm: &CudaSlice<u32>,
        dead: &CudaSlice<u8>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let (rows_i, n_i) = (rows as i64, cols as i64);
        let mut b = self.stream.launch_builder(&self.kernels.init_w);
        b.arg(wk).arg(w).arg(perm).arg(dead).arg(&rows_i).arg(&n_i);
        // SAFETY: matches `init_w(double*, const float*, const u32*, const u8*, i64, i64)`;
        // wk and w hold rows·cols values, perm and dead cols, every perm entry < cols.
        unsafe { b.launch(grid_for(rows * cols)) }.map_err(cu("init_w"))?;
        Ok(())
    }

    fn sweep_block(
        &self,
        bufs: &mut SweepBufs<Self>,
        u: &CudaSlice<f64>,
        perm: &CudaSlice<u32>,
        s: SweepScalars,
        i1: usize,
        i2: usize,
    ) -> Result<()> {
        let (rows_i, n_i, i1_i, i2_i, gs_i) = (s.rows as i64, s.n as i64, i1 as i64, i2 as i64, s.gs as i64);
        let (dynamic, sym_i) = (s.dynamic as i32, s.sym as i32);
        let mut b = self.stream.launch_builder(&self.kernels.sweep_block);
        b.arg(&mut bufs.wk)
            .arg(&mut bufs.err)
            .arg(u)
            .arg(&mut bufs.scales)
            .arg(&mut bufs.zeros)
            .arg(&mut bufs.codes)
            .arg(&mut bufs.loss)
            .arg(perm)
            .arg(&bufs.group_of)
            .arg(&rows_i)
            .arg(&n_i)
            .arg(&i1_i)
            .arg(&i2_i)
            .arg(&gs_i)
            .arg(&dynamic)
            .arg(&s.maxq)
            .arg(&sym_i)
            .arg(&bufs.imp)
            .arg(&s.n_cand);
        // SAFETY: matches `sweep_block(double*, double*, const double*, double*, u8*, u8*,
        // double*, const u32*, const u32*, i64 ×5, int, u32, int, const double*, int)`.
        // Sizes (host.rs allocates them): imp n; wk and codes rows·n, err rows·bs ≥
        // rows·(i2 − i1), u n·n, scales/zeros ng·rows with every group_of entry < ng, loss
        // rows, perm/group_of n; the kernel reads positions up to i + gs ≤ n for dynamic
        // groups (gs divides n).
        unsafe { b.launch(sweep_grid(s.rows)) }.map_err(cu("sweep_block"))?;
        Ok(())
    }

    fn gemm_update(
        &self,
        err: &CudaSlice<f64>,
        u: &CudaSlice<f64>,
        wk: &mut CudaSlice<f64>,
        rows: usize,
        n: usize,
        i1: usize,
        i2: usize,
    ) -> Result<()> {
        let cfg = GemmConfig {
            transa: cublas::cublasOperation_t::CUBLAS_OP_N,
            transb: cublas::cublasOperation_t::CUBLAS_OP_N,
            m: rows as c_int,
            n: (n - i2) as c_int,
            k: (i2 - i1) as c_int,
            alpha: -1f64,
            lda: rows as c_int,
            ldb: n as c_int,
            beta: 1f64,
            ldc: rows as c_int,
        };
        // In range: rows·(i2 − i1) ≤ rows·bs; i2·n + i1 < n²; i2·rows < rows·n.
        let a = err.slice(0..rows * (i2 - i1));
        let b = u.slice(i2 * n + i1..);
        let mut c = wk.slice_mut(i2 * rows..);
        // SAFETY: A is rows × (i2 − i1) (lda rows), B is (i2 − i1) × (n − i2) with ldb n
        // starting at U[i1, i2] (its last element U[i2 − 1, n − 1] is inside U), C is
        // rows × (n − i2) with ldc rows starting at column i2 of wk; all on the handle's
        // stream.
        unsafe { self.blas.gemm(cfg, &a, &b, &mut c) }.map_err(cu("cublasDgemm"))
    }
}

fn potrf_buffer_size(inner: &Inner, m: &mut CudaSlice<f64>, n: usize) -> Result<usize> {
    inner.ctx.bind_to_thread().map_err(cu("binding the context"))?;
    let ni = n as c_int;
    let mut lwork: c_int = 0;
    let (mp, _rm) = m.device_ptr_mut(&inner.stream);
    // SAFETY: the handle is valid and bound to the stream `m` lives on; m holds n·n values
    // with lda = n; `lwork` is a valid host out-pointer.
    unsafe {
        cusolver::cusolverDnDpotrf_bufferSize(
            inner.solver.cu(),
            cusolver::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER,
            ni,
            mp as *mut f64,
            ni,
            &mut lwork,
        )
    }
    .result()
    .map_err(cu("cusolverDnDpotrf_bufferSize"))?;
    usize::try_from(lwork).map_err(|_| Error::Cuda(format!("cusolverDnDpotrf_bufferSize returned {lwork}")))
}

/// Cholesky factor of the lower triangle of `m` in place; returns cuSOLVER's info (0: done,
/// > 0: that leading minor is not positive definite, < 0: a bad argument).
fn potrf_lower(inner: &Inner, m: &mut CudaSlice<f64>, n: usize) -> Result<i32> {
    // The workspace per call: a factorization is retried at most a few times.
    let lwork = potrf_buffer_size(inner, m, n)?;
    let mut work = inner.stream.alloc_zeros::<f64>(lwork.max(1)).map_err(cu("allocating the Cholesky workspace"))?;
    let mut info = inner.stream.alloc_zeros::<i32>(1).map_err(cu("allocating a flag"))?;
    inner.ctx.bind_to_thread().map_err(cu("binding the context"))?;
    let ni = n as c_int;
    let lw = c_int::try_from(lwork).map_err(|_| Error::Cuda(format!("Cholesky workspace of {lwork} is too large")))?;
    {
        let (mp, _rm) = m.device_ptr_mut(&inner.stream);
        let (wp, _rw) = work.device_ptr_mut(&inner.stream);
        let (ip, _ri) = info.device_ptr_mut(&inner.stream);
        // SAFETY: the handle is bound to the stream all three buffers live on; m holds n·n
        // values (lda = n), work at least `lwork` (as cuSOLVER asked for this n), info one int.
        unsafe {
            cusolver::cusolverDnDpotrf(
                inner.solver.cu(),
                cusolver::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER,
                ni,
                mp as *mut f64,
                ni,
                wp as *mut f64,
                lw,
                ip as *mut c_int,
            )
        }
        .result()
        .map_err(cu("cusolverDnDpotrf"))?;
    }
    let v = inner.stream.clone_dtoh(&info).map_err(cu("downloading the Cholesky status"))?;
    inner.sync()?;
    v.first().copied().ok_or_else(|| Error::Cuda("no Cholesky status".into()))
}

/// `x ← L⁻¹·x` with L the lower triangle of `l` (x = I gives L⁻¹). (Deliberately the form of
/// hessian.rs's SSYRK call — bind, raw pointers, one FFI call — for another routine.)
fn trsm_lower_inverse(inner: &Inner, l: &CudaSlice<f64>, x: &mut CudaSlice<f64>, n: usize) -> Result<()> {
    inner.ctx.bind_to_thread().map_err(cu("binding the context"))?;
    let ni = n as c_int;
    let alpha = 1f64;
    let (lp, _rl) = l.device_ptr(&inner.stream);
    let (xp, _rx) = x.device_ptr_mut(&inner.stream);
    // SAFETY: the handle is bound to the stream both buffers live on; both hold n·n values
    // (lda = ldb = n); alpha is a host scalar (the default pointer mode). L's diagonal is
    // positive (DPOTRF succeeded), so the solve is well defined.
    unsafe {
        cublas::cublasDtrsm_v2(
            *inner.blas.handle(),
            cublas::cublasSideMode_t::CUBLAS_SIDE_LEFT,
            cublas::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER,
            cublas::cublasOperation_t::CUBLAS_OP_N,
            cublas::cublasDiagType_t::CUBLAS_DIAG_NON_UNIT,
            ni,
            ni,
            &alpha,
            lp as *const f64,
            ni,
            xp as *mut f64,
            ni,
        )
    }
    .result()
    .map_err(cu("cublasDtrsm"))
}
