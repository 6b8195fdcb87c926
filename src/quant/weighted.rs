//! Importance-weighted quantization: the GGML codecs as llama.cpp runs them when
//! `ggml_quantize_chunk` is given an importance matrix (`quantize_row_*_impl` with
//! `quant_weights`), byte for byte.
//!
//! The importance of a column is the mean square of the activations that multiply it
//! (`qforge imatrix`, `llama-imatrix`): an error in a weight whose input is usually large costs
//! more than the same error where the input is near zero. One vector of `row_len` values is
//! shared by every row of a matrix.
//!
//! Q8_0 (and the float types) ignore the importance, as in llama.cpp. The weighted quantizers
//! work on whole rows (the legacy types take σ² over the entire row), so tensors are split by
//! rows for the thread pool.

//!
//! Each block type's weighted row quantizer (`quantize_row_weighted`) lives in its module
//! beside its plain one, the weighting and the searches they share in `quant::search`; this
//! module is the whole-tensor driver.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;

/// Whether `t` has an importance-weighted quantizer (otherwise the importance is ignored, as
/// llama.cpp does for Q8_0 and the float types).
pub fn uses_weights(t: GgmlType) -> bool {
    row_fn(t).is_some()
}

pub(crate) type RowFn = crate::quant::WeightedRowFn;

/// The importance-weighted quantizer of `t` (rows of whole blocks, one weight per value).
pub(crate) fn row_fn(t: GgmlType) -> Option<RowFn> {
    crate::quant::codec(t)?.encode_weighted
}

/// Encode `src` (rows of `row_len` weights) as type `t`, each column weighted by its importance
/// `weights[column]`: the bytes of llama.cpp's `ggml_quantize_chunk(t, src, …, imatrix)`.
/// Types without a weighted quantizer (Q8_0, F16, …) are encoded as [`crate::quant::encode`]
/// does. The weights must be finite (llama.cpp refuses an imatrix holding NaN or Inf).
pub fn encode_weighted(t: GgmlType, src: &[f32], row_len: usize, weights: &[f32]) -> Result<Vec<u8>> {
    if row_len == 0 || !src.len().is_multiple_of(row_len) {
        return Err(Error::InvalidArgument(format!("{} weights are not whole rows of {row_len}", src.len())));
    }
    if weights.len() != row_len {
        return Err(Error::InvalidArgument(format!(
            "{} importance weights given for rows of {row_len} columns",
            weights.len()
        )));
    }
    if let Some(i) = weights.iter().position(|w| !w.is_finite()) {
        return Err(Error::InvalidArgument(format!("importance weight of column {i} is {}", weights[i])));
    }
    let Some(row) = row_fn(t) else {
        return crate::quant::encode(t, src);
    };
    if !row_len.is_multiple_of(t.block_size()) {
        return Err(Error::InvalidArgument(format!(
            "rows of {row_len} are not a whole number of {t} blocks ({})",
            t.block_size()
        )));
    }
    let row_bytes = t.row_bytes(row_len as u64)? as usize;
    let mut out = vec![0u8; src.len() / row_len * row_bytes];
    // Several rows per task: a row of a small model is a few microseconds of work.
    let rows_per_task = (16 * 1024 / row_len).max(1);
    out.par_chunks_mut(rows_per_task * row_bytes).zip(src.par_chunks(rows_per_task * row_len)).for_each(|(o, s)| {
        for (o, s) in o.chunks_exact_mut(row_bytes).zip(s.chunks_exact(row_len)) {
            row(s, weights, o);
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant;

    fn rows(n: usize, cols: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n * cols)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    /// Every type with a weighted quantizer.
    fn types() -> impl Iterator<Item = GgmlType> {
        quant::CODECS.iter().filter(|c| c.encode_weighted.is_some()).map(|c| c.ty)
    }

    #[test]
    fn the_weighted_types_are_llama_cpps() {
        use GgmlType::*;
        let expected = [Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL];
        assert_eq!(types().collect::<Vec<_>>(), expected);
    }

    /// The weighted error Σ w·(x − y)² must drop when the same weights steer the quantizer:
    /// that is what the importance is for. (Byte identity with llama.cpp is checked by
    /// tests/suite/codec_bytes.rs.)
    #[test]
    fn weighting_lowers_the_weighted_error() {
        let cols = 512;
        let x = rows(64, cols, 7);
        // A few columns matter a lot, most hardly at all (like real activations).
        let w: Vec<f32> = (0..cols).map(|c| if c % 37 == 0 { 100.0 } else { 0.01 + (c % 5) as f32 * 0.01 }).collect();
        for t in types() {
            let err = |bytes: &[u8]| {
                let y = quant::decode(t, bytes, x.len()).unwrap();
                x.iter()
                    .zip(&y)
                    .enumerate()
                    .map(|(i, (a, b))| w[i % cols] as f64 * ((a - b) as f64).powi(2))
                    .sum::<f64>()
            };
            let plain = err(&quant::encode(t, &x).unwrap());
            let weighted = err(&encode_weighted(t, &x, cols, &w).unwrap());
            assert!(weighted < plain, "{t}: weighted error {weighted} not below plain {plain}");
        }
    }

    #[test]
    fn q8_0_ignores_the_weights() {
        let x = rows(4, 256, 3);
        let w = vec![2.0; 256];
        assert_eq!(encode_weighted(GgmlType::Q8_0, &x, 256, &w).unwrap(), quant::encode(GgmlType::Q8_0, &x).unwrap());
    }

    #[test]
    fn bad_arguments_are_errors() {
        let x = rows(2, 256, 1);
        assert!(encode_weighted(GgmlType::Q4_K, &x, 256, &[1.0; 255]).is_err());
        assert!(encode_weighted(GgmlType::Q4_K, &x, 300, &[1.0; 300]).is_err());
        assert!(encode_weighted(GgmlType::Q4_K, &x[..480], 160, &[1.0; 160]).is_err());
        let mut w = vec![1.0; 256];
        w[9] = f32::NAN;
        assert!(encode_weighted(GgmlType::Q4_0, &x, 256, &w).is_err());
    }

    #[test]
    fn zero_rows_stay_zero() {
        let x = vec![0f32; 512];
        for t in types() {
            let b = encode_weighted(t, &x, 256, &[1.0; 256]).unwrap();
            assert!(quant::decode(t, &b, 512).unwrap().iter().all(|&v| v == 0.0), "{t}");
        }
    }
}
