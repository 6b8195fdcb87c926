//! What the GPTQ host sequence (`host.rs`) asks of a device: buffers, the kernels of
//! `kernels.rs` and the cuBLAS/cuSOLVER calls, one method each. The CUDA backend implements it
//! on the GPU (`solve.rs`); the CPU emulation (`emulate.rs`) implements it with the kernels
//! transcribed into Rust and the library calls as plain loops, so that the emulation tests
//! run the sequence the GPU runs and only the device's operations are emulated.
//!
//! Layouts are the kernels' (see `kernels.rs`): column-major n × n matrices, working weights
//! in sweep order, group parameters n_groups × rows.

use crate::error::Result;

/// An element type a device buffer holds (with the `cuda` feature also one cudarc can move
/// and zero-initialize).
#[cfg(feature = "cuda")]
pub(crate) trait Elem: Copy + Default + cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits {}
#[cfg(not(feature = "cuda"))]
pub(crate) trait Elem: Copy + Default {}

impl Elem for f64 {}
impl Elem for f32 {}
impl Elem for u32 {}
impl Elem for u8 {}

/// The sweep kernel's buffers (kernel layouts).
pub(crate) struct SweepBufs<D: Device + ?Sized> {
    /// Working weights, rows × n in sweep order (f64).
    pub wk: D::Buf<f64>,
    /// The current block's scaled errors, rows × block size.
    pub err: D::Buf<f64>,
    pub scales: D::Buf<f64>,
    pub zeros: D::Buf<u8>,
    /// rows × n, row-major in the original column order.
    pub codes: D::Buf<u8>,
    pub loss: D::Buf<f64>,
    pub group_of: D::Buf<u32>,
    pub imp: D::Buf<f64>,
}

/// The sweep kernel's scalar arguments.
#[derive(Clone, Copy)]
pub(crate) struct SweepScalars {
    pub rows: usize,
    pub n: usize,
    pub gs: usize,
    pub dynamic: bool,
    pub maxq: u32,
    pub sym: bool,
    pub n_cand: i32,
}

/// A device the GPTQ host sequence runs on. Every method is one kernel launch or library
/// call (with what it needs allocated around it), named after it; `what` names the transfer
/// for error messages.
pub(crate) trait Device {
    type Buf<T: Elem>;
    /// A Hessian accumulated on the device.
    type Hessian;

    fn upload<T: Elem>(&self, v: &[T], what: &'static str) -> Result<Self::Buf<T>>;
    fn zeros<T: Elem>(&self, len: usize, what: &'static str) -> Result<Self::Buf<T>>;
    /// Downloads after the queued work; call [`Device::sync`] before using the values.
    fn download<T: Elem>(&self, b: &Self::Buf<T>, what: &'static str) -> Result<Vec<T>>;
    /// Waits for the queued work and surfaces its errors.
    fn sync(&self) -> Result<()>;

    fn hessian_n(h: &Self::Hessian) -> usize;
    /// Activation rows added.
    fn hessian_samples(h: &Self::Hessian) -> usize;
    /// Whether the Hessian has a NaN or infinite entry (`lower_nonfinite`).
    fn hessian_nonfinite(&self, h: &Self::Hessian) -> Result<bool>;
    /// `H[i, i]` for every i (`hess_diag`).
    fn hessian_diag(&self, h: &Self::Hessian) -> Result<Vec<f64>>;
    /// `f(sum, scale)` with the Hessian's sum (H = scale · sum, lower triangle) on the device.
    fn with_hessian_sum<R>(&self, h: &Self::Hessian, f: impl FnOnce(&Self::Buf<f64>, f64) -> Result<R>) -> Result<R>;

    /// `M = J·(P·scale·sum·Pᵀ + add·I)·J`, lower triangle (`build_m`).
    #[allow(clippy::too_many_arguments)]
    fn build_m(
        &self,
        m: &mut Self::Buf<f64>,
        hsum: &Self::Buf<f64>,
        scale: f64,
        perm: &Self::Buf<u32>,
        diag: &Self::Buf<f64>,
        add: f64,
        n: usize,
    ) -> Result<()>;
    /// Cholesky factor of `m`'s lower triangle in place (DPOTRF, lower): 0, or the order of
    /// the first leading minor that is not positive definite.
    fn potrf_lower(&self, m: &mut Self::Buf<f64>, n: usize) -> Result<i32>;
    /// `x = I` (`eye`).
    fn eye(&self, x: &mut Self::Buf<f64>, n: usize) -> Result<()>;
    /// `x ← L⁻¹·x` with L the lower triangle of `l` (DTRSM, left, lower, non-unit).
    fn trsm_lower_inverse(&self, l: &Self::Buf<f64>, x: &mut Self::Buf<f64>, n: usize) -> Result<()>;
    /// `dst` = `src` reversed, `total` values (`reverse_copy`).
    fn reverse_copy(&self, dst: &mut Self::Buf<f64>, src: &Self::Buf<f64>, total: usize) -> Result<()>;
    /// Whether the upper triangle of `u` is finite with a positive diagonal (`check_upper`;
    /// waits for the result).
    fn upper_is_valid(&self, u: &Self::Buf<f64>, n: usize) -> Result<bool>;
    /// The working weights from `w` (row-major f32) in sweep order, dead columns zero (`init_w`).
    fn init_w(
        &self,
        wk: &mut Self::Buf<f64>,
        w: &Self::Buf<f32>,
        perm: &Self::Buf<u32>,
        dead: &Self::Buf<u8>,
        rows: usize,
        cols: usize,
    ) -> Result<()>;
    /// Quantizes sweep positions `i1..i2` of every row (`sweep_block`).
    #[allow(clippy::too_many_arguments)]
    fn sweep_block(
        &self,
        b: &mut SweepBufs<Self>,
        u: &Self::Buf<f64>,
        perm: &Self::Buf<u32>,
        s: SweepScalars,
        i1: usize,
        i2: usize,
    ) -> Result<()>;
    /// The lazy batch update `W[:, i2..] −= Err · U[i1..i2, i2..]` (DGEMM, rows × (n − i2) ×
    /// (i2 − i1); `err` holds rows × (i2 − i1), `u` n × n, `wk` rows × n).
    #[allow(clippy::too_many_arguments)]
    fn gemm_update(
        &self,
        err: &Self::Buf<f64>,
        u: &Self::Buf<f64>,
        wk: &mut Self::Buf<f64>,
        rows: usize,
        n: usize,
        i1: usize,
        i2: usize,
    ) -> Result<()>;
}
