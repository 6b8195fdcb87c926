//! The GGML block codecs (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ4_NL) against
//! llama.cpp, byte for byte.
//!
//! - Always: against reference vectors made with llama.cpp's own C code and committed in
//!   tests/fixtures/codec/ (see its README.md and tools/gen_codec_vectors.py):
//!   `ggml_quantize_chunk` (NULL imatrix) of fixed inputs, which our quantizer must reproduce
//!   byte for byte, and the SHA-256 of ggml's `to_float` of those bytes, which our dequantizer
//!   must reproduce bit for bit. The inputs are synthetic edge-case rows (zeros, constants,
//!   outliers, tiny, huge, subnormal and f16-limit scales, sign patterns, exact rounding ties),
//!   512 random rows of mixed distributions and scales, and 256 rows of the tiny model's
//!   layer-0 down_proj; for the dequantizers also blocks of random bytes (finite f16 scales),
//!   which reach bit patterns the quantizers rarely or never write.
//! - Always: against live gguf-py (tests/py/requirements.txt), for the quantizers it has
//!   (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0) and the dequantizers of all eleven types (on the committed
//!   llama.cpp bytes and random blocks).
//! - With QFORGE_LLAMA_CPP=1: against live llama.cpp too (libggml-base from the
//!   llama-cpp-python package, which must then be installed), on the committed inputs plus
//!   every weight of the tiny model and 4096 more random rows, and its dequantizers on the
//!   committed random blocks. Without it the test prints that it was not requested: the
//!   committed vectors are the llama.cpp check.
//!
//! tests/py/codec_reference.py runs the Python references.

use crate::common;

use std::path::{Path, PathBuf};

use qforge::formats::safetensors::SafetensorsFile;
use qforge::quant;
use qforge::GgmlType::{self, *};
use serde_json::Value;

const TYPES: &[GgmlType] = &[Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL];
const GGUF_QUANTIZES: &[GgmlType] = &[Q4_0, Q4_1, Q5_0, Q5_1, Q8_0];
const DOWN_PROJ: &str = "model.layers.0.mlp.down_proj.weight";

struct DataSet {
    name: String,
    cols: usize,
    data: Vec<f32>,
    /// Names of the rows, where they have some (the synthetic edge cases).
    row_names: Option<Vec<String>>,
}

impl DataSet {
    fn rows(&self) -> usize {
        self.data.len() / self.cols
    }
}

// ---------------------------------------------------------------- the committed vectors

fn codec_dir() -> PathBuf {
    common::root().join("tests/fixtures/codec")
}

/// One type's committed llama.cpp output for one data set.
struct Reference {
    bytes: Vec<u8>,
    dequantized_sha256: String,
}

struct Committed {
    sets: Vec<DataSet>,
    /// `refs[type index][set index]`, types in `TYPES` order.
    refs: Vec<Vec<Reference>>,
    /// Per type, blocks of random bytes (finite f16 scales) that are only dequantized: they
    /// reach bit patterns the quantizers rarely or never write (Q8_0's −128, every scale and
    /// high-bit pattern of the K-quants).
    random_blocks: Vec<Reference>,
    /// How many weights `random_blocks` hold, per type.
    random_block_weights: usize,
    /// Which llama.cpp made them, for messages.
    made_with: String,
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("MANIFEST.json: {key} missing or not a string"))
}

fn usize_of(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("MANIFEST.json: {key} missing or not a number")) as usize
}

