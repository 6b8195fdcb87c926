//! Sharded safetensors output as transformers' `save_pretrained` writes it: tensors in write
//! order are packed into files of at most `max_shard_size` bytes (a tensor larger than that
//! gets a file of its own), named `model-00001-of-0000N.safetensors`, with
//! `model.safetensors.index.json` mapping every tensor to its file. One shard is written as
//! plain `model.safetensors` without an index, as transformers does.

use std::fs::File;
use std::io::BufWriter;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::{Error, Result};
use crate::formats::st_writer::{StEntry, StWriter};

/// transformers' default `max_shard_size` ("5GB", decimal units as it parses them).
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 5_000_000_000;

/// Which tensors (contiguous ranges of the write order) go into which file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    pub files: Vec<String>,
    pub ranges: Vec<Range<usize>>,
}

impl ShardPlan {
    /// Pack tensors of `sizes` bytes, in order, into files of at most `max` bytes.
    pub fn new(sizes: &[u64], max: u64) -> ShardPlan {
        let mut ranges: Vec<Range<usize>> = Vec::new();
        let (mut start, mut current) = (0, 0u64);
        for (i, &size) in sizes.iter().enumerate() {
            if i > start && current + size > max {
                ranges.push(start..i);
                (start, current) = (i, 0);
            }
            current += size;
        }
        if start < sizes.len() || ranges.is_empty() {
            ranges.push(start..sizes.len());
        }
        let n = ranges.len();
        let files = if n == 1 {
            vec!["model.safetensors".to_string()]
        } else {
            (1..=n).map(|i| format!("model-{i:05}-of-{n:05}.safetensors")).collect()
        };
        ShardPlan { files, ranges }
    }

    pub fn paths(&self, dir: &Path) -> Vec<PathBuf> {
        self.files.iter().map(|f| dir.join(f)).collect()
    }

    /// Write `model.safetensors.index.json` (only for more than one file): `names` are the
    /// tensors in write order, `total_size` their bytes.
    pub fn write_index(&self, dir: &Path, names: &[&str], total_size: u64) -> Result<()> {
        if self.files.len() < 2 {
            return Ok(());
        }
        let mut map = serde_json::Map::new();
        for (file, range) in self.files.iter().zip(&self.ranges) {
            for name in &names[range.clone()] {
                map.insert(name.to_string(), json!(file));
            }
        }
        let index = json!({"metadata": {"total_size": total_size}, "weight_map": map});
        super::write_json(dir, "model.safetensors.index.json", &index)
    }
}

/// The streaming writer ([`StWriter`]) over a [`ShardPlan`]: the entries are written in plan
/// order and each file is started when the one before it is complete.
pub struct ShardedWriter {
    dir: PathBuf,
    plan: ShardPlan,
    entries: Vec<StEntry>,
    /// The tensors in the order the caller planned them, for the index.
    index_names: Vec<String>,
    current: Option<(usize, StWriter<BufWriter<File>>)>,
    next: usize,
    size: u64,
}

impl ShardedWriter {
    /// Files packed and written in the order of `entries`.
    pub fn new(dir: &Path, entries: Vec<StEntry>, max_shard_size: u64) -> Result<ShardedWriter> {
        let sizes: Vec<u64> = entries.iter().map(|e| e.byte_len() as u64).collect();
        let plan = ShardPlan::new(&sizes, max_shard_size);
        let index_names = entries.iter().map(|e| e.name.clone()).collect();
        Ok(ShardedWriter { dir: dir.to_path_buf(), plan, entries, index_names, current: None, next: 0, size: 0 })
    }

