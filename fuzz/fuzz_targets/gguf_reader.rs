#![no_main]
//! cargo-fuzz target; the harness lives in `fuzz/src/lib.rs` (shared with the regression test).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    qforge_fuzz::gguf_reader(data);
});
