//! Writer → reader round trips and hostile headers. Every malformed input must come back as
//! an `Err`: never a panic, never an allocation sized by an unchecked count.

use std::path::Path;

use super::reader::align_up;
use super::*;
use crate::ggml_type::GgmlType;

fn parse(bytes: &[u8]) -> crate::Result<GgufHeader> {
    GgufHeader::parse(bytes, Path::new("test.gguf"))
}

fn parse_err(bytes: &[u8]) -> String {
    match parse(bytes) {
        Ok(h) => panic!("hostile header parsed: {} keys, {} tensors", h.metadata.len(), h.tensors.len()),
        Err(e) => e.to_string(),
    }
}

/// One value of every scalar type, arrays of each, and arrays of arrays.
fn every_value() -> Vec<(String, Value)> {
    let scalars = vec![
        Value::U8(0xfe),
        Value::I8(-5),
        Value::U16(0xbeef),
        Value::I16(-12345),
        Value::U32(0xdead_beef),
        Value::I32(-123_456_789),
        Value::F32(-1.5e-7),
        Value::Bool(true),
        Value::Bool(false),
        Value::String("héllo \u{1F600} \0 nul".into()),
        Value::String(String::new()),
        Value::U64(u64::MAX - 1),
        Value::I64(i64::MIN + 3),
        Value::F64(std::f64::consts::PI),
    ];
    let mut kv: Vec<(String, Value)> = scalars
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("test.scalar.{i}.{}", v.value_type().name()), v.clone()))
        .collect();
    for (i, v) in scalars.iter().enumerate() {
        let arr = array(v.value_type(), vec![v.clone(), v.clone(), v.clone()]);
        kv.push((format!("test.array.{i}"), arr));
        kv.push((format!("test.empty.{i}"), array(v.value_type(), vec![])));
    }
    // Arrays of arrays, whose inner arrays have different element types and lengths.
    let nested = array(
        ValueType::Array,
        vec![
            array(ValueType::U8, vec![Value::U8(1), Value::U8(2)]),
            array(ValueType::String, vec![Value::String("a".into())]),
            array(ValueType::Array, vec![array(ValueType::F64, vec![Value::F64(-0.0)])]),
            array(ValueType::I32, vec![]),
        ],
    );
    kv.push(("test.nested".into(), nested));
    let mut deep = array(ValueType::U16, vec![Value::U16(7)]);
    for _ in 0..7 {
        deep = array(ValueType::Array, vec![deep]);
    }
    kv.push(("test.deep".into(), deep));
    kv
}

/// A `Value::Array` of element type `t` from values of that type.
fn array(t: ValueType, items: Vec<Value>) -> Value {
    Value::Array(Array::from_values(t, items).expect("values of the element type"))
}

fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    for (k, v) in every_value() {
        w.set(&k, v);
    }
    w.add_tensor("a", &[3], GgmlType::F32).unwrap();
    w.add_tensor("b", &[2, 64], GgmlType::Q8_0).unwrap();
    w.add_tensor("c", &[5, 7], GgmlType::BF16).unwrap();
    w.add_tensor("d", &[2, 3, 4, 5], GgmlType::F16).unwrap();
    w
}

/// A complete small GGUF image (every metadata type, a few tensors of different types) and
/// the writer that planned it.
fn sample() -> (GgufWriter, Vec<u8>) {
    let planned = sample_writer().tensors().to_vec();
    let mut stream = sample_writer().start(Vec::new()).unwrap();
    for (i, t) in planned.iter().enumerate() {
        let data: Vec<u8> = (0..t.size).map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8)).collect();
        stream.write_tensor(&t.name, &data).unwrap();
    }
    (sample_writer(), stream.finish().unwrap())
}

