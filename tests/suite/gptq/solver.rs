//! The GPTQ solver (`qforge::quant::gptq`): against golden GPTQ results computed in float64 by
//! the reference algorithm (golden/golden_*_gptq_unit.safetensors: W, H and the dequantized
//! result Q of two layers of the tiny and small models; 4 bits, group 128, asymmetric min-max,
//! damp 0.01, block 128, no act-order), and unit properties: the Hessian against a naive f64
//! sum, dead columns, act-order group indices, errors, GGML grids that decode to the result
//! exactly, block-size invariance, and a lower output error than round-to-nearest.

use crate::common;
use common::gptq::{activations, dead_column_problem, indefinite_hessian, load_golden, weights};

use qforge::quant::gptq::{quantize, ColumnOrder, GptqOptions, GptqResult, Grid, Hessian};
use qforge::quant::{decode, encode};
use qforge::GgmlType;

// ---------------------------------------------------------------------------------------
// Helpers

fn hessian_of(x: &[f32], tokens: usize, cols: usize) -> Hessian {
    let mut h = Hessian::new(cols);
    h.add(x, tokens);
    h
}

/// ‖(W − Q)·Xᵀ‖², the layer's output error on the activations.
fn output_error(w: &[f32], q: &[f32], x: &[f32], rows: usize, cols: usize, tokens: usize) -> f64 {
    let mut total = 0.0;
    for r in 0..rows {
        let e: Vec<f64> = (0..cols).map(|c| w[r * cols + c] as f64 - q[r * cols + c] as f64).collect();
        for t in 0..tokens {
            let xt = &x[t * cols..(t + 1) * cols];
            let y: f64 = e.iter().zip(xt).map(|(a, &b)| a * b as f64).sum();
            total += y * y;
        }
    }
    total
}

/// Plain round-to-nearest on the min-max grid, written out independently of the solver.
fn rtn_int(w: &[f32], rows: usize, cols: usize, bits: u32, gs: usize) -> Vec<f32> {
    let maxq = ((1u32 << bits) - 1) as f64;
    let mut out = vec![0f32; w.len()];
    for r in 0..rows {
        for g in 0..cols / gs {
            let x = &w[r * cols + g * gs..r * cols + (g + 1) * gs];
            let xmin = x.iter().fold(0f64, |m, &v| m.min(v as f64));
            let xmax = x.iter().fold(0f64, |m, &v| m.max(v as f64));
            let scale = (xmax - xmin) / maxq;
            let zero = (-xmin / scale).round();
            for (j, &v) in x.iter().enumerate() {
                let q = ((v as f64 / scale).round() + zero).clamp(0.0, maxq);
                out[r * cols + g * gs + j] = (scale * (q - zero)) as f32;
            }
        }
    }
    out
}

fn opts(group: Option<usize>) -> GptqOptions {
    GptqOptions { group_size: group, ..Default::default() }
}

fn int4() -> Grid {
    Grid::Int { bits: 4, sym: false }
}

/// Fraction of weights whose values agree within `tol` (absolute), and the largest difference.
fn agreement(a: &[f32], b: &[f32], tol: f32) -> (f64, f32) {
    let same = a.iter().zip(b).filter(|(x, y)| (*x - *y).abs() <= tol).count();
    let max = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    (same as f64 / a.len() as f64, max)
}

// ---------------------------------------------------------------------------------------
// Golden

