//! GGML tensor storage types: ids, names and block geometry, as in ggml's `ggml.h` /
//! `ggml-common.h`. qforge uses this one enum for every stored tensor, including the plain
//! float types that safetensors files carry, so that the runtime and the writers see one
//! vocabulary.

use crate::error::{Error, Result};

macro_rules! ggml_types {
    ($( $(#[$attr:meta])* $variant:ident = $id:literal, $name:literal, $block:literal, $bytes:literal; )*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        pub enum GgmlType { $( $(#[$attr])* $variant ),* }

        impl GgmlType {
            pub const ALL: &'static [GgmlType] = &[ $( $(#[$attr])* GgmlType::$variant ),* ];

            /// The numeric id stored in GGUF tensor infos.
            pub fn id(self) -> u32 { match self { $( $(#[$attr])* GgmlType::$variant => $id ),* } }

            pub fn from_id(id: u32) -> Option<GgmlType> {
                match id { $( $(#[$attr])* $id => Some(GgmlType::$variant), )* _ => None }
            }

            /// ggml's own spelling (`Q4_K`, `BF16`, ...).
            pub fn name(self) -> &'static str { match self { $( $(#[$attr])* GgmlType::$variant => $name ),* } }

            /// Number of weights one block encodes.
            pub fn block_size(self) -> usize { match self { $( $(#[$attr])* GgmlType::$variant => $block ),* } }

            /// Bytes one block occupies.
            pub fn block_bytes(self) -> usize { match self { $( $(#[$attr])* GgmlType::$variant => $bytes ),* } }
        }
    };
}

// Sizes checked against gguf-py's GGML_QUANT_SIZES in tests, except Q8_1 where gguf-py still
// carries the pre-2024 40-byte block; ggml's `block_q8_1` is 2 halves + 32 int8 = 36 bytes.
ggml_types! {
    F32 = 0, "F32", 1, 4;
    F16 = 1, "F16", 1, 2;
    Q4_0 = 2, "Q4_0", 32, 18;
    Q4_1 = 3, "Q4_1", 32, 20;
    Q5_0 = 6, "Q5_0", 32, 22;
    Q5_1 = 7, "Q5_1", 32, 24;
    Q8_0 = 8, "Q8_0", 32, 34;
    Q8_1 = 9, "Q8_1", 32, 36;
    Q2_K = 10, "Q2_K", 256, 84;
    Q3_K = 11, "Q3_K", 256, 110;
    Q4_K = 12, "Q4_K", 256, 144;
    Q5_K = 13, "Q5_K", 256, 176;
    Q6_K = 14, "Q6_K", 256, 210;
    Q8_K = 15, "Q8_K", 256, 292;
    IQ2_XXS = 16, "IQ2_XXS", 256, 66;
    IQ2_XS = 17, "IQ2_XS", 256, 74;
    IQ3_XXS = 18, "IQ3_XXS", 256, 98;
    IQ1_S = 19, "IQ1_S", 256, 50;
    IQ4_NL = 20, "IQ4_NL", 32, 18;
    IQ3_S = 21, "IQ3_S", 256, 110;
    IQ2_S = 22, "IQ2_S", 256, 82;
    IQ4_XS = 23, "IQ4_XS", 256, 136;
    I8 = 24, "I8", 1, 1;
    I16 = 25, "I16", 1, 2;
    I32 = 26, "I32", 1, 4;
    I64 = 27, "I64", 1, 8;
    F64 = 28, "F64", 1, 8;
    IQ1_M = 29, "IQ1_M", 256, 56;
    BF16 = 30, "BF16", 1, 2;
    TQ1_0 = 34, "TQ1_0", 256, 54;
    TQ2_0 = 35, "TQ2_0", 256, 66;
    MXFP4 = 39, "MXFP4", 32, 17;
    NVFP4 = 40, "NVFP4", 64, 36;
    Q1_0 = 41, "Q1_0", 128, 18;
    // A made-up type for the tests of the codec table (quant/test_codec.rs); not a ggml type.
    #[cfg(test)]
    TEST_Q3_0 = 1000, "TEST_Q3_0", 32, 14;
}

impl GgmlType {
    /// Parse a type name case-insensitively (`q8_0`, `BF16`).
    pub fn parse(s: &str) -> Option<GgmlType> {
        Self::ALL.iter().copied().find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// Bytes needed for a row of `n` weights, or an error when `n` is not a whole number of
    /// blocks or the size overflows.
    pub fn row_bytes(self, n: u64) -> Result<u64> {
        let bs = self.block_size() as u64;
        if !n.is_multiple_of(bs) {
            return Err(Error::Unsupported(format!(
                "{} stores blocks of {bs} weights; a row of {n} is not a multiple",
                self.name()
            )));
        }
        (n / bs)
            .checked_mul(self.block_bytes() as u64)
            .ok_or_else(|| Error::InvalidArgument("tensor size overflows".into()))
    }

    /// Bytes for a whole tensor with GGML dims `ne` (ne[0] = row length).
    pub fn tensor_bytes(self, ne: &[u64]) -> Result<u64> {
        let row = self.row_bytes(*ne.first().unwrap_or(&1))?;
        ne.iter()
            .skip(1)
            .try_fold(row, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| Error::InvalidArgument("tensor size overflows".into()))
    }

    pub fn is_float(self) -> bool {
        matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    }

    /// Bits per weight, for reports.
    pub fn bits_per_weight(self) -> f64 {
        self.block_bytes() as f64 * 8.0 / self.block_size() as f64
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
