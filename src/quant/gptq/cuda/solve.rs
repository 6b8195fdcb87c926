//! GPTQ with the integer grid on the device: the damped factorization (cuSOLVER DPOTRF +
//! cuBLAS DTRSM) and the blocked sweep (`sweep_block` kernel + cuBLAS DGEMM). The host side
//! mirrors `solver.rs` and `grid.rs` step by step; see the kernels' layouts in `kernels.rs`.

use std::ffi::c_int;

use cudarc::cublas::sys as cublas;
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::cusolver::sys as cusolver;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};

use super::hessian::{check_dim, CudaHessian};
use super::kernels::{grid_for, sweep_grid};
use super::{cu, Inner};
use crate::error::{Error, Result};
use crate::quant::gptq::cuda_host::{int_result, sweep_inputs, SweepOutputs};
use crate::quant::gptq::solver::sweep_order;
use crate::quant::gptq::{
    check_args, check_weights_finite, damp_schedule, importance, GptqOptions, GptqResult, Grid, Hessian,
};

/// Where the Hessian is.
pub(super) enum HSrc<'a> {
    Host(&'a Hessian),
    Dev(&'a CudaHessian),
}

/// The factor on the device.
struct DevFactor {
    /// Sweep order: `perm[i]` is the original column visited i-th.
    perm: Vec<usize>,
    /// `perm` on the device (u32).
    perm_dev: CudaSlice<u32>,
    /// n × n column-major, upper triangle: `U` with `UᵀU = (P H Pᵀ + damp·I)⁻¹`, sweep order.
    u: CudaSlice<f64>,
    dead: Vec<bool>,
    damp_used: f64,
    retries: u32,
}

/// `gptq::quantize` for `Grid::Int { bits, sym }` on the device. The caller holds the lock.
#[allow(clippy::too_many_arguments)]
pub(super) fn quantize_int(
    inner: &Inner,
    w: &[f32],
    rows: usize,
    cols: usize,
    h: HSrc<'_>,
    bits: u8,
    sym: bool,
    opts: &GptqOptions,
) -> Result<GptqResult> {
    let grid = Grid::Int { bits, sym };
    let hn = match h {
        HSrc::Host(h) => h.n(),
        HSrc::Dev(h) => h.n(),
    };
    check_args(w, rows, cols, hn, &grid, opts)?;
    check_dim(rows)?;
    check_dim(cols)?;
    check_weights_finite(w, cols)?;
    let nonfinite = match h {
        HSrc::Host(h) => h.has_nonfinite(),
        HSrc::Dev(h) => h.has_nonfinite_locked(inner)?,
    };
    if nonfinite {
        return Err(Error::InvalidArgument(
            "GPTQ: the Hessian has non-finite entries (NaN or infinite calibration activations?)".into(),
        ));
    }
    let n = cols;
    let (f, diag) = match h {
        HSrc::Host(h) => {
            // The dense matrix is symmetric, so `build_m`'s lower-triangle reads find H itself.
            let uploaded = inner.stream.clone_htod(&h.to_dense()).map_err(cu("uploading the Hessian"))?;
            let diag: Vec<f64> = (0..n).map(|i| h.get(i, i)).collect();
            let f = factor(
                inner,
                &uploaded,
                1.0,
                &diag,
                n,
                &sweep_order(&diag, opts.order, opts.group_size.unwrap_or(n)),
                opts.damp,
            )?;
            (f, diag)
        }
        HSrc::Dev(h) => {
            // The diagonal first: the sum's guard holds the Hessian's lock.
            let diag = h.diag_locked(inner)?;
            let sum = h.sum_locked(inner)?;
            let f = factor(
                inner,
                sum.sum(),
                h.scale(),
                &diag,
                n,
                &sweep_order(&diag, opts.order, opts.group_size.unwrap_or(n)),
                opts.damp,
            )?;
            (f, diag)
        }
    };
    let importance = opts.weighted_scales.then(|| importance(&diag).iter().map(|&v| v as f64).collect::<Vec<_>>());
    sweep(inner, w, rows, n, &f, bits, sym, importance.as_deref(), opts)
}

/// `solver::factor` on the device: dead columns, act-order permutation, damping with
/// retries, `U`.
fn factor(
    inner: &Inner,
    hsum: &CudaSlice<f64>,
    scale: f64,
    raw_diag: &[f64],
    n: usize,
    perm: &[usize],
    damp: f64,
) -> Result<DevFactor> {
    let stream = &inner.stream;
    let k = &inner.kernels;
    let dead: Vec<bool> = raw_diag.iter().map(|&d| d == 0.0).collect();
    let diag: Vec<f64> = raw_diag.iter().map(|&d| if d == 0.0 { 1.0 } else { d }).collect();
    let perm = perm.to_vec();
    let mean = diag.iter().sum::<f64>() / n as f64;

    let perm32: Vec<u32> = perm.iter().map(|&p| p as u32).collect();
    let perm_dev = stream.clone_htod(&perm32).map_err(cu("uploading the permutation"))?;
    let diag_dev = stream.clone_htod(&diag).map_err(cu("uploading the diagonal"))?;
    let mut m = stream.alloc_zeros::<f64>(n * n).map_err(cu("allocating M"))?;
    let mut x = stream.alloc_zeros::<f64>(n * n).map_err(cu("allocating L⁻¹"))?;
    let mut info = stream.alloc_zeros::<i32>(1).map_err(cu("allocating a flag"))?;
    let mut bad = stream.alloc_zeros::<i32>(1).map_err(cu("allocating a flag"))?;
    let lwork = potrf_buffer_size(inner, &mut m, n)?;
    let mut work = stream.alloc_zeros::<f64>(lwork.max(1)).map_err(cu("allocating the Cholesky workspace"))?;
    let nn = n as i64;
    let total = (n * n) as i64;

    let mut tried = Vec::new();
    for (retry, frac) in damp_schedule(damp) {
        tried.push(frac);
        let add = frac * mean;
        {
            let mut b = stream.launch_builder(&k.build_m);
            b.arg(&mut m).arg(hsum).arg(&scale).arg(&perm_dev).arg(&diag_dev).arg(&add).arg(&nn);
            // SAFETY: matches `build_m(double*, const double*, double, const u32*, const double*,
            // double, i64)`; m and hsum hold n·n values, perm and diag n, and every perm entry
            // is < n.
            unsafe { b.launch(grid_for(n * n)) }.map_err(cu("build_m"))?;
        }
        let status = potrf_lower(inner, &mut m, n, &mut work, lwork, &mut info)?;
        if status < 0 {
            return Err(Error::Cuda(format!("cusolverDnDpotrf rejected argument {}", -status)));
        }
        if status > 0 {
            // Leading minor `status` is not positive definite: more damping.
            continue;
        }
        {
            let mut b = stream.launch_builder(&k.eye);
            b.arg(&mut x).arg(&nn);
            // SAFETY: matches `eye(double*, i64)`; x holds n·n values.
            unsafe { b.launch(grid_for(n * n)) }.map_err(cu("eye"))?;
        }
        trsm_lower_inverse(inner, &m, &mut x, n)?;
        // With L the factor of J·H·J, J·L⁻¹·J is upper triangular and its UᵀU is H⁻¹; on a
        // column-major buffer, J·A·J is the buffer reversed. M is not needed any more: U goes
        // there.
        {
            let mut b = stream.launch_builder(&k.reverse_copy);
            b.arg(&mut m).arg(&x).arg(&total);
            // SAFETY: matches `reverse_copy(double*, const double*, i64)`; both hold n·n values.
            unsafe { b.launch(grid_for(n * n)) }.map_err(cu("reverse_copy"))?;
        }
        stream.memset_zeros(&mut bad).map_err(cu("clearing a flag"))?;
        {
            let mut b = stream.launch_builder(&k.check_upper);
            b.arg(&mut bad).arg(&m).arg(&nn);
            // SAFETY: matches `check_upper(int*, const double*, i64)`; m holds n·n values.
            unsafe { b.launch(grid_for(n * n)) }.map_err(cu("check_upper"))?;
        }
        let flag = stream.clone_dtoh(&bad).map_err(cu("downloading a flag"))?;
        inner.sync()?;
        if flag.first().copied().unwrap_or(1) != 0 {
            continue;
        }
        return Ok(DevFactor { perm, perm_dev, u: m, dead, damp_used: frac, retries: retry });
    }
    let tried: Vec<String> = tried.iter().map(|f| format!("{f}")).collect();
    Err(Error::InvalidArgument(format!(
        "GPTQ: the Hessian is not positive definite even with damping {} × mean(diag H) (= {mean:e}); \
         the calibration activations may be degenerate",
        tried.join(", ")
    )))
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
fn potrf_lower(
    inner: &Inner,
    m: &mut CudaSlice<f64>,
    n: usize,
    work: &mut CudaSlice<f64>,
    lwork: usize,
    info: &mut CudaSlice<i32>,
) -> Result<i32> {
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
    let v = inner.stream.clone_dtoh(&*info).map_err(cu("downloading the Cholesky status"))?;
    inner.sync()?;
    v.first().copied().ok_or_else(|| Error::Cuda("no Cholesky status".into()))
}

/// `x ← L⁻¹·x` with L the lower triangle of `l` (x = I gives L⁻¹).
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

/// The blocked sweep and the result, as `solver::sweep` + `IntGrid::finish`.
#[allow(clippy::too_many_arguments)]
fn sweep(
    inner: &Inner,
    w: &[f32],
    rows: usize,
    n: usize,
    f: &DevFactor,
    bits: u8,
    sym: bool,
    importance: Option<&[f64]>,
    opts: &GptqOptions,
) -> Result<GptqResult> {
    let stream = &inner.stream;
    let k = &inner.kernels;
    let inp = sweep_inputs(w, rows, &f.perm, &f.dead, bits, sym, importance, opts);
    let w_dev = stream.clone_htod(w).map_err(cu("uploading the weights"))?;
    let dead_dev = stream.clone_htod(&inp.dead8).map_err(cu("uploading the dead columns"))?;
    let group_dev = stream.clone_htod(&inp.group_of).map_err(cu("uploading the groups"))?;
    let imp_dev = stream.clone_htod(&inp.imp_sweep).map_err(cu("uploading the importance"))?;
    let mut scales_dev = stream.clone_htod(&inp.scales).map_err(cu("uploading the scales"))?;
    let mut zeros_dev = stream.clone_htod(&inp.zeros).map_err(cu("uploading the zero points"))?;
    let mut codes_dev = stream.alloc_zeros::<u8>(rows * n).map_err(cu("allocating the codes"))?;
    let mut loss_dev = stream.alloc_zeros::<f64>(rows).map_err(cu("allocating the losses"))?;
    let mut wk = stream.alloc_zeros::<f64>(rows * n).map_err(cu("allocating the working weights"))?;
    let bs = opts.block_size.min(n);
    let mut err = stream.alloc_zeros::<f64>(rows * bs).map_err(cu("allocating the block errors"))?;

    let (rows_i, n_i) = (rows as i64, n as i64);
    {
        let mut b = stream.launch_builder(&k.init_w);
        b.arg(&mut wk).arg(&w_dev).arg(&f.perm_dev).arg(&dead_dev).arg(&rows_i).arg(&n_i);
        // SAFETY: matches `init_w(double*, const float*, const u32*, const u8*, i64, i64)`;
        // wk and w hold rows·cols values, perm and dead cols, every perm entry < cols.
        unsafe { b.launch(grid_for(rows * n)) }.map_err(cu("init_w"))?;
    }
    drop(w_dev);

    let (gs_i, dynamic, sym_i, maxq, n_cand) = (inp.gs as i64, inp.dynamic as i32, sym as i32, inp.maxq, inp.n_cand);
    for i1 in (0..n).step_by(bs) {
        let i2 = (i1 + bs).min(n);
        let (i1_i, i2_i) = (i1 as i64, i2 as i64);
        {
            let mut b = stream.launch_builder(&k.sweep_block);
            b.arg(&mut wk)
                .arg(&mut err)
                .arg(&f.u)
                .arg(&mut scales_dev)
                .arg(&mut zeros_dev)
                .arg(&mut codes_dev)
                .arg(&mut loss_dev)
                .arg(&f.perm_dev)
                .arg(&group_dev)
                .arg(&rows_i)
                .arg(&n_i)
                .arg(&i1_i)
                .arg(&i2_i)
                .arg(&gs_i)
                .arg(&dynamic)
                .arg(&maxq)
                .arg(&sym_i)
                .arg(&imp_dev)
                .arg(&n_cand);
            // SAFETY: matches `sweep_block(double*, double*, const double*, double*, u8*, u8*,
            // double*, const u32*, const u32*, i64 ×5, int, u32, int, const double*, int)`.
            // Sizes: imp n; wk and codes
            // rows·n, err rows·bs ≥ rows·(i2 − i1), u n·n, scales/zeros ng·rows with every
            // group_of entry < ng, loss rows, perm/group_of n; the kernel reads positions up
            // to i + gs ≤ n for dynamic groups (gs divides n).
            unsafe { b.launch(sweep_grid(rows)) }.map_err(cu("sweep_block"))?;
        }
        if i2 < n {
            // W[:, i2..] −= Err · U[i1..i2, i2..]
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
            let b = f.u.slice(i2 * n + i1..);
            let mut c = wk.slice_mut(i2 * rows..);
            // SAFETY: A is rows × (i2 − i1) (lda rows), B is (i2 − i1) × (n − i2) with ldb n
            // starting at U[i1, i2] (its last element U[i2 − 1, n − 1] is inside U), C is
            // rows × (n − i2) with ldc rows starting at column i2 of wk; all on the handle's
            // stream.
            unsafe { inner.blas.gemm(cfg, &a, &b, &mut c) }.map_err(cu("cublasDgemm"))?;
        }
    }

    let codes = stream.clone_dtoh(&codes_dev).map_err(cu("downloading the codes"))?;
    let scales = stream.clone_dtoh(&scales_dev).map_err(cu("downloading the scales"))?;
    let zeros = stream.clone_dtoh(&zeros_dev).map_err(cu("downloading the zero points"))?;
    let losses = stream.clone_dtoh(&loss_dev).map_err(cu("downloading the losses"))?;
    inner.sync()?;

    let out = SweepOutputs {
        codes,
        scales: &scales,
        zeros: &zeros,
        losses: &losses,
        perm: &f.perm,
        dead: &f.dead,
        damp_used: f.damp_used,
        retries: f.retries,
    };
    Ok(int_result(&inp, out, rows, bits, opts))
}
