//! `qforge quantize --method gptq`.

use anyhow::{bail, Result};

use super::quantize::QuantizeArgs;
use super::Ui;

pub fn run(_args: &QuantizeArgs, _ui: &Ui) -> Result<()> {
    bail!("--method gptq is not implemented yet")
}