#[test]
fn every_metadata_type_round_trips() {
    let (w, bytes) = sample();
    assert_eq!(bytes.len() as u64, w.total_size());
    let h = parse(&bytes).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.alignment, DEFAULT_ALIGNMENT);
    assert_eq!(h.data_offset, w.header_bytes().len() as u64);
    // Same keys, order, types and values (F32/F64 compared bitwise through PartialEq; none is NaN).
    assert_eq!(h.metadata.len(), w.metadata().len());
    for ((k1, v1), (k2, v2)) in h.metadata.iter().zip(w.metadata()) {
        assert_eq!(k1, k2);
        assert_eq!(v1, v2, "{k1}");
        assert_eq!(v1.value_type(), v2.value_type(), "{k1}");
    }
    assert_eq!(h.get("test.scalar.11.UINT64").and_then(Value::as_u64), Some(u64::MAX - 1));
    let mut depth = 1;
    let mut a = h.get("test.deep").and_then(Value::as_array).unwrap();
    while let Array::Array(items) = a {
        depth += 1;
        a = &items[0];
    }
    assert_eq!((depth, a), (8, &Array::U16(vec![7])));
    // Tensor infos as planned, and the data where the offsets say.
    assert_eq!(h.tensors.len(), w.tensors().len());
    for (i, (t, p)) in h.tensors.iter().zip(w.tensors()).enumerate() {
        assert_eq!((&t.name, &t.ne, t.ggml_type, t.offset, t.size), (&p.name, &p.ne, p.ggml_type, p.offset, p.size));
        assert_eq!(t.offset % DEFAULT_ALIGNMENT, 0);
        let start = (h.data_offset + t.offset) as usize;
        let data = &bytes[start..start + t.size as usize];
        assert!(data.iter().enumerate().all(|(j, &b)| b == (j as u8).wrapping_mul(31).wrapping_add(i as u8)));
    }
    assert_eq!(h.tensor("d").unwrap().shape(), vec![2, 3, 4, 5]);
    assert_eq!(h.tensor("b").unwrap().size, 2 * 2 * 34);
    // Writing the parsed metadata again reproduces the header byte for byte.
    let mut again = GgufWriter::new();
    for (k, v) in &h.metadata {
        again.set(k, v.clone());
    }
    for t in &h.tensors {
        again.add_tensor(&t.name, &t.shape(), t.ggml_type).unwrap();
    }
    assert_eq!(again.header_bytes(), w.header_bytes());
}

#[test]
fn header_is_padded_to_the_alignment() {
    let mut w = GgufWriter::new();
    for i in 0..70 {
        // Keys and values of every length modulo the alignment.
        w.set(&format!("k{}", "x".repeat(i % 37)), Value::String("y".repeat(i)));
        let h = w.header_bytes();
        assert_eq!(h.len() as u64 % DEFAULT_ALIGNMENT, 0, "after {i} keys");
        if i % 10 == 0 {
            w.add_tensor(&format!("t{i}"), &[1 + i], GgmlType::F32).unwrap();
        }
        let h = w.header_bytes();
        assert_eq!(h.len() as u64 % DEFAULT_ALIGNMENT, 0);
        assert_eq!(
            w.total_size(),
            h.len() as u64 + w.tensors().iter().map(|t| align_up(t.size, 32).unwrap()).sum::<u64>()
        );
        let mut prev_end = 0;
        for t in w.tensors() {
            assert_eq!(t.offset % DEFAULT_ALIGNMENT, 0);
            assert!(t.offset >= prev_end);
            prev_end = t.offset + t.size;
        }
    }
    // general.alignment is never written (the writer always uses the default).
    w.set("general.alignment", Value::U32(64));
    assert!(w.metadata().iter().all(|(k, _)| k != "general.alignment"));
    assert_eq!(align_up(0, 32), Some(0));
    assert_eq!(align_up(33, 32), Some(64));
    assert_eq!(align_up(u64::MAX - 3, 32), None);
}

#[test]
fn writer_refuses_bad_tensors() {
    let mut w = GgufWriter::new();
    assert!(w.add_tensor("x", &[], GgmlType::F32).is_err());
    assert!(w.add_tensor("x", &[1, 1, 1, 1, 1], GgmlType::F32).is_err());
    assert!(w.add_tensor("x", &[4, 33], GgmlType::Q8_0).is_err());
    assert!(w.add_tensor("x", &[usize::MAX, usize::MAX], GgmlType::F32).is_err());
    w.add_tensor("x", &[4], GgmlType::F32).unwrap();
    assert!(w.add_tensor("x", &[4], GgmlType::F32).is_err());
    let mut s = w.start(Vec::new()).unwrap();
    assert!(s.write_tensor("y", &[0; 16]).is_err());
    assert!(s.write_tensor("x", &[0; 15]).is_err());
    s.write_tensor("x", &[0; 16]).unwrap();
    assert!(s.write_tensor("x", &[0; 16]).is_err());
    s.finish().unwrap();
}