fn check_golden(name: &str) {
    for (layer, w, h, golden, rows, cols) in load_golden(name) {
        let hess = Hessian::from_dense(h.iter().map(|&v| v as f64).collect(), cols);
        let res = quantize(&w, rows, cols, &hess, &int4(), &opts(Some(128))).unwrap();
        assert_eq!(res.int.as_ref().unwrap().n_groups(), cols / 128);
        let a = res.agreement_with(&golden).unwrap();
        let (same, frac, worst_steps, max_abs) = (a.identical, a.fraction(), a.worst_steps, a.max_abs);
        println!(
            "{name} {layer}: {rows}×{cols}: identical {same}/{} ({:.4}%), max |ΔQ| {max_abs:.3e} = {worst_steps:.3} \
             steps, loss {:.4}, damp {} ({} retries)",
            rows * cols,
            100.0 * frac,
            res.loss,
            res.damp_used,
            res.damp_retries
        );
        assert!(frac >= 0.999, "{name} {layer}: only {:.4}% identical", 100.0 * frac);
        assert!(worst_steps <= 1.0 + 1e-6, "{name} {layer}: a weight differs by {worst_steps} steps");
        assert_eq!(res.damp_retries, 0);
        assert_eq!(res.dead_columns, 0);
    }
}

#[test]
fn golden_tiny() {
    check_golden("golden_tiny_gptq_unit.safetensors");
}

#[test]
fn golden_small() {
    check_golden("golden_small_gptq_unit.safetensors");
}

// ---------------------------------------------------------------------------------------
// Hessian

#[test]
fn hessian_add_matches_naive_f64() {
    // 300 features: two full 128-column panels and a partial one; 5000 rows in one call
    // crosses the f32 batch limit.
    let n = 300;
    let batches = [5usize, 1000, 5000, 1];
    let mut h = Hessian::new(n);
    let mut naive = vec![0f64; n * n];
    let mut total = 0;
    for (k, &rows) in batches.iter().enumerate() {
        let x = activations(rows, n, 100 + k as u64);
        h.add(&x, rows);
        for t in 0..rows {
            let xt = &x[t * n..(t + 1) * n];
            for i in 0..n {
                for j in 0..n {
                    naive[i * n + j] += xt[i] as f64 * xt[j] as f64;
                }
            }
        }
        total += rows;
    }
    assert_eq!(h.samples(), total);
    assert_eq!(h.n(), n);
    let dense = h.to_dense();
    let max = naive.iter().fold(0f64, |m, v| m.max(v.abs())) * 2.0 / total as f64;
    let mut worst = 0f64;
    for i in 0..n {
        for j in 0..n {
            let want = naive[i * n + j] * 2.0 / total as f64;
            worst = worst.max((dense[i * n + j] - want).abs());
            assert_eq!(h.get(i, j), dense[i * n + j]);
            assert_eq!(dense[i * n + j], dense[j * n + i], "not symmetric at {i},{j}");
        }
    }
    println!("Hessian vs naive f64: max |Δ| {worst:.3e} (max |H| {max:.3e})");
    assert!(worst <= 1e-6 * max, "max |Δ| {worst} vs max |H| {max}");
    assert!(!h.has_nonfinite());
}

#[test]
fn hessian_from_dense_and_restart() {
    let n = 4;
    let dense: Vec<f64> = (0..n * n).map(|k| if k / n == k % n { 2.0 } else { 0.5 }).collect();
    let mut h = Hessian::from_dense(dense.clone(), n);
    assert_eq!(h.samples(), 0);
    assert_eq!(h.to_dense(), dense);
    // As in the reference's running average from N = 0, adding starts afresh.
    let x = [1f32, 2.0, 0.0, -1.0];
    h.add(&x, 1);
    assert_eq!(h.samples(), 1);
    assert_eq!(h.get(1, 3), -(2.0 * 2.0));
    assert_eq!(h.get(0, 0), 2.0);
    let mut bad = h.clone();
    bad.add(&[f32::NAN, 0.0, 0.0, 0.0], 1);
    assert!(bad.has_nonfinite());
}

// ---------------------------------------------------------------------------------------
// Solver properties

