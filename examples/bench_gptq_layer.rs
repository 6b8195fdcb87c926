//! Times GPTQ on synthetic LLaMA-7B-shaped layers: Hessian accumulation (`Hessian::add`, one
//! call per calibration sample), the damped factorization and the column sweep.
//!
//! ```text
//! cargo run --release --example bench_gptq_layer -- [--rows R --cols C] [--tokens T]
//!     [--batch B] [--grid int4|int3|int8|q4_0|q4_k|...] [--group G] [--order natural|act|group]
//! ```
//! Without --rows/--cols it runs the three 7B shapes (out × in): 4096×4096 (q/k/v/o_proj),
//! 11008×4096 (gate/up_proj) and 4096×11008 (down_proj). Default: 128 samples × 2048 tokens
//! (262144), int4 with group 128. Activations are correlated (AR(1) along the features) with
//! uneven feature scales; a few distinct batches are generated and cycled (the timings do not
//! depend on the values), so generating them stays out of the measurement.

use std::time::Instant;

use qforge::quant::gptq::{quantize, ColumnOrder, GptqOptions, Grid, Hessian};
use qforge::GgmlType;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Sum of 4 uniforms, scaled to unit variance: cheap and close enough to Gaussian.
    fn normal(&mut self) -> f64 {
        (self.next() + self.next() + self.next() + self.next() - 2.0) * 3f64.sqrt()
    }
}

/// CPU seconds (user + system) this process has used: with other work on the machine the
/// wall times vary a lot; CPU time is what the work costs.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct we hand it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    let v = args.get(i + 1).unwrap_or_else(|| panic!("{name} needs a value"));
    Some(v.parse().unwrap_or_else(|_| panic!("{name}: cannot parse {v}")))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tokens: usize = arg(&args, "--tokens").unwrap_or(128 * 2048);
    let batch: usize = arg::<usize>(&args, "--batch").unwrap_or(2048).min(tokens);
    let grid_name: String = arg(&args, "--grid").unwrap_or_else(|| "int4".into());
    let group: usize = arg(&args, "--group").unwrap_or(128);
    let order_name: String = arg(&args, "--order").unwrap_or_else(|| "natural".into());
    let order = match order_name.as_str() {
        "natural" => ColumnOrder::Natural,
        "act" => ColumnOrder::Activation,
        "group" => ColumnOrder::GroupAware,
        other => panic!("--order {other}: natural, act or group"),
    };
    let grid = match grid_name.strip_prefix("int") {
        Some(b) => Grid::Int { bits: b.parse().expect("--grid intN"), sym: false },
        None => Grid::Ggml(GgmlType::parse(&grid_name).expect("--grid: intN or a GGML type")),
    };
    let shapes: Vec<(usize, usize)> = match (arg(&args, "--rows"), arg(&args, "--cols")) {
        (None, None) => vec![(4096, 4096), (11008, 4096), (4096, 11008)],
        (r, c) => vec![(r.unwrap_or(4096), c.unwrap_or(4096))],
    };
    let opts = GptqOptions {
        order,
        group_size: if matches!(grid, Grid::Int { .. }) { Some(group) } else { None },
        ..Default::default()
    };
    println!(
        "GPTQ bench: {tokens} tokens in batches of {batch}, grid {grid_name}, order {order_name}, {} rayon threads",
        rayon::current_num_threads()
    );
    println!("wall s: elapsed; cpu s: CPU time of all threads; GFLOP/s per busy core = flops / cpu s");
    println!(
        "{:>13} | {:>9} {:>9} {:>8} | {:>9} {:>9} | {:>9} {:>9} {:>8} | {:>10}",
        "rows×cols",
        "H wall s",
        "H cpu s",
        "GF/core",
        "fact wall",
        "fact cpu",
        "swp wall",
        "swp cpu",
        "GF/core",
        "loss"
    );
    let mut peaks = Vec::new();
    for (rows, cols) in shapes {
        let mut r = Rng(0x2545_F491_4F6C_DD1D ^ (rows * 31 + cols) as u64);
        // Weights: Gaussian, std 0.02.
        let w: Vec<f32> = (0..rows * cols).map(|_| (0.02 * r.normal()) as f32).collect();
        // A few distinct activation batches.
        let scale: Vec<f64> = (0..cols).map(|_| if r.next() < 0.02 { 8.0 } else { 0.5 + r.next() }).collect();
        let distinct = 4.min(tokens.div_ceil(batch));
        let batches: Vec<Vec<f32>> = (0..distinct)
            .map(|_| {
                let mut x = vec![0f32; batch * cols];
                for row in x.chunks_exact_mut(cols) {
                    let mut prev = r.normal();
                    for (c, v) in row.iter_mut().enumerate() {
                        prev = 0.9 * prev + 0.19f64.sqrt() * r.normal();
                        *v = (prev * scale[c]) as f32;
                    }
                }
                x
            })
            .collect();

        let (t, c0) = (Instant::now(), cpu_seconds());
        let mut h = Hessian::new(cols);
        let mut done = 0;
        let mut k = 0;
        while done < tokens {
            let n = batch.min(tokens - done);
            h.add(&batches[k % distinct][..n * cols], n);
            done += n;
            k += 1;
        }
        let (t_h, c_h) = (t.elapsed().as_secs_f64(), cpu_seconds() - c0);
        // SYRK: tokens · cols · (cols + 1) / 2 multiply-adds.
        let h_flops = tokens as f64 * cols as f64 * (cols as f64 + 1.0);
        let peak = faer_peak(&batches[0], batch, cols);
        peaks.push((cols, peak, h_flops / c_h / 1e9));

        let c1 = cpu_seconds();
        let res = quantize(&w, rows, cols, &h, &grid, &opts).expect("quantize");
        let c_q = cpu_seconds() - c1;
        // Lazy updates: rows · cols² / 2 multiply-adds (the in-block part included).
        let s_flops = rows as f64 * cols as f64 * cols as f64;
        // The factorization's share of the CPU time, by its share of the wall time.
        let wall_q = res.factor_seconds + res.sweep_seconds;
        let c_f = c_q * res.factor_seconds / wall_q;
        let c_s = c_q - c_f;
        println!(
            "{:>13} | {:>9.2} {:>9.2} {:>8.1} | {:>9.2} {:>9.2} | {:>9.2} {:>9.2} {:>8.1} | {:>10.3e}",
            format!("{rows}×{cols}"),
            t_h,
            c_h,
            h_flops / c_h / 1e9,
            res.factor_seconds,
            c_f,
            res.sweep_seconds,
            c_s,
            s_flops / c_s / 1e9,
            res.loss
        );
    }
    println!(
        "Hessian accumulation (lower triangle, batch · cols · (cols+1) flops) vs faer's f32 GEMM on a batch's full \
         XᵀX (GFLOP/s per busy core), X as stored (row-major) and copied column-major (faer's best layout):"
    );
    for (cols, (stored, best), h) in peaks {
        println!(
            "  cols {cols}: faer as stored {stored:.1}, column-major {best:.1}; Hessian {h:.1} = {:.0}% of the column-major rate",
            100.0 * h / best
        );
    }
}

