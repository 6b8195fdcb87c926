//! GGUF reader. The file is memory-mapped; the header is parsed with every declared length
//! and count checked against the bytes that are actually left, so a hostile header can make
//! us fail but never allocate absurdly, read out of bounds or panic.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::value::{Array, Value, ValueType};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::error::{Error, Result};
use crate::formats::mapped::InputMap;
use crate::ggml_type::GgmlType;

/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; nothing real nests deeper than this.
const MAX_ARRAY_DEPTH: usize = 8;
/// The most memory a parsed header may take beyond the bytes it occupies on disk. Counts are
/// checked against the bytes left, and arrays are stored by element type (a u8 array takes
/// its length in bytes), so what the file holds is at most what it asks for; but a scalar
/// value is a 32-byte `Value`, a string a 24-byte `String` (8 bytes on disk), a nested array
/// a 32-byte `Array`, and keys and tensor names are copied into the duplicate checks: those
/// overheads are charged here. The largest real headers (vocabularies of 256k tokens with
/// scores, types and merges) use ~10 MB of it; 256 MiB refuses only files no converter writes.
const MAX_HEADER_OVERHEAD: u64 = 256 << 20;
/// Elements of a fixed-size array read per step (so that the mapped pages behind the cursor
/// can be released as it goes).
const ARRAY_CHUNK: u64 = 1 << 20;
/// How far the cursor moves between releases of the mapped pages behind it.
const RELEASE_STEP: usize = 64 << 20;

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: `ne[0]` is the row length (innermost, contiguous dimension).
    pub ne: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    pub size: u64,
}

impl TensorInfo {
    /// Row-major shape, outermost first (the order safetensors and numpy use).
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }
}

/// The parsed header of a GGUF file. Owns nothing but the header; tensor bytes are read from
/// the buffer the header was parsed from.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
}

impl GgufHeader {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of tensor `t` in `bytes`, the image this header was parsed from (`None` if
    /// `bytes` is not that image). Parsing checked every range against the image's length.
    pub fn tensor_data<'a>(&self, bytes: &'a [u8], t: &TensorInfo) -> Option<&'a [u8]> {
        let start = usize::try_from(self.data_offset.checked_add(t.offset)?).ok()?;
        bytes.get(start..start.checked_add(usize::try_from(t.size).ok()?)?)
    }

    /// Parse and validate a complete GGUF image (`bytes` is the whole file).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<GgufHeader> {
        Self::parse_releasing(bytes, path, None)
    }

    /// [`GgufHeader::parse`], calling `release(range)` for the bytes behind the cursor every
    /// [`RELEASE_STEP`] bytes: a memory-mapped image can drop those pages from the resident
    /// set, so that a header with a huge metadata array costs that array's memory once, not
    /// twice (its copy plus the mapped pages it was read from).
    pub fn parse_releasing(
        bytes: &[u8],
        path: &Path,
        release: Option<&dyn Fn(std::ops::Range<usize>)>,
    ) -> Result<GgufHeader> {
        Self::parse_with(bytes, path, release, MAX_HEADER_OVERHEAD)
    }

    /// The parser, with the overhead budget as a parameter (tests use a small one).
    pub(super) fn parse_with(
        bytes: &[u8],
        path: &Path,
        release: Option<&dyn Fn(std::ops::Range<usize>)>,
        max_overhead: u64,
    ) -> Result<GgufHeader> {
        let mut c = Cursor { bytes, pos: 0, path, overhead_left: max_overhead, release, released: 0 };
        let magic = c.u32()?;
        if magic != GGUF_MAGIC {
            return Err(c.err("not a GGUF file (bad magic)"));
        }
        let version = c.u32()?;
        if version == 1 {
            return Err(Error::Unsupported(format!("{}: GGUF v1 is obsolete; re-convert the model", path.display())));
        }
        if version != 2 && version != 3 {
            return Err(c.err(format!("unknown GGUF version {version}")));
        }
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        // A tensor info takes at least 8 (name len) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset).
        c.check_count(n_tensors, 32, "tensor count")?;
        c.check_count(n_kv, 8 + 4 + 1, "metadata count")?;

        let mut metadata = Vec::with_capacity(initial_capacity(n_kv));
        let mut keys = HashSet::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let vt = c.value_type()?;
            let value = c.value(vt, 0)?;
            if !keys.insert(key.clone()) {
                return Err(c.err(format!("duplicate metadata key {key:?}")));
            }
            metadata.push((key, value));
            c.release_behind();
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v {
                Value::U32(a) if *a != 0 && a.is_power_of_two() => *a as u64,
                other => {
                    return Err(c.err(format!("general.alignment must be a non-zero power of two (u32), got {other}")))
                }
            },
        };

        let mut tensors = Vec::with_capacity(initial_capacity(n_tensors));
        let mut names = HashSet::new();
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.err(format!("tensor {name:?} has {n_dims} dimensions (1..=4 allowed)")));
            }
            c.charge((std::mem::size_of::<TensorInfo>() + 8 * n_dims as usize) as u64)?;
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(c.u64()?);
            }
            let type_id = c.u32()?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                Error::Unsupported(format!("{}: tensor {name:?} has unknown GGML type id {type_id}", path.display()))
            })?;
            let offset = c.u64()?;
            let size = ggml_type.tensor_bytes(&ne).map_err(|e| c.err(format!("tensor {name:?} {ne:?}: {e}")))?;
            // The byte size can fit where the element count does not: a zero dimension after
            // huge ones makes the size 0 but `n_elements` overflow.
            if ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).is_none() {
                return Err(c.err(format!("tensor {name:?} {ne:?}: element count overflows")));
            }
            if offset % alignment != 0 {
                return Err(c.err(format!("tensor {name:?} offset {offset} is not aligned to {alignment}")));
            }
            if !names.insert(name.clone()) {
                return Err(c.err(format!("duplicate tensor name {name:?}")));
            }
            tensors.push(TensorInfo { name, ne, ggml_type, offset, size });
        }

        let data_offset = align_up(c.pos as u64, alignment).ok_or_else(|| c.err("data section offset overflows"))?;
        let file_len = bytes.len() as u64;
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|o| o.checked_add(t.size))
                .ok_or_else(|| c.err(format!("tensor {:?} offset overflows", t.name)))?;
            if end > file_len {
                return Err(c.err(format!(
                    "tensor {:?} ends at byte {end}, past the end of the file ({file_len} bytes): truncated?",
                    t.name
                )));
            }
        }
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offset);
        for pair in by_offset.windows(2) {
            if pair[0].size > 0 && pair[0].offset + pair[0].size > pair[1].offset {
                return Err(c.err(format!("tensors {:?} and {:?} overlap", pair[0].name, pair[1].name)));
            }
        }
        Ok(GgufHeader { version, metadata, tensors, alignment, data_offset })
    }
}