#[test]
fn gptq_beats_rtn_on_correlated_inputs() {
    let (rows, cols, tokens) = (64, 512, 2048);
    let w = weights(rows, cols, 7);
    let x = activations(tokens, cols, 8);
    let h = hessian_of(&x, tokens, cols);

    let mut cases: Vec<(String, Vec<f32>, Vec<f32>)> = Vec::new();
    for (bits, order, gs) in [
        (4u8, ColumnOrder::Natural, 128),
        (4, ColumnOrder::Activation, 128),
        (4, ColumnOrder::GroupAware, 128),
        (3, ColumnOrder::Natural, 128),
        (4, ColumnOrder::GroupAware, 32),
    ] {
        for weighted_scales in [false, true] {
            let o = GptqOptions { order, weighted_scales, ..opts(Some(gs)) };
            let res = quantize(&w, rows, cols, &h, &Grid::Int { bits, sym: false }, &o).unwrap();
            let name = format!("int{bits} g{gs} {order:?} weighted scales {weighted_scales}");
            cases.push((name, res.dequantized, rtn_int(&w, rows, cols, bits as u32, gs)));
        }
    }
    for t in [GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::IQ4_NL] {
        let rtn = decode(t, &encode(t, &w).unwrap(), w.len()).unwrap();
        for weighted_scales in [false, true] {
            let o = GptqOptions { weighted_scales, ..Default::default() };
            let res = quantize(&w, rows, cols, &h, &Grid::Ggml(t), &o).unwrap();
            cases.push((format!("{t} weighted scales {weighted_scales}"), res.dequantized, rtn.clone()));
        }
    }
    let mut plain = f64::NAN;
    for (name, q, rtn) in cases {
        let e_gptq = output_error(&w, &q, &x, rows, cols, tokens);
        let e_rtn = output_error(&w, &rtn, &x, rows, cols, tokens);
        println!("{name}: output error GPTQ {e_gptq:.4e}, RTN {e_rtn:.4e} (ratio {:.3})", e_gptq / e_rtn);
        assert!(e_gptq < 0.8 * e_rtn, "{name}: GPTQ {e_gptq} vs RTN {e_rtn}");
        // Parameters chosen by the error weighted with the Hessian's diagonal (GGML block
        // headers by llama.cpp's importance-weighted quantizer, integer groups by the range
        // search) beat the plain ones (llama.cpp's plain quantizer, min-max).
        if name.ends_with("weighted scales false") {
            plain = e_gptq;
        } else {
            println!("  vs plain: {:.3}", e_gptq / plain);
            assert!(e_gptq < 0.9 * plain, "{name}: {e_gptq} vs plain {plain}");
        }
    }
}

#[test]
fn identity_hessian_is_round_to_nearest() {
    // With H = I nothing is propagated: GPTQ is plain rounding on the min-max grid.
    let (rows, cols) = (16, 256);
    let w = weights(rows, cols, 3);
    let mut eye = vec![0f64; cols * cols];
    for i in 0..cols {
        eye[i * cols + i] = 1.0;
    }
    let h = Hessian::from_dense(eye, cols);
    let res = quantize(&w, rows, cols, &h, &int4(), &opts(Some(64))).unwrap();
    let rtn = rtn_int(&w, rows, cols, 4, 64);
    let (frac, max) = agreement(&res.dequantized, &rtn, 1e-6);
    assert!(frac > 0.9999 && max < 0.01, "identical {frac}, max {max}");
}

#[test]
fn int_outputs_are_consistent() {
    let (rows, cols, tokens) = (24, 256, 512);
    let w = weights(rows, cols, 11);
    let x = activations(tokens, cols, 12);
    let h = hessian_of(&x, tokens, cols);
    for (bits, sym) in [(2u8, false), (3, true), (4, true), (8, false)] {
        for group in [None, Some(32), Some(128)] {
            let res = quantize(&w, rows, cols, &h, &Grid::Int { bits, sym }, &opts(group)).unwrap();
            let q = res.int.as_ref().unwrap();
            let gs = group.unwrap_or(cols);
            assert_eq!((q.bits, q.group_size, q.n_groups()), (bits, gs, cols / gs));
            assert_eq!(
                (q.codes.len(), q.scales.len(), q.zeros.len()),
                (rows * cols, rows * cols / gs, rows * cols / gs)
            );
            assert!(res.ggml.is_none());
            for r in 0..rows {
                for c in 0..cols {
                    let g = r * (cols / gs) + q.g_idx[c] as usize;
                    assert_eq!(q.g_idx[c] as usize, c / gs);
                    let code = q.codes[r * cols + c];
                    assert!((code as u32) < (1 << bits));
                    if sym {
                        assert_eq!(q.zeros[g] as u32, 1 << (bits - 1));
                    }
                    let v = q.scales[g] * (code as i32 - q.zeros[g] as i32) as f32;
                    assert_eq!(v, res.dequantized[r * cols + c], "bits {bits} group {group:?} [{r},{c}]");
                }
            }
        }
    }
}