/// faer's f32 GEMM rate on this machine for the product the Hessian needs: the full `XᵀX` of
/// one `batch × cols` batch (both triangles, so 2 · batch · cols² flops), all threads, best of
/// three; GFLOP/s per busy core (flops / CPU seconds), with `X` as stored and with both
/// operands column-major (faer's favourite layout; also printed by wall time per thread).
fn faer_peak(x: &[f32], batch: usize, cols: usize) -> (f64, f64) {
    use faer::linalg::matmul::matmul;
    use faer::{Accum, MatMut, MatRef, Par};
    let xm = MatRef::from_row_major_slice(x, batch, cols);
    let mut out = vec![0f32; cols * cols];
    let flops = 2.0 * batch as f64 * cols as f64 * cols as f64;
    let mut best = 0f64;
    for _ in 0..3 {
        let c0 = cpu_seconds();
        let om = MatMut::from_column_major_slice_mut(&mut out, cols, cols);
        matmul(om, Accum::Replace, xm.transpose(), xm, 1.0f32, Par::rayon(0));
        best = best.max(flops / (cpu_seconds() - c0) / 1e9);
    }
    let a: Vec<f32> = x.to_vec();
    let am = MatRef::from_column_major_slice(&a, cols, batch);
    let bm = MatRef::from_column_major_slice(&a, batch, cols);
    let mut wall_best = 0f64;
    let mut cpu_best = 0f64;
    for _ in 0..3 {
        let (t, c0) = (Instant::now(), cpu_seconds());
        let om = MatMut::from_column_major_slice_mut(&mut out, cols, cols);
        matmul(om, Accum::Replace, am, bm, 1.0f32, Par::rayon(0));
        wall_best = wall_best.max(flops / t.elapsed().as_secs_f64() / rayon::current_num_threads() as f64 / 1e9);
        cpu_best = cpu_best.max(flops / (cpu_seconds() - c0) / 1e9);
    }
    println!("  faer f32 GEMM {cols}×{batch}·{batch}×{cols}, column-major: {wall_best:.1} GFLOP/s per thread (wall), {cpu_best:.1} per busy core");
    (best, cpu_best)
}
