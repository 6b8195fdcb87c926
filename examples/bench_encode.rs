//! The reference block encoders alone (what `quantize --type T` runs per tensor, without the
//! file around it): 32 M weights in memory, best of 5 passes, on the threads rayon is given.
//! `RAYON_NUM_THREADS=1 cargo run --release --example bench_encode -- Q8_0 Q4_0`
use std::time::Instant;

use qforge::ggml_type::GgmlType;

fn main() {
    let names: Vec<String> = std::env::args().skip(1).collect();
    let n = 32usize << 20;
    let w: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-4).collect();
    for name in names {
        let Some(ty) = GgmlType::parse(&name) else {
            eprintln!("unknown type {name}");
            std::process::exit(2);
        };
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            let bytes = match qforge::quant::encode(ty, &w) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("{ty}: {e}");
                    std::process::exit(2);
                }
            };
            std::hint::black_box(&bytes);
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("{ty}: {:.1} ms, {:.2} G weights/s", best * 1e3, n as f64 / best / 1e9);
    }
}
