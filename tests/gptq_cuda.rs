//! The CUDA backend of GPTQ (feature `cuda`) against the CPU solver: the probe never panics
//! (and explains itself when there is no device), and, where a device is usable, the GPU
//! results match the CPU's: the golden unit layers (same acceptance as the CPU solver against
//! the reference), every integer-grid option, the device Hessian, dead columns, damping
//! retries, errors, and GGML grids (which run on the CPU).
//!
//! Without a usable device the GPU tests print a SKIPPED notice straight to stderr (past the
//! test harness's capture, so that CI logs show it) and pass: CI machines have no GPU. The
//! benchmark `examples/bench_gptq_cuda.rs` covers 7B-sized layers.
#![cfg(feature = "cuda")]

mod common;

use common::gptq::{activations, dead_column_problem, indefinite_hessian, load_golden, weights};
use std::io::Write;
use std::sync::OnceLock;

use qforge::quant::gptq::cuda::CudaBackend;
use qforge::quant::gptq::{quantize, ColumnOrder, GptqOptions, GptqResult, Grid, Hessian};
use qforge::GgmlType;

// ---------------------------------------------------------------------------------------
// Helpers

/// The backend, probed once per test binary; `None` (with a notice) without a device.
fn backend(test: &str) -> Option<&'static CudaBackend> {
    static BE: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
    match BE.get_or_init(|| CudaBackend::probe().map_err(|e| e.reason)) {
        Ok(be) => Some(be),
        Err(reason) => {
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: no usable CUDA device ({reason})");
            None
        }
    }
}

