//! Check and time the CUDA backend of GPTQ against the CPU solver (run by
//! `tools/bench_gptq_cuda.sh`; needs `--features cuda` and a GPU):
//!
//! 1. the probe and its self-test;
//! 2. the golden unit layers (tiny and small q_proj/o_proj, 4-bit, group 128): GPU vs the
//!    float64 reference (the CPU solver's acceptance: ≥ 99.9% identical, ≤ 1 step) and GPU
//!    vs CPU codes;
//! 3. synthetic 7B-shaped layers (q_proj 4096×4096, up_proj 11008×4096, down_proj
//!    4096×11008) calibrated on `--windows` × 2048 tokens (default 128, LLaMA-7B GPTQ's usual
//!    setting): the Hessian accumulated on the GPU (timed; checked against the CPU's on the
//!    first `--check-windows` windows), then GPTQ int4 g128 on the GPU (from the device
//!    Hessian, timed) and on the CPU (from the same Hessian, downloaded; timed), codes compared.
//!
//! Prints Markdown table rows for BENCHMARKS.md and exits with status 1 if a check fails.
//!
//! Options: `--windows N` (128), `--check-windows K` (2), `--skip-cpu` (GPU timings only),
//! `--quick` (8 windows, only q_proj).

use std::time::Instant;

use qforge::quant::gptq::cuda::CudaBackend;
use qforge::quant::gptq::{quantize, GptqOptions, GptqResult, Grid, Hessian};
use rayon::prelude::*;

const SEQLEN: usize = 2048;

struct Args {
    windows: usize,
    check_windows: usize,
    skip_cpu: bool,
    quick: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { windows: 128, check_windows: 2, skip_cpu: false, quick: false };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            it.next().and_then(|v| v.parse().ok()).ok_or_else(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--windows" => a.windows = num("--windows")?,
            "--check-windows" => a.check_windows = num("--check-windows")?,
            "--skip-cpu" => a.skip_cpu = true,
            "--quick" => {
                a.quick = true;
                a.windows = 8;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    a.check_windows = a.check_windows.min(a.windows);
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_gptq_cuda: {e}");
            std::process::exit(2);
        }
    };
    let t = Instant::now();
    let be = match CudaBackend::probe() {
        Ok(be) => be,
        Err(e) => {
            eprintln!("bench_gptq_cuda: no usable CUDA device: {e}");
            std::process::exit(1);
        }
    };
    println!("device: {} (probe + self-test {:.2} s)", be.describe(), t.elapsed().as_secs_f64());
    let mut failed = Vec::new();
    match be.self_test() {
        Ok(lines) => lines.iter().for_each(|l| println!("  self-test: {l}")),
        Err(e) => failed.push(format!("self-test: {e}")),
    }
    golden(&be, &mut failed);
    synthetic(&be, &args, &mut failed);
    if failed.is_empty() {
        println!("\nall checks passed");
    } else {
        println!("\nFAILED:");
        failed.iter().for_each(|f| println!("  {f}"));
        std::process::exit(1);
    }
}

fn int4_g128() -> (Grid, GptqOptions) {
    (Grid::Int { bits: 4, sym: false }, GptqOptions { group_size: Some(128), ..Default::default() })
}

/// Fraction of equal codes.
fn same_codes(a: &GptqResult, b: &GptqResult) -> f64 {
    match (&a.int, &b.int) {
        (Some(x), Some(y)) if x.codes.len() == y.codes.len() => {
            x.codes.iter().zip(&y.codes).filter(|(p, q)| p == q).count() as f64 / x.codes.len() as f64
        }
        _ => 0.0,
    }
}

