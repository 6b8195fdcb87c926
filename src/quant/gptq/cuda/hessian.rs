//! [`CudaHessian`]: `H = 2/N · Σ xᵀx` accumulated on the device.
//!
//! Activation rows are staged in page-locked host memory until a full batch of [`F32_ROWS`]
//! rows is there, whatever sizes the caller adds them in (a calibration sample is often 512
//! rows: SYRK on so few rows runs far below the GPU's rate). A full batch is uploaded
//! asynchronously (page-locked memory copies at the bus's full rate; pageable memory goes
//! through the driver's own staging at a fraction of it) and multiplied while the caller
//! fills the other staging buffer. Every read of the Hessian first submits the rows still
//! staged, so readers always see every row added so far.

use std::ffi::c_int;
use std::sync::{Mutex, MutexGuard};

use cudarc::cublas::sys as cublas;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PinnedHostSlice, PushKernelArg};
use rayon::prelude::*;

use super::kernels::grid_for;
use super::{cu, CudaBackend, Inner};
use crate::error::{Error, Result};
use crate::quant::gptq::cuda_host::check_dim;
use crate::quant::gptq::Hessian;

/// Rows multiplied in f32 (one SYRK) before the product is added to the f64 sum: the CPU
/// `Hessian`'s batch, so that both have the same precision.
const F32_ROWS: usize = 4096;

/// The Hessian of one linear input on the device. Same contract as [`Hessian`]: `add` the
/// activation rows, read it with [`CudaBackend::quantize_dev`] (or [`CudaHessian::to_host`]).
pub struct CudaHessian {
    be: CudaBackend,
    n: usize,
    samples: usize,
    /// The sum and the staging buffers; behind a lock because readers (`&self`) submit the
    /// rows still staged. Always taken after the backend's own lock.
    state: Mutex<State>,
}

struct State {
    /// Column-major n × n, lower triangle: Σ xᵀx in f64.
    sum: CudaSlice<f64>,
    /// Buffers for batching, allocated at the first `add` and freed once the Hessian is read
    /// (a solved Hessian gets no more rows, as a rule; if it does, they come back).
    staging: Option<Box<Staging>>,
}

struct Staging {
    /// Two page-locked buffers of F32_ROWS × n: the caller fills one while the other uploads.
    host: [PinnedHostSlice<f32>; 2],
    /// The buffer being filled and how many rows it holds.
    active: usize,
    pending: usize,
    /// On the device: the batch (F32_ROWS × n) and its SYRK result (n × n).
    xbuf: CudaSlice<f32>,
    part: CudaSlice<f32>,
}

impl CudaHessian {
    pub(super) fn new(be: CudaBackend, n: usize) -> Result<CudaHessian> {
        check_dim(n)?;
        let sum = {
            let _g = be.inner.guard();
            be.inner.stream.alloc_zeros::<f64>(n * n).map_err(cu("allocating the Hessian"))?
        };
        Ok(CudaHessian { be, n, samples: 0, state: Mutex::new(State { sum, staging: None }) })
    }

    /// The backend the Hessian lives on.
    pub fn backend(&self) -> &CudaBackend {
        &self.be
    }

