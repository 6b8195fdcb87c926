//! The CUDA backend of the GPTQ solver (cargo feature `cuda`).
//!
//! STATUS: checked on an NVIDIA H200 (driver 580, CUDA 13 libraries; 2026-12-04,
//! `tools/bench_gptq_cuda.sh`): codes 100% identical to the float64 reference and to the CPU
//! solver on the golden unit layers and on 7B-shaped layers, one LLaMA-7B layer's GPTQ work in
//! 2.6–2.9 s (2.7× the PyTorch reference on the same GPU); BENCHMARKS.md has the tables.
//! [`CudaBackend::probe`] still ends with a self-test that solves small problems on the GPU and
//! on the CPU and refuses the device unless they agree, so that a driver, library or
//! compiler that misbehaves shows up as "no usable CUDA device (self-test ...)" rather than as
//! a wrong checkpoint.
//!
//! What runs where:
//! - Hessian accumulation ([`CudaHessian`]): activation rows are staged in page-locked host
//!   memory into batches of 4096 (whatever sizes they are added in), each batch is uploaded
//!   in f32, `XᵀX` is formed by cuBLAS SSYRK (lower triangle, f32 products and sums), and
//!   added into an f64 running sum on the device: the same precision scheme as the CPU's
//!   `Hessian` (f32 within a batch, f64 across batches), only the summation order differs.
//! - Damping, Cholesky and `U` (the upper Cholesky factor of `H⁻¹`), in f64: `M = J·(P H Pᵀ +
//!   damp·I)·J` is built on the device, factored by cuSOLVER DPOTRF, inverted by cuBLAS DTRSM
//!   against the identity, and reversed (`U = J·L⁻¹·J`), exactly the CPU's formulation. The
//!   retries with ×10 damping and the acceptance test (`U[i,i] > 0`, all finite) are the CPU's.
//!   This step is O(n³) (about 25 s per 11008-wide Hessian on the 2-core CPU, milliseconds on
//!   a data-centre GPU), which is why it is on the device.
//! - The column sweep for [`Grid::Int`] in f64: per block of `block_size` columns one kernel
//!   launch (one thread per weight row) quantizes the block's columns in order, finding the
//!   group min-max parameters where a group starts, and updates the rest of the block; the
//!   columns after the block get the block's errors with one cuBLAS DGEMM (the lazy batch
//!   update). f64 rather than f32 because the integer grid's rounding is decided in f64 by
//!   the reference (bf16 weights often lie exactly halfway between two levels) and because
//!   the sweep is cheap next to the Hessian: rows·n² multiply-adds, ~0.2 TFLOP for an
//!   11008 × 4096 matrix, which even a consumer GPU's slow f64 units finish in well under a
//!   second.
//! - [`Grid::Ggml`] grids run on the CPU solver (their block parameter searches are qforge's
//!   CPU reference quantizers); with a [`CudaHessian`] the Hessian is downloaded first.
//!
//! Results match the CPU solver up to the summation order of cuBLAS/cuSOLVER: the same codes
//! for all but a handful of weights whose value lands within rounding of a level boundary.
//!
//! Loading: cudarc opens libcuda, libnvrtc, libcublas and libcusolver at run time and PANICS
//! when one is missing or lacks a symbol. [`CudaBackend::probe`] checks that each library can
//! be opened before anything else touches cudarc, and runs the rest of the start-up (context,
//! handles, kernel compilation, the self-test, which calls every library function the backend
//! uses so that all symbols are resolved) under `catch_unwind` as a last safety net.

mod hessian;
mod kernels;
mod solve;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::cublas::CudaBlas;
use cudarc::cusolver::DnHandle;
use cudarc::driver::{CudaContext, CudaStream};

pub use hessian::CudaHessian;

use super::cuda_host::{quantize_int, HessianOn};
use super::{GptqOptions, GptqResult, Grid, Hessian};
use crate::error::{Error, Result};
use kernels::Kernels;

/// Why no CUDA device can be used (the probe's answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    pub reason: String,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Unavailable {}

/// A usable CUDA device with its cuBLAS/cuSOLVER handles and compiled kernels. Cheap to clone
/// (shared); operations on one backend are serialized.
#[derive(Clone)]
pub struct CudaBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Serializes the backend's operations: the cuBLAS and cuSOLVER handles must not be used
    /// from two threads at once.
    lock: Mutex<()>,
    kernels: Kernels,
    blas: CudaBlas,
    solver: DnHandle,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    name: String,
    compute_capability: (i32, i32),
    total_mem: usize,
}