/// Load tests/fixtures/codec/, checking every file against the manifest's SHA-256 (a file
/// damaged in transit, stored as a Git LFS pointer or given CRLF line endings fails here,
/// not as a codec mismatch) and every input set against the SHA-256 of the floats that
/// llama.cpp was given.
fn committed() -> Committed {
    let dir = codec_dir();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("MANIFEST.json")).expect("tests/fixtures/codec/MANIFEST.json"))
            .expect("MANIFEST.json is not JSON");
    let file = |name: &str| -> Vec<u8> {
        let bytes = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("tests/fixtures/codec/{name}: {e}"));
        let want = &manifest["files"][name];
        assert_eq!(bytes.len(), usize_of(want, "bytes"), "tests/fixtures/codec/{name}: size");
        assert_eq!(sha256_hex(&bytes), str_of(want, "sha256"), "tests/fixtures/codec/{name}: SHA-256");
        bytes
    };
    let inputs = f32_from_le(&file("inputs.f32"));

    let model = SafetensorsFile::open(&common::tiny().join("model.safetensors")).expect("tiny model");
    let mut sets = Vec::new();
    for s in manifest["sets"].as_array().expect("MANIFEST.json: sets") {
        let (name, rows, cols) = (str_of(s, "name"), usize_of(s, "rows"), usize_of(s, "cols"));
        let data = match str_of(s, "source") {
            "inputs.f32" => {
                let off = usize_of(s, "offset_weights");
                inputs[off..off + rows * cols].to_vec()
            }
            src if src.ends_with(&format!(":{DOWN_PROJ}")) => {
                let (shape, data) = decode_tensor(&model, DOWN_PROJ);
                assert_eq!(shape, [rows, cols], "{DOWN_PROJ}: shape");
                data
            }
            other => panic!("MANIFEST.json: unknown source {other}"),
        };
        assert_eq!(
            sha256_hex(&f32_to_le(&data)),
            str_of(s, "sha256"),
            "input set {name}: not the floats the vectors were made from"
        );
        let row_names = s["row_names"].as_array().map(|a| a.iter().map(|n| n.as_str().unwrap().to_string()).collect());
        sets.push(DataSet { name: name.to_string(), cols, data, row_names });
    }

    let types = manifest["types"].as_array().expect("MANIFEST.json: types");
    let listed: Vec<&str> = types.iter().map(|t| str_of(t, "type")).collect();
    let ours: Vec<&str> = TYPES.iter().map(|t| t.name()).collect();
    assert_eq!(listed, ours, "MANIFEST.json: the types");
    let raw_name = str_of(&manifest["random_blocks"], "name");
    let raw_weights = usize_of(&manifest["random_blocks"], "weights_per_type");
    let (mut refs, mut random_blocks) = (Vec::new(), Vec::new());
    for (&t, entry) in TYPES.iter().zip(types) {
        assert_eq!(
            (usize_of(entry, "block_weights"), usize_of(entry, "block_bytes")),
            (t.block_size(), t.block_bytes()),
            "{t}: block layout"
        );
        let bytes = file(str_of(entry, "file"));
        let mut at = 0;
        let mut per_set = Vec::new();
        for set in &sets {
            let n = set.data.len() / t.block_size() * t.block_bytes();
            per_set.push(Reference {
                bytes: bytes[at..at + n].to_vec(),
                dequantized_sha256: str_of(&entry["dequantized_sha256"], &set.name).to_string(),
            });
            at += n;
        }
        let n = raw_weights / t.block_size() * t.block_bytes();
        random_blocks.push(Reference {
            bytes: bytes[at..at + n].to_vec(),
            dequantized_sha256: str_of(&entry["dequantized_sha256"], raw_name).to_string(),
        });
        at += n;
        assert_eq!(at, bytes.len(), "{t}: {} holds more than the sets and the random blocks", str_of(entry, "file"));
        refs.push(per_set);
    }
    let v = &manifest["versions"];
    let made_with = format!(
        "llama-cpp-python {} (ggml {} {})",
        v["llama_cpp_python"].as_str().unwrap_or("?"),
        v["ggml_version"].as_str().unwrap_or("?"),
        v["ggml_commit"].as_str().unwrap_or("?")
    );
    Committed { sets, refs, random_blocks, random_block_weights: raw_weights, made_with }
}

// ---------------------------------------------------------------- helpers

fn decode_tensor(st: &SafetensorsFile, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
    let n: usize = t.shape.iter().product();
    let data = quant::decode(t.ggml_type(name).unwrap(), t.data, n).unwrap();
    (t.shape.to_vec(), data)
}

/// What the manifest's dequantized SHA-256 are of: float32 LE with every NaN written as
/// 0x7FC00000. Blocks whose f16 scale overflowed decode 0·inf, and that NaN's sign is the
/// CPU's (x86-64 gives 0xFFC00000, AArch64 0x7FC00000), not the codec's; every other value
/// counts bit for bit. (The live llama.cpp check compares NaN bits too.)
fn dequantized_sha256(data: &[f32]) -> String {
    let bytes: Vec<u8> =
        data.iter().flat_map(|v| if v.is_nan() { 0x7FC0_0000u32 } else { v.to_bits() }.to_le_bytes()).collect();
    sha256_hex(&bytes)
}