    /// Files packed in the order of `entries`, each file's tensors then laid out as the
    /// safetensors crate's serializer lays them out (larger dtype first, then by name), which
    /// is what transformers' `save_pretrained` writes; the bytes are expected in that order
    /// ([`ShardedWriter::next_entry`]).
    pub fn in_crate_order(dir: &Path, entries: Vec<StEntry>, max_shard_size: u64) -> Result<ShardedWriter> {
        let mut w = ShardedWriter::new(dir, entries, max_shard_size)?;
        for r in &w.plan.ranges {
            w.entries[r.clone()].sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
        }
        Ok(w)
    }

    /// The entry whose bytes are expected next.
    pub fn next_entry(&self) -> Option<&StEntry> {
        self.entries.get(self.next)
    }

    /// Write the next entry's bytes (name and length as planned).
    pub fn write(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let Some(shard) = self.plan.ranges.iter().position(|r| r.contains(&self.next)) else {
            return Err(Error::InvalidArgument(format!("tensor {name} was not planned")));
        };
        if self.current.as_ref().is_none_or(|(i, _)| *i != shard) {
            self.close()?;
            let (path, range) = (self.dir.join(&self.plan.files[shard]), self.plan.ranges[shard].clone());
            let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
            let out = BufWriter::with_capacity(1 << 20, file);
            let st = StWriter::new(out, &path, self.entries[range].to_vec(), &[("format", "pt")])?;
            self.current = Some((shard, st));
        }
        let Some((_, st)) = self.current.as_mut() else {
            return Err(Error::InvalidArgument(format!("tensor {name}: no shard open")));
        };
        st.write(name, data)?;
        self.next += 1;
        Ok(())
    }

    /// Finish and sync the open file.
    fn close(&mut self) -> Result<()> {
        if let Some((i, st)) = self.current.take() {
            let path = self.dir.join(&self.plan.files[i]);
            let (buf, size) = st.finish()?;
            let file = buf.into_inner().map_err(|e| Error::io(&path, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io(&path, e))?;
            self.size += size;
        }
        Ok(())
    }

    /// Check that every entry was written, finish the last file and write the index. Returns
    /// the bytes of all files.
    pub fn finish(mut self) -> Result<u64> {
        if let Some(e) = self.entries.get(self.next) {
            return Err(Error::InvalidArgument(format!("tensor {} was planned but not written", e.name)));
        }
        self.close()?;
        let names: Vec<&str> = self.index_names.iter().map(String::as_str).collect();
        let total = self.entries.iter().map(|e| e.byte_len() as u64).sum();
        self.plan.write_index(&self.dir, &names, total)?;
        Ok(self.size)
    }
}

/// Parse a size as transformers' `max_shard_size` takes it: bytes, or a number with KB/MB/GB
/// (powers of 10) or KiB/MiB/GiB (powers of 2), e.g. `5GB`, `500MB`, `2GiB`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 5GB, 500MB, 2GiB)"))?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("{s:?}: unknown unit {u:?} (B, KB, MB, GB, TB, KiB, MiB, GiB)")),
    };
    let bytes = n * mult;
    if !(bytes >= 1.0 && bytes.is_finite()) {
        return Err(format!("{s:?}: a shard must hold at least one byte"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_in_order_and_gives_oversized_tensors_their_own_file() {
        let p = ShardPlan::new(&[4, 4, 4, 20, 1, 1], 10);
        assert_eq!(p.ranges, vec![0..2, 2..3, 3..4, 4..6]);
        assert_eq!(p.files[0], "model-00001-of-00004.safetensors");
        assert_eq!(p.files[3], "model-00004-of-00004.safetensors");
        let one = ShardPlan::new(&[4, 4], 10);
        assert_eq!(
            (one.files, one.ranges.len(), one.ranges[0].clone()),
            (vec!["model.safetensors".to_string()], 1, 0..2)
        );
        assert_eq!(ShardPlan::new(&[], 10).ranges.len(), 1);
    }

    #[test]
    fn sizes_parse_as_transformers_reads_them() {
        assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5kb"), Ok(1500));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err() && parse_size("5XB").is_err() && parse_size("GB").is_err());
    }
}