    /// Input features (H is n × n).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Activation rows added so far.
    pub fn samples(&self) -> usize {
        self.samples
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only says that a panic happened elsewhere while it was held; the
        // state is consistent between calls, so it stays usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add `rows` activation rows (`x` is row-major rows × n). Staged, and queued on the
    /// device batch by batch; errors of the queued work surface at the next synchronizing
    /// call. After an error the Hessian is unusable (part of `x` may be in it).
    pub fn add(&mut self, x: &[f32], rows: usize) -> Result<()> {
        let n = self.n;
        if rows.checked_mul(n) != Some(x.len()) {
            return Err(Error::InvalidArgument(format!(
                "Hessian: {} values given for {rows} rows of {n} features",
                x.len()
            )));
        }
        if rows == 0 || n == 0 {
            return Ok(());
        }
        let inner = self.be.inner.clone();
        let _g = inner.guard();
        // `&mut self`: no other reader can hold the state's lock.
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if st.staging.is_none() {
            st.staging = Some(Box::new(Staging::new(&inner, n)?));
        }
        let Some(stg) = st.staging.as_mut() else {
            return Err(Error::Cuda("Hessian staging buffers missing".into()));
        };
        let mut rest = x;
        while !rest.is_empty() {
            let take = (F32_ROWS - stg.pending).min(rest.len() / n);
            let (now, later) = rest.split_at(take * n);
            {
                // Waits until the upload that last read this buffer is done.
                let buf = stg.host[stg.active].as_mut_slice().map_err(cu("waiting for a staging buffer"))?;
                let dst = &mut buf[stg.pending * n..(stg.pending + take) * n];
                // Large copies in parallel: one core moves well under the bus's rate.
                const PIECE: usize = 1 << 16;
                dst.par_chunks_mut(PIECE).zip(now.par_chunks(PIECE)).for_each(|(d, s)| d.copy_from_slice(s));
            }
            stg.pending += take;
            rest = later;
            if stg.pending == F32_ROWS {
                stg.submit(&inner, n, &mut st.sum)?;
            }
        }
        self.samples += rows;
        Ok(())
    }

    /// The state with every staged row submitted (the caller holds the backend's lock).
    fn flushed<'a>(&'a self, inner: &Inner) -> Result<MutexGuard<'a, State>> {
        let mut guard = self.state();
        let st = &mut *guard;
        if let Some(mut stg) = st.staging.take() {
            if stg.pending > 0 {
                stg.submit(inner, self.n, &mut st.sum)?;
            }
            // Freed only once the queued work that reads them is done.
            inner.sync()?;
        }
        Ok(guard)
    }

    /// Submit the rows still staged and wait until every queued batch is in the sum (for
    /// timing; every read of the Hessian does this by itself).
    pub fn flush(&self) -> Result<()> {
        let inner = &self.be.inner;
        let _g = inner.guard();
        drop(self.flushed(inner)?);
        inner.sync()
    }

    /// The factor that turns the sum into `H` (the CPU `Hessian`'s rule).
    pub(super) fn scale(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            2.0 / self.samples as f64
        }
    }

    /// The sum with every row added so far (the caller holds the backend's lock); borrow it
    /// from the guard.
    pub(super) fn sum_locked<'a>(&'a self, inner: &Inner) -> Result<SumGuard<'a>> {
        Ok(SumGuard(self.flushed(inner)?))
    }

    /// Whether any entry is NaN or infinite (checks the sum; the caller holds the lock).
    pub(super) fn has_nonfinite_locked(&self, inner: &Inner) -> Result<bool> {
        let st = self.flushed(inner)?;
        let stream = &inner.stream;
        let mut flag = stream.alloc_zeros::<i32>(1).map_err(cu("allocating a flag"))?;
        let nn = self.n as i64;
        let mut b = stream.launch_builder(&inner.kernels.lower_nonfinite);
        b.arg(&mut flag).arg(&st.sum).arg(&nn);
        // SAFETY: matches `lower_nonfinite(int*, const double*, i64)`; `sum` holds n·n values.
        unsafe { b.launch(grid_for(self.n * self.n)) }.map_err(cu("lower_nonfinite"))?;
        let v = stream.clone_dtoh(&flag).map_err(cu("downloading a flag"))?;
        inner.sync()?;
        Ok(v.first().copied().unwrap_or(0) != 0)
    }

    /// Whether any entry is NaN or infinite.
    pub fn has_nonfinite(&self) -> Result<bool> {
        let inner = self.be.inner.clone();
        let _g = inner.guard();
        self.has_nonfinite_locked(&inner)
    }

    /// `H[i, i]` for every i (the caller holds the lock).
    pub(super) fn diag_locked(&self, inner: &Inner) -> Result<Vec<f64>> {
        let st = self.flushed(inner)?;
        let n = self.n;
        let stream = &inner.stream;
        let mut out = stream.alloc_zeros::<f64>(n).map_err(cu("allocating the diagonal"))?;
        let (nn, scale) = (n as i64, self.scale());
        let mut b = stream.launch_builder(&inner.kernels.hess_diag);
        b.arg(&mut out).arg(&st.sum).arg(&scale).arg(&nn);
        // SAFETY: matches `hess_diag(double*, const double*, double, i64)`; `out` holds n
        // values, `sum` n·n.
        unsafe { b.launch(grid_for(n)) }.map_err(cu("hess_diag"))?;
        let v = stream.clone_dtoh(&out).map_err(cu("downloading the diagonal"))?;
        inner.sync()?;
        Ok(v)
    }

    /// The Hessian as a CPU [`Hessian`] (for the CPU solver, GGML grids, and tests): the same
    /// matrix, as a dense one (its `samples()` is 0).
    pub fn to_host(&self) -> Result<Hessian> {
        let n = self.n;
        let sum = {
            let inner = &self.be.inner;
            let _g = inner.guard();
            let st = self.flushed(inner)?;
            let v = inner.stream.clone_dtoh(&st.sum).map_err(cu("downloading the Hessian"))?;
            inner.sync()?;
            v
        };
        if self.samples == 0 {
            return Ok(Hessian::new(n));
        }
        let f = self.scale();
        // Column-major lower (r ≥ c at c·n + r) to the row-major lower `from_dense` reads.
        let mut dense = vec![0f64; n * n];
        for c in 0..n {
            for r in c..n {
                dense[r * n + c] = sum[c * n + r] * f;
            }
        }
        Ok(Hessian::from_dense(dense, n))
    }
}

