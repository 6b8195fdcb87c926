//! `quantize --resume` (issue 17): a GPTQ, AWQ or AWQ+GPTQ run killed with SIGKILL after a
//! finished layer goes on from the next layer when restarted, and its output is byte for byte
//! the output of a run that was never interrupted. Nothing is left under the final name by
//! the killed run, and a work directory from another job is refused. The calibration states
//! may live in a file (`--offload-activations DIR`) without changing a byte, also when a run
//! is resumed with the other placement.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{dir_entries, qforge_err, qforge_ok, tiny};
use serde_json::Value as Json;

/// Fast calibration: every layer still takes long enough (~0.1–0.5 s) to be killed inside.
const CALIB: &[&str] = &["--nsamples", "16", "--seqlen", "128"];

// `&PathBuf`, not `&Path`: the argument list borrows the (sized) path value itself.
#[allow(clippy::ptr_arg)]
fn quantize_args<'a>(out: &'a PathBuf, method: &'a [&'a str]) -> Vec<&'a dyn AsRef<std::ffi::OsStr>> {
    let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"quantize", &"-o", out];
    a.extend(method.iter().map(|s| s as &dyn AsRef<std::ffi::OsStr>));
    a.extend(CALIB.iter().map(|s| s as &dyn AsRef<std::ffi::OsStr>));
    a
}

fn run_ok(out: &PathBuf, method: &[&str], extra: &[&str]) -> Json {
    let t = tiny();
    let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--json"];
    a.extend(quantize_args(out, method));
    a.push(&t);
    a.extend(extra.iter().map(|s| s as &dyn AsRef<std::ffi::OsStr>));
    serde_json::from_str(&qforge_ok(&a)).expect("--json")
}

