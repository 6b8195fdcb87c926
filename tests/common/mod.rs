//! Helpers shared by the integration tests: fixture paths and running the `qforge` binary.
#![allow(dead_code)]

pub mod gptq;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled tiny model (always present: it is committed).
pub fn tiny() -> PathBuf {
    root().join("tests/fixtures/tiny-llama")
}

pub fn wiki() -> PathBuf {
    root().join("tests/fixtures/text/wiki.test.raw")
}

pub fn golden(name: &str) -> PathBuf {
    root().join("golden").join(name)
}

/// `sub` of the shared fixtures folder (`../shared/fixtures`, or `QFORGE_SHARED_FIXTURES`),
/// which must hold `probe`. Tests that need it FAIL, loudly, when it is missing: a skipped
/// check must never look like a passed one.
pub fn shared_fixture(sub: &str, probe: &str, what: &str) -> PathBuf {
    let dir = std::env::var_os("QFORGE_SHARED_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/fixtures"))
        .join(sub);
    assert!(
        dir.join(probe).exists(),
        "{what} not found at {} (set QFORGE_SHARED_FIXTURES to the shared fixtures folder)",
        dir.display()
    );
    dir
}

/// The small model lives in ../shared (too big to commit).
pub fn small() -> PathBuf {
    shared_fixture("models/small-llama", "config.json", "small-llama fixture")
}

pub fn qforge(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qforge"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .expect("cannot run qforge")
}

/// Run qforge and insist on success; returns stdout.
pub fn qforge_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = qforge(args);
    assert!(
        out.status.success(),
        "qforge {:?} failed ({}):\n{}",
        args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run qforge expecting a clean failure: non-zero exit, a one-line `qforge: error:` message,
/// and no panic. Returns stderr.
pub fn qforge_err(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = qforge(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert_eq!(out.status.code(), Some(1), "expected exit code 1; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "qforge panicked: {stderr}");
    assert!(stderr.contains("qforge: error:"), "no error line: {stderr}");
    stderr
}

/// Run a Python cross-check script from tests/py; Python and its packages (numpy, gguf,
/// tokenizers) are required: `.ci/run` installs them. A missing package fails the test.
pub fn python(script: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(py)
        .arg(root().join("tests/py").join(script))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .expect("cannot run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Entries of a directory (to check that nothing, not even a temporary file, was left).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// `convert` a quantized checkpoint into GGUF (`extra`: e.g. `--type q5_0`) and return the
/// JSON report, the warning lines, and the KL divergence of the GGUF against the checkpoint
/// over the first `windows` windows of WikiText-2: what the import cost.
pub fn import_into_gguf(
    checkpoint: &Path,
    out: &Path,
    extra: &[&str],
    windows: usize,
) -> (serde_json::Value, String, f64) {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--json", &"convert", &checkpoint, &"-o", &out];
    for a in extra {
        args.push(a);
    }
    let r = qforge(&args);
    let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(r.status.success(), "convert {extra:?} failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).expect("convert --json");
    let (w, n) = (wiki(), windows.to_string());
    let c = qforge_ok(&[&"--json", &"compare", &checkpoint, &out, &"--text", &w, &"--max-windows", &n]);
    let c: serde_json::Value = serde_json::from_str(&c).expect("compare --json");
    (report, stderr, c["kld_mean"].as_f64().expect("kld_mean"))
}

/// The `wiki` entry of a golden variant (`golden_tiny.json` / `golden_small.json`).
pub fn golden_wiki(file: &str, variant: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(golden(file)).expect("golden file");
    let g: serde_json::Value = serde_json::from_str(&text).expect("golden JSON");
    g[variant]["wiki"].clone()
}

/// How close a full-text `compare` of the f32 model with a quantized one must come to the
/// goldens: relative error of the f32 and of the quantized perplexity, relative error of the
/// mean KLD, absolute difference of the top-1 agreement.
pub struct GoldenBounds {
    pub f32_ppl: f64,
    pub ppl: f64,
    pub kld: f64,
    pub top1: f64,
}

/// Check a full-text `compare` report (base = the f32 model) against the goldens `fp32` and
/// `variant` of `file`.
pub fn assert_full_text_compare_matches_golden(r: &serde_json::Value, file: &str, variant: &str, b: GoldenBounds) {
    let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("no {k} in {v}"));
    assert_eq!(r["tokens_scored"].as_u64(), Some(378651), "{r}");
    assert_eq!(r["windows"].as_u64(), Some(741), "{r}");
    assert_eq!(r["ctx"].as_u64(), Some(512), "{r}");
    let (f, q) = (golden_wiki(file, "fp32"), golden_wiki(file, variant));
    let rel = |got: f64, want: f64| (got - want).abs() / want;
    let base = num(r, "base_ppl");
    assert!(rel(base, num(&f, "ppl")) <= b.f32_ppl, "f32 ppl {base} vs golden {f}");
    let ppl = num(r, "ppl");
    assert!(rel(ppl, num(&q, "ppl")) <= b.ppl, "{variant} ppl {ppl} vs golden {q}");
    let kld = num(r, "kld_mean");
    assert!(rel(kld, num(&q, "kld_mean")) <= b.kld, "{variant} KLD {kld} vs golden {q}");
    let top1 = num(r, "top1_agree");
    assert!((top1 - num(&q, "top1_agree")).abs() <= b.top1, "{variant} top-1 {top1} vs golden {q}");
}

/// `qforge compare BASE CANDIDATES… --text TEXT --max-windows WINDOWS` in one run (the base
/// model runs once per window for all candidates; reports equal separate runs', see
/// eval_cli::compare_several_candidates_equals_separate_runs): each candidate's report, in order.
pub fn compare_all(base: &Path, candidates: &[&Path], text: &Path, windows: usize) -> Vec<serde_json::Value> {
    let w = windows.to_string();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-q", &"compare", &base];
    args.extend(candidates.iter().map(|c| c as &dyn AsRef<std::ffi::OsStr>));
    args.extend([&"--text" as &dyn AsRef<std::ffi::OsStr>, &text, &"--max-windows", &w, &"--json"]);
    let out: serde_json::Value = serde_json::from_str(&qforge_ok(&args)).expect("compare --json");
    let reports = match out {
        serde_json::Value::Array(a) => a,
        one => vec![one],
    };
    assert_eq!(reports.len(), candidates.len(), "one report per candidate");
    for (r, c) in reports.iter().zip(candidates) {
        if let Some(name) = r["candidate"].as_str() {
            assert_eq!(name, c.to_str().unwrap());
        }
    }
    reports
}

/// [`compare_all`]'s mean KL divergence of each candidate.
pub fn klds(base: &Path, candidates: &[&Path], text: &Path, windows: usize) -> Vec<f64> {
    compare_all(base, candidates, text, windows).iter().map(|r| r["kld_mean"].as_f64().expect("kld_mean")).collect()
}
