//! The CUDA C kernels of the GPTQ backend, compiled at run time by NVRTC (so that building
//! qforge needs no CUDA toolkit), and their launch helpers.
//!
//! Layouts (all column-major, the cuBLAS/cuSOLVER convention; `n` = columns of the weight
//! matrix = size of `H`):
//! - Hessian sum: n × n, only the lower triangle (row ≥ column) is meaningful.
//! - `M`, `U`: n × n; element (a, b) at `b·n + a`.
//! - Working weights `wk`: rows × n in SWEEP order (column p = original column `perm[p]`),
//!   element (r, p) at `p·rows + r`, so that the threads of a warp (consecutive rows) touch
//!   consecutive addresses.
//! - Errors of the current block: rows × bs, element (r, k) at `k·rows + r`.
//! - Group scales (f64) and zero points (u8): n_groups × rows, element (r, g) at `g·rows + r`.
//! - Codes: rows × n, ROW-major in the ORIGINAL column order (what `IntQuant` holds).
//!
//! The arithmetic of the quantization step mirrors `grid.rs` operation by operation
//! (f64 division, `rint` = round half to even, min/max folds starting at 0, the f32-range
//! fix of the scale), and the kernels are compiled with `--fmad=false` so that `v -= e·u`
//! rounds like the CPU's separate multiply and subtract. What still differs from the CPU is
//! the summation order inside cuBLAS/cuSOLVER (GEMM, Cholesky, triangular solve).

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, LaunchConfig};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use crate::error::{Error, Result};

/// Threads per block of the grid-stride kernels.
const THREADS: u32 = 256;
/// Threads per block of the sweep kernel (one thread per weight row). Small, so that even a
/// 4096-row matrix spreads over 64 blocks (SMs) instead of 16.
pub(super) const SWEEP_THREADS: u32 = 64;

pub(super) const SOURCE: &str = r#"
typedef unsigned char u8;
typedef unsigned int u32;
typedef long long i64;

// |v| <= DBL_MAX: false for inf and NaN.
__device__ __forceinline__ bool finite_d(double v) {
    return fabs(v) <= __longlong_as_double(0x7fefffffffffffffLL);
}

#define GRID_STRIDE(k, total) \
    for (i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x; k < (total); k += (i64)gridDim.x * blockDim.x)

// sum += part on the lower triangle (the SYRK result of one batch of activation rows; the
// upper triangle of `part` is never written by SYRK and must not be read).
extern "C" __global__ void hess_accumulate(double* __restrict__ sum, const float* __restrict__ part, i64 n) {
    GRID_STRIDE(k, n * n) {
        i64 c = k / n, r = k - c * n;
        if (r >= c) sum[k] += (double)part[k];
    }
}

// out[i] = H[i, i] = sum[i, i] * scale.
extern "C" __global__ void hess_diag(double* __restrict__ out, const double* __restrict__ sum, double scale, i64 n) {
    GRID_STRIDE(i, n) { out[i] = sum[i * n + i] * scale; }
}

// *flag = 1 if any lower-triangle entry is NaN or infinite.
extern "C" __global__ void lower_nonfinite(int* flag, const double* __restrict__ a, i64 n) {
    GRID_STRIDE(k, n * n) {
        i64 c = k / n, r = k - c * n;
        if (r >= c && !finite_d(a[k])) *flag = 1;
    }
}

// M = J·(P·H·Pᵀ + add·I)·J on the lower triangle, 0 above (J reverses the order). `hsum` is
// read on its lower triangle (the pair (i, j) at min·n + max) and scaled; `diag` holds H's
// diagonal with dead columns set to 1 (computed on the host, as the CPU solver does).
extern "C" __global__ void build_m(double* __restrict__ m, const double* __restrict__ hsum, double scale,
                                   const u32* __restrict__ perm, const double* __restrict__ diag,
                                   double add, i64 n) {
    GRID_STRIDE(k, n * n) {
        i64 b = k / n, a = k - b * n;
        if (a < b) { m[k] = 0.0; continue; }
        i64 j = perm[n - 1 - b];
        if (a == b) {
            m[k] = diag[j] + add;
        } else {
            i64 i = perm[n - 1 - a];
            i64 hi = i > j ? i : j, lo = i > j ? j : i;
            m[k] = hsum[lo * n + hi] * scale;
        }
    }
}

extern "C" __global__ void eye(double* __restrict__ x, i64 n) {
    GRID_STRIDE(k, n * n) {
        i64 b = k / n, a = k - b * n;
        x[k] = a == b ? 1.0 : 0.0;
    }
}

