//! The integration tests, one module per concept, in one test binary: ~20 binaries
//! each linked against qforge and its dependencies took longer to build than most of
//! them take to run. The GPU tests (gptq_cuda, gptq_device) and the fuzz replays keep
//! their own binaries, which tools/ name.

#[path = "../common/mod.rs"]
mod common;

mod arch;
mod awq;
mod bad_input;
mod codec_bytes;
mod convert;
mod eval_cli;
mod eval_small;
mod faults;
mod generate;
mod gptq;
mod hf_vocab;
mod imatrix;
mod memory;
mod nf4;
mod quantize;
mod resume;
mod runtime_logits;
mod structure;
mod tokenizer;
mod vocab_suite;
