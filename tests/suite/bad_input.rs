//! Hostile and broken inputs, unwritable outputs and signals. Every failure must be one clean
//! `qforge: error:` line with exit code 1 (no panic), and must leave nothing behind in the
//! output directory: no output file and no temporary file.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{dir_entries, qforge_err, qforge_ok};
use serde_json::{json, Value as Json};
use tempfile::TempDir;

fn tmp() -> TempDir {
    tempfile::tempdir().unwrap()
}

/// Run qforge expecting a clean failure: the `common::qforge_err` checks, plus a single line on
/// stderr and an output directory left exactly as it was.
fn fails(args: &[&dyn AsRef<std::ffi::OsStr>], out_dir: &Path) -> String {
    let before = dir_entries(out_dir);
    let err = qforge_err(args);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "error is not one line:\n{err}");
    assert!(lines[0].starts_with("qforge: error: "), "{err}");
    assert_eq!(dir_entries(out_dir), before, "output directory changed; stderr: {err}");
    err
}

/// `convert INPUT -o OUT/out.gguf` (and `--to hf` for GGUF input) and `inspect INPUT` all fail
/// cleanly; returns the convert error.
fn all_fail(input: &Path, out_dir: &Path) -> String {
    let out = out_dir.join("out.gguf");
    let e = fails(&[&"convert", &input, &"-o", &out], out_dir);
    if input.is_file() {
        let hf = out_dir.join("hf");
        fails(&[&"convert", &input, &"-o", &hf, &"--to", &"hf"], out_dir);
    }
    fails(&[&"inspect", &input], out_dir);
    e
}

fn assert_mentions(err: &str, words: &[&str]) {
    for w in words {
        assert!(err.contains(w), "error does not mention {w:?}: {err}");
    }
}

/// A copy of model directory `base` in `dest` made of symlinks, without the files in `skip`.
fn link_model(base: &Path, dest: &Path, skip: &[&str]) {
    fs::create_dir_all(dest).unwrap();
    for e in fs::read_dir(base).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        std::os::unix::fs::symlink(fs::canonicalize(e.path()).unwrap(), dest.join(&name)).unwrap();
    }
}