// dst = src read backwards: for a column-major n × n matrix that is J·src·J.
extern "C" __global__ void reverse_copy(double* __restrict__ dst, const double* __restrict__ src, i64 total) {
    GRID_STRIDE(k, total) { dst[k] = src[total - 1 - k]; }
}

// *bad = 1 unless every diagonal entry of U is > 0 and every upper entry is finite (the
// CPU solver's acceptance test for a factor).
extern "C" __global__ void check_upper(int* bad, const double* __restrict__ u, i64 n) {
    GRID_STRIDE(k, n * n) {
        i64 b = k / n, a = k - b * n;
        if (a <= b) {
            double v = u[k];
            if (!finite_d(v) || (a == b && !(v > 0.0))) *bad = 1;
        }
    }
}

// wk (rows × cols, column-major, sweep order) from w (rows × cols, row-major, original
// order, f32); dead columns zeroed.
extern "C" __global__ void init_w(double* __restrict__ wk, const float* __restrict__ w,
                                  const u32* __restrict__ perm, const u8* __restrict__ dead,
                                  i64 rows, i64 cols) {
    GRID_STRIDE(k, rows * cols) {
        i64 p = k / rows, r = k - p * rows;
        i64 c = perm[p];
        wk[k] = dead[c] ? 0.0 : (double)w[r * cols + c];
    }
}

// grid.rs find_params after the min/max fold: (scale, zero).
__device__ void find_params(double xmin, double xmax, u32 maxq, int sym, double* scale_out, u8* zero_out) {
    if (sym) {
        xmax = fmax(xmax, fabs(xmin));
        if (xmin < 0.0) xmin = -xmax;
    }
    if (xmin == 0.0 && xmax == 0.0) {
        xmin = -1.0;
        xmax = 1.0;
    }
    double scale = (xmax - xmin) / (double)maxq;
    float sf = (float)scale;
    const float flt_max = __int_as_float(0x7f7fffff);
    if (!(sf > 0.0f && sf <= flt_max)) {
        // A range too small (or too large) for an f32 scale: the nearest usable one.
        scale = scale > 1.0 ? (double)flt_max : (double)__int_as_float(0x00800000);
    }
    u32 zero;
    if (sym) {
        zero = (maxq + 1) / 2;
    } else {
        double z = rint(-xmin / scale);
        z = fmin(fmax(z, 0.0), (double)maxq);
        zero = (u32)z;
    }
    *scale_out = scale;
    *zero_out = (u8)zero;
}

// A (dynamic) group's value at sweep position p when the sweep is at position i of the block
// i1..i2: inside the block it is up to date; beyond it, it still lacks this block's updates so
// far, applied here (same order as the CPU).
__device__ double group_value(const double* __restrict__ wk, const double* __restrict__ err,
                              const double* __restrict__ u, i64 rows, i64 n, i64 r, i64 i1,
                              i64 i, i64 i2, i64 p) {
    double v = wk[p * rows + r];
    if (p >= i2) {
        for (i64 k = i1; k < i; ++k) v -= err[(k - i1) * rows + r] * u[p * n + k];
    }
    return v;
}

// grid.rs search_params: the min-max range shrunk by pr = 1 - c/100 for c < n_cand, keeping
// the candidate with the lowest importance-weighted squared rounding error (pr = 1, min-max,
// first; ties keep the earlier candidate). imp is indexed by sweep position.
__device__ void search_params(const double* __restrict__ wk, const double* __restrict__ err,
                              const double* __restrict__ u, const double* __restrict__ imp,
                              i64 rows, i64 n, i64 r, i64 i1, i64 i, i64 i2, i64 gs, u32 maxq,
                              int sym, int n_cand, double xmin, double xmax, double* scale_out,
                              u8* zero_out) {
    double best = __longlong_as_double(0x7ff0000000000000LL);
    for (int c = 0; c < n_cand; ++c) {
        double pr = 1.0 - (double)c / 100.0;
        double s;
        u8 z;
        find_params(pr * xmin, pr * xmax, maxq, sym, &s, &z);
        double e = 0.0;
        for (i64 p = i; p < i + gs; ++p) {
            double v = group_value(wk, err, u, rows, n, r, i1, i, i2, p);
            double t = rint(v / s) + (double)z;
            t = fmin(fmax(t, 0.0), (double)maxq);
            double d = v - s * (double)((int)t - (int)z);
            e += imp[p] * d * d;
        }
        if (e < best) {
            best = e;
            *scale_out = s;
            *zero_out = z;
        }
    }
}

