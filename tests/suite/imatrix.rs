//! Importance matrices: `qforge imatrix` on the tiny model (read back by gguf-py, round trip),
//! llama.cpp's legacy `.dat` format (written by a Python helper), hostile imatrix files, and
//! the point of it all: `quantize --imatrix` lowers the KL divergence from the f32 model.
//! (The weighted codecs' bytes are checked against llama.cpp in tests/suite/codec_bytes.rs.)

use crate::common;

use std::path::{Path, PathBuf};

use common::{dir_entries, python, qforge_err, qforge_ok};
use qforge::formats::gguf::{GgufFile, GgufWriter, Value};
use qforge::formats::imatrix::Imatrix;
use qforge::GgmlType;
use serde_json::Value as Json;

fn json(s: &str) -> Json {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn calib() -> PathBuf {
    common::root().join("calibration/calib.txt")
}

/// `qforge imatrix` on the tiny model: `chunks` windows of `ctx` tokens of calib.txt.
fn make_imatrix(out: &Path, chunks: usize, ctx: usize, extra: &[&str]) -> Json {
    let (chunks, ctx) = (chunks.to_string(), ctx.to_string());
    let tiny = common::tiny();
    let text = calib();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"-q", &"--json", &"imatrix", &tiny, &"--text", &text, &"--chunks", &chunks, &"--ctx", &ctx, &"-o", &out];
    for e in extra {
        args.push(e);
    }
    json(&qforge_ok(&args))
}

#[test]
fn imatrix_file_is_read_by_gguf_py_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.imatrix.gguf");
    let report = make_imatrix(&out, 4, 128, &["--process-output"]);
    // 4 layers × 7 matrices, plus the (untied) output projection.
    assert_eq!(report["entries"], 29, "{report}");
    assert_eq!(report["tokens"], 512);
    assert_eq!(report["window_ppl"].as_array().unwrap().len(), 4);
    assert!(report["ppl"].as_f64().unwrap() > 1.0);
    let checked = json(&python("check_imatrix.py", &[&"check", &out, &common::tiny(), &"512", &"--process-output"]));
    assert_eq!(checked["entries"], 29, "{checked}");
    // Only the file: no temporary left beside it.
    assert_eq!(dir_entries(dir.path()), ["tiny.imatrix.gguf"]);

    // qforge reads what it wrote, and writes it again byte for byte.
    let m = Imatrix::read(&out).unwrap();
    assert_eq!((m.entries.len(), m.chunk_count, m.chunk_size), (29, 4, 128));
    assert_eq!(m.datasets, [calib().to_string_lossy().into_owned()]);
    let again = m.write_gguf(Vec::new()).unwrap();
    assert_eq!(again, std::fs::read(&out).unwrap(), "write(read(file)) != file");
    let w = m.importance("blk.2.ffn_down.weight").unwrap();
    assert_eq!(w.len(), 768);
    assert!(w.iter().all(|v| v.is_finite() && *v >= 0.0));

    // Without --process-output there is no output.weight entry, as with llama-imatrix.
    let out2 = dir.path().join("no-output.gguf");
    assert_eq!(make_imatrix(&out2, 1, 64, &[])["entries"], 28);
    assert!(Imatrix::read(&out2).unwrap().get("output.weight").is_none());
}

#[test]
fn legacy_dat_written_by_python_is_read_with_the_same_values() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("m.gguf");
    make_imatrix(&gguf, 3, 128, &[]);
    let dat = dir.path().join("m.dat");
    let want = json(&python("check_imatrix.py", &[&"to-dat", &gguf, &dat]));
    let m = Imatrix::read(&dat).unwrap();
    let g = Imatrix::read(&gguf).unwrap();
    assert_eq!(m.entries.len(), 28);
    assert_eq!(m.chunk_count, 3);
    assert_eq!(m.datasets, g.datasets);
    for (name, values) in want.as_object().unwrap() {
        let ours = m.importance(name).unwrap_or_else(|| panic!("{name} missing"));
        let from_gguf = g.importance(name).unwrap();
        let theirs: Vec<f32> = values.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(ours.len(), theirs.len(), "{name}");
        for ((a, b), c) in ours.iter().zip(&theirs).zip(&from_gguf) {
            // The .dat stores mean × ncall; dividing again may be off by one rounding.
            assert!((a - b).abs() <= 2e-7 * b.abs(), "{name}: {a} vs {b}");
            assert!((a - c).abs() <= 2e-7 * c.abs(), "{name}: {a} vs {c} (GGUF)");
        }
    }
    // quantize takes it like the GGUF one.
    let j = json(&qforge_ok(&[
        &"quantize",
        &common::tiny(),
        &"--type",
        &"Q4_K_M",
        &"--dry-run",
        &"--json",
        &"--imatrix",
        &dat,
    ]));
    assert_eq!(j["imatrix"]["weighted"].as_array().unwrap().len(), 28, "{}", j["imatrix"]);
}