#[test]
fn dead_columns_are_zeroed() {
    let (rows, cols, tokens, w, x, dead) = dead_column_problem();
    let h = hessian_of(&x, tokens, cols);
    for grid in [int4(), Grid::Ggml(GgmlType::Q4_0), Grid::Ggml(GgmlType::Q8_0), Grid::Ggml(GgmlType::Q6_K)] {
        for order in [ColumnOrder::Natural, ColumnOrder::Activation, ColumnOrder::GroupAware] {
            let o = GptqOptions { order, ..opts(Some(64)) };
            let res = quantize(&w, rows, cols, &h, &grid, &o).unwrap();
            assert_eq!(res.dead_columns, dead.len());
            assert!(res.dequantized.iter().all(|v| v.is_finite()));
            for r in 0..rows {
                for &c in &dead {
                    assert_eq!(res.dequantized[r * cols + c], 0.0, "{grid:?} {order:?} [{r},{c}]");
                }
            }
        }
    }
}

#[test]
fn act_order_group_indices() {
    let (rows, cols, gs) = (8, 256, 64);
    let w = weights(rows, cols, 31);
    // A diagonal Hessian with a known descending order: column c has diag d(c).
    let d = |c: usize| 1.0 + ((c * 97) % cols) as f64;
    let mut hd = vec![0f64; cols * cols];
    for c in 0..cols {
        hd[c * cols + c] = d(c);
    }
    let h = Hessian::from_dense(hd, cols);
    let mut order: Vec<usize> = (0..cols).collect();
    order.sort_by(|&a, &b| d(b).partial_cmp(&d(a)).unwrap());

    let stat = GptqOptions { order: ColumnOrder::Activation, static_groups: true, ..opts(Some(gs)) };
    let res = quantize(&w, rows, cols, &h, &int4(), &stat).unwrap();
    let q = res.int.unwrap();
    for c in 0..cols {
        assert_eq!(q.g_idx[c] as usize, c / gs, "static groups keep the original grouping");
    }

    let dynamic = GptqOptions { order: ColumnOrder::Activation, static_groups: false, ..opts(Some(gs)) };
    let res = quantize(&w, rows, cols, &h, &int4(), &dynamic).unwrap();
    let q = res.int.unwrap();
    for (i, &c) in order.iter().enumerate() {
        assert_eq!(q.g_idx[c] as usize, i / gs, "column {c}, visited {i}-th");
    }
    // And the codes use those groups.
    let ng = cols / gs;
    for r in 0..rows {
        for c in 0..cols {
            let g = r * ng + q.g_idx[c] as usize;
            let v = q.scales[g] * (q.codes[r * cols + c] as i32 - q.zeros[g] as i32) as f32;
            assert_eq!(v, res.dequantized[r * cols + c]);
        }
    }

    // Ties keep column order: a constant diagonal visits columns in order.
    let mut eye = vec![0f64; cols * cols];
    for c in 0..cols {
        eye[c * cols + c] = 1.0;
    }
    let res = quantize(&w, rows, cols, &Hessian::from_dense(eye, cols), &int4(), &dynamic).unwrap();
    let q = res.int.unwrap();
    assert!((0..cols).all(|c| q.g_idx[c] as usize == c / gs));

    // Group-aware order: the groups are the column groups, whatever order they are swept in,
    // so g_idx is the monotone c / gs and the scales are stored in column-group order.
    let gar = GptqOptions { order: ColumnOrder::GroupAware, ..opts(Some(gs)) };
    let res = quantize(&w, rows, cols, &h, &int4(), &gar).unwrap();
    let q = res.int.as_ref().unwrap();
    assert!((0..cols).all(|c| q.g_idx[c] as usize == c / gs), "group-aware g_idx is monotone");
    for r in 0..rows {
        for c in 0..cols {
            let g = r * ng + c / gs;
            let v = q.scales[g] * (q.codes[r * cols + c] as i32 - q.zeros[g] as i32) as f32;
            assert_eq!(v, res.dequantized[r * cols + c], "group-aware [{r},{c}] decodes from its column group");
        }
    }
    // With one group per row it is desc_act itself.
    let whole = |order| GptqOptions { order, ..opts(None) };
    let a = quantize(&w, rows, cols, &h, &int4(), &whole(ColumnOrder::GroupAware)).unwrap();
    let b = quantize(&w, rows, cols, &h, &int4(), &whole(ColumnOrder::Activation)).unwrap();
    assert_eq!(a.dequantized, b.dequantized);
}

