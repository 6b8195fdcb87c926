//! Importance matrices as llama.cpp stores them (`llama-imatrix`, read by `llama-quantize`).
//!
//! **GGUF** (llama.cpp's format since mid-2025): `general.type = "imatrix"`, the keys
//! `imatrix.datasets` (array of strings: the calibration files), `imatrix.chunk_count` (u32:
//! windows processed) and `imatrix.chunk_size` (u32: tokens per window), and per weight matrix
//! `W` two F32 tensors: `W.in_sum2`, shape [n_mat, n_cols] (GGML ne = [n_cols, n_mat]), the sum
//! over every token of the squared input of each column, and `W.counts`, shape [n_mat, 1], how
//! many tokens were summed. n_mat is 1 for a dense matrix (one per expert in MoE tensors).
//! Newer llama.cpp may add `W.in_sum` (plain sums, for its statistics); it is checked and
//! ignored. The importance of a column is `in_sum2 / counts` (the mean square activation); a
//! zero count gives importance 1 for that matrix, as llama-quantize does.
//!
//! **Legacy `.dat`** (llama.cpp before the GGUF format), little-endian i32/f32, no header:
//! `n_entries`, then per entry `name_len`, `name` bytes, `ncall`, `nval`, `nval` floats; then,
//! optionally, the number of chunks (i32) and the dataset file name (`len`, bytes). The values
//! are the mean squares *multiplied by `ncall`* (so that files could be summed); the
//! importance is `value / ncall` (the value itself when `ncall` is 0).
//!
//! Every count and length in a file is checked against the bytes actually there before
//! anything is allocated; a hostile file gives an error, never a panic or a huge allocation.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::formats::gguf::{Array, GgufFile, GgufWriter, TensorInfo, Value};
use crate::ggml_type::GgmlType;

pub const KEY_DATASETS: &str = "imatrix.datasets";
pub const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
pub const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";
pub const SUFFIX_SUMS: &str = ".in_sum2";
pub const SUFFIX_COUNTS: &str = ".counts";
pub const SUFFIX_PLAIN_SUMS: &str = ".in_sum";

/// Which of llama.cpp's two layouts a matrix came from (they scale the values differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Gguf,
    Legacy,
}

/// The statistics of one weight matrix (GGUF tensor name, e.g. `blk.0.attn_q.weight`).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    /// Input columns of the matrix (its row length).
    pub n_cols: usize,
    /// GGUF: Σx² per column, `n_mat` blocks of `n_cols`. Legacy: the stored values
    /// (mean square × ncall).
    pub sums: Vec<f32>,
    /// GGUF: tokens summed, one per matrix (n_mat ≥ 1). Legacy: one value, `ncall`.
    pub counts: Vec<f32>,
}