/// A GGUF imatrix with `tensors` (name, shape, type, f32 values) and the usual metadata, minus
/// the keys in `drop`; `general.type` set to `gtype`.
type Crafted = Vec<(String, Vec<usize>, GgmlType, Vec<f32>)>;

fn craft_gguf(path: &Path, gtype: &str, drop: &[&str], tensors: &Crafted) {
    let mut w = GgufWriter::new();
    w.set("general.type", Value::String(gtype.into()));
    for (k, v) in [
        ("imatrix.datasets", Value::string_array(["x.txt".to_string()])),
        ("imatrix.chunk_count", Value::U32(1)),
        ("imatrix.chunk_size", Value::U32(512)),
    ] {
        if !drop.contains(&k) {
            w.set(k, v);
        }
    }
    for (name, shape, ty, _) in tensors {
        w.add_tensor(name, shape, *ty).unwrap();
    }
    let mut s = w.start(Vec::new()).unwrap();
    for (name, _, ty, values) in tensors {
        let bytes: Vec<u8> = match ty {
            GgmlType::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
            _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        s.write_tensor(name, &bytes).unwrap();
    }
    std::fs::write(path, s.finish().unwrap()).unwrap();
}

fn entry(name: &str, cols: usize, sums: Vec<f32>, count: f32) -> Crafted {
    assert_eq!(sums.len(), cols);
    vec![
        (format!("{name}.in_sum2"), vec![1, cols], GgmlType::F32, sums),
        (format!("{name}.counts"), vec![1, 1], GgmlType::F32, vec![count]),
    ]
}

#[test]
fn hostile_imatrix_files_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.gguf");
    make_imatrix(&good, 1, 64, &[]);
    let good_bytes = std::fs::read(&good).unwrap();
    let tiny = common::tiny();
    let check = |name: &str, bytes: &[u8], want: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let err = qforge_err(&[&"quantize", &tiny, &"--type", &"Q4_K_M", &"--dry-run", &"--imatrix", &p]);
        assert!(err.contains(want), "{name}: expected {want:?} in: {err}");
        // The library says the same, without a panic.
        assert!(Imatrix::read(&p).is_err() || want.contains("tensor size") || want.contains("none of"), "{name}");
    };
    let crafted = |gtype: &str, drop: &[&str], t: Crafted| {
        let p = dir.path().join("crafted.tmp");
        craft_gguf(&p, gtype, drop, &t);
        std::fs::read(&p).unwrap()
    };

    // Legacy parser: nothing, garbage, absurd counts.
    check("empty.dat", b"", "truncated");
    check("garbage.dat", b"\xff\xff\xff\x7fgarbage that is not an imatrix", "cannot fit");
    let mut huge_nval = Vec::new();
    huge_nval.extend(1i32.to_le_bytes());
    huge_nval.extend(3i32.to_le_bytes());
    huge_nval.extend(b"abc");
    huge_nval.extend(1i32.to_le_bytes());
    huge_nval.extend(i32::MAX.to_le_bytes());
    huge_nval.extend([0u8; 64]);
    check("huge-nval.dat", &huge_nval, "values");
    // GGUF: truncated, not an imatrix, incomplete, wrong types, bad values.
    check("truncated.gguf", &good_bytes[..good_bytes.len() / 2], "truncated");
    let q = "blk.0.attn_q.weight";
    check("model.gguf", &crafted("model", &[], entry(q, 256, vec![1.0; 256], 4.0)), "not an importance matrix");
    check(
        "no-size.gguf",
        &crafted("imatrix", &["imatrix.chunk_size"], entry(q, 256, vec![1.0; 256], 4.0)),
        "imatrix.chunk_size is missing",
    );
    let mut only_sums = entry(q, 256, vec![1.0; 256], 4.0);
    only_sums.pop();
    check("no-counts.gguf", &crafted("imatrix", &[], only_sums), "must both be present");
    let mut f16 = entry(q, 256, vec![1.0; 256], 4.0);
    f16[0].2 = GgmlType::F16;
    check("f16.gguf", &crafted("imatrix", &[], f16), "must be F32");
    let mut nan = vec![1.0; 256];
    nan[17] = f32::NAN;
    check("nan.gguf", &crafted("imatrix", &[], entry(q, 256, nan, 4.0)), "finite");
    check("neg-count.gguf", &crafted("imatrix", &[], entry(q, 256, vec![1.0; 256], -3.0)), "count");
    check("nothing.gguf", &crafted("imatrix", &[], vec![]), "no importance data");
    // Well-formed, but not for this model.
    check(
        "cols.gguf",
        &crafted("imatrix", &[], entry(q, 100, vec![1.0; 100], 4.0)),
        "imatrix size 100 is different from tensor size 256",
    );
    check(
        "other.gguf",
        &crafted("imatrix", &[], entry("blk.0.foo.weight", 8, vec![1.0; 8], 4.0)),
        "none of the 1 imatrix entries",
    );
    // Only the method that uses it.
    let err = qforge_err(&[
        &"quantize",
        &tiny,
        &"-o",
        &dir.path().join("x.gguf"),
        &"--type",
        &"Q4_K_M",
        &"--method",
        &"gptq",
        &"--imatrix",
        &good,
    ]);
    assert!(err.contains("--imatrix applies to --method rtn"), "{err}");
}