#[test]
fn ggml_grids_decode_to_the_result_exactly() {
    let (rows, cols, tokens) = (12, 512, 1024);
    let w = weights(rows, cols, 41);
    let x = activations(tokens, cols, 42);
    let h = hessian_of(&x, tokens, cols);
    for t in qforge::quant::gptq::ggml_types() {
        for (order, static_groups, weighted_scales) in [
            (ColumnOrder::Natural, false, false),
            (ColumnOrder::Activation, false, false),
            (ColumnOrder::Activation, true, false),
            (ColumnOrder::GroupAware, false, false),
            (ColumnOrder::GroupAware, false, true),
            (ColumnOrder::Activation, true, true),
        ] {
            let o = GptqOptions { order, static_groups, weighted_scales, ..Default::default() };
            let res = quantize(&w, rows, cols, &h, &Grid::Ggml(t), &o).unwrap();
            assert!(res.int.is_none());
            let bytes = res.ggml.as_ref().unwrap();
            assert_eq!(bytes.len() as u64, t.row_bytes(cols as u64).unwrap() * rows as u64);
            let dec = decode(t, bytes, rows * cols).unwrap();
            for (k, (a, b)) in dec.iter().zip(&res.dequantized).enumerate() {
                assert!(
                    a == b,
                    "{t} {order:?} static {static_groups} weighted {weighted_scales}: weight {k}: {a} vs {b}"
                );
            }
            let rtn = decode(t, &encode(t, &w).unwrap(), w.len()).unwrap();
            let e_gptq = output_error(&w, &res.dequantized, &x, rows, cols, tokens);
            let e_rtn = output_error(&w, &rtn, &x, rows, cols, tokens);
            println!(
                "{t} {order:?} static {static_groups} weighted {weighted_scales}: decodes exactly; output error vs RTN {:.3}",
                e_gptq / e_rtn
            );
        }
    }
}

#[test]
fn block_size_does_not_change_the_result() {
    // Group parameters found inside a block (group 96 with block 128, crossing block ends)
    // must see the same current weights as with blocks aligned to the groups.
    let (rows, cols, tokens) = (16, 768, 800);
    let w = weights(rows, cols, 51);
    let x = activations(tokens, cols, 52);
    let h = hessian_of(&x, tokens, cols);
    let run = |grid: Grid, order: ColumnOrder, group: Option<usize>, bs: usize| -> GptqResult {
        let o = GptqOptions { block_size: bs, order, ..opts(group) };
        quantize(&w, rows, cols, &h, &grid, &o).unwrap()
    };
    for (grid, group) in [(int4(), Some(96)), (Grid::Ggml(GgmlType::Q4_K), None), (Grid::Ggml(GgmlType::Q5_0), None)] {
        for order in [ColumnOrder::Natural, ColumnOrder::Activation, ColumnOrder::GroupAware] {
            let a = run(grid, order, group, 32);
            for bs in [128, 7, 1000] {
                let b = run(grid, order, group, bs);
                let (frac, max) = agreement(&a.dequantized, &b.dequantized, 1e-6);
                println!("{grid:?} {order:?}: block 32 vs {bs}: identical {frac:.5}, max |Δ| {max:.3e}");
                assert!(frac >= 0.999, "{grid:?} {order:?} block {bs}: identical {frac}");
                assert!((a.loss - b.loss).abs() <= 1e-3 * a.loss);
            }
        }
    }
}