fn golden(be: &CudaBackend, failed: &mut Vec<String>) {
    println!("\n## golden unit layers (int4 g128)\n");
    println!("| layer | shape | GPU vs reference identical | worst steps | GPU vs CPU codes | GPU s | CPU s |");
    println!("|---|---|---|---|---|---|---|");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    for file in ["golden_tiny_gptq_unit.safetensors", "golden_small_gptq_unit.safetensors"] {
        let bytes = match std::fs::read(dir.join(file)) {
            Ok(b) => b,
            Err(e) => {
                failed.push(format!("{file}: {e}"));
                continue;
            }
        };
        let st = match safetensors::SafeTensors::deserialize(&bytes) {
            Ok(s) => s,
            Err(e) => {
                failed.push(format!("{file}: {e}"));
                continue;
            }
        };
        let get = |k: &str| -> Option<(Vec<f32>, Vec<usize>)> {
            let t = st.tensor(k).ok()?;
            Some((
                t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                t.shape().to_vec(),
            ))
        };
        for layer in ["self_attn.q_proj", "self_attn.o_proj"] {
            let (Some((w, ws)), Some((h, _)), Some((q, _))) =
                (get(&format!("{layer}.W")), get(&format!("{layer}.H")), get(&format!("{layer}.Q")))
            else {
                failed.push(format!("{file}: {layer} missing"));
                continue;
            };
            let (rows, cols) = (ws[0], ws[1]);
            let hess = Hessian::from_dense(h.iter().map(|&v| v as f64).collect(), cols);
            let (grid, o) = int4_g128();
            let t = Instant::now();
            let gpu = be.quantize(&w, rows, cols, &hess, &grid, &o);
            let tg = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let cpu = quantize(&w, rows, cols, &hess, &grid, &o);
            let tc = t.elapsed().as_secs_f64();
            let (gpu, cpu) = match (gpu, cpu) {
                (Ok(g), Ok(c)) => (g, c),
                (g, c) => {
                    failed.push(format!("{file} {layer}: GPU {:?} / CPU {:?}", g.err(), c.err()));
                    continue;
                }
            };
            let Some(a) = gpu.agreement_with(&q) else { continue };
            let (frac, worst) = (a.fraction(), a.worst_steps);
            let sc = same_codes(&gpu, &cpu);
            let short = file.trim_start_matches("golden_").trim_end_matches("_gptq_unit.safetensors");
            println!(
                "| {short} {layer} | {rows}×{cols} | {:.4}% | {worst:.3} | {:.4}% | {tg:.3} | {tc:.3} |",
                100.0 * frac,
                100.0 * sc
            );
            if frac < 0.999 || worst > 1.0 + 1e-6 || sc < 0.999 {
                failed.push(format!(
                    "golden {short} {layer}: reference {frac:.5}, worst {worst:.3} steps, vs CPU {sc:.5}"
                ));
            }
        }
    }
}

/// xorshift64* stream for one window.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal (sum of four uniforms), cheap.
    fn normal(&mut self) -> f32 {
        (self.uniform() + self.uniform() + self.uniform() + self.uniform() - 2.0) * 1.732_050_8
    }
}