/// The device sum of a [`CudaHessian`] with every added row in it (holds its lock).
pub(super) struct SumGuard<'a>(MutexGuard<'a, State>);

impl SumGuard<'_> {
    pub(super) fn sum(&self) -> &CudaSlice<f64> {
        &self.0.sum
    }
}

impl Staging {
    fn new(inner: &Inner, n: usize) -> Result<Staging> {
        let stream = &inner.stream;
        let len = F32_ROWS * n;
        let pinned = || -> Result<PinnedHostSlice<f32>> {
            // SAFETY: the memory is written (zeroed) before anything reads it.
            let mut p = unsafe { inner.ctx.alloc_pinned::<f32>(len) }.map_err(cu("allocating page-locked memory"))?;
            p.as_mut_slice().map_err(cu("page-locked memory"))?.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
            Ok(p)
        };
        Ok(Staging {
            host: [pinned()?, pinned()?],
            active: 0,
            pending: 0,
            xbuf: stream.alloc_zeros::<f32>(len).map_err(cu("allocating the activation buffer"))?,
            part: stream.alloc_zeros::<f32>(n * n).map_err(cu("allocating the Hessian batch buffer"))?,
        })
    }

    /// Upload the active buffer's rows, `sum += XᵀX` on them, and switch buffers.
    fn submit(&mut self, inner: &Inner, n: usize, sum: &mut CudaSlice<f64>) -> Result<()> {
        let stream = &inner.stream;
        let k = self.pending;
        // The whole buffer: cudarc copies page-locked buffers whole. The rows past `k` are
        // stale and not read (SYRK takes k rows); only a final partial batch pays for them.
        stream.memcpy_htod(&self.host[self.active], &mut self.xbuf).map_err(cu("uploading activations"))?;
        syrk_lower(inner, n, k, &self.xbuf, &mut self.part)?;
        let nn = n as i64;
        let mut b = stream.launch_builder(&inner.kernels.hess_accumulate);
        b.arg(sum).arg(&self.part).arg(&nn);
        // SAFETY: the argument list matches `hess_accumulate(double*, const float*, i64)`;
        // both buffers hold n·n elements, which is all the kernel touches.
        unsafe { b.launch(grid_for(n * n)) }.map_err(cu("hess_accumulate"))?;
        self.pending = 0;
        self.active ^= 1;
        Ok(())
    }
}

/// `c = a·aᵀ` on the lower triangle, in f32: `a` is n × k column-major (= k activation rows of
/// n features, row-major), `c` n × n column-major.
fn syrk_lower(inner: &Inner, n: usize, k: usize, a: &CudaSlice<f32>, c: &mut CudaSlice<f32>) -> Result<()> {
    let (ni, ki) = (n as c_int, k as c_int);
    let (alpha, beta) = (1f32, 0f32);
    inner.ctx.bind_to_thread().map_err(cu("binding the context"))?;
    let stream = &inner.stream;
    let (ap, _ra) = a.device_ptr(stream);
    let (cp, _rc) = c.device_ptr_mut(stream);
    // SAFETY: the handle is bound to `stream`, on which both buffers are valid; `a` holds at
    // least n·k floats (F32_ROWS·n ≥ k·n), `c` n·n; alpha/beta are host scalars (the default
    // pointer mode); lda = ldc = n ≥ 1 and n, k fit in c_int (checked by `check_dim` and the
    // batch size).
    unsafe {
        cublas::cublasSsyrk_v2(
            *inner.blas.handle(),
            cublas::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER,
            cublas::cublasOperation_t::CUBLAS_OP_N,
            ni,
            ki,
            &alpha,
            ap as *const f32,
            ni,
            &beta,
            cp as *mut f32,
            ni,
        )
    }
    .result()
    .map_err(cu("cublasSsyrk"))
}