/// `map_err` helper: a cudarc error as [`Error::Cuda`] with what was being done.
fn cu<E: fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Cuda(format!("{what}: {e}"))
}

impl Inner {
    fn guard(&self) -> MutexGuard<'_, ()> {
        // A panic while holding the lock leaves nothing inconsistent on our side (device state
        // is rebuilt per call), so a poisoned lock is still usable.
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for the stream and surface errors cudarc recorded asynchronously.
    fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(cu("synchronize"))?;
        self.ctx.check_err().map_err(cu("asynchronous error"))
    }
}

impl fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl CudaBackend {
    /// Find a usable CUDA device (device 0, as `CUDA_VISIBLE_DEVICES` orders them), set it
    /// up and self-test it. Never panics; `Err` says why there is none ("libcuda.so not
    /// found", "no CUDA device", a driver or compiler error, a failed self-test).
    pub fn probe() -> std::result::Result<CudaBackend, Unavailable> {
        // One line (the CLI prints it as one note); compiler logs keep their lines, joined.
        let no = |reason: String| Unavailable {
            reason: reason.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | "),
        };
        // SAFETY: `is_culib_present` only tries to dlopen the library under its candidate
        // names and closes it again; loading runs the library's initializers, which is what
        // every later use would do anyway. This must come first: any other cudarc call on a
        // machine without the library panics inside cudarc.
        let driver = unsafe { cudarc::driver::sys::is_culib_present() };
        if !driver {
            return Err(no("libcuda.so not found: no NVIDIA driver".into()));
        }
        let mut missing = Vec::new();
        // SAFETY: as above.
        unsafe {
            if !cudarc::nvrtc::sys::is_culib_present() {
                missing.push("libnvrtc");
            }
            if !cudarc::cublas::sys::is_culib_present() {
                missing.push("libcublas");
            }
            if !cudarc::cusolver::sys::is_culib_present() {
                missing.push("libcusolver");
            }
        }
        if !missing.is_empty() {
            return Err(no(format!(
                "the driver is installed but {} not found (CUDA 12 or 13 runtime libraries; add their folder to \
                 LD_LIBRARY_PATH)",
                missing.join(", ")
            )));
        }
        let started = catch_unwind(AssertUnwindSafe(|| -> std::result::Result<CudaBackend, Unavailable> {
            let be = CudaBackend::start().map_err(|e| no(strip(e)))?;
            be.self_test().map_err(|e| no(format!("{}: self-test failed: {}", be.describe(), strip(e))))?;
            Ok(be)
        }));
        match started {
            Ok(r) => r,
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown panic");
                Err(no(format!("the CUDA libraries failed to load: {msg}")))
            }
        }
    }

    /// Context, handles and kernels (no checks of the results).
    fn start() -> Result<CudaBackend> {
        let count = CudaContext::device_count().map_err(cu("cuInit / cuDeviceGetCount"))?;
        if count < 1 {
            return Err(Error::Cuda("no CUDA device (the driver reports 0)".into()));
        }
        let ctx = CudaContext::new(0).map_err(cu("creating a context on device 0"))?;
        let name = ctx.name().map_err(cu("device name"))?;
        let compute_capability = ctx.compute_capability().map_err(cu("compute capability"))?;
        let total_mem = ctx.total_mem().map_err(cu("device memory size"))?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(cu("cuBLAS handle"))?;
        let solver = DnHandle::new(stream.clone()).map_err(cu("cuSOLVER handle"))?;
        let kernels = Kernels::compile(&ctx)?;
        Ok(CudaBackend {
            inner: Arc::new(Inner {
                lock: Mutex::new(()),
                kernels,
                blas,
                solver,
                stream,
                ctx,
                name,
                compute_capability,
                total_mem,
            }),
        })
    }

    /// "NVIDIA H200 (sm_90, 140.4 GB)".
    pub fn describe(&self) -> String {
        let (major, minor) = self.inner.compute_capability;
        format!("{} (sm_{major}{minor}, {:.1} GB)", self.inner.name, self.inner.total_mem as f64 / 1e9)
    }

    /// Whether [`CudaBackend::quantize`] solves `grid` on the GPU (integer grids) or hands it
    /// to the CPU solver (GGML grids).
    pub fn solves_on_gpu(grid: &Grid) -> bool {
        matches!(grid, Grid::Int { .. })
    }

    /// An empty Hessian on the device for layers with `n` input features.
    pub fn new_hessian(&self, n: usize) -> Result<CudaHessian> {
        CudaHessian::new(self.clone(), n)
    }

    /// Wait for all queued work (for timing).
    pub fn synchronize(&self) -> Result<()> {
        let _g = self.inner.guard();
        self.inner.sync()
    }

    /// [`super::quantize`] with the work on the GPU: same arguments, same result (up to
    /// rounding, see the module doc). GGML grids run on the CPU.
    pub fn quantize(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        h: &Hessian,
        grid: &Grid,
        opts: &GptqOptions,
    ) -> Result<GptqResult> {
        match *grid {
            Grid::Int { bits, sym } => {
                let _g = self.inner.guard();
                quantize_int(&*self.inner, w, rows, cols, HessianOn::Host(h), bits, sym, opts)
            }
            Grid::Ggml(_) => super::quantize(w, rows, cols, h, grid, opts),
        }
    }

    /// [`CudaBackend::quantize`] against a Hessian accumulated on the device.
    pub fn quantize_dev(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        h: &CudaHessian,
        grid: &Grid,
        opts: &GptqOptions,
    ) -> Result<GptqResult> {
        if !Arc::ptr_eq(&h.backend().inner, &self.inner) {
            return Err(Error::InvalidArgument("GPTQ: the Hessian lives on another CUDA backend".into()));
        }
        match *grid {
            Grid::Int { bits, sym } => {
                let _g = self.inner.guard();
                quantize_int(&*self.inner, w, rows, cols, HessianOn::Device(h), bits, sym, opts)
            }
            Grid::Ggml(_) => super::quantize(w, rows, cols, &h.to_host()?, grid, opts),
        }
    }

    /// Solve small problems on the GPU and on the CPU and compare (run by [`probe`]; public
    /// for tests and the benchmark). Returns one line per case.
    ///
    /// [`probe`]: CudaBackend::probe
    pub fn self_test(&self) -> Result<Vec<String>> {
        selftest::run(self)
    }
}

