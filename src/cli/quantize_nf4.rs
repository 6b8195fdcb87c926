//! `qforge quantize --method nf4`.

use anyhow::{bail, Result};

use super::quantize::QuantizeArgs;
use super::Ui;

pub fn run(_args: &QuantizeArgs, _ui: &Ui) -> Result<()> {
    bail!("--method nf4 is not implemented yet")
}
