//! Read-only memory maps of input files, and what happens when such a file shrinks while it
//! is mapped.
//!
//! Inputs are memory-mapped so that tensors are borrowed without copying. If another process
//! truncates a mapped file (a half-finished download being replaced, `truncate`, a tool that
//! rewrites in place), the pages past the new end are gone and touching them raises SIGBUS:
//! the process dies on the spot and leaves its temporary output behind. (Deleting or renaming
//! a mapped file is harmless: the inode lives until it is unmapped.)
//!
//! [`install_sigbus_handler`] turns that into an ordinary error. Every map is registered here;
//! when a read of a lost page of a registered map faults, the handler maps zero pages over
//! the rest of that map (so the faulting read, and later ones, see zeros instead of faulting
//! again), records which map it was, and returns. Computation goes on with zeros until the
//! next [`check`], which reports the file as changed: `to_gguf` checks after every tensor,
//! outputs check before they are committed, and the CLI checks before it reports success, so
//! no result computed from the zeros is ever committed or printed. A SIGBUS anywhere else is
//! handed to the previous disposition (a crash, as before).

use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};

use crate::error::{Error, Result};

/// Maps that can be registered at once (shards of a huge model, plus outputs re-opened for
/// validation). A map that finds no slot works as before, without the SIGBUS protection.
const SLOTS: usize = 1024;
const NO_FAULT: usize = usize::MAX;

// The signal handler may only read these (atomics, no locks, no allocation). A slot is live
// while its start is non-zero: registration publishes the end first, then the start.
static STARTS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static ENDS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
/// The slot of the first map that lost pages, or `NO_FAULT`.
static FAULT_SLOT: AtomicUsize = AtomicUsize::new(NO_FAULT);
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Slot → path, for error messages; only touched outside the handler. A faulted slot keeps
/// its path (and is never reused) so that `check` can still name the file after the map is
/// gone.
static PATHS: Mutex<Vec<Option<PathBuf>>> = Mutex::new(Vec::new());

fn paths() -> std::sync::MutexGuard<'static, Vec<Option<PathBuf>>> {
    PATHS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A read-only memory map of an input file (dereferences to its bytes).
pub struct InputMap {
    mmap: memmap2::Mmap,
    slot: Option<usize>,
}

impl InputMap {
    pub fn new(file: &File, path: &Path) -> Result<InputMap> {
        // SAFETY: a read-only map. A file truncated while mapped raises SIGBUS on the lost
        // pages; see the module documentation for how that becomes an error.
        let mmap = unsafe { memmap2::Mmap::map(file) }.map_err(|e| Error::io(path, e))?;
        let slot = register(mmap.as_ptr() as usize, mmap.len(), path);
        Ok(InputMap { mmap, slot })
    }

    /// Tell the kernel the pages wholly inside `range` will not be read again soon, so they
    /// leave this process's resident set (a big file read once, front to back, would
    /// otherwise count whole in the peak RSS). Reading them again is still correct: the map
    /// is read-only and file-backed, so the pages come back from the file (or page cache).
    pub fn forget(&self, range: std::ops::Range<usize>) {
        let page = page_size();
        let start = range.start.div_ceil(page) * page;
        let end = (range.end.min(self.mmap.len()) / page) * page;
        if start < end {
            // SAFETY: MADV_DONTNEED on a read-only, file-backed mapping only drops page-table
            // entries; no byte of the mapping changes (there are no private writes to lose),
            // so outstanding borrows still read the file's bytes. The advice is a hint: a
            // failure changes nothing, so it is ignored.
            let _ = unsafe { self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

impl Deref for InputMap {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.mmap
    }
}

impl Drop for InputMap {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let mut p = paths();
            STARTS[i].store(0, Ordering::Release);
            ENDS[i].store(0, Ordering::Release);
            if FAULT_SLOT.load(Ordering::Acquire) != i {
                p[i] = None;
            }
        }
    }
}

fn register(start: usize, len: usize, path: &Path) -> Option<usize> {
    if len == 0 {
        return None;
    }
    let mut p = paths();
    if p.is_empty() {
        p.resize(SLOTS, None);
    }
    let i = p.iter().position(Option::is_none)?;
    p[i] = Some(path.to_path_buf());
    ENDS[i].store(start + len, Ordering::Release);
    STARTS[i].store(start, Ordering::Release);
    Some(i)
}

/// Fail if a mapped input lost pages (was truncated) since the process started: whatever was
/// computed from it since is garbage.
pub fn check() -> Result<()> {
    let i = FAULT_SLOT.load(Ordering::Acquire);
    if i == NO_FAULT {
        return Ok(());
    }
    let path = paths().get(i).cloned().flatten().unwrap_or_else(|| PathBuf::from("<input>"));
    Err(Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the file was truncated while qforge was reading it (SIGBUS on its memory map); \
             nothing read from it can be trusted",
        ),
    ))
}

