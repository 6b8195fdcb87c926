//! Plain text inputs (evaluation and calibration texts).

use std::path::Path;

use crate::error::{Error, Result};

/// Read a text file as UTF-8 (its bytes unchanged: no newline normalization).
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        Error::InvalidArgument(format!("{}: not UTF-8 text (byte {})", path.display(), e.utf8_error().valid_up_to()))
    })
}