/// One calibration window (SEQLEN × cols): correlated neighbouring features, uneven scales,
/// a few large-scale outlier features (like real LLaMA layer inputs).
fn window(cols: usize, w: usize, feature_scale: &[f32]) -> Vec<f32> {
    let mut x = vec![0f32; SEQLEN * cols];
    x.par_chunks_mut(cols).enumerate().for_each(|(t, row)| {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ ((w * SEQLEN + t) as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
        let mut prev = r.normal();
        for (c, v) in row.iter_mut().enumerate() {
            prev = 0.9 * prev + 0.435_889_9 * r.normal();
            *v = prev * feature_scale[c];
        }
    });
    x
}

fn synthetic(be: &CudaBackend, args: &Args, failed: &mut Vec<String>) {
    println!(
        "\n## synthetic 7B-shaped layers: int4 g128, {} × {SEQLEN} tokens (CPU: {} threads)\n",
        args.windows,
        rayon::current_num_threads()
    );
    println!(
        "| layer | rows×cols | GPU Hessian s | Hessian vs CPU ({} windows) max rel | GPU GPTQ s | CPU GPTQ s | codes equal | loss GPU / CPU |",
        args.check_windows
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut shapes = vec![("q_proj", 4096usize, 4096usize), ("up_proj", 11008, 4096), ("down_proj", 4096, 11008)];
    if args.quick {
        shapes.truncate(1);
    }
    // (Hessian s, GPTQ s) per shape, for the per-layer projection.
    let mut times: Vec<(f64, f64)> = Vec::new();
    for (name, rows, cols) in shapes {
        let mut r = Rng(cols as u64 * 31 + 7);
        let feature_scale: Vec<f32> =
            (0..cols).map(|_| if r.uniform() < 0.01 { 20.0 } else { 0.5 + r.uniform() }).collect();
        let w: Vec<f32> = (0..rows * cols).map(|_| 0.02 * r.normal()).collect();

        // The Hessian on the GPU from activations in host memory (generated first, not
        // timed): staging, uploads, SYRK and the f64 sums, timed until the last batch is in.
        // Checked against the CPU on the first windows.
        let windows: Vec<Vec<f32>> = (0..args.windows).map(|wi| window(cols, wi, &feature_scale)).collect();
        let mut hd = match be.new_hessian(cols) {
            Ok(h) => h,
            Err(e) => {
                failed.push(format!("{name}: {e}"));
                continue;
            }
        };
        let t = Instant::now();
        let r = windows.iter().try_for_each(|x| hd.add(x, SEQLEN)).and_then(|_| hd.flush());
        let t_hess = t.elapsed().as_secs_f64();
        if let Err(e) = r {
            failed.push(format!("{name}: Hessian: {e}"));
            continue;
        }
        let mut hcheck_gpu = be.new_hessian(cols).ok();
        let mut hcheck_cpu = Hessian::new(cols);
        for x in windows.iter().take(args.check_windows) {
            if let Some(h) = hcheck_gpu.as_mut() {
                if let Err(e) = h.add(x, SEQLEN) {
                    failed.push(format!("{name}: Hessian check: {e}"));
                }
            }
            hcheck_cpu.add(x, SEQLEN);
        }
        drop(windows);
        let hess_rel = match hcheck_gpu.as_ref().map(|h| h.to_host()) {
            Some(Ok(h)) if args.check_windows > 0 => {
                let (a, b) = (hcheck_cpu.to_dense(), h.to_dense());
                let max = a.iter().fold(0f64, |m, v| m.max(v.abs()));
                let worst = a.par_iter().zip(&b).map(|(p, q)| (p - q).abs()).reduce(|| 0.0, f64::max);
                worst / max
            }
            Some(Err(e)) => {
                failed.push(format!("{name}: Hessian check: {e}"));
                f64::NAN
            }
            _ => f64::NAN,
        };
        drop(hcheck_gpu);
        if hess_rel > 1e-5 {
            failed.push(format!("{name}: device Hessian differs from the CPU's by {hess_rel:e} of max |H|"));
        }

        let (grid, o) = int4_g128();
        let t = Instant::now();
        let gpu = be.quantize_dev(&w, rows, cols, &hd, &grid, &o);
        let t_gpu = t.elapsed().as_secs_f64();
        let gpu = match gpu {
            Ok(g) => g,
            Err(e) => {
                failed.push(format!("{name}: GPU GPTQ: {e}"));
                continue;
            }
        };
        let (t_cpu, same, loss_ratio) = if args.skip_cpu {
            (f64::NAN, f64::NAN, f64::NAN)
        } else {
            let h = match hd.to_host() {
                Ok(h) => h,
                Err(e) => {
                    failed.push(format!("{name}: downloading the Hessian: {e}"));
                    continue;
                }
            };
            let t = Instant::now();
            match quantize(&w, rows, cols, &h, &grid, &o) {
                Ok(cpu) => {
                    let s = same_codes(&gpu, &cpu);
                    if s < 0.999 {
                        failed.push(format!("{name}: only {:.4}% of the codes equal the CPU's", 100.0 * s));
                    }
                    (t.elapsed().as_secs_f64(), s, gpu.loss / cpu.loss)
                }
                Err(e) => {
                    failed.push(format!("{name}: CPU GPTQ: {e}"));
                    (f64::NAN, f64::NAN, f64::NAN)
                }
            }
        };
        println!(
            "| {name} | {rows}×{cols} | {t_hess:.3} | {hess_rel:.2e} | {t_gpu:.3} | {t_cpu:.2} | {:.4}% | {loss_ratio:.6} |",
            100.0 * same
        );
        times.push((t_hess, t_gpu));
    }
    if let [q, up, down] = times[..] {
        per_layer(q, up, down);
    }
}

/// One LLaMA-7B decoder layer from the three shapes: Hessians for the q/k/v input, the o
/// input, the gate/up input (4096 features each, timed as q_proj's) and the down input
/// (11008); solves for q, k, v, o (4096×4096), gate, up (11008×4096) and down (4096×11008).
/// The reference (PyTorch GPTQ on an H200, the figures) composed the same way.
fn per_layer(q: (f64, f64), up: (f64, f64), down: (f64, f64)) {
    let ours_h = 3.0 * q.0 + down.0;
    let ours_s = 4.0 * q.1 + 2.0 * up.1 + down.1;
    let (ref_h, ref_s) = (3.0 * 0.167 + 1.179, 4.0 * 0.640 + 2.0 * 0.563 + 2.028);
    let (ours, reference) = (ours_h + ours_s, ref_h + ref_s);
    println!(
        "\nper LLaMA-7B layer (3 Hessians of 4096 + 1 of 11008; 4 solves 4096×4096, 2 of 11008×4096, 1 of \
         4096×11008): GPU {ours:.3} s (Hessians {ours_h:.3} + solves {ours_s:.3}); reference {reference:.3} s \
         (Hessians {ref_h:.3} + solves {ref_s:.3}); speed-up {:.2}×",
        reference / ours
    );
}
