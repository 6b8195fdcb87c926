//! Quantized Hugging Face checkpoints: the packed layouts GPTQ (AutoGPTQ / GPTQModel), AWQ
//! (AutoAWQ "gemm") and bitsandbytes 4-bit write, and how their tensors decode to f32 rows.
//!
//! A quantized linear layer is stored as several tensors sharing a prefix
//! (`…q_proj.qweight`, `…q_proj.qzeros`, `…q_proj.scales`, `…q_proj.g_idx` for GPTQ). qforge
//! groups them into one [`Packed`] weight named like the float weight it replaces
//! (`blk.0.attn_q.weight`), so that the runtime, `compare` and `convert` treat it like any other
//! matrix: rows are decoded on the fly, tile by tile.

pub mod awq;
pub mod bnb;
pub mod gptq;
pub mod scheme;

use safetensors::Dtype;

use crate::error::{Error, Result};
pub use scheme::Scheme;

/// An unreadable `quantization_config` (each layout's parser reports through this).
fn bad(method: &str, what: &str) -> Error {
    Error::InvalidModel(format!("quantization_config ({method}): {what}"))
}

/// One stored tensor of a packed weight.
#[derive(Debug, Clone)]
pub struct Part<'a> {
    /// What follows the layer prefix: `qweight`, `qzeros`, `scales`, `g_idx`, `weight`,
    /// `weight.absmax`, …
    pub suffix: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

impl Part<'_> {
    fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Little-endian 32-bit words (int32 / uint32 tensors).
    pub fn u32_at(&self, i: usize) -> u32 {
        u32::from_le_bytes([self.data[4 * i], self.data[4 * i + 1], self.data[4 * i + 2], self.data[4 * i + 3]])
    }

    /// A float tensor's element as f32 (F16, BF16 or F32).
    pub fn f32_at(&self, i: usize) -> f32 {
        match self.dtype {
            Dtype::F16 => half::f16::from_le_bytes([self.data[2 * i], self.data[2 * i + 1]]).to_f32(),
            Dtype::BF16 => half::bf16::from_le_bytes([self.data[2 * i], self.data[2 * i + 1]]).to_f32(),
            _ => {
                f32::from_le_bytes([self.data[4 * i], self.data[4 * i + 1], self.data[4 * i + 2], self.data[4 * i + 3]])
            }
        }
    }
}

/// A quantized weight matrix `[rows, cols]` (rows = output features) in a packed layout.
#[derive(Debug, Clone)]
pub struct Packed<'a> {
    pub scheme: Scheme,
    pub rows: usize,
    pub cols: usize,
    pub parts: Vec<Part<'a>>,
}

impl<'a> Packed<'a> {
    /// Group the parts of one layer (already collected by the checkpoint reader) and check
    /// every shape and dtype against the scheme, so that decoding can index without checks.
    pub fn new(name: &str, scheme: Scheme, parts: Vec<Part<'a>>) -> Result<Packed<'a>> {
        // bitsandbytes keeps each weight's geometry in a quant_state JSON of its own.
        let scheme = match scheme {
            Scheme::Bnb(b) => Scheme::Bnb(bnb::with_tensor_state(name, b, &parts)?),
            s => s,
        };
        let (rows, cols) = match &scheme {
            Scheme::Gptq { .. } => gptq::shape(name, &scheme, &parts)?,
            Scheme::Bnb(b) => bnb::shape(name, b)?,
            Scheme::Awq { .. } => awq::shape(name, &parts)?,
        };
        let p = Packed { scheme, rows, cols, parts };
        p.validate(name)?;
        Ok(p)
    }

    pub fn part(&self, suffix: &str) -> Option<&Part<'a>> {
        self.parts.iter().find(|p| p.suffix == suffix)
    }

    fn validate(&self, name: &str) -> Result<()> {
        match &self.scheme {
            Scheme::Gptq { .. } => gptq::validate(name, self),
            Scheme::Bnb(_) => bnb::validate(name, self),
            Scheme::Awq { .. } => awq::validate(name, self),
        }
    }

    /// Decode rows `r0..r0+n` into `out` (n × cols).
    pub fn decode_rows(&self, r0: usize, n: usize, out: &mut [f32]) {
        debug_assert!(r0 + n <= self.rows && out.len() >= n * self.cols);
        match &self.scheme {
            Scheme::Gptq { .. } => gptq::decode_rows(self, r0, n, out),
            Scheme::Bnb(_) => bnb::decode_rows(self, r0, n, out),
            Scheme::Awq { .. } => awq::decode_rows(self, r0, n, out),
        }
    }

    /// The part that identifies the weight (`qweight`, bitsandbytes' `weight`).
    pub fn main_part(&self) -> &Part<'a> {
        let main = self.scheme.suffixes()[0];
        self.part(main).unwrap_or(&self.parts[0])
    }

    /// Bytes of all parts (progress reports, sizes).
    pub fn stored_bytes(&self) -> usize {
        self.parts.iter().map(|p| p.data.len()).sum()
    }

    /// The whole matrix as f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        use rayon::prelude::*;
        const TILE: usize = 64;
        let cols = self.cols.max(1);
        out.par_chunks_mut(TILE * cols).enumerate().for_each(|(t, o)| self.decode_rows(t * TILE, o.len() / cols, o));
        out
    }
}

/// A packed weight as integer codes on an affine grid: w[r, c] = scale[g, r] · (code[r, c] −
/// zero[g, r]) with g = group[c]. GPTQ and AWQ are such grids; importing them into a GGML type
/// with the same grid (Q4_0, Q4_1, Q8_0) is then a re-packing, not a re-quantization.
pub struct IntCodes {
    pub bits: u32,
    /// rows × cols
    pub codes: Vec<u8>,
    /// groups × rows
    pub scales: Vec<f32>,
    /// groups × rows
    pub zeros: Vec<u32>,
    /// group of each column
    pub group: Vec<usize>,
}

impl Packed<'_> {
    /// The integer grid behind this weight, when it has one.
    pub fn int_codes(&self) -> Option<IntCodes> {
        match &self.scheme {
            Scheme::Gptq { .. } => Some(gptq::int_codes(self)),
            Scheme::Awq { .. } => Some(awq::int_codes(self)),
            Scheme::Bnb(_) => None,
        }
    }
}

/// Look up a part and check its dtype and shape.
pub(crate) fn expect_part<'p, 'a>(
    name: &str,
    parts: &'p [Part<'a>],
    suffix: &str,
    dtypes: &[Dtype],
    shape: Option<&[usize]>,
) -> Result<&'p Part<'a>> {
    let p = parts
        .iter()
        .find(|p| p.suffix == suffix)
        .ok_or_else(|| Error::tensor(name, format!("the quantized weight has no `{suffix}` tensor")))?;
    if !dtypes.contains(&p.dtype) {
        return Err(Error::tensor(name, format!("`{suffix}` has dtype {:?}, expected one of {dtypes:?}", p.dtype)));
    }
    if let Some(s) = shape {
        if p.shape != s {
            return Err(Error::tensor(name, format!("`{suffix}` has shape {:?}, expected {s:?}", p.shape)));
        }
    }
    let width = match p.dtype {
        Dtype::F16 | Dtype::BF16 | Dtype::I16 | Dtype::U16 => 2,
        Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
        Dtype::I64 | Dtype::U64 | Dtype::F64 => 8,
        _ => 1,
    };
    if p.elements().checked_mul(width) != Some(p.data.len()) {
        return Err(Error::tensor(name, format!("`{suffix}` byte size does not match its shape")));
    }
    Ok(p)
}