impl Entry {
    /// Matrices in this entry (experts); 1 for a dense matrix.
    pub fn n_mat(&self) -> usize {
        self.sums.len().checked_div(self.n_cols).unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Imatrix {
    pub format: Format,
    /// Sorted by name; names are unique.
    pub entries: Vec<Entry>,
    /// The calibration text(s) the statistics were collected on.
    pub datasets: Vec<String>,
    /// Windows ("chunks") processed.
    pub chunk_count: u32,
    /// Tokens per window; 0 when unknown (legacy files do not store it).
    pub chunk_size: u32,
}

/// Tensor name → its f32 values, in the order a GGUF header lists them.
type NamedData = Vec<(String, Vec<f32>)>;

impl Imatrix {
    /// Read either format (GGUF is recognized by its magic, anything else is parsed as legacy).
    pub fn read(path: &Path) -> Result<Imatrix> {
        let mut magic = [0u8; 4];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let mut got = 0;
            while got < 4 {
                match f.read(&mut magic[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io(path, e)),
                }
            }
        }
        if &magic == b"GGUF" {
            Self::read_gguf(path)
        } else {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            Self::parse_legacy(&bytes, path)
        }
    }

    pub fn read_gguf(path: &Path) -> Result<Imatrix> {
        let f = GgufFile::open(path)?;
        let bad = |msg: String| Error::malformed(path, "imatrix GGUF", msg);
        match f.get("general.type") {
            Some(Value::String(t)) if t == "imatrix" => {}
            Some(Value::String(t)) => {
                return Err(bad(format!("general.type is {t:?}, not \"imatrix\": this is not an importance matrix")))
            }
            Some(v) => return Err(bad(format!("general.type is a {}, not a string", v.value_type().name()))),
            None => return Err(bad("general.type is missing (an imatrix GGUF has \"imatrix\")".into())),
        }
        // llama-quantize refuses a GGUF imatrix without these three keys.
        let datasets = match f.get(KEY_DATASETS) {
            Some(Value::Array(Array::String(items))) => items.clone(),
            Some(v) => {
                return Err(bad(format!("{KEY_DATASETS} must be an array of strings, not {}", v.value_type().name())))
            }
            None => return Err(bad(format!("{KEY_DATASETS} is missing"))),
        };
        let u32_key = |key: &str| -> Result<u32> {
            match f.get(key) {
                Some(Value::U32(v)) => Ok(*v),
                Some(v) => Err(bad(format!("{key} must be a u32, not {}", v.value_type().name()))),
                None => Err(bad(format!("{key} is missing"))),
            }
        };
        let chunk_count = u32_key(KEY_CHUNK_COUNT)?;
        let chunk_size = u32_key(KEY_CHUNK_SIZE)?;

        // Pair the tensors up by matrix name. (Other tensors are ignored, as llama.cpp does.)
        struct Parts<'a> {
            sums: Option<&'a TensorInfo>,
            counts: Option<&'a TensorInfo>,
            plain: Option<&'a TensorInfo>,
        }
        let mut parts: Vec<(&str, Parts<'_>)> = Vec::new();
        for t in f.tensors() {
            let (base, slot) = if let Some(b) = t.name.strip_suffix(SUFFIX_SUMS) {
                (b, 0)
            } else if let Some(b) = t.name.strip_suffix(SUFFIX_COUNTS) {
                (b, 1)
            } else if let Some(b) = t.name.strip_suffix(SUFFIX_PLAIN_SUMS) {
                (b, 2)
            } else {
                continue;
            };
            if base.is_empty() {
                return Err(bad(format!("tensor {:?} names no matrix", t.name)));
            }
            let i = match parts.iter().position(|(n, _)| *n == base) {
                Some(i) => i,
                None => {
                    parts.push((base, Parts { sums: None, counts: None, plain: None }));
                    parts.len() - 1
                }
            };
            let p = &mut parts[i].1;
            // Tensor names are unique (the GGUF reader checks), so each slot is set once.
            match slot {
                0 => p.sums = Some(t),
                1 => p.counts = Some(t),
                _ => p.plain = Some(t),
            }
        }
        if parts.is_empty() {
            return Err(bad("no importance data (no *.in_sum2 / *.counts tensors)".into()));
        }
        let mut entries = Vec::with_capacity(parts.len());
        for (name, p) in parts {
            let (Some(sums), Some(counts)) = (p.sums, p.counts) else {
                return Err(bad(format!("{name}: {SUFFIX_SUMS} and {SUFFIX_COUNTS} must both be present")));
            };
            for t in [Some(sums), Some(counts), p.plain].into_iter().flatten() {
                if t.ggml_type != GgmlType::F32 {
                    return Err(bad(format!("{}: type {} (must be F32)", t.name, t.ggml_type)));
                }
            }
            // llama.cpp reads both by element count: n_mat = |counts|, n_cols = |in_sum2| / n_mat.
            let n_mat = counts.n_elements();
            if n_mat == 0 {
                return Err(bad(format!("{}: no counts", counts.name)));
            }
            let n_cols = sums.n_elements() / n_mat;
            if n_cols == 0 || sums.n_elements() % n_mat != 0 {
                return Err(bad(format!(
                    "{}: {} values are not whole rows for {n_mat} count(s)",
                    sums.name,
                    sums.n_elements()
                )));
            }
            if let Some(pl) = p.plain {
                if pl.n_elements() != sums.n_elements() {
                    return Err(bad(format!(
                        "{}: {} values, {} in {}",
                        pl.name,
                        pl.n_elements(),
                        sums.n_elements(),
                        sums.name
                    )));
                }
            }
            let sums_v = f32s(f.tensor_data(sums));
            let counts_v = f32s(f.tensor_data(counts));
            if let Some(i) = counts_v.iter().position(|c| !c.is_finite() || *c < 0.0) {
                return Err(bad(format!(
                    "{}: count {} is {} (must be a finite, non-negative token count)",
                    counts.name, i, counts_v[i]
                )));
            }
            if let Some(i) = sums_v.iter().position(|s| !s.is_finite() || *s < 0.0) {
                return Err(bad(format!(
                    "{}: value {i} is {} (a sum of squares: finite and non-negative)",
                    sums.name, sums_v[i]
                )));
            }
            entries.push(Entry { name: name.to_string(), n_cols: n_cols as usize, sums: sums_v, counts: counts_v });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Imatrix { format: Format::Gguf, entries, datasets, chunk_count, chunk_size })
    }

    /// Parse a legacy `.dat` image.
    pub fn parse_legacy(bytes: &[u8], path: &Path) -> Result<Imatrix> {
        let mut c = LegacyCursor { bytes, pos: 0, path };
        let n_entries = c.i32("entry count")?;
        if n_entries < 1 {
            return Err(c.err(format!("entry count {n_entries} (an importance matrix holds at least one)")));
        }
        // The smallest entry: name length, a 1-byte name, ncall, nval, one value.
        const MIN_ENTRY: usize = 4 + 1 + 4 + 4 + 4;
        if n_entries as usize > c.remaining() / MIN_ENTRY {
            return Err(c.err(format!("{n_entries} entries cannot fit in the {} bytes left", c.remaining())));
        }
        let mut entries = Vec::with_capacity(n_entries as usize);
        let mut seen = HashSet::new();
        for i in 0..n_entries {
            let len = c.i32("name length")?;
            if len < 1 || len as usize > c.remaining() {
                return Err(c.err(format!("entry {i}: name length {len} (1..={} possible)", c.remaining())));
            }
            let raw = c.take(len as usize)?;
            let name = std::str::from_utf8(raw)
                .ok()
                .filter(|s| !s.contains('\0'))
                .ok_or_else(|| c.err(format!("entry {i}: name is not UTF-8 text")))?
                .to_string();
            if !seen.insert(name.clone()) {
                return Err(c.err(format!("entry {name:?} appears twice")));
            }
            let ncall = c.i32("ncall")?;
            if ncall < 0 {
                return Err(c.err(format!("{name}: ncall {ncall} is negative")));
            }
            let nval = c.i32("nval")?;
            if nval < 1 || nval as usize > c.remaining() / 4 {
                return Err(c.err(format!("{name}: {nval} values (1..={} fit in the bytes left)", c.remaining() / 4)));
            }
            let sums = f32s(c.take(nval as usize * 4)?);
            if let Some(j) = sums.iter().position(|s| !s.is_finite() || *s < 0.0) {
                return Err(c.err(format!("{name}: value {j} is {} (must be finite and non-negative)", sums[j])));
            }
            entries.push(Entry { name, n_cols: nval as usize, sums, counts: vec![ncall as f32] });
        }
        // Optional trailer: chunk count, then the dataset's file name.
        let (mut chunk_count, mut datasets) = (0u32, Vec::new());
        if c.remaining() > 0 {
            let n = c.i32("chunk count")?;
            chunk_count = u32::try_from(n).map_err(|_| c.err(format!("chunk count {n} is negative")))?;
            if c.remaining() > 0 {
                let len = c.i32("dataset name length")?;
                if len < 0 || len as usize > c.remaining() {
                    return Err(c.err(format!("dataset name length {len} ({} bytes left)", c.remaining())));
                }
                let raw = c.take(len as usize)?;
                let s = std::str::from_utf8(raw).map_err(|_| c.err("dataset name is not UTF-8"))?;
                if !s.is_empty() {
                    datasets.push(s.to_string());
                }
            }
        }
        if c.remaining() > 0 {
            return Err(c.err(format!("{} unexpected bytes after the dataset name", c.remaining())));
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Imatrix { format: Format::Legacy, entries, datasets, chunk_count, chunk_size: 0 })
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.name.as_str().cmp(name)).ok().map(|i| &self.entries[i])
    }