fn f32_to_le(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f32_from_le(bytes: &[u8]) -> Vec<f32> {
    assert_eq!(bytes.len() % 4, 0);
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn type_list(types: &[GgmlType]) -> String {
    types.iter().map(|t| t.name()).collect::<Vec<_>>().join(",")
}

/// SHA-256 (FIPS 180-4), hex; small enough to carry here rather than add a dependency.
/// `committed()` checks it against the manifest's hashes made by Python's hashlib.
fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut tail = data[data.len() / 64 * 64..].to_vec();
    tail.push(0x80);
    while tail.len() % 64 != 56 {
        tail.push(0);
    }
    tail.extend_from_slice(&(data.len() as u64 * 8).to_be_bytes());
    for block in data.chunks_exact(64).chain(tail.chunks_exact(64)) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            (hh, g, f, e, d, c, b, a) = (g, f, e, d.wrapping_add(t1), c, b, a, t1.wrapping_add(t2));
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[test]
fn sha256_known_answers() {
    assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(
        sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
    // Lengths around the padding boundaries (55, 64 and 200 bytes 0, 1, 2, ...).
    let seq = |n: usize| (0..n).map(|i| i as u8).collect::<Vec<u8>>();
    assert_eq!(sha256_hex(&seq(55)), "463eb28e72f82e0a96c0a4cc53690c571281131f672aa229e0d45ae59b598b59");
    assert_eq!(sha256_hex(&seq(64)), "fdeab9acf3710362bd2658cdc9a29e8f9c757fcf9811603a8c447cd1d9151108");
    assert_eq!(sha256_hex(&seq(200)), "1901da1c9f699b48f6b2636e65cbf73abf99d0441ef67f5c540a42f7051dec6f");
}

/// What went wrong for one type on one data set, if anything: the blocks that differ, with
/// their rows (and the rows' names) and the bytes of the first few.
fn compare_bytes(t: GgmlType, set: &DataSet, ours: &[u8], theirs: &[u8]) -> Option<String> {
    assert_eq!(ours.len(), theirs.len(), "{t} on {}: sizes differ", set.name);
    let bb = t.block_bytes();
    let bad: Vec<usize> =
        ours.chunks(bb).zip(theirs.chunks(bb)).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i).collect();
    if bad.is_empty() {
        return None;
    }
    let blocks_per_row = set.cols / t.block_size();
    let mut msg = format!("{t} on {}: {} of {} blocks differ", set.name, bad.len(), ours.len() / bb);
    // The size of the damage: the largest difference between the two decodings.
    let (a, b) = (quant::decode(t, ours, set.data.len()).unwrap(), quant::decode(t, theirs, set.data.len()).unwrap());
    let max_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).filter(|d| !d.is_nan()).fold(0f32, f32::max);
    msg += &format!("; max |decoded difference| {max_diff:e}");
    for &i in bad.iter().take(4) {
        let row = i / blocks_per_row;
        let what = set.row_names.as_ref().map(|n| format!(" ({})", n[row])).unwrap_or_default();
        msg += &format!(
            "\n  block {i} (row {row}{what}, block {} of the row):\n    ours   {:02x?}\n    theirs {:02x?}",
            i % blocks_per_row,
            &ours[i * bb..(i + 1) * bb],
            &theirs[i * bb..(i + 1) * bb]
        );
    }
    Some(msg)
}

/// The first weight whose bits differ, if any. With `nan_any`, any NaN matches any NaN (numpy
/// and C can give 0·inf different signs).
fn first_bit_difference(ours: &[f32], theirs: &[f32], nan_any: bool) -> Option<usize> {
    assert_eq!(ours.len(), theirs.len());
    ours.iter().zip(theirs).position(|(a, b)| a.to_bits() != b.to_bits() && !(nan_any && a.is_nan() && b.is_nan()))
}

fn describe_weight(set: &DataSet, i: usize) -> String {
    let row = i / set.cols;
    let what = set.row_names.as_ref().map(|n| format!(" ({})", n[row])).unwrap_or_default();
    format!("weight {i} (row {row}{what})")
}

/// Run the Python reference `imp` ("gguf" or "ggml") to quantize `set` for `types`; returns
/// the bytes per type.
fn python_quantize(dir: &Path, set: &DataSet, types: &[GgmlType], imp: &str) -> Vec<Vec<u8>> {
    let input = dir.join(format!("{}.f32", set.name));
    if !input.exists() {
        std::fs::write(&input, f32_to_le(&set.data)).unwrap();
    }
    let template = dir.join(format!("{}.{{type}}.{imp}.bin", set.name));
    common::python(
        "codec_reference.py",
        &[&"quantize", &type_list(types), &input, &template, &"--cols", &set.cols.to_string(), &"--impl", &imp],
    );
    types.iter().map(|t| std::fs::read(dir.join(format!("{}.{}.{imp}.bin", set.name, t.name()))).unwrap()).collect()
}

/// Run the Python reference `imp` to dequantize `bytes[k]` (of type `TYPES[k]`); returns the
/// floats per type.
fn python_dequantize(dir: &Path, tag: &str, bytes: &[&[u8]], imp: &str) -> Vec<Vec<f32>> {
    for (&t, b) in TYPES.iter().zip(bytes) {
        std::fs::write(dir.join(format!("{tag}.{}.q.bin", t.name())), b).unwrap();
    }
    let input = dir.join(format!("{tag}.{{type}}.q.bin"));
    let output = dir.join(format!("{tag}.{{type}}.{imp}.f32"));
    common::python("codec_reference.py", &[&"dequantize", &type_list(TYPES), &input, &output, &"--impl", &imp]);
    TYPES
        .iter()
        .map(|t| f32_from_le(&std::fs::read(dir.join(format!("{tag}.{}.{imp}.f32", t.name()))).unwrap()))
        .collect()
}

// ---------------------------------------------------------------- against the committed vectors

#[test]
fn quantized_bytes_match_committed_llama_cpp_vectors() {
    let c = committed();
    let mut failures = Vec::new();
    for (k, &t) in TYPES.iter().enumerate() {
        for (set, r) in c.sets.iter().zip(&c.refs[k]) {
            let ours = quant::encode(t, &set.data).unwrap();
            if let Some(m) = compare_bytes(t, set, &ours, &r.bytes) {
                failures.push(m);
            }
        }
    }
    let rows: usize = c.sets.iter().map(|s| s.rows()).sum();
    assert!(
        failures.is_empty(),
        "{} mismatches with the llama.cpp vectors in tests/fixtures/codec ({}):\n{}",
        failures.len(),
        c.made_with,
        failures.join("\n")
    );
    println!("all {} types byte-identical to llama.cpp ({}) on {rows} committed rows", TYPES.len(), c.made_with);
}

/// Our decoder on llama.cpp's bytes (and the random blocks) against llama.cpp's decoding of
/// them, bit for bit except NaN's sign (see `dequantized_sha256`), through the SHA-256.
#[test]
fn dequantized_values_match_committed_llama_cpp_hashes() {
    let c = committed();
    let mut failures = Vec::new();
    for (k, &t) in TYPES.iter().enumerate() {
        for (set, r) in c.sets.iter().zip(&c.refs[k]) {
            let ours = quant::decode(t, &r.bytes, set.data.len()).unwrap();
            let got = dequantized_sha256(&ours);
            if got != r.dequantized_sha256 {
                failures.push(format!(
                    "{t} on {}: SHA-256 of our decoding {got}, llama.cpp's {} (the gguf-py test shows where)",
                    set.name, r.dequantized_sha256
                ));
            }
        }
        let r = &c.random_blocks[k];
        let got = dequantized_sha256(&quant::decode(t, &r.bytes, c.random_block_weights).unwrap());
        if got != r.dequantized_sha256 {
            failures.push(format!(
                "{t} on the random blocks: SHA-256 of our decoding {got}, llama.cpp's {} (the gguf-py test shows where)",
                r.dequantized_sha256
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------- against live gguf-py

/// gguf-py's quantizers on the committed inputs, and its dequantizers on llama.cpp's committed
/// bytes for all types.
#[test]
fn codecs_match_live_gguf_py() {
    let c = committed();
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for (s, set) in c.sets.iter().enumerate() {
        let gguf = python_quantize(dir.path(), set, GGUF_QUANTIZES, "gguf");
        for (j, &t) in GGUF_QUANTIZES.iter().enumerate() {
            let k = TYPES.iter().position(|&x| x == t).unwrap();
            let ggml = &c.refs[k][s].bytes;
            let ours = quant::encode(t, &set.data).unwrap();
            // gguf-py is a second opinion: where it disagrees with llama.cpp itself we follow
            // llama.cpp and only note the block (gguf-py picks the signed max with numpy's
            // argmax, so an all −0.0 block gets d = +0 where ggml stores −0).
            let bb = t.block_bytes();
            let mut masked = gguf[j].clone();
            let mut deviations = 0;
            for b in 0..ours.len() / bb {
                let r = b * bb..(b + 1) * bb;
                if gguf[j][r.clone()] != ours[r.clone()] && ours[r.clone()] == ggml[r.clone()] {
                    masked[r.clone()].copy_from_slice(&ours[r]);
                    deviations += 1;
                }
            }
            match compare_bytes(t, set, &ours, &masked) {
                Some(m) => failures.push(format!("quantize vs gguf-py: {m}")),
                None if deviations == 0 => {}
                None => report.push(format!(
                    "{t} on {}: identical to gguf-py except {deviations} blocks where gguf-py differs from \
                     llama.cpp (we match llama.cpp)",
                    set.name
                )),
            }
        }
        let committed_bytes: Vec<&[u8]> = c.refs.iter().map(|r| &r[s].bytes[..]).collect();
        let theirs = python_dequantize(dir.path(), &set.name, &committed_bytes, "gguf");
        for (k, &t) in TYPES.iter().enumerate() {
            let ours = quant::decode(t, committed_bytes[k], set.data.len()).unwrap();
            if let Some(i) = first_bit_difference(&ours, &theirs[k], true) {
                failures.push(format!(
                    "dequantize vs gguf-py: {t} on {}: {}: ours {:e} ({:#010x}) gguf-py {:e} ({:#010x})",
                    set.name,
                    describe_weight(set, i),
                    ours[i],
                    ours[i].to_bits(),
                    theirs[k][i],
                    theirs[k][i].to_bits()
                ));
            }
        }
    }
    let raw = DataSet { name: "random_blocks".into(), cols: 256, data: Vec::new(), row_names: None };
    let raw_bytes: Vec<&[u8]> = c.random_blocks.iter().map(|r| &r.bytes[..]).collect();
    let theirs = python_dequantize(dir.path(), &raw.name, &raw_bytes, "gguf");
    for (k, &t) in TYPES.iter().enumerate() {
        let ours = quant::decode(t, raw_bytes[k], c.random_block_weights).unwrap();
        if let Some(i) = first_bit_difference(&ours, &theirs[k], true) {
            failures.push(format!(
                "dequantize vs gguf-py: {t} on the random blocks: {}: ours {:e} ({:#010x}) gguf-py {:e} ({:#010x})",
                describe_weight(&raw, i),
                ours[i],
                ours[i].to_bits(),
                theirs[k][i],
                theirs[k][i].to_bits()
            ));
        }
    }
    if !report.is_empty() {
        println!("{}", report.join("\n"));
    }
    assert!(failures.is_empty(), "{} mismatches with gguf-py:\n{}", failures.len(), failures.join("\n"));
}

// ---------------------------------------------------------------- against live llama.cpp

/// xorshift32; deterministic and good enough to make varied rows.
struct Rng(u32);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        (self.0 >> 8) as f32 / (1u32 << 24) as f32
    }

    /// Roughly normal (sum of 4 uniforms, centred and scaled to unit variance).
    fn normal(&mut self) -> f32 {
        ((self.uniform() + self.uniform() + self.uniform() + self.uniform()) - 2.0) * 3f32.sqrt()
    }
}

/// Volume for the live check: 4096 rows of assorted random distributions and scales.
fn random_rows_4096() -> DataSet {
    let mut r = Rng(0x0BAD_5EED);
    let mut data = Vec::with_capacity(4096 * 256);
    for row in 0..4096 {
        let scale = 10f32.powf(6.0 * r.uniform() - 4.0);
        let shift = if row % 5 == 0 { scale * (r.uniform() - 0.5) * 4.0 } else { 0.0 };
        for _ in 0..256 {
            let v = match row % 4 {
                0 => r.normal(),
                1 => 2.0 * r.uniform() - 1.0,
                2 => {
                    let n = r.normal();
                    n * n.abs()
                }
                _ => (r.normal() * 4.0).round() / 4.0,
            };
            data.push(scale * v + shift);
        }
    }
    DataSet { name: "random_4096".into(), cols: 256, data, row_names: None }
}

/// Every 2-D weight of the tiny model, cut into rows of 256 (the codecs work block by block,
/// so the row length only matters for the block count).
fn all_weights() -> DataSet {
    let st = SafetensorsFile::open(&common::tiny().join("model.safetensors")).expect("tiny model");
    let mut names: Vec<&str> = st.names().collect();
    names.sort();
    let mut data = Vec::new();
    for name in names {
        let (shape, d) = decode_tensor(&st, name);
        if shape.len() == 2 {
            data.extend(d);
        }
    }
    DataSet { name: "all_weights".into(), cols: 256, data, row_names: None }
}

/// Whether QFORGE_LLAMA_CPP asks for the live llama.cpp check.
fn llama_cpp_requested() -> bool {
    match std::env::var("QFORGE_LLAMA_CPP").as_deref() {
        Err(_) | Ok("") | Ok("0") => false,
        Ok("1") => true,
        Ok(other) => panic!("QFORGE_LLAMA_CPP={other}: expected 1 (run the live llama.cpp check) or 0/unset"),
    }
}

/// llama.cpp itself (ggml_quantize_chunk and to_float from libggml-base, via
/// llama-cpp-python), on the committed inputs and more. Only with QFORGE_LLAMA_CPP=1; then
/// llama_cpp must be importable, and a missing one fails the test.
#[test]
fn codecs_match_live_llama_cpp() {
    if !llama_cpp_requested() {
        println!(
            "live llama.cpp check not requested (set QFORGE_LLAMA_CPP=1 with llama-cpp-python installed); \
             the committed llama.cpp vectors in tests/fixtures/codec are the check"
        );
        return;
    }
    let c = committed();
    let dir = tempfile::tempdir().unwrap();
    let info = common::python("codec_reference.py", &[&"info"]);
    println!("{}", info.trim());
    let mut sets = c.sets.iter().collect::<Vec<_>>();
    let extra = [all_weights(), random_rows_4096()];
    sets.extend(&extra);
    let mut failures = Vec::new();
    for (s, set) in sets.iter().enumerate() {
        let ggml = python_quantize(dir.path(), set, TYPES, "ggml");
        let mut ours_all = Vec::new();
        for (k, &t) in TYPES.iter().enumerate() {
            let ours = quant::encode(t, &set.data).unwrap();
            if let Some(m) = compare_bytes(t, set, &ours, &ggml[k]) {
                failures.push(format!("quantize vs live llama.cpp: {m}"));
            }
            // The library in use against the one that made the committed vectors.
            if let Some(r) = c.refs.get(k).and_then(|r| r.get(s)).filter(|_| s < c.sets.len()) {
                if r.bytes != ggml[k] {
                    failures.push(format!(
                        "{t} on {}: live llama.cpp differs from the committed vectors (made with {}); \
                         regenerate them with tools/gen_codec_vectors.py if llama.cpp changed on purpose",
                        set.name, c.made_with
                    ));
                }
            }
            ours_all.push(ours);
        }
        let ours_refs: Vec<&[u8]> = ours_all.iter().map(|b| &b[..]).collect();
        let theirs = python_dequantize(dir.path(), &set.name, &ours_refs, "ggml");
        for (k, &t) in TYPES.iter().enumerate() {
            let ours = quant::decode(t, &ours_all[k], set.data.len()).unwrap();
            if let Some(i) = first_bit_difference(&ours, &theirs[k], false) {
                failures.push(format!(
                    "dequantize vs live llama.cpp: {t} on {}: {}: ours {:e} ({:#010x}) llama.cpp {:e} ({:#010x})",
                    set.name,
                    describe_weight(set, i),
                    ours[i],
                    ours[i].to_bits(),
                    theirs[k][i],
                    theirs[k][i].to_bits()
                ));
            }
        }
    }
    let raw = DataSet { name: "random_blocks".into(), cols: 256, data: Vec::new(), row_names: None };
    let raw_bytes: Vec<&[u8]> = c.random_blocks.iter().map(|r| &r.bytes[..]).collect();
    let theirs = python_dequantize(dir.path(), &raw.name, &raw_bytes, "ggml");
    for (k, &t) in TYPES.iter().enumerate() {
        let ours = quant::decode(t, raw_bytes[k], c.random_block_weights).unwrap();
        if let Some(i) = first_bit_difference(&ours, &theirs[k], false) {
            failures.push(format!(
                "dequantize vs live llama.cpp: {t} on the random blocks: {}: ours {:e} ({:#010x}) llama.cpp {:e} ({:#010x})",
                describe_weight(&raw, i),
                ours[i],
                ours[i].to_bits(),
                theirs[k][i],
                theirs[k][i].to_bits()
            ));
        }
    }
    let rows: usize = sets.iter().map(|s| s.rows()).sum();
    assert!(failures.is_empty(), "{} mismatches with live llama.cpp:\n{}", failures.len(), failures.join("\n"));
    println!("all {} types identical to live llama.cpp on {rows} rows", TYPES.len());
}

// ---------------------------------------------------------------- importance-weighted (imatrix)
//
// `quant::weighted::encode_weighted` against llama.cpp's `ggml_quantize_chunk` with an
// importance matrix (`quantize_row_*_impl` with quant_weights), byte for byte: committed
// vectors in tests/fixtures/codec_imatrix (tools/gen_imatrix_vectors.py), made from the same
// input rows as above with four importance vectors (log-normal, sparse with zero runs and huge
// values, and the real importance of the tiny model's layer-0 down_proj on calib.txt).

const WEIGHTED_TYPES: &[GgmlType] = &[Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL];

struct WeightedSet {
    set: DataSet,
    weights: Vec<f32>,
}

struct CommittedWeighted {
    sets: Vec<WeightedSet>,
    /// `refs[type index][set index]`, types in `WEIGHTED_TYPES` order.
    refs: Vec<Vec<Vec<u8>>>,
    made_with: String,
}

fn committed_weighted() -> CommittedWeighted {
    let dir = common::root().join("tests/fixtures/codec_imatrix");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.join("MANIFEST.json")).expect("tests/fixtures/codec_imatrix/MANIFEST.json"),
    )
    .expect("MANIFEST.json is not JSON");
    let file = |name: &str| -> Vec<u8> {
        let bytes =
            std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("tests/fixtures/codec_imatrix/{name}: {e}"));
        let want = &manifest["files"][name];
        assert_eq!(bytes.len(), usize_of(want, "bytes"), "tests/fixtures/codec_imatrix/{name}: size");
        assert_eq!(sha256_hex(&bytes), str_of(want, "sha256"), "tests/fixtures/codec_imatrix/{name}: SHA-256");
        bytes
    };
    let all_weights = f32_from_le(&file("weights.f32"));
    let inputs = committed().sets;
    let mut sets = Vec::new();
    for s in manifest["sets"].as_array().expect("MANIFEST.json: sets") {
        let (name, rows, cols) = (str_of(s, "name"), usize_of(s, "rows"), usize_of(s, "cols"));
        let src = str_of(s, "source").strip_prefix("codec:").expect("source codec:<set>");
        let input = inputs.iter().find(|i| i.name == src).unwrap_or_else(|| panic!("no input set {src}"));
        assert_eq!(input.cols, cols, "{name}: columns");
        let first = usize_of(s, "first_row");
        let data = input.data[first * cols..(first + rows) * cols].to_vec();
        assert_eq!(
            sha256_hex(&f32_to_le(&data)),
            str_of(s, "sha256"),
            "{name}: not the rows the vectors were made from"
        );
        let off = usize_of(s, "weights_offset");
        let weights = all_weights[off..off + cols].to_vec();
        assert_eq!(sha256_hex(&f32_to_le(&weights)), str_of(s, "weights_sha256"), "{name}: weights");
        let row_names = input.row_names.as_ref().map(|n| n[first..first + rows].to_vec());
        sets.push(WeightedSet { set: DataSet { name: name.to_string(), cols, data, row_names }, weights });
    }
    let types = manifest["types"].as_array().expect("MANIFEST.json: types");
    let listed: Vec<&str> = types.iter().map(|t| str_of(t, "type")).collect();
    assert_eq!(listed, WEIGHTED_TYPES.iter().map(|t| t.name()).collect::<Vec<_>>(), "MANIFEST.json: the types");
    let mut refs = Vec::new();
    for (&t, entry) in WEIGHTED_TYPES.iter().zip(types) {
        let bytes = file(str_of(entry, "file"));
        let mut at = 0;
        let mut per_set = Vec::new();
        for ws in &sets {
            let n = ws.set.data.len() / t.block_size() * t.block_bytes();
            per_set.push(bytes[at..at + n].to_vec());
            at += n;
        }
        assert_eq!(at, bytes.len(), "{t}: {} holds more than the sets", str_of(entry, "file"));
        refs.push(per_set);
    }
    let v = &manifest["versions"];
    let made_with = format!(
        "llama-cpp-python {} (ggml {} {})",
        v["llama_cpp_python"].as_str().unwrap_or("?"),
        v["ggml_version"].as_str().unwrap_or("?"),
        v["ggml_commit"].as_str().unwrap_or("?")
    );
    CommittedWeighted { sets, refs, made_with }
}

#[test]
fn weighted_bytes_match_committed_llama_cpp_vectors() {
    let c = committed_weighted();
    let mut failures = Vec::new();
    let (mut blocks, mut same) = (0usize, 0usize);
    for (k, &t) in WEIGHTED_TYPES.iter().enumerate() {
        for (ws, theirs) in c.sets.iter().zip(&c.refs[k]) {
            let ours = quant::weighted::encode_weighted(t, &ws.set.data, ws.set.cols, &ws.weights).unwrap();
            let bb = t.block_bytes();
            blocks += ours.len() / bb;
            same += ours.chunks(bb).zip(theirs.chunks(bb)).filter(|(a, b)| a == b).count();
            if let Some(m) = compare_bytes(t, &ws.set, &ours, theirs) {
                failures.push(m);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches with the weighted llama.cpp vectors in tests/fixtures/codec_imatrix ({}); {same} of \
         {blocks} blocks identical:\n{}",
        failures.len(),
        c.made_with,
        failures.join("\n")
    );
    println!(
        "all {} weighted types byte-identical to llama.cpp ({}): {blocks} blocks in {} sets",
        WEIGHTED_TYPES.len(),
        c.made_with,
        c.sets.len()
    );
}

/// llama.cpp ignores the importance for Q8_0 (the generator checks it on its side).
#[test]
fn weighted_q8_0_is_the_plain_codec() {
    let c = committed_weighted();
    for ws in &c.sets {
        let plain = quant::encode(Q8_0, &ws.set.data).unwrap();
        assert_eq!(quant::weighted::encode_weighted(Q8_0, &ws.set.data, ws.set.cols, &ws.weights).unwrap(), plain);
    }
}

/// With QFORGE_LLAMA_CPP=1: live llama.cpp on every matrix of the tiny model (log-normal
/// importance per matrix) and 4096 more random rows.
#[test]
fn weighted_codecs_match_live_llama_cpp() {
    if !llama_cpp_requested() {
        println!("live llama.cpp check not requested (QFORGE_LLAMA_CPP=1); tests/fixtures/codec_imatrix is the check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let st = SafetensorsFile::open(&common::tiny().join("model.safetensors")).expect("tiny model");
    let mut names: Vec<&str> = st.names().collect();
    names.sort();
    let mut sets = Vec::new();
    for name in names {
        let (shape, data) = decode_tensor(&st, name);
        if shape.len() == 2 {
            sets.push(DataSet { name: name.replace('.', "_"), cols: shape[1], data, row_names: None });
        }
    }
    sets.push(random_rows_4096());
    let mut r = Rng(0x5EED_1A7A);
    let mut failures = Vec::new();
    let mut rows = 0;
    for set in &sets {
        let w: Vec<f32> = (0..set.cols).map(|_| (1.5 * r.normal()).exp()).collect();
        let wpath = dir.path().join(format!("{}.imatrix.f32", set.name));
        std::fs::write(&wpath, f32_to_le(&w)).unwrap();
        let input = dir.path().join(format!("{}.f32", set.name));
        std::fs::write(&input, f32_to_le(&set.data)).unwrap();
        let template = dir.path().join(format!("{}.{{type}}.w.bin", set.name));
        common::python(
            "codec_reference.py",
            &[
                &"quantize",
                &type_list(WEIGHTED_TYPES),
                &input,
                &template,
                &"--cols",
                &set.cols.to_string(),
                &"--impl",
                &"ggml",
                &"--imatrix",
                &wpath,
            ],
        );
        for &t in WEIGHTED_TYPES {
            let theirs = std::fs::read(dir.path().join(format!("{}.{}.w.bin", set.name, t.name()))).unwrap();
            let ours = quant::weighted::encode_weighted(t, &set.data, set.cols, &w).unwrap();
            if let Some(m) = compare_bytes(t, set, &ours, &theirs) {
                failures.push(m);
            }
        }
        rows += set.rows();
    }
    assert!(failures.is_empty(), "{} mismatches with live llama.cpp:\n{}", failures.len(), failures.join("\n"));
    println!("all {} weighted types identical to live llama.cpp on {rows} rows", WEIGHTED_TYPES.len());
}