#[test]
fn damping_is_retried_then_reported() {
    let (rows, cols) = (4, 64);
    let w = weights(rows, cols, 61);
    let hd = indefinite_hessian(cols);
    let res = quantize(&w, rows, cols, &Hessian::from_dense(hd, cols), &int4(), &opts(None)).unwrap();
    assert_eq!(res.damp_retries, 1);
    assert!((res.damp_used - 0.1).abs() < 1e-12);

    // Negative definite: no damping helps.
    let mut neg = vec![0f64; cols * cols];
    for i in 0..cols {
        neg[i * cols + i] = -1.0;
    }
    let err = quantize(&w, rows, cols, &Hessian::from_dense(neg, cols), &int4(), &opts(None)).unwrap_err().to_string();
    println!("{err}");
    assert!(err.contains("not positive definite") && err.contains("0.01, 0.1, 1, 10"), "{err}");
}

#[test]
fn bad_inputs_are_errors() {
    let (rows, cols) = (4, 256);
    let w = weights(rows, cols, 71);
    let mut eye = vec![0f64; cols * cols];
    for i in 0..cols {
        eye[i * cols + i] = 1.0;
    }
    let h = Hessian::from_dense(eye.clone(), cols);
    let o = GptqOptions::default();
    let e = |r: qforge::Result<GptqResult>| r.unwrap_err().to_string();

    assert!(e(quantize(&w, rows, cols, &Hessian::new(cols), &int4(), &o)).contains("no activations"));
    let mut hn = eye.clone();
    hn[3 * cols + 7] = f64::NAN;
    hn[7 * cols + 3] = f64::NAN;
    assert!(e(quantize(&w, rows, cols, &Hessian::from_dense(hn, cols), &int4(), &o)).contains("non-finite"));
    let mut wn = w.clone();
    wn[300] = f32::INFINITY;
    assert!(e(quantize(&wn, rows, cols, &h, &int4(), &o)).contains("[1, 44]"));
    assert!(e(quantize(&w[1..], rows, cols, &h, &int4(), &o)).contains("weights given"));
    assert!(e(quantize(&w, rows / 2, cols * 2, &h, &int4(), &o)).contains("Hessian is 256 × 256"));
    assert!(e(quantize(&w, rows, cols, &h, &int4(), &opts(Some(100)))).contains("group size 100"));
    assert!(e(quantize(&w, rows, cols, &h, &int4(), &opts(Some(0)))).contains("group size 0"));
    assert!(e(quantize(&w, rows, cols, &h, &Grid::Int { bits: 5, sym: false }, &o)).contains("5-bit"));
    assert!(e(quantize(&w, rows, cols, &h, &Grid::Ggml(GgmlType::Q2_K), &o)).contains("Q2_K"));
    assert!(e(quantize(&w, rows, cols, &h, &Grid::Ggml(GgmlType::F16), &o)).contains("not supported"));
    let w2 = weights(4, 128, 72);
    let h2 = Hessian::from_dense((0..128 * 128).map(|k| if k % 129 == 0 { 1.0 } else { 0.0 }).collect(), 128);
    assert!(e(quantize(&w2, 4, 128, &h2, &Grid::Ggml(GgmlType::Q4_K), &o)).contains("do not divide"));
    assert!(
        e(quantize(&w, rows, cols, &h, &int4(), &GptqOptions { block_size: 0, ..o.clone() })).contains("block size")
    );
    assert!(e(quantize(&w, rows, cols, &h, &int4(), &GptqOptions { damp: -1.0, ..o.clone() })).contains("damping"));
}