/// Hand-built GGUF bytes.
#[derive(Default)]
struct B(Vec<u8>);

impl B {
    /// The bytes built so far (ends a chain on a temporary).
    fn bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
    fn header(n_tensors: u64, n_kv: u64) -> B {
        let mut b = B::default();
        b.u32(GGUF_MAGIC).u32(3).u64(n_tensors).u64(n_kv);
        b
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    /// A tensor info: name, dims (GGML order), type id, offset.
    fn tensor(&mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(ne.len() as u32);
        for &d in ne {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pad to 32 and append `n` data bytes.
    fn data(&mut self, n: usize) -> Vec<u8> {
        let mut v = self.0.clone();
        v.resize(align_up(v.len() as u64, 32).unwrap() as usize + n, 0);
        v
    }
}

#[test]
fn hand_built_minimal_file_parses() {
    // The builder itself produces valid files, so each hostile variant below differs from a
    // valid one in exactly the way it says.
    let mut b = B::header(2, 1);
    b.str("k").u32(ValueType::U32 as u32).u32(7);
    b.tensor("a", &[4], GgmlType::F32.id(), 0).tensor("b", &[32, 2], GgmlType::Q8_0.id(), 32);
    let h = parse(&b.data(32 + 68)).unwrap();
    assert_eq!(h.tensors.len(), 2);
    assert_eq!(h.tensors[1].size, 68);
}

#[test]
fn hostile_headers_are_errors() {
    let f32 = GgmlType::F32.id();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "truncated"),
        ("magic only", GGUF_MAGIC.to_le_bytes().to_vec(), "truncated"),
        (
            "bad magic",
            {
                let mut b = B::header(0, 0);
                b.0[0] = b'X';
                b.0
            },
            "bad magic",
        ),
        ("version 1", B::default().u32(GGUF_MAGIC).u32(1).u64(0).u64(0).bytes(), "v1"),
        ("version 4", B::default().u32(GGUF_MAGIC).u32(4).u64(0).u64(0).bytes(), "version 4"),
        ("tensor count 2^64-1", B::header(u64::MAX, 0).0, "tensor count"),
        ("kv count 2^64-1", B::header(0, u64::MAX).0, "metadata count"),
        ("kv count 2^60", B::header(0, 1 << 60).str("k").u32(4).u32(1).bytes(), "metadata count"),
        ("key length 2^63", B::header(0, 1).u64(1 << 63).u32(4).u32(1).bytes(), "truncated"),
        ("key length 2^64-1", B::header(0, 1).u64(u64::MAX).u32(4).u32(1).bytes(), "truncated"),
        ("string value length 2^63", B::header(0, 1).str("k").u32(8).u64(1 << 63).u64(0).bytes(), "truncated"),
        ("key not UTF-8", B::header(0, 1).u64(2).u8(0xff).u8(0xfe).u32(4).u32(1).bytes(), "UTF-8"),
        ("unknown value type", B::header(0, 1).str("k").u32(13).u32(1).bytes(), "value type 13"),
        ("bool 2", B::header(0, 1).str("k").u32(7).u8(2).bytes(), "bool"),
        (
            "duplicate key",
            B::header(0, 2).str("k").u32(4).u32(1).str("k").u32(4).u32(2).bytes(),
            "duplicate metadata key",
        ),
        ("u8 array count 2^60", B::header(0, 1).str("k").u32(9).u32(0).u64(1 << 60).u8(1).bytes(), "array length"),
        (
            "string array count 2^60",
            B::header(0, 1).str("k").u32(9).u32(8).u64(1 << 60).str("x").bytes(),
            "array length",
        ),
        ("array array count 2^60", B::header(0, 1).str("k").u32(9).u32(9).u64(1 << 60).bytes(), "array length"),
        ("array count 2^64-1", B::header(0, 1).str("k").u32(9).u32(0).u64(u64::MAX).bytes(), "array length"),
        ("array of unknown type", B::header(0, 1).str("k").u32(9).u32(99).u64(0).bytes(), "value type 99"),
        (
            "string in array length 2^63",
            B::header(0, 1).str("k").u32(9).u32(8).u64(1).u64(1 << 63).bytes(),
            "truncated",
        ),
        ("alignment 0", B::header(0, 1).str("general.alignment").u32(4).u32(0).bytes(), "alignment"),
        ("alignment 48", B::header(0, 1).str("general.alignment").u32(4).u32(48).bytes(), "alignment"),
        ("alignment as string", B::header(0, 1).str("general.alignment").u32(8).str("32").bytes(), "alignment"),
        ("n_dims 0", B::header(1, 0).tensor("t", &[], f32, 0).data(64), "dimensions"),
        (
            "n_dims 5",
            {
                let mut b = B::header(1, 0);
                b.tensor("t", &[1; 5], f32, 0);
                b.data(64)
            },
            "dimensions",
        ),
        (
            "n_dims 9",
            {
                let mut b = B::header(1, 0);
                b.tensor("t", &[1; 9], f32, 0);
                b.data(64)
            },
            "dimensions",
        ),
        ("n_dims 2^32-1", B::header(1, 0).str("t").u32(u32::MAX).u64(1).u32(0).u64(0).data(64), "dimensions"),
        ("unknown ggml type", B::header(1, 0).tensor("t", &[4], 99, 0).data(64), "unknown GGML type id 99"),
        ("removed ggml type 4", B::header(1, 0).tensor("t", &[32], 4, 0).data(64), "unknown GGML type id 4"),
        ("offset past the end", B::header(1, 0).tensor("t", &[4], f32, 1 << 20).data(64), "past the end"),
        ("data truncated", B::header(1, 0).tensor("t", &[64], f32, 0).data(255), "past the end"),
        ("offset overflows", B::header(1, 0).tensor("t", &[4], f32, u64::MAX - 31).data(64), "overflow"),
        ("misaligned offset", B::header(1, 0).tensor("t", &[4], f32, 8).data(64), "not aligned"),
        (
            "misaligned for custom alignment",
            B::header(1, 1).str("general.alignment").u32(4).u32(64).tensor("t", &[4], f32, 32).data(256),
            "not aligned",
        ),
        ("size overflows", B::header(1, 0).tensor("t", &[1 << 32, 1 << 32, 1 << 32], f32, 0).data(64), "overflow"),
        ("row not whole blocks", B::header(1, 0).tensor("t", &[33], GgmlType::Q8_0.id(), 0).data(64), "multiple"),
        (
            "duplicate tensor",
            B::header(2, 0).tensor("t", &[4], f32, 0).tensor("t", &[4], f32, 32).data(64),
            "duplicate tensor",
        ),
        (
            "overlapping tensors",
            B::header(2, 0).tensor("a", &[16], f32, 0).tensor("b", &[4], f32, 32).data(96),
            "overlap",
        ),
        ("tensor name length 2^63", B::header(1, 0).u64(1 << 63).u32(1).u64(4).u32(0).u64(0).data(64), "truncated"),
        (
            "tensor infos truncated",
            B::header(2, 0).tensor("a", &[4], f32, 0).str(&"b".repeat(40)).u32(1).bytes(),
            "truncated",
        ),
    ];
    for (what, bytes, expect) in cases {
        let e = parse_err(&bytes);
        assert!(e.contains(expect), "{what}: error {e:?} does not mention {expect:?}");
    }
}

#[test]
fn nested_array_bombs_fail_fast() {
    // Deeper than any real file: refused by depth, before the declared counts matter.
    let mut b = B::header(0, 1);
    b.str("k").u32(ValueType::Array as u32);
    for _ in 0..10_000 {
        b.u32(ValueType::Array as u32).u64(1);
    }
    b.u32(0).u64(1).u8(0);
    assert!(parse_err(&b.0).contains("nested too deeply"));

    // Wide: each level claims 2^40 items; the count check stops it at the first level.
    let mut b = B::header(0, 1);
    b.str("k").u32(ValueType::Array as u32);
    for _ in 0..6 {
        b.u32(ValueType::Array as u32).u64(1 << 40);
    }
    b.u32(0).u64(1 << 40);
    b.0.resize(b.0.len() + 4096, 0);
    assert!(parse_err(&b.0).contains("array length"));

    // Many empty arrays: legal in shape, but the bytes run out before the count does.
    let mut b = B::header(0, 1);
    b.str("k").u32(ValueType::Array as u32).u32(ValueType::Array as u32).u64(1000);
    for _ in 0..999 {
        b.u32(ValueType::U8 as u32).u64(0);
    }
    assert!(parse_err(&b.0).contains("array length"));
    b.u32(ValueType::U8 as u32).u64(0);
    let h = parse(&b.0).unwrap();
    assert_eq!(h.get("k").and_then(Value::as_array).map(Array::len), Some(1000));
}

#[test]
fn every_truncation_is_an_error() {
    let (_, bytes) = sample();
    let h = parse(&bytes).unwrap();
    let data_end = h.tensors.iter().map(|t| h.data_offset + t.offset + t.size).max().unwrap() as usize;
    assert!(data_end > bytes.len() - 32);
    // Every cut: inside the fixed header, the metadata, the tensor infos, the padding and the
    // data. Only the padding after the last tensor may go missing.
    for cut in 0..data_end {
        assert!(parse(&bytes[..cut]).is_err(), "cut at {cut} of {} parsed", bytes.len());
    }
    for cut in data_end..=bytes.len() {
        assert!(parse(&bytes[..cut]).is_ok());
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    let (_, bytes) = sample();
    let h = parse(&bytes).unwrap();
    let header_len = h.data_offset as usize;
    let mut n_err = 0;
    for pos in 0..header_len {
        for v in [0x00u8, 0x01, 0x7f, 0x80, 0xff] {
            let mut b = bytes.clone();
            if b[pos] == v {
                continue;
            }
            b[pos] = v;
            // Either outcome is fine; reaching the next iteration means no panic.
            if parse(&b).is_err() {
                n_err += 1;
            }
        }
    }
    assert!(n_err > header_len, "corruption was hardly ever detected ({n_err})");
    // Whole 8-byte fields overwritten with extreme values, at every 4-byte position.
    for pos in (0..header_len - 8).step_by(4) {
        for v in [u64::MAX, 1 << 63, 1 << 60, 1 << 32, u32::MAX as u64] {
            let mut b = bytes.clone();
            b[pos..pos + 8].copy_from_slice(&v.to_le_bytes());
            let _ = parse(&b);
        }
    }
}

#[test]
fn header_memory_is_capped() {
    // Arrays cost their size: 9 MiB of u8 array on disk (288 MiB as one `Value` per element,
    // once refused) takes 9 MiB.
    let n = 9u64 << 20;
    let mut b = B::header(0, 1);
    b.str("k").u32(ValueType::Array as u32).u32(ValueType::U8 as u32).u64(n);
    b.0.resize(b.0.len() + n as usize, 0);
    assert_eq!(parse(&b.0).unwrap().get("k").and_then(Value::as_array).map(Array::len), Some(n as usize));
    // What memory takes beyond the bytes on disk is capped: empty strings (8 bytes on disk,
    // a 24-byte `String`) and empty nested arrays (12 bytes, a 32-byte `Array`), against a
    // 1 MiB budget; the real one (256 MiB) works the same way.
    let n = 100_000u64;
    for (et, item) in
        [(ValueType::String, &[0u8; 8][..]), (ValueType::Array, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..])]
    {
        let mut b = B::header(0, 1);
        b.str("k").u32(ValueType::Array as u32).u32(et as u32).u64(n);
        for _ in 0..n {
            b.0.extend_from_slice(item);
        }
        let e = GgufHeader::parse_with(&b.0, Path::new("test.gguf"), None, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("MiB of memory"), "{et:?}: {e}");
        assert!(GgufHeader::parse_with(&b.0, Path::new("test.gguf"), None, 4 << 20).is_ok(), "{et:?}");
    }
}