// One block of the GPTQ sweep (sweep positions i1..i2), one thread per weight row: for each
// position, find the group's parameters if a (dynamic) group starts there, quantize the
// weight, store its scaled error, and update the block's later columns. The columns after
// the block get the block's errors afterwards, in one GEMM on the host side.
extern "C" __global__ void sweep_block(double* __restrict__ wk, double* __restrict__ err,
                                       const double* __restrict__ u, double* __restrict__ scales,
                                       u8* __restrict__ zeros, u8* __restrict__ codes,
                                       double* __restrict__ loss, const u32* __restrict__ perm,
                                       const u32* __restrict__ group_of, i64 rows, i64 n, i64 i1,
                                       i64 i2, i64 gs, int dynamic_groups, u32 maxq, int sym,
                                       const double* __restrict__ imp, int n_cand) {
    i64 r = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (r >= rows) return;
    double l = 0.0;
    for (i64 i = i1; i < i2; ++i) {
        i64 g = group_of[i];
        if (dynamic_groups && i % gs == 0) {
            double xmin = 0.0, xmax = 0.0;
            for (i64 p = i; p < i + gs; ++p) {
                double v = group_value(wk, err, u, rows, n, r, i1, i, i2, p);
                xmin = fmin(xmin, v);
                xmax = fmax(xmax, v);
            }
            if (n_cand > 0) {
                search_params(wk, err, u, imp, rows, n, r, i1, i, i2, gs, maxq, sym, n_cand, xmin, xmax,
                              &scales[g * rows + r], &zeros[g * rows + r]);
            } else {
                find_params(xmin, xmax, maxq, sym, &scales[g * rows + r], &zeros[g * rows + r]);
            }
        }
        double s = scales[g * rows + r];
        int z = zeros[g * rows + r];
        double x = wk[i * rows + r];
        double t = rint(x / s) + (double)z;
        t = fmin(fmax(t, 0.0), (double)maxq);
        int q = (int)t;
        codes[r * n + perm[i]] = (u8)q;
        double e = (x - s * (double)(q - z)) / u[i * n + i];
        err[(i - i1) * rows + r] = e;
        l += e * e;
        for (i64 j = i + 1; j < i2; ++j) wk[j * rows + r] -= e * u[j * n + i];
    }
    loss[r] += l;
}
"#;

/// The compiled kernels.
pub(super) struct Kernels {
    // Keeps the module loaded for as long as the functions are used.
    _module: Arc<CudaModule>,
    pub hess_accumulate: CudaFunction,
    pub hess_diag: CudaFunction,
    pub lower_nonfinite: CudaFunction,
    pub build_m: CudaFunction,
    pub eye: CudaFunction,
    pub reverse_copy: CudaFunction,
    pub check_upper: CudaFunction,
    pub init_w: CudaFunction,
    pub sweep_block: CudaFunction,
}

impl Kernels {
    pub(super) fn compile(ctx: &Arc<CudaContext>) -> Result<Kernels> {
        let opts = CompileOptions {
            // Unfused multiply-adds round like the CPU solver's scalar code (see the top).
            fmad: Some(false),
            name: Some("qforge_gptq.cu".into()),
            ..Default::default()
        };
        let ptx = compile_ptx_with_opts(SOURCE, opts).map_err(|e| Error::Cuda(format!("NVRTC compile: {e}")))?;
        let module = ctx.load_module(ptx).map_err(|e| Error::Cuda(format!("loading the compiled kernels: {e}")))?;
        let f =
            |name: &str| module.load_function(name).map_err(|e| Error::Cuda(format!("kernel {name} not found: {e}")));
        Ok(Kernels {
            hess_accumulate: f("hess_accumulate")?,
            hess_diag: f("hess_diag")?,
            lower_nonfinite: f("lower_nonfinite")?,
            build_m: f("build_m")?,
            eye: f("eye")?,
            reverse_copy: f("reverse_copy")?,
            check_upper: f("check_upper")?,
            init_w: f("init_w")?,
            sweep_block: f("sweep_block")?,
            _module: module,
        })
    }
}

/// Launch configuration for a grid-stride kernel over `total` elements (the grid is capped;
/// each thread then loops).
pub(super) fn grid_for(total: usize) -> LaunchConfig {
    let blocks = total.div_ceil(THREADS as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Launch configuration for the sweep kernel over `rows` rows.
pub(super) fn sweep_grid(rows: usize) -> LaunchConfig {
    let blocks = rows.div_ceil(SWEEP_THREADS as usize).max(1) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (SWEEP_THREADS, 1, 1), shared_mem_bytes: 0 }
}
