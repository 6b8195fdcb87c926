//! The made-up block type of `quant/test_codec.rs` (TEST_Q3_0, test builds only) through the
//! layers above `quant` that derive what they do from the codec table: `quantize --type` /
//! `--tensor-type` names and plans, GGUF files, the runtime's products. A module of its own at
//! the top of the crate so that `quant` does not import the layers above it.

use crate::convert::plan::{self, FileType, QuantPlan, TypePlan};
use crate::ggml_type::GgmlType;
use crate::quant;

const T: GgmlType = GgmlType::TEST_Q3_0;

fn weights(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1.0 + (i / 32) as f32 * 0.1)).collect()
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
