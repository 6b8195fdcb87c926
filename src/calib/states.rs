//! The calibration windows' hidden states between layers: what the sequential driver feeds
//! through the model, one window of `seqlen × hidden` f32 each.
//!
//! They are the largest thing a calibrated run holds besides one layer: 128 windows of 2048
//! tokens are 4 GiB at hidden 4096 and 8.6 GB at 8192 (a 70B model). With
//! `--offload-activations DIR` they live in a file there, mapped into memory: the kernel keeps
//! in RAM what fits and writes the rest back, so a machine with less memory than the states
//! still runs (at the disk's speed). The file's space is reserved when it is made (a full disk
//! is an error then, not a SIGBUS later), and it is unlinked at once: nothing is left behind,
//! however the process ends. The values are the same f32s either way, so outputs are
//! byte-identical with and without offloading.

use std::ops::{Index, IndexMut};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::MmapMut;

use crate::error::{Error, Result};

/// `count` windows of `len` f32 each, in one buffer.
pub struct States {
    count: usize,
    /// Values per window.
    window: usize,
    store: Store,
}

enum Store {
    Memory(Vec<f32>),
    Mapped(MmapMut),
}

impl States {
    /// Zeroed states in memory.
    pub fn in_memory(count: usize, len: usize) -> Result<States> {
        let total = checked_total(count, len)?;
        Ok(States { count, window: len, store: Store::Memory(vec![0.0; total]) })
    }

    /// Zeroed states in a new, already unlinked file in `dir`.
    pub fn in_file(dir: &Path, count: usize, len: usize) -> Result<States> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let total = checked_total(count, len)?;
        if total == 0 {
            return States::in_memory(count, len);
        }
        let name = format!(".qforge-activations-{}-{}.tmp", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = dir.join(name);
        let io = |e: std::io::Error| Error::io(&path, e);
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(io)?;
        // SAFETY: the file is ours alone (created here, unlinked below), so nothing else
        // changes it under the mapping.
        let mapped = reserve(&file, total * 4).and_then(|()| unsafe { MmapMut::map_mut(&file) });
        // The mapping keeps the file's pages; its name is not needed (and must not outlive us).
        let unlinked = std::fs::remove_file(&path);
        let map = mapped.map_err(io)?;
        unlinked.map_err(io)?;
        Ok(States { count, window: len, store: Store::Mapped(map) })
    }

    /// How many windows.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Values per window.
    pub fn window_len(&self) -> usize {
        self.window
    }

    pub fn iter(&self) -> impl Iterator<Item = &[f32]> {
        (0..self.count).map(|i| &self[i])
    }

    fn all(&self) -> &[f32] {
        match &self.store {
            Store::Memory(v) => v,
            // A page-aligned mapping of exactly count · len f32s (see `in_file`).
            Store::Mapped(m) => &bytemuck::cast_slice(&m[..])[..self.count * self.window],
        }
    }

    fn all_mut(&mut self) -> &mut [f32] {
        let total = self.count * self.window;
        match &mut self.store {
            Store::Memory(v) => v,
            Store::Mapped(m) => &mut bytemuck::cast_slice_mut(&mut m[..])[..total],
        }
    }
}

impl Index<usize> for States {
    type Output = [f32];
    fn index(&self, i: usize) -> &[f32] {
        &self.all()[i * self.window..(i + 1) * self.window]
    }
}

impl IndexMut<usize> for States {
    fn index_mut(&mut self, i: usize) -> &mut [f32] {
        let w = self.window;
        &mut self.all_mut()[i * w..(i + 1) * w]
    }
}

fn checked_total(count: usize, len: usize) -> Result<usize> {
    count.checked_mul(len).filter(|&t| t <= isize::MAX as usize / 4).ok_or_else(|| too_big(count, len))
}

fn too_big(count: usize, len: usize) -> Error {
    Error::InvalidArgument(format!("{count} calibration windows of {len} values do not fit in memory"))
}

/// Give `file` `bytes` of allocated space: `posix_fallocate` fails with ENOSPC now where a
/// sparse file would fault (SIGBUS) on first touch of a page the disk cannot hold.
fn reserve(file: &std::fs::File, bytes: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(bytes).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid, open file descriptor; the call reads nothing from our memory.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        code => Err(std::io::Error::from_raw_os_error(code)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(s: &mut States) {
        for i in 0..s.len() {
            for (j, v) in s[i].iter_mut().enumerate() {
                *v = (i * 1000 + j) as f32;
            }
        }
    }

    #[test]
    fn file_backed_states_hold_what_memory_holds_and_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b) = (States::in_memory(3, 5).unwrap(), States::in_file(dir.path(), 3, 5).unwrap());
        assert!(b.iter().all(|w| w.iter().all(|&v| v == 0.0)), "a new file starts zeroed");
        fill(&mut a);
        fill(&mut b);
        assert!(a.iter().eq(b.iter()));
        assert_eq!((b.len(), b.window_len(), &b[2][..2]), (3, 5, &[2000.0, 2001.0][..]));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the file is unlinked while mapped");
    }

    #[test]
    fn an_unusable_offload_directory_is_an_error_naming_it() {
        let err = States::in_file(Path::new("/nonexistent/qforge"), 2, 4).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/qforge"), "{err}");
        let err = States::in_memory(usize::MAX / 2, 4).err().unwrap().to_string();
        assert!(err.contains("do not fit"), "{err}");
    }
}