/// Counts are checked against the bytes left before anything is allocated, but one byte on
/// disk can still become a 32-byte `Value` in memory; reserve at most this many slots up front
/// and let real items, as they parse, grow the vector.
fn initial_capacity(count: u64) -> usize {
    count.min(1 << 16) as usize
}

pub fn align_up(x: u64, a: u64) -> Option<u64> {
    Some(x.checked_add(a - 1)? / a * a)
}

/// A memory-mapped GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub header: GgufHeader,
    mmap: InputMap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // Another process truncating the file while we read it raises SIGBUS; see `mapped`.
        let mmap = InputMap::new(&file, path)?;
        let header = GgufHeader::parse_releasing(&mmap, path, Some(&|r| mmap.forget(r)))?;
        Ok(GgufFile { path: path.to_path_buf(), header, mmap })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.header.get(key)
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensor(name)
    }

    /// The bytes of a tensor (bounds were validated when the header was parsed).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        self.header.tensor_data(&self.mmap, t).expect("tensor ranges are checked against the file when parsing")
    }

    pub fn file_len(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// Architecture string (`general.architecture`), if present.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// What the parsed header may still take in memory beyond its bytes on disk (see
    /// `MAX_HEADER_OVERHEAD`).
    overhead_left: u64,
    release: Option<&'a dyn Fn(std::ops::Range<usize>)>,
    /// Where the last release ended.
    released: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::malformed(self.path, "GGUF", format!("{} (at byte {})", msg.into(), self.pos))
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!("needs {n} more bytes but only {} remain: truncated file", self.remaining())));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reject `count` items of at least `min_len` bytes each when the file cannot hold them.
    fn check_count(&self, count: u64, min_len: u64, what: &str) -> Result<()> {
        match count.checked_mul(min_len) {
            Some(need) if need <= self.remaining() => Ok(()),
            _ => Err(self.err(format!("{what} {count} cannot fit in the {} bytes left", self.remaining()))),
        }
    }

    /// Account for `bytes` of memory the parsed header will hold beyond its size on disk.
    fn charge(&mut self, bytes: u64) -> Result<()> {
        self.overhead_left = self.overhead_left.checked_sub(bytes).ok_or_else(|| {
            self.err(format!(
                "the header would take more than {} MiB of memory beyond its size once parsed; no real model's does",
                MAX_HEADER_OVERHEAD >> 20
            ))
        })?;
        Ok(())
    }

    /// Release the mapped pages behind the cursor once it is `RELEASE_STEP` past the last
    /// release.
    fn release_behind(&mut self) {
        if let Some(release) = self.release {
            if self.pos - self.released >= RELEASE_STEP {
                release(self.released..self.pos);
                self.released = self.pos;
            }
        }
    }

    /// A key or tensor name: also copied into a duplicate check, so charged in full.
    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        let bytes = self.take(len)?;
        self.charge(2 * len)?;
        self.utf8(bytes)
    }

    /// A string value: its bytes are on disk; only the `String` beyond its length prefix
    /// is overhead.
    fn string_value(&mut self) -> Result<String> {
        let len = self.u64()?;
        let bytes = self.take(len)?;
        self.charge((std::mem::size_of::<String>() - 8) as u64)?;
        self.utf8(bytes)
    }

    fn utf8(&self, bytes: &[u8]) -> Result<String> {
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err("string is not valid UTF-8"))
    }

    /// `n` elements of `N` bytes each, decoded by `conv`, read in chunks straight into a
    /// vector of their own type (`n·N` bytes were checked to be in the file).
    fn fixed<T, const N: usize>(&mut self, n: u64, conv: impl Fn([u8; N]) -> Result<T>) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(n as usize);
        let mut left = n;
        while left > 0 {
            let k = left.min(ARRAY_CHUNK);
            let bytes = self.take(k * N as u64)?;
            for b in bytes.chunks_exact(N) {
                out.push(conv(b.try_into().expect("chunks of N bytes"))?);
            }
            left -= k;
            self.release_behind();
        }
        Ok(out)
    }

    /// The elements of an array of `n` values of type `et`.
    fn array_items(&mut self, et: ValueType, n: u64, depth: usize) -> Result<Array> {
        let (pos, path) = (self.pos, self.path);
        let bad_bool = |b: u8| {
            Error::malformed(path, "GGUF", format!("bool value {b} is neither 0 nor 1 (in the array at byte {pos})"))
        };
        Ok(match et {
            ValueType::U8 => Array::U8(self.fixed(n, |b: [u8; 1]| Ok(b[0]))?),
            ValueType::I8 => Array::I8(self.fixed(n, |b: [u8; 1]| Ok(b[0] as i8))?),
            ValueType::U16 => Array::U16(self.fixed(n, |b| Ok(u16::from_le_bytes(b)))?),
            ValueType::I16 => Array::I16(self.fixed(n, |b| Ok(i16::from_le_bytes(b)))?),
            ValueType::U32 => Array::U32(self.fixed(n, |b| Ok(u32::from_le_bytes(b)))?),
            ValueType::I32 => Array::I32(self.fixed(n, |b| Ok(i32::from_le_bytes(b)))?),
            ValueType::F32 => Array::F32(self.fixed(n, |b| Ok(f32::from_le_bytes(b)))?),
            ValueType::U64 => Array::U64(self.fixed(n, |b| Ok(u64::from_le_bytes(b)))?),
            ValueType::I64 => Array::I64(self.fixed(n, |b| Ok(i64::from_le_bytes(b)))?),
            ValueType::F64 => Array::F64(self.fixed(n, |b| Ok(f64::from_le_bytes(b)))?),
            ValueType::Bool => Array::Bool(self.fixed(n, |b: [u8; 1]| match b[0] {
                0 => Ok(false),
                1 => Ok(true),
                b => Err(bad_bool(b)),
            })?),
            ValueType::String => {
                let mut out = Vec::with_capacity(initial_capacity(n));
                for _ in 0..n {
                    out.push(self.string_value()?);
                    self.release_behind();
                }
                Array::String(out)
            }
            ValueType::Array => {
                let mut out = Vec::with_capacity(initial_capacity(n));
                for _ in 0..n {
                    self.charge(std::mem::size_of::<Array>() as u64)?;
                    let et = self.value_type()?;
                    let len = self.u64()?;
                    out.push(self.checked_array(et, len, depth + 1)?);
                }
                Array::Array(out)
            }
        })
    }

    /// An array's elements after its header (type, count), with the count and depth checked.
    fn checked_array(&mut self, et: ValueType, n: u64, depth: usize) -> Result<Array> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.err("arrays nested too deeply"));
        }
        self.check_count(n, et.min_encoded_len(), "array length")?;
        self.array_items(et, n, depth)
    }

    fn value_type(&mut self) -> Result<ValueType> {
        let id = self.u32()?;
        ValueType::from_id(id).ok_or_else(|| self.err(format!("unknown metadata value type {id}")))
    }

    fn value(&mut self, vt: ValueType, depth: usize) -> Result<Value> {
        self.charge(std::mem::size_of::<Value>() as u64)?;
        Ok(match vt {
            ValueType::U8 => Value::U8(self.array::<1>()?[0]),
            ValueType::I8 => Value::I8(self.array::<1>()?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array()?)),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array()?)),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array()?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array()?)),
            ValueType::Bool => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("bool value {b} is neither 0 nor 1"))),
            },
            ValueType::String => Value::String(self.string_value()?),
            ValueType::Array => {
                let et = self.value_type()?;
                let n = self.u64()?;
                Value::Array(self.checked_array(et, n, depth)?)
            }
        })
    }
}
