//! safetensors files: the validated header, memory-mapped files whose tensors are borrowed
//! slices of the maps (zero-copy), shard indexes. The `safetensors` crate validates each
//! header (offsets contiguous, in bounds, byte sizes equal to dtype × shape). A whole Hugging
//! Face model directory (config + shards) is `model::checkpoint::HfCheckpoint`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::formats::mapped::InputMap;
use crate::ggml_type::GgmlType;

/// The validated header of a `.safetensors` image: where the data starts and each tensor's
/// dtype, shape and byte range. Parsed from bytes so that it can be checked (and fuzzed)
/// without a file.
#[derive(Debug, Clone)]
pub struct SafetensorsHeader {
    data_start: usize,
    tensors: HashMap<String, safetensors::tensor::TensorInfo>,
}

impl SafetensorsHeader {
    /// Parse and validate the header of a complete safetensors image (`bytes` is the whole
    /// file; `path` only names it in errors). Every tensor's range is then inside `bytes`.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<SafetensorsHeader> {
        let (n, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::malformed(path, "safetensors", describe_st_error(&e)))?;
        let tensors = meta.tensors().into_iter().map(|(k, v)| (k, v.clone())).collect();
        Ok(SafetensorsHeader { data_start: 8 + n, tensors })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Tensor `name` borrowed from `bytes`, the image this header was parsed from. `None` for
    /// an unknown name, or when `bytes` is not that image (a range falls outside it).
    pub fn tensor<'a>(&'a self, bytes: &'a [u8], name: &str) -> Option<HfTensor<'a>> {
        let info = self.tensors.get(name)?;
        let (a, b) = info.data_offsets;
        let data = bytes.get(self.data_start.checked_add(a)?..self.data_start.checked_add(b)?)?;
        Some(HfTensor { dtype: info.dtype, shape: &info.shape, data })
    }
}

/// One memory-mapped `.safetensors` file and its validated header.
pub struct SafetensorsFile {
    pub path: PathBuf,
    mmap: InputMap,
    header: SafetensorsHeader,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // Truncation while mapped raises SIGBUS; see `mapped`.
        let mmap = InputMap::new(&file, path)?;
        let header = SafetensorsHeader::parse(&mmap, path)?;
        Ok(SafetensorsFile { path: path.to_path_buf(), mmap, header })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.header.names()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.header.contains(name)
    }

    pub fn tensor(&self, name: &str) -> Option<HfTensor<'_>> {
        self.header.tensor(&self.mmap, name)
    }
}

fn describe_st_error(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::InvalidHeaderLength => "header length points past the end of the file (truncated?)".into(),
        E::MetadataIncompleteBuffer => {
            "tensor data does not match the file length (truncated or trailing bytes)".into()
        }
        E::HeaderTooSmall => "file is shorter than the 8-byte header length".into(),
        E::TensorInvalidInfo => "a tensor's byte range does not match its dtype and shape".into(),
        E::InvalidOffset(name) => format!("tensor {name:?} has overlapping or out-of-order offsets"),
        other => other.to_string(),
    }
}

/// A tensor borrowed from a memory-mapped safetensors file.
#[derive(Clone, Copy)]
pub struct HfTensor<'a> {
    pub dtype: Dtype,
    /// Row-major, outermost first.
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

impl HfTensor<'_> {
    /// The GGML storage type for float tensors; other dtypes are refused with the tensor's name.
    pub fn ggml_type(&self, name: &str) -> Result<GgmlType> {
        match self.dtype {
            Dtype::F32 => Ok(GgmlType::F32),
            Dtype::F16 => Ok(GgmlType::F16),
            Dtype::BF16 => Ok(GgmlType::BF16),
            other => Err(Error::tensor(name, format!("dtype {other:?} is not a float type qforge converts"))),
        }
    }
}

/// The `weight_map` of a shard index (`model.safetensors.index.json`, already parsed as JSON)
/// as (tensor, shard file name) pairs, in the index's order. Shard names are checked to be
/// plain file names; whether the shards exist and hold the tensors is the caller's business.
pub fn parse_index<'a>(idx: &'a serde_json::Value, index_path: &Path) -> Result<Vec<(&'a str, &'a str)>> {
    let map = idx
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::malformed(index_path, "index", "no \"weight_map\" object"))?;
    let mut out = Vec::with_capacity(map.len());
    for (tensor, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| Error::malformed(index_path, "index", format!("{tensor:?}: shard is not a string")))?;
        // A shard is a plain file name in the same directory; anything with a path
        // component could point anywhere on disk.
        if shard.is_empty() || shard.contains(['/', '\\', '\0']) || shard == "." || shard == ".." {
            return Err(Error::malformed(
                index_path,
                "index",
                format!("shard name {shard:?} is not a plain file name"),
            ));
        }
        out.push((tensor.as_str(), shard));
    }
    Ok(out)
}

pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::malformed(path, "JSON", e.to_string()))
}
