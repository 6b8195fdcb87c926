//! A streaming safetensors writer: the header (every tensor's dtype, shape and byte range) is
//! written first from a plan, then the tensors' bytes one at a time in plan order, so that a
//! writer never holds more than the tensor it is producing. The safetensors crate's own
//! serializer instead asks for the tensors in its own order (by dtype, then name), which
//! would force a quantizer to keep every layer's output until the end.
//!
//! Plan tensors with larger elements first (f32, then 16-bit, then bytes) and every tensor's
//! data stays aligned to its element size, as readers that map the file expect.

use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::Dtype;

use crate::error::{Error, Result};

/// One planned tensor.
#[derive(Debug, Clone)]
pub struct StEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl StEntry {
    pub fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

pub struct StWriter<W: Write> {
    out: W,
    path: PathBuf,
    entries: Vec<StEntry>,
    next: usize,
    written: u64,
}

impl<W: Write> StWriter<W> {
    /// Write the header for `entries` (in this order) with `metadata` (`__metadata__`).
    pub fn new(mut out: W, path: &Path, entries: Vec<StEntry>, metadata: &[(&str, &str)]) -> Result<StWriter<W>> {
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            let m: serde_json::Map<String, serde_json::Value> =
                metadata.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
            header.insert("__metadata__".into(), m.into());
        }
        let mut offset = 0usize;
        for e in &entries {
            if header.contains_key(&e.name) {
                return Err(Error::InvalidArgument(format!("tensor {} planned twice", e.name)));
            }
            let end = offset + e.byte_len();
            header.insert(
                e.name.clone(),
                serde_json::json!({"dtype": dtype_name(e.dtype)?, "shape": e.shape, "data_offsets": [offset, end]}),
            );
            offset = end;
        }
        let mut bytes = serde_json::to_vec(&header).map_err(|e| Error::io(path, std::io::Error::other(e)))?;
        // The header is padded with spaces to a multiple of 8 so that the data starts aligned.
        bytes.resize(bytes.len().next_multiple_of(8), b' ');
        out.write_all(&(bytes.len() as u64).to_le_bytes()).map_err(|e| Error::io(path, e))?;
        out.write_all(&bytes).map_err(|e| Error::io(path, e))?;
        Ok(StWriter { out, path: path.to_path_buf(), entries, next: 0, written: 8 + bytes.len() as u64 })
    }

    /// The entry whose bytes are expected next.
    pub fn next_entry(&self) -> Option<&StEntry> {
        self.entries.get(self.next)
    }

    /// Write the next tensor's bytes; `name` and the length must match the plan.
    pub fn write(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let e = self
            .entries
            .get(self.next)
            .ok_or_else(|| Error::InvalidArgument(format!("tensor {name} was not planned")))?;
        if e.name != name || e.byte_len() != data.len() {
            return Err(Error::InvalidArgument(format!(
                "tensor {name} ({} bytes) written where {} ({} bytes) was planned",
                data.len(),
                e.name,
                e.byte_len()
            )));
        }
        self.out.write_all(data).map_err(|e| Error::io(&self.path, e))?;
        self.written += data.len() as u64;
        self.next += 1;
        Ok(())
    }

    /// Check that every planned tensor was written; returns the writer and the file size.
    pub fn finish(mut self) -> Result<(W, u64)> {
        if let Some(e) = self.entries.get(self.next) {
            return Err(Error::InvalidArgument(format!("tensor {} was planned but not written", e.name)));
        }
        self.out.flush().map_err(|e| Error::io(&self.path, e))?;
        Ok((self.out, self.written))
    }
}

fn dtype_name(d: Dtype) -> Result<&'static str> {
    Ok(match d {
        Dtype::F32 => "F32",
        Dtype::F16 => "F16",
        Dtype::BF16 => "BF16",
        Dtype::U8 => "U8",
        Dtype::I32 => "I32",
        Dtype::I64 => "I64",
        other => return Err(Error::Unsupported(format!("writing {other:?} safetensors tensors"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_file_reads_back() {
        let entries = vec![
            StEntry { name: "a".into(), dtype: Dtype::F32, shape: vec![2, 3] },
            StEntry { name: "b".into(), dtype: Dtype::BF16, shape: vec![3] },
            StEntry { name: "c".into(), dtype: Dtype::U8, shape: vec![5, 1] },
        ];
        let mut w = StWriter::new(Vec::new(), Path::new("x"), entries, &[("format", "pt")]).unwrap();
        assert!(w.write("b", &[0; 6]).is_err(), "out of order");
        w.write("a", &[1; 24]).unwrap();
        w.write("b", &[2; 6]).unwrap();
        assert!(w.write("c", &[3; 4]).is_err(), "wrong length");
        w.write("c", &[3; 5]).unwrap();
        let (buf, n) = w.finish().unwrap();
        assert_eq!(n as usize, buf.len());
        let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
        assert_eq!(st.tensor("a").unwrap().data(), &[1; 24]);
        assert_eq!(st.tensor("b").unwrap().dtype(), Dtype::BF16);
        assert_eq!(st.tensor("c").unwrap().shape(), &[5, 1]);
        let header_len = u64::from_le_bytes(buf[..8].try_into().unwrap());
        assert_eq!(header_len % 8, 0);
    }
}
