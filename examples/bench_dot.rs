//! The fused dequantize-dot kernels alone: one f32 activation row against 45 000 rows of 512
//! weights (about one small-llama token's worth) in each stored type, best of 20 passes, one
//! thread; `COLS=4096` for the same weights in longer rows. `cargo run --release --example bench_dot -- Q4_K Q8_0 F16`
use std::time::Instant;

use qforge::ggml_type::GgmlType;

fn main() {
    let names: Vec<String> = std::env::args().skip(1).collect();
    // COLS=4096 for long rows (the same number of weights in fewer rows).
    let cols: usize = std::env::var("COLS").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
    let rows = 45_000 * 512 / cols;
    let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-4).collect();
    let x: Vec<f32> = (0..cols).map(|i| (i as f32).sin()).collect();
    for name in names {
        let Some(ty) = GgmlType::parse(&name) else {
            eprintln!("unknown type {name}");
            std::process::exit(2);
        };
        let (Ok(bytes), Some(codec)) = (qforge::quant::encode(ty, &w), qforge::quant::codec(ty)) else {
            eprintln!("{ty}: no codec");
            std::process::exit(2);
        };
        let row_bytes = bytes.len() / rows;
        let report = |label: String, dot: &dyn Fn(&[u8]) -> f32| {
            let mut best = f64::MAX;
            for _ in 0..20 {
                let t = Instant::now();
                let s: f32 = bytes.chunks_exact(row_bytes).map(dot).sum();
                std::hint::black_box(s);
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{label}: {:.2} ms per pass, {:.1} GB/s, {:.2} G weights/s",
                best * 1e3,
                bytes.len() as f64 / best / 1e9,
                (rows * cols) as f64 / best / 1e9
            );
        };
        report(format!("{ty}"), &|row| (codec.dot)(row, &x));
        // The same rows against the activations rounded to i16 (AVX-512BW CPUs, some types).
        if let (Some(dot16), Some(acts)) =
            (qforge::quant::dot16::kernel(ty), qforge::quant::dot16::Acts16::quantize(&x))
        {
            report(format!("{ty} × i16 activations"), &|row| dot16(row, &acts));
        }
    }
}
