//! Saved base-model distributions (`perplexity --save-logits`), so a base model is run once
//! and compared against many candidates.
//!
//! Each scored position stores the whole distribution, like llama.cpp's
//! `--kl-divergence-base`, as 16-bit codes of the log-probabilities: lp_i ≈ lo + q_i·step
//! with `lo` the smallest log-probability (floored at −60: below that p < 1e-26 and nothing
//! measurable depends on it) and step = −lo / 65535 ≤ 9.2e-4. Top-k lists were tried and
//! rejected: small models have flat distributions (the fixtures need thousands of tokens to
//! cover 99.9% of the mass) and dropping the tail under-estimated KLD by 30%.
//! The exact f32 −log p(target) and the argmax are stored too, so `base_ppl` and
//! `top1_agree` are exact. KLD error: every stored log-prob is within step/2 (4.6e-4) of
//! the true one, and the KLD error is first-order in that times the typical log-ratio, well
//! under 1% of kld_mean even for Q8_0 (checked in tests/suite/eval_cli.rs).
//!
//! Layout (little-endian): magic `QFLOGIT2`, u32 vocab, u32 ctx, u32 windows, u32 reserved,
//! then the windows' token ids (windows × ctx u32), then per scored position
//! (windows × (ctx−1)): f32 nll_target, u32 argmax, f32 lo, f32 step, vocab × u16 codes.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::eval::log_sum_exp;
use crate::formats::mapped::InputMap;
use crate::output::AtomicFile;

const MAGIC: &[u8; 8] = b"QFLOGIT2";
const HEADER: usize = 8 + 16;
const LP_FLOOR: f32 = -60.0;

/// One saved base distribution.
pub struct SavedPosition {
    pub nll_target: f32,
    pub argmax: u32,
    /// Reconstructed log-probabilities (vocab entries).
    pub log_probs: Vec<f32>,
}

fn record_len(vocab: usize) -> usize {
    16 + 2 * vocab
}

/// Encode one row of logits.
pub fn encode_position(logits: &[f32], target: usize, out: &mut Vec<u8>) {
    let lse = log_sum_exp(logits);
    let lp = |v: f32| (v as f64 - lse) as f32;
    let min = logits.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    let lo = lp(min).clamp(LP_FLOOR, -1e-6);
    let step = -lo / 65535.0;
    out.extend_from_slice(&(-(lp(logits[target]))).to_le_bytes());
    out.extend_from_slice(&(crate::eval::argmax(logits) as u32).to_le_bytes());
    out.extend_from_slice(&lo.to_le_bytes());
    out.extend_from_slice(&step.to_le_bytes());
    for &v in logits {
        let q = ((lp(v) - lo) / step).round().clamp(0.0, 65535.0) as u16;
        out.extend_from_slice(&q.to_le_bytes());
    }
}

pub struct LogitsWriter {
    file: AtomicFile,
    vocab: usize,
}

impl LogitsWriter {
    pub fn create(path: &Path, vocab: usize, windows: &[&[u32]]) -> Result<LogitsWriter> {
        let mut file = AtomicFile::create(path)?;
        let ctx = windows[0].len();
        let mut head = Vec::with_capacity(HEADER + windows.len() * ctx * 4);
        head.extend_from_slice(MAGIC);
        for v in [vocab, ctx, windows.len(), 0] {
            head.extend_from_slice(&(v as u32).to_le_bytes());
        }
        for w in windows {
            for &t in *w {
                head.extend_from_slice(&t.to_le_bytes());
            }
        }
        file.write_all(&head).map_err(|e| Error::io(path, e))?;
        Ok(LogitsWriter { file, vocab })
    }

    /// Append encoded positions (from [`encode_position`]).
    pub fn push_encoded(&mut self, bytes: &[u8]) -> Result<()> {
        debug_assert_eq!(bytes.len() % record_len(self.vocab), 0);
        self.file.write_all(bytes).map_err(|e| Error::io(self.file.temp_path(), e))
    }

    pub fn finish(self, expected_len: u64) -> Result<()> {
        self.file.commit(|p| {
            let len = std::fs::metadata(p).map_err(|e| Error::io(p, e))?.len();
            if len != expected_len {
                return Err(Error::malformed(p, "logits", format!("{len} bytes written, {expected_len} expected")));
            }
            Ok(())
        })
    }
}

/// Size of a logits file for the given geometry.
pub fn file_len(vocab: usize, ctx: usize, windows: usize) -> u64 {
    (HEADER + windows * ctx * 4 + windows * (ctx - 1) * record_len(vocab)) as u64
}

pub struct LogitsFile {
    mmap: InputMap,
    pub vocab: usize,
    pub ctx: usize,
    pub windows: usize,
}

impl LogitsFile {
    pub fn is_logits_file(p: &Path) -> bool {
        use std::io::Read;
        let mut magic = [0u8; 8];
        p.is_file() && std::fs::File::open(p).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == MAGIC
    }

    pub fn open(path: &Path) -> Result<LogitsFile> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mmap = InputMap::new(&f, path)?;
        if mmap.len() < HEADER || &mmap[..8] != MAGIC {
            return Err(Error::malformed(
                path,
                "qforge logits",
                "bad magic (not written by `perplexity --save-logits`)",
            ));
        }
        let u = |i: usize| {
            u32::from_le_bytes([mmap[8 + 4 * i], mmap[9 + 4 * i], mmap[10 + 4 * i], mmap[11 + 4 * i]]) as usize
        };
        let (vocab, ctx, windows) = (u(0), u(1), u(2));
        if ctx < 2 || windows == 0 || vocab == 0 || vocab > 1 << 24 || ctx > 1 << 24 || windows > 1 << 24 {
            return Err(Error::malformed(path, "qforge logits", "absurd header values"));
        }
        if mmap.len() as u64 != file_len(vocab, ctx, windows) {
            return Err(Error::malformed(path, "qforge logits", "file size does not match its header (truncated?)"));
        }
        Ok(LogitsFile { mmap, vocab, ctx, windows })
    }

    /// Token ids of window `w`.
    pub fn window_tokens(&self, w: usize) -> Vec<u32> {
        let start = HEADER + w * self.ctx * 4;
        self.mmap[start..start + self.ctx * 4]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// Drop window `w`'s distributions from the resident set once they have been used
    /// (`compare` reads each window's once, in order): the peak RSS of a full-text compare
    /// then stays near the model's, not the file's (6.2 GB for the small fixture's WikiText-2).
    pub fn forget_window(&self, w: usize) {
        let rec = record_len(self.vocab);
        let start = HEADER + self.windows * self.ctx * 4 + w * (self.ctx - 1) * rec;
        self.mmap.forget(start..start + (self.ctx - 1) * rec);
    }

    /// The stored distribution at scored position `i` of window `w`.
    pub fn position(&self, w: usize, i: usize) -> SavedPosition {
        let rec = record_len(self.vocab);
        let start = HEADER + self.windows * self.ctx * 4 + (w * (self.ctx - 1) + i) * rec;
        let b = &self.mmap[start..start + rec];
        let word = |o: usize| [b[o], b[o + 1], b[o + 2], b[o + 3]];
        let (lo, step) = (f32::from_le_bytes(word(8)), f32::from_le_bytes(word(12)));
        SavedPosition {
            nll_target: f32::from_le_bytes(word(0)),
            argmax: u32::from_le_bytes(word(4)),
            log_probs: b[16..].chunks_exact(2).map(|c| lo + u16::from_le_bytes([c[0], c[1]]) as f32 * step).collect(),
        }
    }
}
