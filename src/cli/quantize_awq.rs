//! `qforge quantize --method awq`.

use anyhow::{bail, Result};

use super::quantize::QuantizeArgs;
use super::Ui;

pub fn run(_args: &QuantizeArgs, _ui: &Ui) -> Result<()> {
    bail!("--method awq is not implemented yet")
}