/// Compare a GPU result with the CPU's: codes, g_idx, scales, loss; prints a line.
fn compare(what: &str, cpu: &GptqResult, gpu: &GptqResult, min_same: f64) {
    let (c, g) = (cpu.int.as_ref().unwrap(), gpu.int.as_ref().unwrap());
    assert_eq!((c.bits, c.group_size), (g.bits, g.group_size), "{what}");
    assert_eq!(c.g_idx, g.g_idx, "{what}: g_idx");
    assert_eq!((c.codes.len(), c.scales.len(), c.zeros.len()), (g.codes.len(), g.scales.len(), g.zeros.len()));
    let same = c.codes.iter().zip(&g.codes).filter(|(a, b)| a == b).count();
    let frac = same as f64 / c.codes.len() as f64;
    let same_scales = c.scales.iter().zip(&g.scales).filter(|(a, b)| a == b).count();
    let dloss = (cpu.loss - gpu.loss).abs() / cpu.loss;
    println!(
        "{what}: codes equal {same}/{} ({:.4}%), scales equal {same_scales}/{}, loss GPU {:.6e} CPU {:.6e}",
        c.codes.len(),
        100.0 * frac,
        c.scales.len(),
        gpu.loss,
        cpu.loss
    );
    assert!(frac >= min_same, "{what}: only {:.4}% of the codes equal", 100.0 * frac);
    assert!(dloss < 1e-3, "{what}: loss {} vs {}", gpu.loss, cpu.loss);
    assert_eq!((gpu.damp_retries, gpu.dead_columns), (cpu.damp_retries, cpu.dead_columns), "{what}");
    assert!(gpu.ggml.is_none());
    // The dequantized weights are scale · (code − zero), exactly.
    let (rows, cols) = (g.codes.len() / g.g_idx.len(), g.g_idx.len());
    let ng = cols / g.group_size;
    for r in 0..rows {
        for col in 0..cols {
            let k = r * ng + g.g_idx[col] as usize;
            let v = g.scales[k] * (g.codes[r * cols + col] as i32 - g.zeros[k] as i32) as f32;
            assert_eq!(v, gpu.dequantized[r * cols + col], "{what} [{r},{col}]");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Always run

#[test]
fn probe_never_panics_and_says_why() {
    for _ in 0..2 {
        match CudaBackend::probe() {
            Ok(be) => {
                println!("device: {}", be.describe());
                for line in be.self_test().unwrap() {
                    println!("self-test: {line}");
                }
            }
            Err(e) => {
                println!("no usable CUDA device: {e}");
                assert!(!e.reason.is_empty());
                assert!(!e.reason.contains('\n'), "one line: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// GPU (skipped without a device)

/// The golden unit layers: the GPU meets the CPU solver's criterion against the float64
/// reference (≥ 99.9% identical, nothing more than one step off) and agrees with the CPU.
#[test]
fn gpu_golden_matches_reference_and_cpu() {
    let Some(be) = backend("gpu_golden_matches_reference_and_cpu") else { return };
    for name in ["golden_tiny_gptq_unit.safetensors", "golden_small_gptq_unit.safetensors"] {
        for (layer, w, h, golden, rows, cols) in load_golden(name) {
            let hess = Hessian::from_dense(h.iter().map(|&v| v as f64).collect(), cols);
            let grid = Grid::Int { bits: 4, sym: false };
            let o = GptqOptions { group_size: Some(128), ..Default::default() };
            let gpu = be.quantize(&w, rows, cols, &hess, &grid, &o).unwrap();
            let cpu = quantize(&w, rows, cols, &hess, &grid, &o).unwrap();
            compare(&format!("{name} {layer} GPU vs CPU"), &cpu, &gpu, 0.999);
            let a = gpu.agreement_with(&golden).unwrap();
            let (frac, worst) = (a.fraction(), a.worst_steps);
            println!("{name} {layer}: GPU vs reference identical {:.4}%, worst {worst:.3} steps", 100.0 * frac);
            assert!(frac >= 0.999, "{name} {layer}: only {:.4}% identical to the reference", 100.0 * frac);
            assert!(worst <= 1.0 + 1e-6, "{name} {layer}: a weight differs by {worst} steps");
        }
    }
}

/// Every integer-grid option, from a Hessian on the device and from one on the host.
#[test]
fn gpu_int_grids_match_cpu() {
    let Some(be) = backend("gpu_int_grids_match_cpu") else { return };
    let (rows, cols, tokens) = (96, 768, 1500);
    let w = weights(rows, cols, 5);
    let x = activations(tokens, cols, 6);
    let mut hc = Hessian::new(cols);
    hc.add(&x, tokens);
    let mut hd = be.new_hessian(cols).unwrap();
    hd.add(&x, tokens).unwrap();
    let cases: Vec<(Grid, GptqOptions)> = vec![
        (Grid::Int { bits: 4, sym: false }, GptqOptions { group_size: Some(128), ..Default::default() }),
        (
            Grid::Int { bits: 4, sym: false },
            GptqOptions { group_size: Some(128), order: ColumnOrder::Activation, ..Default::default() },
        ),
        (
            Grid::Int { bits: 4, sym: false },
            GptqOptions { group_size: Some(128), order: ColumnOrder::GroupAware, ..Default::default() },
        ),
        (
            Grid::Int { bits: 4, sym: true },
            GptqOptions {
                group_size: Some(64),
                order: ColumnOrder::Activation,
                static_groups: true,
                ..Default::default()
            },
        ),
        // Groups of 96 cross the 128-column sweep blocks (parameters found beyond the block).
        (Grid::Int { bits: 3, sym: false }, GptqOptions { group_size: Some(96), ..Default::default() }),
        (Grid::Int { bits: 3, sym: false }, GptqOptions { group_size: Some(96), block_size: 7, ..Default::default() }),
        (
            Grid::Int { bits: 2, sym: false },
            GptqOptions { group_size: Some(32), block_size: 1000, ..Default::default() },
        ),
        (Grid::Int { bits: 8, sym: true }, GptqOptions::default()),
        (Grid::Int { bits: 4, sym: false }, GptqOptions { order: ColumnOrder::Activation, ..Default::default() }),
    ];
    // The device's Hessian, downloaded: the CPU solver on it is what the GPU solve must match.
    // Against the CPU's own Hessian (same rows, other summation order, ~1e-6 apart) a code
    // within rounding of a level boundary may flip and move the errors propagated after it:
    // that comparison is reported and held to a looser bar (measured on an H200: 2-bit g32
    // 99.87%, every other case ≥ 99.96%).
    let hdl = hd.to_host().unwrap();
    for (grid, o) in cases {
        let cpu = quantize(&w, rows, cols, &hc, &grid, &o).unwrap();
        let cpu_dl = quantize(&w, rows, cols, &hdl, &grid, &o).unwrap();
        let dev = be.quantize_dev(&w, rows, cols, &hd, &grid, &o).unwrap();
        let host = be.quantize(&w, rows, cols, &hc, &grid, &o).unwrap();
        let what = format!(
            "{grid:?} group {:?} {:?} static {} block {}",
            o.group_size, o.order, o.static_groups, o.block_size
        );
        compare(&format!("{what} (device Hessian)"), &cpu_dl, &dev, 0.999);
        compare(&format!("{what} (host Hessian)"), &cpu, &host, 0.999);
        compare(&format!("{what} (device vs CPU Hessian, both solved on the CPU)"), &cpu, &cpu_dl, 0.995);
    }
}

#[test]
fn gpu_hessian_matches_cpu() {
    let Some(be) = backend("gpu_hessian_matches_cpu") else { return };
    // Two full 128-column panels and a partial one; 5000 rows in one call cross the f32 batch.
    let n = 300;
    let mut hc = Hessian::new(n);
    let mut hd = be.new_hessian(n).unwrap();
    for (k, rows) in [5usize, 1000, 5000, 1].into_iter().enumerate() {
        let x = activations(rows, n, 100 + k as u64);
        hc.add(&x, rows);
        hd.add(&x, rows).unwrap();
    }
    assert_eq!(hd.samples(), hc.samples());
    assert_eq!(hd.n(), n);
    assert!(!hd.has_nonfinite().unwrap());
    let (a, b) = (hc.to_dense(), hd.to_host().unwrap().to_dense());
    let max = a.iter().fold(0f64, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(&b).fold(0f64, |m, (p, q)| m.max((p - q).abs()));
    println!("device Hessian vs CPU: max |Δ| {worst:.3e} (max |H| {max:.3e})");
    assert!(worst <= 1e-5 * max, "max |Δ| {worst} vs max |H| {max}");
    for i in 0..n {
        for j in 0..n {
            assert_eq!(b[i * n + j], b[j * n + i], "not symmetric at {i},{j}");
        }
    }
    let mut bad = be.new_hessian(4).unwrap();
    bad.add(&[f32::NAN, 0.0, 0.0, 0.0], 1).unwrap();
    assert!(bad.has_nonfinite().unwrap());
    assert!(bad.add(&[0.0; 3], 1).is_err());
}

#[test]
fn gpu_dead_columns_damping_and_errors() {
    let Some(be) = backend("gpu_dead_columns_damping_and_errors") else { return };
    let grid = Grid::Int { bits: 4, sym: false };

    // Dead columns are zeroed, with and without act-order.
    let (rows, cols, tokens, w, x, dead) = dead_column_problem();
    let mut hd = be.new_hessian(cols).unwrap();
    hd.add(&x, tokens).unwrap();
    for order in [ColumnOrder::Natural, ColumnOrder::Activation, ColumnOrder::GroupAware] {
        let o = GptqOptions { order, group_size: Some(64), ..Default::default() };
        let res = be.quantize_dev(&w, rows, cols, &hd, &grid, &o).unwrap();
        assert_eq!(res.dead_columns, dead.len());
        for r in 0..rows {
            for &c in &dead {
                assert_eq!(res.dequantized[r * cols + c], 0.0, "{order:?} [{r},{c}]");
            }
        }
    }

    // Damping retried: an indefinite H that 0.1 · mean diag fixes.
    let (rows, cols) = (4, 64);
    let w = weights(rows, cols, 61);
    let hd64 = indefinite_hessian(cols);
    let o = GptqOptions::default();
    let res = be.quantize(&w, rows, cols, &Hessian::from_dense(hd64, cols), &grid, &o).unwrap();
    assert_eq!(res.damp_retries, 1);
    assert!((res.damp_used - 0.1).abs() < 1e-12);
    // Negative definite: no damping helps; the CPU's message.
    let mut neg = vec![0f64; cols * cols];
    for i in 0..cols {
        neg[i * cols + i] = -1.0;
    }
    let e = be.quantize(&w, rows, cols, &Hessian::from_dense(neg, cols), &grid, &o).unwrap_err().to_string();
    assert!(e.contains("not positive definite") && e.contains("0.01, 0.1, 1, 10"), "{e}");

    // Bad input: the CPU solver's errors.
    let (rows, cols) = (4, 256);
    let w = weights(rows, cols, 71);
    let eye: Vec<f64> = (0..cols * cols).map(|k| if k % (cols + 1) == 0 { 1.0 } else { 0.0 }).collect();
    let h = Hessian::from_dense(eye.clone(), cols);
    let err = |r: qforge::Result<GptqResult>| r.unwrap_err().to_string();
    let mut wn = w.clone();
    wn[300] = f32::INFINITY;
    assert!(err(be.quantize(&wn, rows, cols, &h, &grid, &o)).contains("[1, 44]"));
    assert!(err(be.quantize(&w[1..], rows, cols, &h, &grid, &o)).contains("weights given"));
    assert!(err(be.quantize(&w, rows / 2, cols * 2, &h, &grid, &o)).contains("Hessian is 256 × 256"));
    let g100 = GptqOptions { group_size: Some(100), ..Default::default() };
    assert!(err(be.quantize(&w, rows, cols, &h, &grid, &g100)).contains("group size 100"));
    assert!(err(be.quantize(&w, rows, cols, &h, &Grid::Int { bits: 5, sym: false }, &o)).contains("5-bit"));
    let mut hn = eye;
    hn[3 * cols + 7] = f64::NAN;
    hn[7 * cols + 3] = f64::NAN;
    assert!(err(be.quantize(&w, rows, cols, &Hessian::from_dense(hn, cols), &grid, &o)).contains("non-finite"));
    let mut nan = be.new_hessian(cols).unwrap();
    let mut xn = activations(8, cols, 3);
    xn[17] = f32::NAN;
    nan.add(&xn, 8).unwrap();
    assert!(err(be.quantize_dev(&w, rows, cols, &nan, &grid, &o)).contains("non-finite"));
}

/// GGML grids go to the CPU solver: identical results from a host Hessian, and (from the
/// downloaded device Hessian) the same blocks up to the Hessian's rounding.
#[test]
fn gpu_backend_hands_ggml_grids_to_the_cpu() {
    let Some(be) = backend("gpu_backend_hands_ggml_grids_to_the_cpu") else { return };
    let (rows, cols, tokens) = (12, 512, 1024);
    let w = weights(rows, cols, 41);
    let x = activations(tokens, cols, 42);
    let mut hc = Hessian::new(cols);
    hc.add(&x, tokens);
    let mut hd = be.new_hessian(cols).unwrap();
    hd.add(&x, tokens).unwrap();
    for t in [GgmlType::Q4_0, GgmlType::Q4_K] {
        let grid = Grid::Ggml(t);
        assert!(!CudaBackend::solves_on_gpu(&grid));
        let o = GptqOptions::default();
        let cpu = quantize(&w, rows, cols, &hc, &grid, &o).unwrap();
        let host = be.quantize(&w, rows, cols, &hc, &grid, &o).unwrap();
        assert_eq!(cpu.ggml, host.ggml, "{t}");
        // From the device Hessian: exactly the CPU solver on that Hessian, downloaded.
        let dev = be.quantize_dev(&w, rows, cols, &hd, &grid, &o).unwrap();
        let downloaded = quantize(&w, rows, cols, &hd.to_host().unwrap(), &grid, &o).unwrap();
        assert_eq!(dev.ggml, downloaded.ggml, "{t}: device Hessian");
        // Against the CPU's own Hessian only the Hessian's last bits differ, and a block whose
        // scale search lands near a tie flips with its errors propagated after it (measured
        // on an H200: Q4_0 100%, Q4_K 98.1% of the bytes equal).
        let (a, b) = (cpu.ggml.unwrap(), dev.ggml.unwrap());
        let same = a.iter().zip(&b).filter(|(p, q)| p == q).count();
        let dloss = (dev.loss / cpu.loss - 1.0).abs();
        println!(
            "{t}: device vs CPU Hessian: {same}/{} bytes equal, loss {:.6e} vs {:.6e}",
            a.len(),
            dev.loss,
            cpu.loss
        );
        assert!(same as f64 >= 0.95 * a.len() as f64, "{t}: {same}/{}", a.len());
        assert!(dloss < 1e-2, "{t}: loss {} vs {}", dev.loss, cpu.loss);
    }
}