    /// The importance of each column of matrix `name` (n_mat × n_cols values), as llama-quantize
    /// computes it from the file; `None` when the file has no entry for it.
    pub fn importance(&self, name: &str) -> Option<Vec<f32>> {
        let e = self.get(name)?;
        Some(match self.format {
            Format::Gguf => {
                let mut v = Vec::with_capacity(e.sums.len());
                for (m, sums) in e.sums.chunks_exact(e.n_cols).enumerate() {
                    // llama.cpp rounds the stored count to an integer (lround) first.
                    let count = e.counts[m].round();
                    if count > 0.0 {
                        v.extend(sums.iter().map(|s| s / count));
                    } else {
                        // No token reached this matrix (an unused expert): neutral weights.
                        v.extend(std::iter::repeat_n(1.0, e.n_cols));
                    }
                }
                v
            }
            Format::Legacy => {
                let ncall = e.counts[0];
                if ncall > 0.0 {
                    e.sums.iter().map(|s| s / ncall).collect()
                } else {
                    e.sums.clone()
                }
            }
        })
    }

    /// The GGUF header of this matrix in llama.cpp's layout (entries sorted by name, each
    /// `in_sum2` then `counts`). Legacy data is converted to sums and counts first.
    fn gguf_writer(&self) -> Result<(GgufWriter, NamedData)> {
        let mut w = GgufWriter::new();
        w.set("general.type", Value::String("imatrix".into()));
        w.set(KEY_DATASETS, Value::string_array(self.datasets.iter().cloned()));
        w.set(KEY_CHUNK_COUNT, Value::U32(self.chunk_count));
        w.set(KEY_CHUNK_SIZE, Value::U32(self.chunk_size));
        let mut data = Vec::with_capacity(2 * self.entries.len());
        for e in &self.entries {
            let n_mat = e.n_mat();
            if e.n_cols == 0 || n_mat == 0 || e.sums.len() != n_mat * e.n_cols {
                return Err(Error::InvalidArgument(format!("imatrix entry {}: sums are not whole rows", e.name)));
            }
            let (sums, counts) = match self.format {
                Format::Gguf if e.counts.len() == n_mat => (e.sums.clone(), e.counts.clone()),
                Format::Gguf => {
                    return Err(Error::InvalidArgument(format!(
                        "imatrix entry {}: {} counts for {n_mat} matrices",
                        e.name,
                        e.counts.len()
                    )))
                }
                // Legacy values are mean squares × ncall: store them as ncall "tokens" of
                // the mean square each, which keeps the importance (sum / count).
                Format::Legacy => {
                    let ncall = e.counts[0];
                    let mean: Vec<f32> =
                        if ncall > 0.0 { e.sums.iter().map(|s| s / ncall).collect() } else { e.sums.clone() };
                    let count = if ncall > 0.0 { ncall } else { 1.0 };
                    (mean.iter().map(|m| m * count).collect(), vec![count; n_mat])
                }
            };
            let (s, c) = (format!("{}{SUFFIX_SUMS}", e.name), format!("{}{SUFFIX_COUNTS}", e.name));
            w.add_tensor(&s, &[n_mat, e.n_cols], GgmlType::F32)?;
            w.add_tensor(&c, &[n_mat, 1], GgmlType::F32)?;
            data.push((s, sums));
            data.push((c, counts));
        }
        Ok((w, data))
    }