/// Install the SIGBUS handler described in the module documentation. Call once from `main`,
/// before any thread starts; later calls do nothing.
pub fn install_sigbus_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain libc calls with valid pointers; the handler only uses
        // async-signal-safe operations (atomics, mmap, sigaction).
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page > 0 {
                PAGE_SIZE.store(page as usize, Ordering::Relaxed);
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &sa, &mut old) == 0 {
                let _ = PREVIOUS.set(old);
            }
        }
    });
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code == libc::BUS_ADRERR {
        for i in 0..SLOTS {
            let start = STARTS[i].load(Ordering::Acquire);
            let end = ENDS[i].load(Ordering::Acquire);
            if start != 0 && start <= addr && addr < end {
                let page = PAGE_SIZE.load(Ordering::Relaxed);
                let base = addr & !(page - 1);
                let len = (end - base).div_ceil(page) * page;
                // SAFETY: the range lies inside our own read-only map of a file that lost
                // these pages; anonymous zero pages take their place.
                let p = unsafe {
                    libc::mmap(
                        base as *mut libc::c_void,
                        len,
                        libc::PROT_READ,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
                if p != libc::MAP_FAILED {
                    let _ = FAULT_SLOT.compare_exchange(NO_FAULT, i, Ordering::AcqRel, Ordering::Acquire);
                    // Returning retries the read, which now finds a zero page.
                    return;
                }
                break;
            }
        }
    }
    // Not one of ours: restore the previous disposition (the default one if there was none)
    // and return; the read faults again and gets the usual treatment.
    // SAFETY: sigaction is async-signal-safe; the pointers are valid.
    unsafe {
        match PREVIOUS.get() {
            Some(old) => libc::sigaction(libc::SIGBUS, old, std::ptr::null_mut()),
            None => {
                libc::signal(libc::SIGBUS, libc::SIG_DFL);
                0
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The only test that truncates a mapped file: the fault state is process-wide.
    #[test]
    fn truncated_map_reads_zeros_and_check_fails() {
        install_sigbus_handler();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input.bin");
        let page = PAGE_SIZE.load(Ordering::Relaxed);
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![7u8; 4 * page]).unwrap();
        drop(f);
        let map = InputMap::new(&File::open(&path).unwrap(), &path).unwrap();
        assert_eq!(map[3 * page], 7);
        check().unwrap();
        File::options().write(true).open(&path).unwrap().set_len(page as u64).unwrap();
        assert_eq!(map[0], 7, "pages before the new end are kept");
        // Would be SIGBUS without the handler.
        let tail = std::hint::black_box(&map[2 * page..]);
        assert!(tail.iter().all(|&b| b == 0));
        let e = check().unwrap_err().to_string();
        assert!(e.contains("input.bin") && e.contains("truncated"), "{e}");
        drop(map);
        // Still reported (with the path) after the map is gone.
        assert!(check().unwrap_err().to_string().contains("input.bin"));
    }
}
