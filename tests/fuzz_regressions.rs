//! Replays, through the same harnesses the fuzzers run (`fuzz/src/lib.rs`, compiled into this
//! test), every input a fuzzer found a problem with (`tests/fixtures/fuzz/<target>/`) and
//! every seed (`fuzz/seeds/<target>/`). Each must finish quickly with a clean `Ok` or `Err`
//! from qforge: no panic, no broken invariant. The fuzzers themselves need nightly and
//! cargo-fuzz (`tools/fuzz.sh`); this test needs neither.

// The harness counts allocations under `cfg(fuzzing)`, which only cargo-fuzz sets.
#![allow(unexpected_cfgs)]

#[path = "../fuzz/src/lib.rs"]
mod harness;

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// Replay every file of the target's regression and seed folders.
fn replay(target: &str, f: fn(&[u8]) -> bool) {
    let dirs =
        [common::root().join("tests/fixtures/fuzz").join(target), common::root().join("fuzz/seeds").join(target)];
    let mut failures = Vec::new();
    let (mut n, mut accepted) = (0, 0);
    for dir in &dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
        files.sort();
        for p in files {
            if p.file_name().is_some_and(|n| n == "README.md") {
                continue;
            }
            let bytes = std::fs::read(&p).unwrap();
            let start = Instant::now();
            match catch_unwind(AssertUnwindSafe(|| f(&bytes))) {
                Ok(ok) => accepted += ok as usize,
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.push(format!("{}: panicked: {msg}", p.display()));
                }
            }
            let took = start.elapsed();
            if took > Duration::from_secs(5) {
                failures.push(format!("{}: took {took:?}", p.display()));
            }
            n += 1;
        }
    }
    assert!(failures.is_empty(), "{target}:\n{}", failures.join("\n"));
    assert!(n > 0, "{target}: no inputs found in {dirs:?}");
    // The seeds are valid files: a harness that rejects them all exercises nothing.
    assert!(accepted > 0, "{target}: the harness accepted none of {n} inputs");
    eprintln!("{target}: {n} inputs, {accepted} accepted");
}

#[test]
fn safetensors_header() {
    replay("safetensors_header", harness::safetensors_header);
}

#[test]
fn gguf_reader() {
    replay("gguf_reader", harness::gguf_reader);
}

#[test]
fn config_json() {
    replay("config_json", harness::config_json);
}

#[test]
fn tokenizer_metadata() {
    replay("tokenizer_metadata", harness::tokenizer_metadata);
}

#[test]
fn block_decoders() {
    replay("block_decoders", harness::block_decoders);
}
