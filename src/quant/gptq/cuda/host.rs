//! The host's side of the CUDA backend's GPTQ with the integer grid, generic over the
//! [`Device`] it runs on: the GPU (`cuda/solve.rs`) or the CPU emulation (`cuda/emulate.rs`),
//! so that the emulation tests check the very sequence the GPU path runs — the checks, the
//! damped factorization with its retries, what the sweep kernel is given (groups per sweep
//! position, the parameters fixed up front, the importance in sweep order), the blocked sweep
//! with its lazy updates, and how the downloaded outputs become a [`GptqResult`]. The host
//! side mirrors `solver.rs` and `grid.rs` step by step. Compiled with the `cuda` feature and
//! for tests.

use std::ffi::c_int;

use rayon::prelude::*;

use super::cuda_device::{Device, SweepBufs, SweepScalars};
use super::grid::{group_params, RANGE_CANDIDATES};
use super::solver::sweep_order;
use super::{
    check_args, check_hessian, check_weights_finite, damp_schedule, importance, ColumnOrder, GptqOptions, GptqResult,
    Grid, Hessian, IntQuant,
};
use crate::error::{Error, Result};

/// Where the Hessian is: on the host, or accumulated on the device.
pub(crate) enum HessianOn<'a, H> {
    Host(&'a Hessian),
    Device(&'a H),
}

/// The factor on the device.
pub(crate) struct Factor<D: Device> {
    /// Sweep order: `perm[i]` is the original column visited i-th.
    pub perm: Vec<usize>,
    /// `perm` on the device (u32).
    pub perm_dev: D::Buf<u32>,
    /// n × n column-major, upper triangle: `U` with `UᵀU = (P H Pᵀ + damp·I)⁻¹`, sweep order.
    pub u: D::Buf<f64>,
    pub dead: Vec<bool>,
    pub damp_used: f64,
    pub retries: u32,
}

/// `gptq::quantize` for `Grid::Int { bits, sym }` on `dev` (the caller holds its lock).
#[allow(clippy::too_many_arguments)]
pub(crate) fn quantize_int<D: Device>(
    dev: &D,
    w: &[f32],
    rows: usize,
    cols: usize,
    h: HessianOn<'_, D::Hessian>,
    bits: u8,
    sym: bool,
    opts: &GptqOptions,
) -> Result<GptqResult> {
    let grid = Grid::Int { bits, sym };
    let hn = match h {
        HessianOn::Host(h) => h.n(),
        HessianOn::Device(h) => D::hessian_n(h),
    };
    check_args(w, rows, cols, hn, &grid, opts)?;
    check_dim(rows)?;
    check_dim(cols)?;
    check_weights_finite(w, cols)?;
    match h {
        HessianOn::Host(h) => check_hessian(h.is_empty(), || Ok(h.has_nonfinite()))?,
        HessianOn::Device(h) => check_hessian(D::hessian_samples(h) == 0, || dev.hessian_nonfinite(h))?,
    }
    let n = cols;
    let order = |diag: &[f64]| sweep_order(diag, opts.order, opts.group_size.unwrap_or(n));
    let (f, diag) = match h {
        HessianOn::Host(h) => {
            // The dense matrix is symmetric, so `build_m`'s lower-triangle reads find H itself.
            let uploaded = dev.upload(&h.to_dense(), "uploading the Hessian")?;
            let diag: Vec<f64> = (0..n).map(|i| h.get(i, i)).collect();
            (factor(dev, &uploaded, 1.0, &diag, &order(&diag), opts.damp)?, diag)
        }
        HessianOn::Device(h) => {
            // The diagonal first: the sum is read under the Hessian's lock.
            let diag = dev.hessian_diag(h)?;
            let perm = order(&diag);
            (dev.with_hessian_sum(h, |sum, scale| factor(dev, sum, scale, &diag, &perm, opts.damp))?, diag)
        }
    };
    let importance = opts.weighted_scales.then(|| importance(&diag).iter().map(|&v| v as f64).collect::<Vec<_>>());
    sweep(dev, w, rows, n, &f, bits, sym, importance.as_deref(), opts)
}

/// `solver::factor` on the device: dead columns, act-order permutation, damping with
/// retries, `U`. `hsum · scale` is H (lower triangle read), `raw_diag` its diagonal.
pub(crate) fn factor<D: Device>(
    dev: &D,
    hsum: &D::Buf<f64>,
    scale: f64,
    raw_diag: &[f64],
    perm: &[usize],
    damp: f64,
) -> Result<Factor<D>> {
    let n = raw_diag.len();
    let dead: Vec<bool> = raw_diag.iter().map(|&d| d == 0.0).collect();
    let diag: Vec<f64> = raw_diag.iter().map(|&d| if d == 0.0 { 1.0 } else { d }).collect();
    let perm = perm.to_vec();
    let mean = diag.iter().sum::<f64>() / n as f64;

    let perm32: Vec<u32> = perm.iter().map(|&p| p as u32).collect();
    let perm_dev = dev.upload(&perm32, "uploading the permutation")?;
    let diag_dev = dev.upload(&diag, "uploading the diagonal")?;
    let mut m = dev.zeros::<f64>(n * n, "allocating M")?;
    let mut x = dev.zeros::<f64>(n * n, "allocating L⁻¹")?;

    let mut tried = Vec::new();
    for (retry, frac) in damp_schedule(damp) {
        tried.push(frac);
        dev.build_m(&mut m, hsum, scale, &perm_dev, &diag_dev, frac * mean, n)?;
        let status = dev.potrf_lower(&mut m, n)?;
        if status < 0 {
            return Err(Error::Cuda(format!("cusolverDnDpotrf rejected argument {}", -status)));
        }
        if status > 0 {
            // Leading minor `status` is not positive definite: more damping.
            continue;
        }
        dev.eye(&mut x, n)?;
        dev.trsm_lower_inverse(&m, &mut x, n)?;
        // With L the factor of J·H·J, J·L⁻¹·J is upper triangular and its UᵀU is H⁻¹; on a
        // column-major buffer, J·A·J is the buffer reversed. M is not needed any more: U goes
        // there.
        dev.reverse_copy(&mut m, &x, n * n)?;
        if !dev.upper_is_valid(&m, n)? {
            continue;
        }
        return Ok(Factor { perm, perm_dev, u: m, dead, damp_used: frac, retries: retry });
    }
    let tried: Vec<String> = tried.iter().map(|f| format!("{f}")).collect();
    Err(Error::InvalidArgument(format!(
        "GPTQ: the Hessian is not positive definite even with damping {} × mean(diag H) (= {mean:e}); \
         the calibration activations may be degenerate",
        tried.join(", ")
    )))
}

/// The blocked sweep and the result, as `solver::sweep` + `IntGrid::finish`.
#[allow(clippy::too_many_arguments)]
fn sweep<D: Device>(
    dev: &D,
    w: &[f32],
    rows: usize,
    n: usize,
    f: &Factor<D>,
    bits: u8,
    sym: bool,
    importance: Option<&[f64]>,
    opts: &GptqOptions,
) -> Result<GptqResult> {
    let inp = sweep_inputs(w, rows, &f.perm, &f.dead, bits, sym, importance, opts);
    let w_dev = dev.upload(w, "uploading the weights")?;
    let dead_dev = dev.upload(&inp.dead8, "uploading the dead columns")?;
    let bs = opts.block_size.min(n);
    let mut b = SweepBufs::<D> {
        group_of: dev.upload(&inp.group_of, "uploading the groups")?,
        imp: dev.upload(&inp.imp_sweep, "uploading the importance")?,
        scales: dev.upload(&inp.scales, "uploading the scales")?,
        zeros: dev.upload(&inp.zeros, "uploading the zero points")?,
        codes: dev.zeros(rows * n, "allocating the codes")?,
        loss: dev.zeros(rows, "allocating the losses")?,
        wk: dev.zeros(rows * n, "allocating the working weights")?,
        err: dev.zeros(rows * bs, "allocating the block errors")?,
    };
    dev.init_w(&mut b.wk, &w_dev, &f.perm_dev, &dead_dev, rows, n)?;
    drop(w_dev);

    let s = SweepScalars { rows, n, gs: inp.gs, dynamic: inp.dynamic, maxq: inp.maxq, sym, n_cand: inp.n_cand };
    for i1 in (0..n).step_by(bs) {
        let i2 = (i1 + bs).min(n);
        dev.sweep_block(&mut b, &f.u, &f.perm_dev, s, i1, i2)?;
        if i2 < n {
            dev.gemm_update(&b.err, &f.u, &mut b.wk, rows, n, i1, i2)?;
        }
    }

    let codes = dev.download(&b.codes, "downloading the codes")?;
    let scales = dev.download(&b.scales, "downloading the scales")?;
    let zeros = dev.download(&b.zeros, "downloading the zero points")?;
    let losses = dev.download(&b.loss, "downloading the losses")?;
    dev.sync()?;

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

/// cuBLAS and cuSOLVER take sizes and leading dimensions as C ints (the kernels index in 64
/// bits): refuse what does not fit (far beyond any real layer).
pub(crate) fn check_dim(n: usize) -> Result<()> {
    if c_int::try_from(n).is_err() {
        return Err(Error::Unsupported(format!("GPTQ on CUDA: dimension {n} does not fit cuBLAS's 32-bit sizes")));
    }
    Ok(())
}

/// What the sweep kernel reads besides the weights and the factor. Layouts are the kernels':
/// `scales`/`zeros` are n_groups × rows (`g·rows + r`).
struct SweepInputs {
    pub maxq: u32,
    pub gs: usize,
    pub ng: usize,
    /// Groups are found by the kernel as the sweep reaches them (not fixed up front).
    pub dynamic: bool,
    /// The group of each sweep position.
    pub group_of: Vec<u32>,
    /// Fixed parameters (per-row and static groups) from the original weights, computed by
    /// the CPU's own `group_params`; zeros where the kernel finds them.
    pub scales: Vec<f64>,
    pub zeros: Vec<u8>,
    pub dead8: Vec<u8>,
    /// The range search's importance per sweep position (`n_cand` 0: min-max, unused).
    pub imp_sweep: Vec<f64>,
    pub n_cand: i32,
}

/// The sweep's inputs for `w` (rows × cols) visited in the order `perm`.
#[allow(clippy::too_many_arguments)]
fn sweep_inputs(
    w: &[f32],
    rows: usize,
    perm: &[usize],
    dead: &[bool],
    bits: u8,
    sym: bool,
    importance: Option<&[f64]>,
    opts: &GptqOptions,
) -> SweepInputs {
    /// How the groups are found (`grid.rs`'s `Mode`).
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mode {
        PerRow,
        Static,
        Dynamic,
    }
    let cols = perm.len();
    let maxq = (1u32 << bits) - 1;
    let mode = match opts.group_size {
        None => Mode::PerRow,
        Some(_) if opts.static_groups => Mode::Static,
        Some(_) => Mode::Dynamic,
    };
    let gs = opts.group_size.unwrap_or(cols);
    let ng = cols / gs;
    let group_of: Vec<u32> = (0..cols)
        .map(|p| match mode {
            Mode::PerRow => 0,
            Mode::Static => (perm[p] / gs) as u32,
            Mode::Dynamic => (p / gs) as u32,
        })
        .collect();
    let mut scales = vec![0f64; ng * rows];
    let mut zeros = vec![0u8; ng * rows];
    if mode != Mode::Dynamic {
        for (r, row) in w.chunks_exact(cols).enumerate() {
            for g in 0..ng {
                let vals: Vec<f64> = (g * gs..(g + 1) * gs)
                    .map(|c| if mode == Mode::Static && dead[c] { 0.0 } else { row[c] as f64 })
                    .collect();
                let (s, z) = group_params(&vals, importance, |k| g * gs + k, maxq, sym);
                scales[g * rows + r] = s;
                zeros[g * rows + r] = z;
            }
        }
    }
    SweepInputs {
        maxq,
        gs,
        ng,
        dynamic: mode == Mode::Dynamic,
        group_of,
        scales,
        zeros,
        dead8: dead.iter().map(|&d| d as u8).collect(),
        imp_sweep: match importance {
            Some(imp) => perm.iter().map(|&c| imp[c]).collect(),
            None => vec![0.0; cols],
        },
        n_cand: if importance.is_some() { RANGE_CANDIDATES as i32 } else { 0 },
    }
}

/// The sweep's downloaded outputs (kernel layouts) and the factorization's facts.
struct SweepOutputs<'a> {
    pub codes: Vec<u8>,
    pub scales: &'a [f64],
    pub zeros: &'a [u8],
    pub losses: &'a [f64],
    pub perm: &'a [usize],
    pub dead: &'a [bool],
    pub damp_used: f64,
    pub retries: u32,
}

/// `IntGrid::finish`'s result from the sweep's outputs: scales rounded to f32, rows ×
/// n_groups, `g_idx` by column, and the dequantized weights exactly as the CPU grid writes
/// them (scale_f32 · (q − zero) in f32).
fn int_result(inp: &SweepInputs, out: SweepOutputs<'_>, rows: usize, bits: u8, opts: &GptqOptions) -> GptqResult {
    let (cols, ng) = (out.perm.len(), inp.ng);
    let mut q = IntQuant {
        bits,
        group_size: inp.gs,
        codes: out.codes,
        scales: vec![0f32; rows * ng],
        zeros: vec![0u8; rows * ng],
        g_idx: vec![0u32; cols],
    };
    for r in 0..rows {
        for g in 0..ng {
            q.scales[r * ng + g] = out.scales[g * rows + r] as f32;
            q.zeros[r * ng + g] = out.zeros[g * rows + r];
        }
    }
    for (p, &c) in out.perm.iter().enumerate() {
        q.g_idx[c] = inp.group_of[p];
    }
    if opts.order == ColumnOrder::GroupAware {
        q.number_groups_by_column();
    }
    let mut dequantized = vec![0f32; rows * cols];
    dequantized.par_chunks_mut(cols.max(1)).enumerate().for_each(|(r, o)| {
        for (c, v) in o.iter_mut().enumerate() {
            let g = r * ng + q.g_idx[c] as usize;
            *v = q.scales[g] * (q.codes[r * cols + c] as i32 - q.zeros[g] as i32) as f32;
        }
    });
    GptqResult {
        dequantized,
        int: Some(q),
        ggml: None,
        damp_used: out.damp_used,
        damp_retries: out.retries,
        loss: out.losses.iter().sum::<f64>() / 2.0,
        dead_columns: out.dead.iter().filter(|&&d| d).count(),
        factor_seconds: 0.0,
        sweep_seconds: 0.0,
    }
}