/// The message of an [`Error::Cuda`] without its "CUDA: " prefix (the probe's reasons are
/// printed after "no usable CUDA device").
fn strip(e: Error) -> String {
    match e {
        Error::Cuda(m) => m,
        e => e.to_string(),
    }
}

mod selftest {
    //! The probe's self-test: the GPU against the CPU solver on small problems that touch
    //! every code path (dynamic groups crossing sweep blocks, act-order, static groups,
    //! per-row groups, symmetric grids, dead columns, several sweep blocks, the Hessian on
    //! the device across the f32 batch limit).

    use super::super::{quantize, GptqOptions, Grid, Hessian};
    use super::CudaBackend;
    use crate::error::{Error, Result};

    /// Fraction of equal codes required (the CPU-vs-reference criterion is 99.9% on real
    /// layers; these problems are small, so one boundary case is worth more).
    const MIN_SAME: f64 = 0.995;

    use crate::quant::gptq::XorShift as Rng;

    /// Correlated activations with a few always-zero (dead) features.
    fn activations(tokens: usize, cols: usize, seed: u64, dead: &[usize]) -> Vec<f32> {
        let mut r = Rng(seed);
        let mut x = vec![0f32; tokens * cols];
        for t in 0..tokens {
            let mut prev = r.next();
            for c in 0..cols {
                prev = 0.8 * prev + r.next();
                x[t * cols + c] = if dead.contains(&c) { 0.0 } else { (prev * (1.0 + (c % 7) as f64)) as f32 };
            }
        }
        x
    }

