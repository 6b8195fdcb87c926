//! [`CudaHessian`]: `H = 2/N · Σ xᵀx` accumulated on the device.

use std::ffi::c_int;

use cudarc::cublas::sys as cublas;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};

use super::kernels::grid_for;
use super::{cu, CudaBackend, Inner};
use crate::error::{Error, Result};
use crate::quant::gptq::Hessian;

/// Rows multiplied in f32 (one SYRK) before the product is added to the f64 sum: the CPU
/// `Hessian`'s batch, so that both have the same precision.
const F32_ROWS: usize = 4096;

/// The Hessian of one linear input on the device. Same contract as [`Hessian`]: `add` the
/// activation rows, read it with [`CudaBackend::quantize_dev`] (or [`CudaHessian::to_host`]).
pub struct CudaHessian {
    be: CudaBackend,
    n: usize,
    /// Column-major n × n, lower triangle: Σ xᵀx in f64.
    sum: CudaSlice<f64>,
    samples: usize,
    /// The f32 batch buffers (SYRK output n × n, activation rows F32_ROWS × n), allocated at
    /// the first `add`.
    scratch: Option<(CudaSlice<f32>, CudaSlice<f32>)>,
}

impl CudaHessian {
    pub(super) fn new(be: CudaBackend, n: usize) -> Result<CudaHessian> {
        check_dim(n)?;
        let sum = {
            let _g = be.inner.guard();
            be.inner.stream.alloc_zeros::<f64>(n * n).map_err(cu("allocating the Hessian"))?
        };
        Ok(CudaHessian { be, n, sum, samples: 0, scratch: None })
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

    /// Add `rows` activation rows (`x` is row-major rows × n). Queued on the device; errors
    /// of the queued work surface at the next synchronizing call.
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
        let stream = &inner.stream;
        if self.scratch.is_none() {
            let part = stream.alloc_zeros::<f32>(n * n).map_err(cu("allocating the Hessian batch buffer"))?;
            let xbuf = stream.alloc_zeros::<f32>(F32_ROWS * n).map_err(cu("allocating the activation buffer"))?;
            self.scratch = Some((part, xbuf));
        }
        let Some((part, xbuf)) = self.scratch.as_mut() else {
            return Err(Error::Cuda("Hessian batch buffers missing".into()));
        };
        for batch in x.chunks(F32_ROWS * n) {
            let k = batch.len() / n;
            {
                // `batch.len() <= xbuf.len()` by the chunk size, so neither call can panic.
                let mut dst = xbuf.slice_mut(0..batch.len());
                stream.memcpy_htod(batch, &mut dst).map_err(cu("uploading activations"))?;
            }
            syrk_lower(&inner, n, k, xbuf, part)?;
            let nn = n as i64;
            let mut b = stream.launch_builder(&inner.kernels.hess_accumulate);
            b.arg(&mut self.sum).arg(&*part).arg(&nn);
            // SAFETY: the argument list matches `hess_accumulate(double*, const float*, i64)`;
            // both buffers hold n·n elements, which is all the kernel touches.
            unsafe { b.launch(grid_for(n * n)) }.map_err(cu("hess_accumulate"))?;
        }
        self.samples += rows;
        Ok(())
    }

    /// The factor that turns the sum into `H` (the CPU `Hessian`'s rule).
    pub(super) fn scale(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            2.0 / self.samples as f64
        }
    }

    pub(super) fn sum(&self) -> &CudaSlice<f64> {
        &self.sum
    }

    /// Whether any entry is NaN or infinite (checks the sum; the caller holds the lock).
    pub(super) fn has_nonfinite_locked(&self, inner: &Inner) -> Result<bool> {
        let stream = &inner.stream;
        let mut flag = stream.alloc_zeros::<i32>(1).map_err(cu("allocating a flag"))?;
        let nn = self.n as i64;
        let mut b = stream.launch_builder(&inner.kernels.lower_nonfinite);
        b.arg(&mut flag).arg(&self.sum).arg(&nn);
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
        let n = self.n;
        let stream = &inner.stream;
        let mut out = stream.alloc_zeros::<f64>(n).map_err(cu("allocating the diagonal"))?;
        let (nn, scale) = (n as i64, self.scale());
        let mut b = stream.launch_builder(&inner.kernels.hess_diag);
        b.arg(&mut out).arg(&self.sum).arg(&scale).arg(&nn);
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
            let v = inner.stream.clone_dtoh(&self.sum).map_err(cu("downloading the Hessian"))?;
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

/// cuBLAS and cuSOLVER take sizes and leading dimensions as C ints (the kernels index in 64
/// bits): refuse what does not fit (far beyond any real layer).
pub(super) fn check_dim(n: usize) -> Result<()> {
    if c_int::try_from(n).is_err() {
        return Err(Error::Unsupported(format!("GPTQ on CUDA: dimension {n} does not fit cuBLAS's 32-bit sizes")));
    }
    Ok(())
}
