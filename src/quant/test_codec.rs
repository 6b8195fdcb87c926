//! TEST_Q3_0, a block type made up for the tests (not a ggml type): Q4_0's scheme with three
//! bits, blocks of 32 weights as one f16 scale `d` and 32 three-bit codes packed little-endian
//! (code j at bit 3j of the 12 code bytes), 14 bytes; x ≈ d·(q − 4).
//!
//! It exists to show (and keep true) that a block type is one file plus a row of
//! `quant::CODECS`: this module and that row are all it took, beside the `#[cfg(test)]` id in
//! `ggml_type`'s list. The tests below reach it only through what the crate derives from the
//! table; the table-wide unit tests (the GPTQ grid's `codes_and_values_match_the_decoder`,
//! the dot and decode checks) iterate over it as well.

use super::dot::{chunk32, BlockSink};
use super::float::{get_f16, put_f16};
use super::grid::ElemGrid;

pub const QK: usize = 32;
pub const BLOCK_BYTES: usize = 14;

fn code(b: &[u8], j: usize) -> i32 {
    let bit = 3 * j;
    let pair = b[2 + bit / 8] as u16 | (*b.get(2 + bit / 8 + 1).unwrap_or(&0) as u16) << 8;
    ((pair >> (bit % 8)) & 7) as i32
}

/// Signed absmax as Q4_0 does it: the weight of largest magnitude maps to code 0 (−4·d).
#[inline(always)]
pub fn quantize_block(x: &[f32], out: &mut [u8]) {
    let mut max = 0f32;
    for &v in x {
        if v.abs() > max.abs() {
            max = v;
        }
    }
    let d = max / -4.0;
    put_f16(out, d);
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    out[2..BLOCK_BYTES].fill(0);
    for (j, &v) in x.iter().enumerate() {
        set_code(out, j, ((v * id + 4.5) as i32).min(7));
    }
}

#[inline(always)]
pub fn decode_block(b: &[u8; BLOCK_BYTES], s: &mut impl BlockSink) {
    s.put32_scaled(0, get_f16(b), &chunk32(|j| (code(b, j) - 4) as f32));
}

pub fn elem_grid(b: &[u8], _j: usize) -> ElemGrid {
    ElemGrid::Sym { d: get_f16(b), off: -4, qmin: 0, qmax: 7 }
}

pub fn set_code(b: &mut [u8], j: usize, q: i32) {
    let bit = 3 * j;
    for k in 0..3 {
        let (byte, shift) = (2 + (bit + k) / 8, (bit + k) % 8);
        b[byte] = (b[byte] & !(1 << shift)) | ((((q >> k) & 1) as u8) << shift);
    }
}

#[cfg(test)]
mod tests {
    use crate::convert::plan::{self, FileType, QuantPlan, TypePlan};
    use crate::ggml_type::GgmlType;
    use crate::quant::{self, gptq};

    const T: GgmlType = GgmlType::TEST_Q3_0;

    fn weights(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1.0 + (i / 32) as f32 * 0.1)).collect()
    }

    #[test]
    fn encodes_and_decodes_through_the_table() {
        let x = weights(32 * 40);
        let bytes = quant::encode(T, &x).unwrap();
        assert_eq!(bytes.len(), 40 * super::BLOCK_BYTES);
        let y = quant::decode(T, &bytes, x.len()).unwrap();
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = amax / 4.0;
            for (a, b) in xb.iter().zip(yb) {
                assert!((a - b).abs() <= step * 1.001, "{a} vs {b} (step {step})");
            }
        }
        // The fused dot of generation is the decoded row's dot.
        let act: Vec<f32> = (0..x.len()).map(|i| (i % 17) as f32 - 8.0).collect();
        let want: f32 = y.iter().zip(&act).map(|(a, b)| a * b).sum();
        let got = (quant::codec(T).unwrap().dot)(&bytes, &act);
        assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{got} vs {want}");
    }

    #[test]
    fn the_cli_names_and_plans_it() {
        // --tensor-type / --output-type accept it, convert and quantize name it in their help.
        assert_eq!(plan::parse_tensor_type("test_q3_0").unwrap(), T);
        assert!(FileType::help_list().contains("TEST_Q3_0"));
        // A `quantize --type` because its row has a llama_ftype.
        let ft = FileType::parse("TEST_Q3_0").unwrap();
        assert_eq!((ft.name(), ft.id(), ft.default_type()), ("TEST_Q3_0", 1000, T));
        let p = plan::tests::plan_of(&plan::tests::tiny(), &QuantPlan::new(ft));
        for (name, shape, a) in &p {
            let want = match name.as_str() {
                // llama-quantize's rule for the output matrix of every file type but Q8_0.
                "output.weight" => GgmlType::Q6_K,
                _ if shape.len() < 2 => GgmlType::F32,
                _ => T,
            };
            assert_eq!(a.ggml_type, want, "{name}");
        }
        assert_eq!(QuantPlan::new(ft).file_type(), 1000);
    }

    #[test]
    fn gptq_targets_it() {
        assert!(gptq::ggml_types().any(|t| t == T));
        let (rows, cols) = (4, 64);
        let w = weights(rows * cols);
        let mut h = gptq::Hessian::new(cols);
        h.add(&weights(16 * cols), 16);
        let res = gptq::quantize(&w, rows, cols, &h, &gptq::Grid::Ggml(T), &Default::default()).unwrap();
        let dec = quant::decode(T, res.ggml.as_ref().unwrap(), w.len()).unwrap();
        assert_eq!(dec, res.dequantized);
    }

    #[test]
    fn gguf_files_and_the_runtime_carry_it() {
        use crate::formats::gguf::{GgufHeader, GgufWriter};
        use crate::model::TensorRef;
        use crate::runtime::matrix::Matrix;
        let (rows, cols) = (5, 96);
        let w = weights(rows * cols);
        let bytes = quant::encode(T, &w).unwrap();
        let mut writer = GgufWriter::new();
        writer.add_tensor("w", &[rows, cols], T).unwrap();
        let mut stream = writer.start(Vec::new()).unwrap();
        stream.write_tensor("w", &bytes).unwrap();
        let image = stream.finish().unwrap();
        let header = GgufHeader::parse(&image, std::path::Path::new("test.gguf")).unwrap();
        let info = header.tensor("w").unwrap();
        assert_eq!(info.ggml_type, T);
        let data = header.tensor_data(&image, info).unwrap();
        assert_eq!(data, &bytes[..]);
        let t = TensorRef { name: "w".into(), ggml_type: T, shape: info.shape(), data, packed: None };
        let m = Matrix::from_tensor(&t).unwrap();
        let dec = quant::decode(T, &bytes, w.len()).unwrap();
        // One activation row (generation's fused dot) and many (decoded tiles and a GEMM).
        for n in [1, 7] {
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 31 % 29) as f32 - 14.0) * 0.1).collect();
            let y = m.matmul(&x, n);
            for j in 0..n {
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|c| dec[r * cols + c] * x[j * cols + c]).sum();
                    let got = y[j * rows + r];
                    assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "n {n} [{j},{r}]: {got} vs {want}");
                }
            }
        }
    }
}
