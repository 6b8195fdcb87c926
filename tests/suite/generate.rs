//! Generation runs the prompt as one batch, then one token per step through the KV cache,
//! where each product has one activation row and the codecs' fused dequantize-dot kernels
//! replace the tiled decode + GEMM. Both paths must agree: for every stored type, the logits of
//! each step equal those of one batched forward pass over the whole sequence to f32 rounding,
//! and so do the greedy tokens. Where a type has a 16-bit-activation kernel (`quant::dot16`,
//! AVX-512BW CPUs) the step rounds its activations, and the bound is that of the rounding.

use crate::common;

use common::*;
use qforge::eval::generate::{generate, Sampling};
use qforge::model::ModelFile;
use qforge::runtime::{KvCache, LlamaModel, TextTokenizer};

/// Max |a − b| over a row, relative to the row's largest |b|.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

#[test]
fn incremental_generation_matches_the_batched_forward_pass_for_every_type() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 24;
    // Q4_K_M and Q5_K_M bring Q4_K, Q5_K and Q6_K; Q3_K_M brings Q3_K; the float types run
    // their own dots.
    let kinds = [
        ("f32", "convert"),
        ("f16", "convert"),
        ("bf16", "convert"),
        ("Q8_0", "quantize"),
        ("Q4_0", "quantize"),
        ("Q5_1", "quantize"),
        ("Q4_K_M", "quantize"),
        ("Q5_K_M", "quantize"),
        ("Q3_K_M", "quantize"),
        ("IQ4_NL", "quantize"),
    ];
    for (ty, how) in kinds {
        let path = dir.path().join(format!("tiny-{ty}.gguf"));
        let flag = if how == "convert" { "--outtype" } else { "--type" };
        qforge_ok(&[&"-q", &how, &tiny(), &"-o", &path, &flag, &ty]);
        let file = ModelFile::open(&path).unwrap();
        // Products with a 16-bit-activation kernel on this CPU (`quant::dot16`) round each
        // activation to 2⁻¹⁶ of its block of 32's largest; the others sum f32 in another order.
        let rounded = file.tensors().unwrap().iter().any(|t| qforge::quant::dot16::kernel(t.ggml_type).is_some());
        let tol = if rounded { 5e-4 } else { 1e-4 };
        let model = LlamaModel::load(&file).unwrap();
        let tok = TextTokenizer::for_model(&file).unwrap();
        let prompt = tok.encode("The history of the city").unwrap();
        let vocab = model.vocab_size();

        // Step by step, as `generate` runs, keeping each step's logits.
        let mut cache = KvCache::new(&model.config, prompt.len() + steps);
        let first = model.forward(&prompt, &mut cache).unwrap();
        let mut step_logits = vec![first[(prompt.len() - 1) * vocab..].to_vec()];
        let mut tokens = vec![argmax(&step_logits[0]) as u32];
        for _ in 1..steps {
            let logits = model.forward(&[*tokens.last().unwrap()], &mut cache).unwrap();
            tokens.push(argmax(&logits) as u32);
            step_logits.push(logits);
        }
        let greedy = Sampling { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 };
        let generated = generate(&model, &prompt, steps, &greedy, |_| false, |_| Ok(())).unwrap();
        assert_eq!(generated.tokens, tokens, "{ty}: generate() and the step-by-step loop differ");
        assert_eq!(generated.decode_steps, steps - 1);

        // One batch over prompt + generated tokens (all but the last, whose logits nobody used).
        let all: Vec<u32> = prompt.iter().chain(&tokens[..steps - 1]).copied().collect();
        let mut cache = KvCache::new(&model.config, all.len());
        let batched = model.forward(&all, &mut cache).unwrap();
        for (s, logits) in step_logits.iter().enumerate() {
            let row = &batched[(prompt.len() - 1 + s) * vocab..][..vocab];
            // f32 sums in another order: ~1e-6 relative per product, a few layers deep; with
            // rounded activations ~1.5e-5 per value (measured up to 1.2e-4 on this fixture; the quantized types without a kernel reach 3e-5).
            let d = rel_diff(logits, row);
            assert!(d < tol, "{ty}: step {s}: logits differ by {d:e} (relative) from the batched pass");
            // The greedy token is the batched argmax unless the two best are tied to rounding.
            let best = argmax(row);
            let gap = row[best] - row[tokens[s] as usize];
            assert!(
                tokens[s] as usize == best || gap <= tol * row[best].abs().max(1.0),
                "{ty}: step {s}: generated {} but the batched pass picks {best} (gap {gap})",
                tokens[s]
            );
        }
    }
}