    pub(super) fn run(be: &CudaBackend) -> Result<Vec<String>> {
        let (rows, cols) = (40, 192);
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let w: Vec<f32> = (0..rows * cols).map(|_| (0.05 * r.next()) as f32).collect();
        // 4100 rows: crosses the 4096-row f32 batch of both Hessians.
        let tokens = 4100;
        let x = activations(tokens, cols, 77, &[3, 100]);
        let mut hc = Hessian::new(cols);
        hc.add(&x, tokens);
        let mut hd = be.new_hessian(cols)?;
        hd.add(&x[..50 * cols], 50)?;
        hd.add(&x[50 * cols..], tokens - 50)?;
        let mut lines = Vec::new();

        // The device Hessian against the CPU's.
        let back = hd.to_host()?;
        let (hcd, hdd) = (hc.to_dense(), back.to_dense());
        let max = hcd.iter().fold(0f64, |m, v| m.max(v.abs()));
        let worst = hcd.iter().zip(&hdd).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        lines.push(format!("Hessian {cols}×{cols} from {tokens} rows: max |Δ| {worst:.2e} (max |H| {max:.2e})"));
        // Both sum in f32 within a batch, in different orders: ~1e-6 of max |H| apart. A
        // layout or scaling mistake is off by O(1).
        if worst.is_nan() || worst > 1e-4 * max {
            return Err(Error::Cuda(format!(
                "the device Hessian differs from the CPU's: max |Δ| {worst:e}, max |H| {max:e}"
            )));
        }

        let cases: [(&str, Grid, GptqOptions); 5] = [
            (
                "int4 g64 act-order block 48",
                Grid::Int { bits: 4, sym: false },
                GptqOptions {
                    block_size: 48,
                    order: crate::quant::gptq::ColumnOrder::Activation,
                    group_size: Some(64),
                    ..Default::default()
                },
            ),
            (
                "int4 g64 group-aware block 48",
                Grid::Int { bits: 4, sym: false },
                GptqOptions {
                    block_size: 48,
                    order: crate::quant::gptq::ColumnOrder::GroupAware,
                    group_size: Some(64),
                    ..Default::default()
                },
            ),
            ("int3 sym per-row block 128", Grid::Int { bits: 3, sym: true }, GptqOptions::default()),
            (
                "int2 g32 act-order static",
                Grid::Int { bits: 2, sym: false },
                GptqOptions {
                    block_size: 40,
                    order: crate::quant::gptq::ColumnOrder::Activation,
                    static_groups: true,
                    group_size: Some(32),
                    ..Default::default()
                },
            ),
            (
                "int8 g96 block 128",
                Grid::Int { bits: 8, sym: false },
                GptqOptions { group_size: Some(96), ..Default::default() },
            ),
        ];
        for (name, grid, o) in cases {
            let cpu = quantize(&w, rows, cols, &hc, &grid, &o)?;
            let gpu = be.quantize_dev(&w, rows, cols, &hd, &grid, &o)?;
            let (ci, gi) = match (&cpu.int, &gpu.int) {
                (Some(c), Some(g)) => (c, g),
                _ => return Err(Error::Cuda(format!("{name}: no integer codes"))),
            };
            let same = ci.codes.iter().zip(&gi.codes).filter(|(a, b)| a == b).count();
            let far = ci.codes.iter().zip(&gi.codes).filter(|(a, b)| a.abs_diff(**b) > 1).count();
            let frac = same as f64 / ci.codes.len() as f64;
            let dloss = (cpu.loss - gpu.loss).abs() / cpu.loss.max(f64::MIN_POSITIVE);
            lines.push(format!(
                "{name}: {same}/{} codes equal, loss {:.6e} vs CPU {:.6e}, dead {}",
                ci.codes.len(),
                gpu.loss,
                cpu.loss,
                gpu.dead_columns
            ));
            // One flipped code changes the errors propagated after it, so a few neighbours may
            // move too (`far` is reported, not required to be 0); a defect moves most codes.
            let ok = frac >= MIN_SAME
                && dloss < 1e-2
                && ci.g_idx == gi.g_idx
                && gpu.dead_columns == cpu.dead_columns
                && gpu.damp_retries == cpu.damp_retries;
            if !ok {
                return Err(Error::Cuda(format!(
                    "{name}: GPU and CPU disagree ({same}/{} codes equal, {far} differ by more than one step, loss \
                     {:e} vs {:e}, g_idx equal: {}, dead {} vs {})",
                    ci.codes.len(),
                    gpu.loss,
                    cpu.loss,
                    ci.g_idx == gi.g_idx,
                    gpu.dead_columns,
                    cpu.dead_columns
                )));
            }
        }
        Ok(lines)
    }
}
