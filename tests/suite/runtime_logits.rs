//! The f32 runtime reproduces PyTorch's logits on the golden 32 tokens, from the Hugging Face
//! directory and from the F32 GGUF that `convert` writes (q/k rows interleaved there).

use crate::common;

use common::*;
use qforge::formats::safetensors::SafetensorsFile;
use qforge::model::ModelFile;
use qforge::runtime::{KvCache, LlamaModel, TextTokenizer};

fn golden_logits(name: &str) -> (Vec<u32>, Vec<f32>) {
    let f = SafetensorsFile::open(&golden(name)).unwrap();
    let ids = f.tensor("input_ids").unwrap();
    let ids: Vec<u32> = match ids.dtype {
        safetensors::Dtype::I64 => {
            ids.data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect()
        }
        safetensors::Dtype::I32 => {
            ids.data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32).collect()
        }
        d => panic!("input_ids dtype {d:?}"),
    };
    let logits = f.tensor("logits").unwrap();
    let logits: Vec<f32> = logits.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    (ids, logits)
}

/// Max |a-b| / max |b| over all logits.
fn rel_error(a: &[f32], b: &[f32]) -> f64 {
    let max_ref = b.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
    let max_diff = a.iter().zip(b).fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    max_diff / max_ref
}

fn check(model_path: &std::path::Path, golden_name: &str) -> f64 {
    let (ids, expected) = golden_logits(golden_name);
    let file = ModelFile::open(model_path).unwrap();
    let tok = TextTokenizer::for_model(&file).unwrap();
    // The golden ids are the first 32 tokens of wiki.test.raw: our tokenizer must agree.
    let text = std::fs::read_to_string(wiki()).unwrap();
    let ours = tok.encode(&text[..2000]).unwrap();
    assert_eq!(&ours[..ids.len()], &ids[..], "token ids differ from the golden input_ids");
    let model = LlamaModel::load(&file).unwrap();
    let mut cache = KvCache::new(&model.config, ids.len());
    let logits = model.forward(&ids, &mut cache).unwrap();
    assert_eq!(logits.len(), expected.len());
    rel_error(&logits, &expected)
}

#[test]
fn tiny_f32_logits_match_golden_from_hf_and_gguf() {
    let e = check(&tiny(), "golden_tiny_logits.safetensors");
    eprintln!("tiny HF: relative error {e:.2e}");
    assert!(e <= 1e-5, "relative error {e}");
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny-f32.gguf");
    qforge_ok(&[&"-q", &"convert", &tiny(), &"-o", &gguf, &"--outtype", &"f32"]);
    let e = check(&gguf, "golden_tiny_logits.safetensors");
    eprintln!("tiny GGUF: relative error {e:.2e}");
    assert!(e <= 1e-5, "relative error {e}");
}

#[test]
fn small_f32_logits_match_golden_from_hf_and_gguf() {
    let e = check(&small(), "golden_small_logits.safetensors");
    eprintln!("small HF: relative error {e:.2e}");
    assert!(e <= 1e-5, "relative error {e}");
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("small-f32.gguf");
    qforge_ok(&[&"-q", &"convert", &small(), &"-o", &gguf, &"--outtype", &"f32"]);
    let e = check(&gguf, "golden_small_logits.safetensors");
    eprintln!("small GGUF: relative error {e:.2e}");
    assert!(e <= 1e-5, "relative error {e}");
}
