//! The host's side of the CUDA backend's integer-grid sweep, shared by the backend
//! (`cuda/solve.rs`) and its CPU emulation (`cuda/emulate.rs`), so that the emulation tests
//! check the very code the GPU path runs: what the kernels are given before the sweep (groups
//! per sweep position, the parameters fixed up front, the importance in sweep order), and how
//! their downloaded outputs become a [`GptqResult`]. Compiled with the `cuda` feature and for
//! tests.

use rayon::prelude::*;

use super::grid::{group_params, RANGE_CANDIDATES};
use super::{ColumnOrder, GptqOptions, GptqResult, IntQuant};

/// What the sweep kernel reads besides the weights and the factor. Layouts are the kernels':
/// `scales`/`zeros` are n_groups × rows (`g·rows + r`).
pub(super) struct SweepInputs {
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
pub(super) fn sweep_inputs(
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
pub(super) struct SweepOutputs<'a> {
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
pub(super) fn int_result(
    inp: &SweepInputs,
    out: SweepOutputs<'_>,
    rows: usize,
    bits: u8,
    opts: &GptqOptions,
) -> GptqResult {
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