fn read_json(p: &Path) -> Json {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

fn write_json(p: &Path, v: &Json) {
    fs::write(p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Safetensors

/// A safetensors image: 8-byte header length, header, data.
fn st_bytes(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header);
    v.extend_from_slice(data);
    v
}

/// The tiny model's safetensors header (parsed) and its data section.
fn tiny_st() -> (Json, Vec<u8>) {
    let bytes = fs::read(common::tiny().join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Json = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

/// A model directory that is the tiny model with `model.safetensors` replaced.
fn tiny_with_weights(root: &Path, name: &str, st: &[u8]) -> PathBuf {
    let dir = root.join(name);
    link_model(&common::tiny(), &dir, &["model.safetensors"]);
    fs::write(dir.join("model.safetensors"), st).unwrap();
    dir
}

/// The tiny model with its config.json replaced by `edit` applied to the original.
fn tiny_with_config(root: &Path, name: &str, edit: impl FnOnce(&mut Json)) -> PathBuf {
    let dir = root.join(name);
    link_model(&common::tiny(), &dir, &["config.json"]);
    let mut cfg = read_json(&common::tiny().join("config.json"));
    edit(&mut cfg);
    write_json(&dir.join("config.json"), &cfg);
    dir
}

#[test]
fn broken_safetensors_files() {
    let src = tmp();
    let out = tmp();
    let orig = fs::read(common::tiny().join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(orig[..8].try_into().unwrap()) as usize;

    let h2 = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut header_too_long = st_bytes(h2, &[0; 8]);
    header_too_long[..8].copy_from_slice(&1_000_000u64.to_le_bytes());
    let mut header_len_max = header_too_long.clone();
    header_len_max[..8].copy_from_slice(&u64::MAX.to_le_bytes());

    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("empty", vec![], &["malformed safetensors"]),
        ("cut inside the length", orig[..5].to_vec(), &["malformed safetensors"]),
        ("cut mid-header", orig[..8 + n / 2].to_vec(), &["malformed safetensors", "header length"]),
        ("cut mid-tensor", orig[..8 + n + 1000].to_vec(), &["malformed safetensors", "truncated"]),
        ("cut one byte short", orig[..orig.len() - 1].to_vec(), &["truncated"]),
        ("trailing bytes", [&orig[..], &[0u8; 3][..]].concat(), &["malformed safetensors"]),
        ("header length past the end", header_too_long, &["header length"]),
        ("header length 2^64-1", header_len_max, &["malformed safetensors"]),
        ("header not JSON", st_bytes(b"{{{not json", &[]), &["malformed safetensors"]),
        ("header not UTF-8", st_bytes(&[b'{', 0xff, 0xfe, b'}'], &[]), &["malformed safetensors"]),
        (
            "overlapping offsets",
            st_bytes(
                br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                &[0; 12],
            ),
            &["malformed safetensors", "offsets"],
        ),
        (
            "gap between tensors",
            st_bytes(
                br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}}"#,
                &[0; 24],
            ),
            &["malformed safetensors", "offsets"],
        ),
        (
            "offsets past the data",
            st_bytes(br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &[0; 4]),
            &["malformed safetensors"],
        ),
        (
            "offsets 2^40",
            st_bytes(br#"{"a":{"dtype":"U8","shape":[1099511627776],"data_offsets":[0,1099511627776]}}"#, &[0; 16]),
            &["malformed safetensors"],
        ),
        (
            "end before start",
            st_bytes(br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#, &[0; 8]),
            &["malformed safetensors"],
        ),
        (
            "shape/byte-size mismatch",
            st_bytes(br#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8]),
            &["malformed safetensors", "dtype and shape"],
        ),
        (
            "shape product overflows",
            st_bytes(
                br#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#,
                &[0; 8],
            ),
            &["malformed safetensors"],
        ),
        (
            "unknown dtype",
            st_bytes(br#"{"a":{"dtype":"Q9","shape":[2],"data_offsets":[0,2]}}"#, &[0; 2]),
            &["malformed safetensors"],
        ),
        ("header is a list", st_bytes(b"[1,2,3]", &[]), &["malformed safetensors"]),
    ];
    for (what, bytes, words) in cases {
        let dir = tiny_with_weights(src.path(), &what.replace(' ', "_"), &bytes);
        let e = all_fail(&dir, out.path());
        assert_mentions(&e, words);
        assert!(e.contains("model.safetensors"), "{what}: error does not name the file: {e}");
        // The file alone (inspect of a .safetensors path) fails the same way.
        fails(&[&"inspect", &dir.join("model.safetensors")], out.path());
    }
}

/// The tiny model's safetensors file with its header edited (data unchanged).
fn tiny_edited(root: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Map<String, Json>)) -> PathBuf {
    let (mut header, data) = tiny_st();
    edit(header.as_object_mut().unwrap());
    tiny_with_weights(root, name, &st_bytes(&serde_json::to_vec(&header).unwrap(), &data))
}

#[test]
fn well_formed_safetensors_that_do_not_fit_the_model() {
    let src = tmp();
    let out = tmp();
    // An integer dtype (same element size, so the file itself stays valid).
    let dir = tiny_edited(src.path(), "int", |h| h["model.norm.weight"]["dtype"] = json!("I16"));
    let e = fails(&[&"convert", &dir, &"-o", &out.path().join("x.gguf")], out.path());
    // inspect describes the file as it is; --verify refuses it.
    qforge_ok(&[&"inspect", &dir]);
    fails(&[&"inspect", &"--verify", &dir], out.path());
    assert_mentions(&e, &["model.norm.weight", "I16"]);
    // A tensor whose shape differs from what config.json implies (same byte size).
    let dir = tiny_edited(src.path(), "shape", |h| h["model.norm.weight"]["shape"] = json!([2, 128]));
    let e = fails(&[&"convert", &dir, &"-o", &out.path().join("x.gguf")], out.path());
    assert_mentions(&e, &["output_norm.weight", "[2, 128]", "[256]"]);
    // A tensor that is not part of a Llama model.
    let dir = tiny_edited(src.path(), "extra", |h| {
        let v = h.remove("model.norm.weight").unwrap();
        h.insert("vision_tower.weight".into(), v);
    });
    let e = fails(&[&"convert", &dir, &"-o", &out.path().join("x.gguf")], out.path());
    assert_mentions(&e, &["vision_tower.weight"]);
    // A tensor missing.
    let one = st_bytes(br#"{"model.norm.weight":{"dtype":"BF16","shape":[256],"data_offsets":[0,512]}}"#, &[0; 512]);
    let dir = tiny_with_weights(src.path(), "missing", &one);
    let e = fails(&[&"convert", &dir, &"-o", &out.path().join("x.gguf")], out.path());
    assert_mentions(&e, &["token_embd.weight", "missing"]);
}

/// The tiny model with one weight of `tensor` set to `bits` (a bf16 bit pattern).
fn tiny_with_bf16(root: &Path, name: &str, tensor: &str, index: usize, bits: u16) -> PathBuf {
    let mut bytes = fs::read(common::tiny().join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Json = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header[tensor]["dtype"], "BF16");
    let start = 8 + n + header[tensor]["data_offsets"][0].as_u64().unwrap() as usize + 2 * index;
    bytes[start..start + 2].copy_from_slice(&bits.to_le_bytes());
    tiny_with_weights(root, name, &bytes)
}

#[test]
fn non_finite_weights() {
    let src = tmp();
    let out = tmp();
    let nan = tiny_with_bf16(src.path(), "nan", "model.layers.1.mlp.up_proj.weight", 777, 0x7fc0);
    for ty in ["f16", "q8_0"] {
        let e = fails(&[&"convert", &nan, &"-o", &out.path().join("x.gguf"), &"--outtype", &ty], out.path());
        assert_mentions(&e, &["blk.1.ffn_up.weight", "NaN", "--allow-nonfinite"]);
    }
    let e = fails(&[&"inspect", &"--verify", &nan], out.path());
    assert_mentions(&e, &["blk.1.ffn_up.weight", "NaN"]);
    let inf = tiny_with_bf16(src.path(), "inf", "model.layers.0.self_attn.q_proj.weight", 0, 0xff80);
    let e = fails(&[&"convert", &inf, &"-o", &out.path().join("x.gguf")], out.path());
    assert_mentions(&e, &["blk.0.attn_q.weight", "inf"]);

    // --allow-nonfinite converts anyway, to every type.
    for ty in ["f32", "f16", "bf16", "q8_0"] {
        let g = out.path().join(format!("nan-{ty}.gguf"));
        qforge_ok(&[&"-q", &"convert", &nan, &"-o", &g, &"--outtype", &ty, &"--allow-nonfinite"]);
    }
    // The GGUF holding a NaN: inspect works, inspect --verify names the tensor, and converting
    // it on (to HF or GGUF) refuses unless allowed.
    let g = out.path().join("nan-f32.gguf");
    qforge_ok(&[&"inspect", &g]);
    let out2 = tmp();
    let e = fails(&[&"inspect", &"--verify", &g], out2.path());
    assert_mentions(&e, &["blk.1.ffn_up.weight", "NaN"]);
    let e = fails(&[&"convert", &g, &"-o", &out2.path().join("hf"), &"--to", &"hf"], out2.path());
    assert_mentions(&e, &["blk.1.ffn_up.weight", "--allow-nonfinite"]);
    let e = fails(&[&"convert", &g, &"-o", &out2.path().join("x.gguf")], out2.path());
    assert_mentions(&e, &["blk.1.ffn_up.weight"]);
    // Quantizing reads an F32 GGUF's weights in place (no copy): the check still runs there.
    let e = fails(&[&"quantize", &g, &"-o", &out2.path().join("q.gguf"), &"--type", &"Q8_0"], out2.path());
    assert_mentions(&e, &["blk.1.ffn_up.weight", "NaN", "--allow-nonfinite"]);
    qforge_ok(&[&"-q", &"convert", &g, &"-o", &out2.path().join("hf"), &"--to", &"hf", &"--allow-nonfinite"]);
    // Q8_0 keeps no NaN (ggml's quantizer maps it to 0): --verify passes on that one.
    qforge_ok(&[&"-q", &"inspect", &"--verify", &out.path().join("nan-q8_0.gguf")]);
}

// ---------------------------------------------------------------------------------------------
// Model directories: index, config, tokenizer

#[test]
fn broken_shard_index() {
    let src = tmp();
    let out = tmp();
    let small = common::small();
    let index = read_json(&small.join("model.safetensors.index.json"));

    // A shard named by the index is missing.
    let dir = src.path().join("missing-shard");
    link_model(&small, &dir, &["model-00002-of-00004.safetensors"]);
    let e = all_fail(&dir, out.path());
    assert_mentions(&e, &["model-00002-of-00004.safetensors", "missing"]);

    // Shard names that are not plain file names in the model directory.
    fs::write(src.path().join("x"), b"not a model").unwrap();
    for (i, bad) in ["../x", "/etc/passwd", "..", ".", "", "sub/model.safetensors"].iter().enumerate() {
        let dir = src.path().join(format!("bad-name-{i}"));
        link_model(&small, &dir, &["model.safetensors.index.json"]);
        let mut idx = index.clone();
        idx["weight_map"]["model.layers.2.mlp.up_proj.weight"] = json!(bad);
        write_json(&dir.join("model.safetensors.index.json"), &idx);
        let e = all_fail(&dir, out.path());
        assert_mentions(&e, &[&format!("{bad:?}"), "plain file name"]);
    }

    // The index points a tensor at a shard that does not hold it.
    let dir = src.path().join("wrong-shard");
    link_model(&small, &dir, &["model.safetensors.index.json"]);
    let mut idx = index.clone();
    idx["weight_map"]["model.embed_tokens.weight"] = json!("model-00004-of-00004.safetensors");
    write_json(&dir.join("model.safetensors.index.json"), &idx);
    let e = all_fail(&dir, out.path());
    assert_mentions(&e, &["model.embed_tokens.weight", "model-00004-of-00004.safetensors"]);

    // An index that is not JSON, or has no weight map.
    for (name, text) in [("index-not-json", "{\"weight_map\": "), ("index-no-map", "{\"metadata\": {}}")] {
        let dir = src.path().join(name);
        link_model(&small, &dir, &["model.safetensors.index.json"]);
        fs::write(dir.join("model.safetensors.index.json"), text).unwrap();
        let e = all_fail(&dir, out.path());
        assert_mentions(&e, &["model.safetensors.index.json"]);
    }

    // No weights at all.
    let dir = src.path().join("no-weights");
    link_model(&common::tiny(), &dir, &["model.safetensors"]);
    let e = all_fail(&dir, out.path());
    assert_mentions(&e, &["model.safetensors"]);
}

#[test]
fn missing_files_and_bad_configs() {
    let src = tmp();
    let out = tmp();
    let tiny = common::tiny();

    let dir = src.path().join("no-config");
    link_model(&tiny, &dir, &["config.json"]);
    let e = all_fail(&dir, out.path());
    assert_mentions(&e, &["config.json"]);

    let dir = src.path().join("no-tokenizer");
    link_model(&tiny, &dir, &["tokenizer.json"]);
    let e = fails(&[&"convert", &dir, &"-o", &out.path().join("x.gguf")], out.path());
    assert_mentions(&e, &["tokenizer.json"]);

    let dir = src.path().join("tokenizer-not-json");
    link_model(&tiny, &dir, &["tokenizer.json"]);
    fs::write(dir.join("tokenizer.json"), "{\"model\": [").unwrap();
    let e = fails(&[&"convert", &dir, &"-o", &out.path().join("x.gguf")], out.path());
    assert_mentions(&e, &["tokenizer.json"]);

    let dir = src.path().join("tokenizer-unigram");
    link_model(&tiny, &dir, &["tokenizer.json"]);
    let mut tj = read_json(&tiny.join("tokenizer.json"));
    tj["model"]["type"] = json!("Unigram");
    write_json(&dir.join("tokenizer.json"), &tj);
    let e = fails(&[&"convert", &dir, &"-o", &out.path().join("x.gguf")], out.path());
    assert_mentions(&e, &["Unigram"]);

    let dir = src.path().join("config-not-json");
    link_model(&tiny, &dir, &["config.json"]);
    fs::write(dir.join("config.json"), "{\"hidden_size\": 256,").unwrap();
    let e = all_fail(&dir, out.path());
    assert_mentions(&e, &["config.json"]);

    let dir = tiny_with_config(src.path(), "gpt2", |c| c["architectures"] = json!(["GPT2LMHeadModel"]));
    let e = all_fail(&dir, out.path());
    assert_mentions(&e, &["GPT2LMHeadModel", "unsupported architecture"]);

    let dir = tiny_with_config(src.path(), "no-arch", |c| {
        c.as_object_mut().unwrap().remove("architectures");
        c.as_object_mut().unwrap().remove("model_type");
    });
    let e = all_fail(&dir, out.path());
    assert_mentions(&e, &["architecture"]);

    type Edit = Box<dyn Fn(&mut Json)>;
    let absurd: Vec<(&str, Edit, &[&str])> = vec![
        ("hidden-0", Box::new(|c| c["hidden_size"] = json!(0)), &["hidden_size"]),
        ("hidden-negative", Box::new(|c| c["hidden_size"] = json!(-256)), &["hidden_size"]),
        ("hidden-string", Box::new(|c| c["hidden_size"] = json!("256")), &["hidden_size"]),
        ("hidden-huge", Box::new(|c| c["hidden_size"] = json!(1u64 << 40)), &["hidden_size"]),
        ("heads-0", Box::new(|c| c["num_attention_heads"] = json!(0)), &["num_attention_heads"]),
        ("kv-heads-not-dividing", Box::new(|c| c["num_key_value_heads"] = json!(3)), &["kv heads"]),
        (
            "heads-not-dividing-hidden",
            Box::new(|c| {
                c["num_attention_heads"] = json!(3);
                c["num_key_value_heads"] = json!(3);
                c.as_object_mut().unwrap().remove("head_dim");
            }),
            &["head_dim"],
        ),
        ("head-dim-odd", Box::new(|c| c["head_dim"] = json!(63)), &["head_dim"]),
        ("vocab-0", Box::new(|c| c["vocab_size"] = json!(0)), &["vocab_size"]),
        ("eps-negative", Box::new(|c| c["rms_norm_eps"] = json!(-1.0)), &["rms_norm_eps"]),
        ("rope-yarn", Box::new(|c| c["rope_parameters"]["rope_type"] = json!("yarn")), &["yarn"]),
        // Millions of layers: must fail at the first missing tensor, not build a list of 150
        // million expected tensors first.
        ("layers-16m", Box::new(|c| c["num_hidden_layers"] = json!(1 << 24)), &["blk.4.attn_norm.weight", "missing"]),
        ("vocab-16m", Box::new(|c| c["vocab_size"] = json!(1 << 24)), &["token_embd.weight"]),
    ];
    for (name, edit, words) in absurd {
        let dir = tiny_with_config(src.path(), name, edit);
        let t = Instant::now();
        let e = fails(&[&"convert", &dir, &"-o", &out.path().join("x.gguf")], out.path());
        assert_mentions(&e, words);
        assert!(t.elapsed() < Duration::from_secs(5), "{name}: took {:?}", t.elapsed());
        fails(&[&"inspect", &"--verify", &dir], out.path());
    }
}

// ---------------------------------------------------------------------------------------------
// GGUF

/// Byte positions of the fields of a GGUF header (what the tests patch).
struct Layout {
    /// Per metadata entry: key, position of its value-type u32.
    kv: Vec<(String, usize)>,
    tensors: Vec<TensorPos>,
    data_offset: usize,
}

struct TensorPos {
    name: String,
    name_pos: usize,
    ndims_pos: usize,
    type_pos: usize,
    offset_pos: usize,
}

fn layout(b: &[u8]) -> Layout {
    let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
    fn skip(b: &[u8], p: usize, ty: u32) -> usize {
        let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
        let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
        match ty {
            0 | 1 | 7 => p + 1,
            2 | 3 => p + 2,
            4..=6 => p + 4,
            10..=12 => p + 8,
            8 => p + 8 + u64_at(p),
            9 => {
                let (et, n) = (u32_at(p), u64_at(p + 4));
                (0..n).fold(p + 12, |q, _| skip(b, q, et))
            }
            _ => panic!("bad type {ty}"),
        }
    }
    let (n_tensors, n_kv) = (u64_at(8), u64_at(16));
    let mut p = 24;
    let mut kv = Vec::new();
    for _ in 0..n_kv {
        let len = u64_at(p);
        let key = String::from_utf8(b[p + 8..p + 8 + len].to_vec()).unwrap();
        p += 8 + len;
        kv.push((key, p));
        p = skip(b, p + 4, u32_at(p));
    }
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name_pos = p;
        let len = u64_at(p);
        let name = String::from_utf8(b[p + 8..p + 8 + len].to_vec()).unwrap();
        let ndims_pos = p + 8 + len;
        let type_pos = ndims_pos + 4 + 8 * u32_at(ndims_pos) as usize;
        tensors.push(TensorPos { name, name_pos, ndims_pos, type_pos, offset_pos: type_pos + 4 });
        p = type_pos + 12;
    }
    Layout { kv, tensors, data_offset: p.div_ceil(32) * 32 }
}

fn put_u32(b: &mut [u8], p: usize, v: u32) {
    b[p..p + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], p: usize, v: u64) {
    b[p..p + 8].copy_from_slice(&v.to_le_bytes());
}

/// The tiny model converted to a Q8_0 GGUF (small, and every tensor kind is present).
fn tiny_gguf(dir: &Path) -> Vec<u8> {
    let p = dir.join("tiny.gguf");
    qforge_ok(&[&"-q", &"convert", &common::tiny(), &"-o", &p, &"--outtype", &"q8_0"]);
    let b = fs::read(&p).unwrap();
    fs::remove_file(&p).unwrap();
    b
}

#[test]
fn hostile_gguf_files() {
    let src = tmp();
    let out = tmp();
    let good = tiny_gguf(src.path());
    let l = layout(&good);
    assert_eq!(l.tensors.len(), 39);
    let kv = |k: &str| l.kv.iter().find(|(key, _)| key == k).unwrap_or_else(|| panic!("no {k}")).1;
    let tokens_pos = kv("tokenizer.ggml.tokens");
    let last = l.tensors.last().unwrap();

    let mut cases: Vec<(String, Vec<u8>, Vec<&str>)> = Vec::new();
    // Truncated: inside the fixed header, the metadata, the tensor infos, at the data, inside it.
    for cut in [0, 3, 10, 20, tokens_pos + 100, l.tensors[5].name_pos + 3, l.tensors[38].offset_pos + 4, l.data_offset]
    {
        cases.push((format!("cut at {cut}"), good[..cut].to_vec(), vec!["malformed GGUF"]));
    }
    for cut in [l.data_offset + 1000, good.len() / 2, good.len() - 100] {
        cases.push((format!("cut at {cut}"), good[..cut].to_vec(), vec!["malformed GGUF", "truncated"]));
    }
    let mut patch = |what: &str, words: Vec<&'static str>, f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        cases.push((what.to_string(), b, words));
    };
    patch("bad magic", vec!["bad magic"], &|b| b[..4].copy_from_slice(b"GGUX"));
    patch("version 1", vec!["v1"], &|b| put_u32(b, 4, 1));
    patch("version 7", vec!["version 7"], &|b| put_u32(b, 4, 7));
    patch("tensor count 2^62", vec!["tensor count"], &|b| put_u64(b, 8, 1 << 62));
    patch("kv count 2^62", vec!["metadata count"], &|b| put_u64(b, 16, 1 << 62));
    patch("unknown ggml type", vec!["unknown GGML type id 99", "blk"], &|b| put_u32(b, l.tensors[3].type_pos, 99));
    patch("tensor offset past the end", vec!["past the end"], &|b| {
        put_u64(b, last.offset_pos, (good.len() as u64).div_ceil(32) * 32)
    });
    patch("tensor offset 2^63", vec!["malformed GGUF"], &|b| put_u64(b, last.offset_pos, 1 << 63));
    patch("misaligned tensor offset", vec!["not aligned"], &|b| {
        let p = l.tensors[1].offset_pos;
        let v = u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
        put_u64(b, p, v + 1)
    });
    patch("overlapping tensors", vec!["overlap"], &|b| {
        let p = l.tensors[1].offset_pos;
        let v = u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
        put_u64(b, p, v + 32)
    });
    patch("array count 2^60", vec!["array length"], &|b| put_u64(b, tokens_pos + 8, 1 << 60));
    patch("string length 2^63", vec!["truncated"], &|b| put_u64(b, kv("general.architecture") + 4, 1 << 63));
    patch("key length 2^63", vec!["truncated"], &|b| put_u64(b, 24, 1 << 63));
    patch("n_dims 9", vec!["9 dimensions"], &|b| put_u32(b, l.tensors[0].ndims_pos, 9));
    patch("n_dims 0", vec!["0 dimensions"], &|b| put_u32(b, l.tensors[0].ndims_pos, 0));
    patch("unknown value type", vec!["value type"], &|b| put_u32(b, kv("general.name"), 77));
    patch("duplicate tensor names", vec!["duplicate tensor name"], &|b| {
        let (a, c) = {
            let mut pair = None;
            for (i, x) in l.tensors.iter().enumerate() {
                if let Some(y) = l.tensors[i + 1..].iter().find(|y| y.name.len() == x.name.len()) {
                    pair = Some((x, y));
                    break;
                }
            }
            pair.unwrap()
        };
        let n = 8 + a.name.len();
        let name = b[a.name_pos..a.name_pos + n].to_vec();
        b[c.name_pos..c.name_pos + n].copy_from_slice(&name);
    });
    patch("unsupported architecture", vec!["\"llamx\""], &|b| {
        let p = kv("general.architecture") + 4 + 8;
        assert_eq!(&b[p..p + 5], b"llama");
        b[p + 4] = b'x';
    });

    for (what, bytes, words) in &cases {
        let f = src.path().join("bad.gguf");
        fs::write(&f, bytes).unwrap();
        eprintln!("case: {what}");
        let e = if what == "unsupported architecture" {
            // inspect shows any well-formed GGUF; --verify and convert need the architecture.
            qforge_ok(&[&"inspect", &f]);
            fails(&[&"inspect", &"--verify", &f], out.path());
            fails(&[&"convert", &f, &"-o", &out.path().join("hf"), &"--to", &"hf"], out.path());
            fails(&[&"convert", &f, &"-o", &out.path().join("x.gguf")], out.path())
        } else {
            all_fail(&f, out.path())
        };
        let mut words = words.clone();
        if what != "unsupported architecture" {
            words.push("bad.gguf");
        }
        assert!(words.iter().all(|w| e.contains(w)), "{what}: error does not mention {words:?}: {e}");
        assert!(dir_entries(out.path()).is_empty());
    }
}

#[test]
fn hand_built_gguf_bombs() {
    let src = tmp();
    let out = tmp();
    let header = |n_tensors: u64, n_kv: u64| {
        let mut v = b"GGUF".to_vec();
        v.extend_from_slice(&3u32.to_le_bytes());
        v.extend_from_slice(&n_tensors.to_le_bytes());
        v.extend_from_slice(&n_kv.to_le_bytes());
        v
    };
    let key = |v: &mut Vec<u8>, k: &str| {
        v.extend_from_slice(&(k.len() as u64).to_le_bytes());
        v.extend_from_slice(k.as_bytes());
    };
    // Arrays nested 100 000 deep.
    let mut deep = header(0, 1);
    key(&mut deep, "bomb");
    deep.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..100_000 {
        deep.extend_from_slice(&9u32.to_le_bytes());
        deep.extend_from_slice(&1u64.to_le_bytes());
    }
    // Each level claims 2^40 arrays.
    let mut wide = header(0, 1);
    key(&mut wide, "bomb");
    wide.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..8 {
        wide.extend_from_slice(&9u32.to_le_bytes());
        wide.extend_from_slice(&(1u64 << 40).to_le_bytes());
    }
    wide.resize(wide.len() + (1 << 16), 0);
    // A u8 array of 2^60 items and a string of 2^63 bytes, with a little data after them.
    let mut long_array = header(0, 1);
    key(&mut long_array, "a");
    long_array.extend_from_slice(&9u32.to_le_bytes());
    long_array.extend_from_slice(&0u32.to_le_bytes());
    long_array.extend_from_slice(&(1u64 << 60).to_le_bytes());
    long_array.resize(long_array.len() + 4096, 0);
    let mut long_string = header(0, 1);
    key(&mut long_string, "s");
    long_string.extend_from_slice(&8u32.to_le_bytes());
    long_string.extend_from_slice(&(1u64 << 63).to_le_bytes());
    long_string.resize(long_string.len() + 4096, b'x');

    for (name, bytes, word) in [
        ("deep", deep, "nested too deeply"),
        ("wide", wide, "array length"),
        ("long-array", long_array, "array length"),
        ("long-string", long_string, "truncated"),
    ] {
        let f = src.path().join(format!("{name}.gguf"));
        fs::write(&f, &bytes).unwrap();
        let t = Instant::now();
        let e = all_fail(&f, out.path());
        assert_mentions(&e, &[word]);
        assert!(t.elapsed() < Duration::from_secs(5), "{name}: took {:?}", t.elapsed());
    }
    // Not a GGUF at all (a safetensors file under another name, a directory-less path).
    let f = src.path().join("model.bin");
    fs::copy(common::tiny().join("tokenizer_config.json"), &f).unwrap();
    let e = all_fail(&f, out.path());
    assert_mentions(&e, &["bad magic"]);
    let e = fails(&[&"convert", &src.path().join("nope.gguf"), &"-o", &out.path().join("x.gguf")], out.path());
    assert_mentions(&e, &["nope.gguf"]);
}

// ---------------------------------------------------------------------------------------------
// Outputs

#[test]
fn output_paths_that_cannot_be_written() {
    let out = tmp();
    let tiny = common::tiny();
    // A missing directory.
    let e = fails(&[&"convert", &tiny, &"-o", &out.path().join("nope/x.gguf")], out.path());
    assert_mentions(&e, &["nope"]);
    let g = tmp();
    let gguf = g.path().join("tiny.gguf");
    qforge_ok(&[&"-q", &"convert", &tiny, &"-o", &gguf, &"--outtype", &"q8_0"]);
    let e = fails(&[&"convert", &gguf, &"-o", &out.path().join("nope/hf"), &"--to", &"hf"], out.path());
    assert_mentions(&e, &["nope"]);
    // A path under a regular file.
    fs::write(out.path().join("file"), b"x").unwrap();
    let e = fails(&[&"convert", &tiny, &"-o", &out.path().join("file/x.gguf")], out.path());
    assert_mentions(&e, &["not a directory"]);
    let e = fails(&[&"convert", &gguf, &"-o", &out.path().join("file/hf"), &"--to", &"hf"], out.path());
    assert_mentions(&e, &["not a directory"]);
    // An existing directory as the GGUF output; a non-empty one as the HF output.
    fs::create_dir(out.path().join("d")).unwrap();
    fs::write(out.path().join("d/keep"), b"x").unwrap();
    fails(&[&"convert", &tiny, &"-o", &out.path().join("d")], out.path());
    fails(&[&"convert", &gguf, &"-o", &out.path().join("d"), &"--to", &"hf"], out.path());
    assert_eq!(dir_entries(&out.path().join("d")), ["keep"]);
    // --to hf from an HF directory, and to stdout.
    fails(&[&"convert", &tiny, &"-o", &out.path().join("hf"), &"--to", &"hf"], out.path());
    fails(&[&"convert", &gguf, &"-o", &"-", &"--to", &"hf"], out.path());
    fails(&[&"convert", &gguf, &"-o", &out.path().join("hf"), &"--to", &"hf", &"--outtype", &"q8_0"], out.path());
}

/// A tmpfs mounted for the duration of a test (unmounted on drop, even on panic).
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, opts: &str) -> Result<Mount, String> {
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !o.status.success() {
            return Err(format!("mount failed: {}", String::from_utf8_lossy(&o.stderr).trim()));
        }
        Ok(Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn can_create_in(dir: &Path) -> bool {
    let probe = dir.join(".probe");
    let ok = fs::write(&probe, b"x").is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

#[test]
fn unwritable_output_directory() {
    use std::os::unix::fs::PermissionsExt;
    let root = tmp();
    let tiny = common::tiny();
    let g = tmp();
    let gguf = g.path().join("tiny.gguf");
    qforge_ok(&[&"-q", &"convert", &tiny, &"-o", &gguf, &"--outtype", &"q8_0"]);

    let ro = root.path().join("ro");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    let _mount;
    if can_create_in(&ro) {
        // Root ignores directory permissions: use a read-only tmpfs instead.
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
        match Mount::tmpfs(&ro, "ro,size=64k") {
            Ok(m) => _mount = m,
            Err(why) => {
                // The path-under-a-file case in output_paths_that_cannot_be_written still covers
                // a failing create.
                eprintln!("unwritable_output_directory: running as root and {why}; cannot make a read-only directory");
                return;
            }
        }
        assert!(!can_create_in(&ro), "read-only tmpfs is writable");
    }
    let e = fails(&[&"convert", &tiny, &"-o", &ro.join("x.gguf")], &ro);
    assert_mentions(&e, &["x.gguf"]);
    fails(&[&"convert", &gguf, &"-o", &ro.join("hf"), &"--to", &"hf"], &ro);
    assert!(dir_entries(&ro).is_empty());
    let _ = fs::set_permissions(&ro, fs::Permissions::from_mode(0o755));
}

#[test]
fn full_disk() {
    let root = tmp();
    let g = tmp();
    let gguf = g.path().join("tiny.gguf");
    qforge_ok(&[&"-q", &"convert", &common::tiny(), &"-o", &gguf, &"--outtype", &"q8_0"]);
    let dir = root.path().join("full");
    fs::create_dir(&dir).unwrap();
    let _mount = match Mount::tmpfs(&dir, "size=1m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("full_disk: SKIPPED: cannot mount a 1 MiB tmpfs ({why})");
            return;
        }
    };
    // 15 MB of F16 GGUF, a 29 MB HF directory, and a GGUF to stdout... into 1 MiB.
    let e = fails(&[&"convert", &common::tiny(), &"-o", &dir.join("x.gguf")], &dir);
    assert_mentions(&e, &["No space left on device", "x.gguf"]);
    let e = fails(&[&"convert", &gguf, &"-o", &dir.join("hf"), &"--to", &"hf"], &dir);
    assert_mentions(&e, &["No space left on device"]);
    assert!(dir_entries(&dir).is_empty());
    // The space was given back: a small file fits again.
    fs::write(dir.join("probe"), vec![0u8; 512 * 1024]).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Signals

/// Start a conversion, send `signal` as soon as its temporary output appears, and check that
/// the process fails and leaves neither the output nor a temporary file. A run that finishes
/// before the signal lands is retried; at least one run must actually be interrupted.
fn interrupt(signal: i32, input: &Path, to_hf: bool) {
    let dir = tmp();
    let name = if to_hf { "hf" } else { "out.gguf" };
    let dest = dir.path().join(name);
    let tmp_prefix = format!(".{name}.qforge-tmp-");
    let mut interrupted = 0;
    for attempt in 0..20 {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qforge"));
        cmd.args(["-q", "convert"]).arg(input).arg("-o").arg(&dest);
        if to_hf {
            cmd.args(["--to", "hf", "--outtype", "f32"]);
        } else {
            cmd.args(["--outtype", "f32"]);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let start = Instant::now();
        let mut signalled = false;
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if dir_entries(dir.path()).iter().any(|e| e.starts_with(&tmp_prefix)) {
                // SAFETY: plain kill(2) of our own child.
                assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
                signalled = true;
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "no temporary file appeared");
            std::thread::sleep(Duration::from_micros(500));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        let entries = dir_entries(dir.path());
        assert!(
            !entries.iter().any(|e| e.contains("qforge-tmp")),
            "attempt {attempt}: temporary output left: {entries:?}"
        );
        if !entries.is_empty() {
            // Finished (and committed) before the signal arrived: the output must be whole.
            assert_eq!(entries, [name], "attempt {attempt}");
            assert!(!signalled || out.status.code() == Some(130) || out.status.success(), "{:?} {stderr}", out.status);
            if to_hf {
                assert_eq!(dir_entries(&dest).len(), 4);
                fs::remove_dir_all(&dest).unwrap();
            } else {
                qforge_ok(&[&"inspect", &dest]);
                fs::remove_file(&dest).unwrap();
            }
            continue;
        }
        assert!(signalled, "attempt {attempt}: finished without output: {stderr}");
        assert!(!out.status.success(), "interrupted run exited 0");
        assert_eq!(out.status.code(), Some(130), "{stderr}");
        assert!(stderr.contains("interrupted"), "{stderr}");
        interrupted += 1;
        if interrupted == 3 {
            break;
        }
    }
    assert!(interrupted > 0, "no run could be interrupted before it finished");
}

#[test]
fn sigint_leaves_nothing() {
    interrupt(libc::SIGINT, &common::small(), false);
}

#[test]
fn sigterm_leaves_nothing() {
    interrupt(libc::SIGTERM, &common::small(), false);
}

#[test]
fn sigint_during_hf_export_leaves_nothing() {
    let g = tmp();
    let gguf = g.path().join("small.gguf");
    qforge_ok(&[&"-q", &"convert", &common::small(), &"-o", &gguf, &"--outtype", &"f32"]);
    interrupt(libc::SIGINT, &gguf, true);
}

#[test]
fn stdout_closed_early_is_not_a_panic() {
    // `qforge convert ... -o - | head -c 100`: the pipe closes mid-stream.
    let mut child = Command::new(env!("CARGO_BIN_EXE_qforge"))
        .args(["convert"])
        .arg(common::tiny())
        .args(["-o", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 100];
    std::io::Read::read_exact(&mut stdout, &mut buf).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    assert_eq!(&buf[..4], b"GGUF");
}