/// Start a resumable run and SIGKILL it as soon as its first layer is saved with the
/// calibration states after it.
fn run_and_kill(out: &PathBuf, method: &[&str]) {
    let work = out.with_file_name(format!("{}.qforge-resume", out.file_name().unwrap().to_string_lossy()));
    let t = tiny();
    let mut a = quantize_args(out, method);
    a.push(&t);
    a.push(&"--resume");
    let mut child = spawn_after_first_layer(&a, || work.join("states.safetensors").exists());
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Run qforge with `args` until `saved()` says its first layer is saved.
fn spawn_after_first_layer(args: &[&dyn AsRef<std::ffi::OsStr>], saved: impl Fn() -> bool) -> std::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qforge"))
        .args(args.iter().map(|s| s.as_ref()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !saved() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its first layer was saved");
        assert!(start.elapsed() < Duration::from_secs(120), "no layer saved in two minutes");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

fn assert_same_output(a: &Path, b: &Path) {
    if a.is_dir() {
        assert_eq!(dir_entries(a), dir_entries(b));
        for f in dir_entries(a) {
            assert!(std::fs::read(a.join(&f)).unwrap() == std::fs::read(b.join(&f)).unwrap(), "{f} differs");
        }
    } else {
        assert!(std::fs::read(a).unwrap() == std::fs::read(b).unwrap(), "{} differs", b.display());
    }
}

#[test]
fn killed_runs_resume_to_identical_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let methods: [(&str, &[&str]); 3] = [
        ("gptq", &["--method", "gptq", "--format", "hf-gptq", "--group-size", "64"]),
        ("awq.gguf", &["--method", "awq", "--type", "Q4_K_M"]),
        ("awq-gptq", &["--method", "awq+gptq", "--format", "hf-awq", "--group-size", "64"]),
    ];
    let offload = tempfile::tempdir().unwrap();
    let offload_arg = offload.path().to_str().unwrap();
    for (i, (name, method)) in methods.into_iter().enumerate() {
        let whole = tmp.path().join(format!("whole-{name}"));
        let j = run_ok(&whole, method, &[]);
        assert_eq!(j["resumed_layers"], 0);
        if i == 1 {
            let offloaded = tmp.path().join(format!("offloaded-{name}"));
            run_ok(&offloaded, method, &["--offload-activations", offload_arg]);
            assert_same_output(&whole, &offloaded);
        }

        let resumed = tmp.path().join(format!("resumed-{name}"));
        run_and_kill(&resumed, method);
        assert!(!resumed.exists(), "{name}: the killed run left {}", resumed.display());
        // The first restart keeps its states in a file: the placement is not part of the job.
        let extra: &[&str] = if i == 0 { &["--resume", "--offload-activations", offload_arg] } else { &["--resume"] };
        let j = run_ok(&resumed, method, extra);
        let n = j["resumed_layers"].as_u64().unwrap();
        println!("{name}: killed after layer 0, resumed with {n} of 4 layers done");
        assert!((1..4).contains(&n), "{name}: resumed {n} layers");
        assert_same_output(&whole, &resumed);
        // The work directory goes once the output is complete.
        assert!(!tmp.path().join(format!("resumed-{name}.qforge-resume")).exists());
    }
    // Runs without --resume spill their finished layers to a scratch directory too, and
    // remove it when they end.
    let left: Vec<String> = dir_entries(tmp.path()).into_iter().filter(|f| f.contains("qforge")).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(dir_entries(offload.path()), Vec::<String>::new(), "the offloaded states' file is unlinked");
}

/// A run that is not resumable keeps its finished layers in a hidden scratch directory beside
/// the output; SIGTERM removes it with the partial output.
#[test]
fn an_interrupted_run_leaves_no_scratch_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gptq");
    let t = tiny();
    let mut a = quantize_args(&out, &["--method", "gptq", "--format", "hf-gptq"]);
    a.push(&t);
    let saved = || {
        dir_entries(tmp.path())
            .iter()
            .filter(|f| f.starts_with(".gptq.qforge-work"))
            .any(|d| tmp.path().join(d).join("layer-00000.safetensors").exists())
    };
    let mut child = spawn_after_first_layer(&a, saved);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(dir_entries(tmp.path()), Vec::<String>::new());
}

#[test]
fn a_work_directory_of_another_job_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gptq");
    let method: &[&str] = &["--method", "gptq", "--format", "hf-gptq"];
    run_and_kill(&out, method);
    // Other settings: refused, the saved layers kept.
    let t = tiny();
    let mut a = quantize_args(&out, method);
    a.extend([&t as &dyn AsRef<std::ffi::OsStr>, &"--resume", &"--damp", &"0.05"]);
    let e = qforge_err(&a);
    assert!(e.contains("other settings") && e.contains("--resume"), "{e}");
    assert!(tmp.path().join("gptq.qforge-resume/layer-00000.safetensors").exists());
    // Methods without layers to resume, and standard output, are refused.
    let e = qforge_err(&[&"quantize", &t, &"-o", &tmp.path().join("x.gguf"), &"--type", &"Q4_0", &"--resume"]);
    assert!(e.contains("--resume applies to"), "{e}");
    let e = qforge_err(&[&"quantize", &t, &"-o", &"-", &"--type", &"Q4_0", &"--method", &"gptq", &"--resume"]);
    assert!(e.contains("standard output"), "{e}");
    // --offload-activations: calibrated methods only, into a directory that exists.
    let x = tmp.path().join("x.gguf");
    let e = qforge_err(&[&"quantize", &t, &"-o", &x, &"--type", &"Q4_0", &"--offload-activations", &tmp.path()]);
    assert!(e.contains("--offload-activations applies to"), "{e}");
    let missing = tmp.path().join("missing");
    let e = qforge_err(&[
        &"quantize",
        &t,
        &"-o",
        &x,
        &"--type",
        &"Q4_0",
        &"--method",
        &"gptq",
        &"--offload-activations",
        &missing,
    ]);
    assert!(e.contains("not a directory") && e.contains("missing"), "{e}");
}