    /// Write as a GGUF imatrix (what llama-quantize reads).
    pub fn write_gguf<W: Write>(&self, sink: W) -> Result<W> {
        let (w, data) = self.gguf_writer()?;
        let mut stream = w.start(sink)?;
        for (name, values) in &data {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            stream.write_tensor(name, &bytes)?;
        }
        stream.finish()
    }

    /// The size `write_gguf` will produce (for validating the written file).
    pub fn gguf_size(&self) -> Result<u64> {
        Ok(self.gguf_writer()?.0.total_size())
    }

    /// Write the legacy `.dat` layout (for tests and tools that still want it): values are
    /// mean squares × ncall, as llama.cpp wrote them, with ncall = the chunk count.
    pub fn write_legacy<W: Write>(&self, mut sink: W) -> Result<W> {
        let io = |e| Error::io("<output>", e);
        let i32_of = |v: usize, what: &str| {
            i32::try_from(v).map_err(|_| Error::InvalidArgument(format!("{what} {v} does not fit the legacy format")))
        };
        sink.write_all(&i32_of(self.entries.len(), "entry count")?.to_le_bytes()).map_err(io)?;
        for e in &self.entries {
            let importance = self.importance(&e.name).unwrap_or_default();
            let ncall = self.chunk_count.max(1) as f32;
            sink.write_all(&i32_of(e.name.len(), "name length")?.to_le_bytes()).map_err(io)?;
            sink.write_all(e.name.as_bytes()).map_err(io)?;
            sink.write_all(&(ncall as i32).to_le_bytes()).map_err(io)?;
            sink.write_all(&i32_of(importance.len(), "value count")?.to_le_bytes()).map_err(io)?;
            for v in importance {
                sink.write_all(&(v * ncall).to_le_bytes()).map_err(io)?;
            }
        }
        sink.write_all(&(self.chunk_count as i32).to_le_bytes()).map_err(io)?;
        let ds = self.datasets.last().map(String::as_str).unwrap_or("");
        sink.write_all(&i32_of(ds.len(), "dataset name length")?.to_le_bytes()).map_err(io)?;
        sink.write_all(ds.as_bytes()).map_err(io)?;
        sink.flush().map_err(io)?;
        Ok(sink)
    }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

struct LegacyCursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> LegacyCursor<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::malformed(self.path, "imatrix (legacy .dat)", format!("{} (at byte {})", msg.into(), self.pos))
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!("needs {n} more bytes, {} left: truncated file", self.remaining())));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn i32(&mut self, what: &str) -> Result<i32> {
        let b = self.take(4).map_err(|_| self.err(format!("{what}: truncated file")))?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Imatrix {
        Imatrix {
            format: Format::Gguf,
            entries: vec![
                Entry {
                    name: "blk.0.attn_k.weight".into(),
                    n_cols: 4,
                    sums: vec![1.0, 2.0, 0.0, 8.0],
                    counts: vec![4.0],
                },
                Entry { name: "blk.0.ffn_down.weight".into(), n_cols: 2, sums: vec![3.0, 5.0], counts: vec![0.0] },
            ],
            datasets: vec!["calib.txt".into()],
            chunk_count: 2,
            chunk_size: 2,
        }
    }

    #[test]
    fn gguf_round_trip() {
        let m = sample();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        let bytes = m.write_gguf(Vec::new()).unwrap();
        assert_eq!(bytes.len() as u64, m.gguf_size().unwrap());
        std::fs::write(&p, bytes).unwrap();
        assert_eq!(Imatrix::read(&p).unwrap(), m);
        assert_eq!(m.importance("blk.0.attn_k.weight").unwrap(), vec![0.25, 0.5, 0.0, 2.0]);
        // A zero count gives neutral importance, as llama-quantize does.
        assert_eq!(m.importance("blk.0.ffn_down.weight").unwrap(), vec![1.0, 1.0]);
        assert!(m.importance("output.weight").is_none());
    }

    #[test]
    fn legacy_round_trip_keeps_the_importance() {
        let m = sample();
        let dat = m.write_legacy(Vec::new()).unwrap();
        let back = Imatrix::parse_legacy(&dat, Path::new("m.dat")).unwrap();
        assert_eq!(back.format, Format::Legacy);
        assert_eq!(back.chunk_count, 2);
        assert_eq!(back.datasets, vec!["calib.txt".to_string()]);
        for e in &m.entries {
            assert_eq!(back.importance(&e.name), m.importance(&e.name), "{}", e.name);
        }
    }

    #[test]
    fn hostile_legacy_files_are_errors() {
        let good = sample().write_legacy(Vec::new()).unwrap();
        let p = Path::new("x.dat");
        // Every truncation fails cleanly, except the ones that end exactly before the
        // optional trailer parts.
        for n in 0..good.len() {
            let r = Imatrix::parse_legacy(&good[..n], p);
            let entries_end = good.len() - 4 - 4 - "calib.txt".len();
            if n == entries_end || n == entries_end + 4 {
                assert!(r.is_ok(), "cut at {n}");
            } else {
                assert!(r.is_err(), "cut at {n} parsed");
            }
        }
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(Imatrix::parse_legacy(&huge, p).unwrap_err().to_string().contains("cannot fit"));
        let mut nval = good.clone();
        // name_len(4) + name(19) + ncall(4) after the entry count
        let at = 4 + 4 + "blk.0.attn_k.weight".len() + 4;
        nval[at..at + 4].copy_from_slice(&(1i32 << 30).to_le_bytes());
        assert!(Imatrix::parse_legacy(&nval, p).is_err());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(Imatrix::parse_legacy(&trailing, p).unwrap_err().to_string().contains("unexpected bytes"));
    }
}