#[test]
fn imatrix_command_rejects_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let tiny = common::tiny();
    let err = qforge_err(&[&"imatrix", &tiny, &"--chunks", &"0", &"-o", &out]);
    assert!(err.contains("--chunks"), "{err}");
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "only a few words").unwrap();
    let err = qforge_err(&[&"imatrix", &tiny, &"--text", &short, &"-o", &out]);
    assert!(err.contains("fewer than one window"), "{err}");
    let err = qforge_err(&[&"imatrix", &tiny, &"--ctx", &"4096", &"-o", &out]);
    assert!(err.contains("context length"), "{err}");
    assert_eq!(dir_entries(dir.path()), ["short.txt"], "nothing written on failure");
}

/// KLD of a quantized tiny model from the f32 one over the first `windows` of WikiText-2
/// (from the saved base logits).
fn kld(base: &Path, q: &Path, text: &Path, windows: usize) -> (f64, f64) {
    let w = windows.to_string();
    let j = json(&qforge_ok(&[&"-q", &"compare", &base, &q, &"--text", &text, &"--max-windows", &w, &"--json"]));
    (j["kld_mean"].as_f64().unwrap(), j["kld_stderr"].as_f64().unwrap())
}

/// The reason imatrix exists: with the importance measured on calib.txt (not on the text it is
/// evaluated on), the weighted Q4_K_M, IQ4_NL and Q4_0 of the tiny model are closer to the f32
/// model than the plain ones, by more than the noise. Measured at 20 windows: about −7%, −6%
/// and −8% KLD (32 calibration windows).
#[test]
fn imatrix_lowers_the_kl_divergence() {
    const WINDOWS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let im = dir.path().join("tiny.imatrix.gguf");
    make_imatrix(&im, 16, 512, &[]);
    // The windows scored are the first 20 of WikiText-2 (~45 kB): tokenize only the first
    // 200 kB (cut at a line end), not all 1.3 MB, in each of the seven runs.
    let wiki = std::fs::read(common::wiki()).unwrap();
    let head = &wiki[..=wiki[..200_000].iter().rposition(|&b| b == b'\n').unwrap()];
    let text = dir.path().join("wiki-head.txt");
    std::fs::write(&text, head).unwrap();
    let base = dir.path().join("base.qflogits");
    let w = WINDOWS.to_string();
    qforge_ok(&[
        &"-q",
        &"perplexity",
        &common::tiny(),
        &"--text",
        &text,
        &"--max-windows",
        &w,
        &"--save-logits",
        &base,
    ]);
    let mut report = Vec::new();
    for ty in ["Q4_K_M", "IQ4_NL", "Q4_0"] {
        let plain = dir.path().join(format!("{ty}.gguf"));
        let weighted = dir.path().join(format!("{ty}-imatrix.gguf"));
        qforge_ok(&[&"-q", &"quantize", &common::tiny(), &"-o", &plain, &"--type", &ty]);
        qforge_ok(&[&"-q", &"quantize", &common::tiny(), &"-o", &weighted, &"--type", &ty, &"--imatrix", &im]);
        let (kp, sp) = kld(&base, &plain, &text, WINDOWS);
        let (kw, sw) = kld(&base, &weighted, &text, WINDOWS);
        // The standard errors treat tokens as independent and the two runs as unpaired: a
        // conservative margin for what is really a paired comparison on the same tokens.
        let margin = 2.0 * (sp * sp + sw * sw).sqrt();
        report.push(format!("{ty}: KLD {kp:.5} → {kw:.5} ({:+.1}%, margin {margin:.5})", 100.0 * (kw / kp - 1.0)));
        assert!(kw < kp - margin, "{ty}: imatrix KLD {kw} (±{sw}) not below plain {kp} (±{sp})");

        // llama-quantize's record of the imatrix.
        let f = GgufFile::open(&weighted).unwrap();
        assert_eq!(f.get("quantize.imatrix.file").and_then(Value::as_str), Some(im.to_str().unwrap()));
        assert_eq!(f.get("quantize.imatrix.dataset").and_then(Value::as_str), Some(calib().to_str().unwrap()));
        assert_eq!(f.get("quantize.imatrix.entries_count").and_then(Value::as_u64), Some(28));
        assert_eq!(f.get("quantize.imatrix.chunks_count").and_then(Value::as_u64), Some(16));
        assert!(GgufFile::open(&plain).unwrap().get("quantize.imatrix.file").is_none());
    }
    println!("{}", report.join("\n"));
}
