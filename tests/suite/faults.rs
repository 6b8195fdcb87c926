//! Fault injection: inputs that change while qforge reads them, signals during `quantize`
//! and `convert`, inputs truncated mid-tensor. `tests/suite/bad_input.rs` already covers broken
//! and hostile files, full disks, unwritable directories, SIGINT/SIGTERM during HF → GGUF
//! `convert` and SIGINT during GGUF → HF; this file adds what those do not.
//!
//! Every failure must be a clean exit (1, or 130 for a signal) with no panic, and must leave
//! neither the output nor a temporary file behind.

use crate::common;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{dir_entries, qforge_ok};
use serde_json::Value as Json;
use tempfile::TempDir;

fn tmp() -> TempDir {
    tempfile::tempdir().unwrap()
}

/// A writable copy of the sharded small model (the fixture itself is read-only).
fn small_copy(root: &Path) -> PathBuf {
    let src = common::small();
    let dir = root.join("small");
    fs::create_dir(&dir).unwrap();
    for e in fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    assert!(dir.join("model.safetensors.index.json").exists(), "small-llama is no longer sharded");
    dir
}

/// The shard holding the tensor written last (GGUF order follows sorted HF names, so the
/// last one is `model.norm.weight`): when the output's temporary file appears, nothing of it
/// has been read yet.
fn last_shard(model: &Path) -> PathBuf {
    let idx: Json = serde_json::from_slice(&fs::read(model.join("model.safetensors.index.json")).unwrap()).unwrap();
    let map = idx["weight_map"].as_object().unwrap();
    let last = map.keys().max().unwrap();
    model.join(map[last].as_str().unwrap())
}

fn spawn(args: &[OsString]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_qforge"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run qforge")
}

/// Wait until `dir` holds qforge's temporary output, then run `act`. Returns whether it
/// acted (false: the command finished first).
fn when_temp_appears(child: &mut Child, dir: &Path, act: impl FnOnce()) -> bool {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if dir_entries(dir).iter().any(|e| e.contains(".qforge-tmp-")) {
            act();
            return true;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no temporary output appeared");
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A clean failure: exit 1, one `qforge: error:` line, no panic, nothing left in `out_dir`.
fn assert_clean_failure(out: &Output, out_dir: &Path) -> String {
    let err = stderr_of(out);
    assert_eq!(out.status.code(), Some(1), "expected exit 1, got {:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "error is not one line:\n{err}");
    assert!(lines[0].starts_with("qforge: error: "), "{err}");
    assert!(dir_entries(out_dir).is_empty(), "left behind: {:?}; stderr: {err}", dir_entries(out_dir));
    err
}

fn os(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_os_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// A shard changing under a running command

/// Start `args` (writing into `out_dir`), truncate `victim` to half its length as soon as the
/// temporary output appears, and check the command fails cleanly, naming the file. Inputs are
/// memory-mapped: without qforge's SIGBUS handling, reading the lost pages killed the process
/// with SIGBUS (exit 135) and left the temporary output behind.
fn truncate_mid_run(args: &[OsString], out_dir: &Path, victim: &Path) {
    let backup = fs::read(victim).unwrap();
    for attempt in 0..5 {
        let mut child = spawn(args);
        let acted = when_temp_appears(&mut child, out_dir, || {
            let f = fs::OpenOptions::new().write(true).open(victim).unwrap();
            f.set_len(backup.len() as u64 / 2).unwrap();
        });
        let out = child.wait_with_output().unwrap();
        if !acted {
            // Finished before the temporary file was seen: try again.
            eprintln!("attempt {attempt}: finished first ({:?})", out.status);
            for e in dir_entries(out_dir) {
                let _ = fs::remove_file(out_dir.join(&e)).or_else(|_| fs::remove_dir_all(out_dir.join(&e)));
            }
            continue;
        }
        let err = assert_clean_failure(&out, out_dir);
        let name = victim.file_name().unwrap().to_string_lossy();
        assert!(err.contains(&*name) && err.contains("truncated"), "error does not name the shard: {err}");
        fs::write(victim, &backup).unwrap();
        return;
    }
    panic!("the command always finished before the shard could be truncated");
}

#[test]
fn shard_truncated_during_quantize() {
    let root = tmp();
    let model = small_copy(root.path());
    let out = root.path().join("out");
    fs::create_dir(&out).unwrap();
    let args = os(&[&"-q", &"quantize", &model, &"-o", &out.join("x.gguf"), &"--type", &"Q4_K_M"]);
    truncate_mid_run(&args, &out, &last_shard(&model));
}

#[test]
fn shard_truncated_during_convert() {
    let root = tmp();
    let model = small_copy(root.path());
    let out = root.path().join("out");
    fs::create_dir(&out).unwrap();
    let args = os(&[&"-q", &"convert", &model, &"-o", &out.join("x.gguf"), &"--outtype", &"q8_0"]);
    truncate_mid_run(&args, &out, &last_shard(&model));
}

#[test]
fn gguf_truncated_during_export_to_hf() {
    let root = tmp();
    let gguf = root.path().join("small.gguf");
    qforge_ok(&[&"-q", &"convert", &common::small(), &"-o", &gguf, &"--outtype", &"f32"]);
    let out = root.path().join("out");
    fs::create_dir(&out).unwrap();
    let args = os(&[&"-q", &"convert", &gguf, &"-o", &out.join("hf"), &"--to", &"hf"]);
    truncate_mid_run(&args, &out, &gguf);
}

/// Deleting a shard after the index was read is harmless: the shard is memory-mapped, and
/// Linux keeps a deleted file's inode (and its pages) alive until the map goes. The run
/// succeeds with exactly the bytes of an undisturbed run.
#[test]
fn shard_deleted_during_quantize_is_harmless() {
    let root = tmp();
    let model = small_copy(root.path());
    let out = root.path().join("out");
    fs::create_dir(&out).unwrap();
    let reference = root.path().join("reference.gguf");
    qforge_ok(&[&"-q", &"quantize", &model, &"-o", &reference, &"--type", &"Q4_K_M"]);
    let dest = out.join("x.gguf");
    let args = os(&[&"-q", &"quantize", &model, &"-o", &dest, &"--type", &"Q4_K_M"]);
    let shards: Vec<PathBuf> =
        dir_entries(&model).into_iter().filter(|e| e.ends_with(".safetensors")).map(|e| model.join(e)).collect();
    assert_eq!(shards.len(), 4);
    let mut child = spawn(&args);
    let acted = when_temp_appears(&mut child, &out, || {
        for s in &shards {
            fs::remove_file(s).unwrap();
        }
    });
    let result = child.wait_with_output().unwrap();
    assert!(result.status.success(), "{:?}: {}", result.status, stderr_of(&result));
    assert!(acted, "finished before the shards could be deleted");
    assert_eq!(dir_entries(&out), ["x.gguf"]);
    assert!(fs::read(&dest).unwrap() == fs::read(&reference).unwrap(), "output differs from an undisturbed run");
    // And a new run fails cleanly, naming the missing shard.
    let out2 = root.path().join("out2");
    fs::create_dir(&out2).unwrap();
    let r = common::qforge(&[&"quantize", &model, &"-o", &out2.join("x.gguf"), &"--type", &"Q4_K_M"]);
    let err = assert_clean_failure(&r, &out2);
    assert!(err.contains("missing"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Inputs truncated mid-tensor before the run

#[test]
fn quantize_input_truncated_mid_tensor() {
    let root = tmp();
    let out = root.path().join("out");
    fs::create_dir(&out).unwrap();

    // A single-file checkpoint cut in the middle of its tensor data.
    let tiny = root.path().join("tiny");
    fs::create_dir(&tiny).unwrap();
    for e in fs::read_dir(common::tiny()).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), tiny.join(e.file_name())).unwrap();
    }
    let st = tiny.join("model.safetensors");
    let len = fs::metadata(&st).unwrap().len();
    fs::OpenOptions::new().write(true).open(&st).unwrap().set_len(len / 2).unwrap();
    let r = common::qforge(&[&"quantize", &tiny, &"-o", &out.join("x.gguf"), &"--type", &"Q4_K_M"]);
    let err = assert_clean_failure(&r, &out);
    assert!(err.contains("model.safetensors") && err.contains("truncated"), "{err}");

    // One shard of a sharded checkpoint cut mid-tensor.
    let model = small_copy(root.path());
    let shard = last_shard(&model);
    let len = fs::metadata(&shard).unwrap().len();
    fs::OpenOptions::new().write(true).open(&shard).unwrap().set_len(len - 1000).unwrap();
    let r = common::qforge(&[&"quantize", &model, &"-o", &out.join("x.gguf"), &"--type", &"Q4_K_M"]);
    let err = assert_clean_failure(&r, &out);
    assert!(err.contains(&*shard.file_name().unwrap().to_string_lossy()) && err.contains("truncated"), "{err}");

    // A GGUF cut mid-tensor (its last tensor loses its second half).
    let gguf = root.path().join("tiny.gguf");
    qforge_ok(&[&"-q", &"convert", &common::tiny(), &"-o", &gguf, &"--outtype", &"f16"]);
    let len = fs::metadata(&gguf).unwrap().len();
    fs::OpenOptions::new().write(true).open(&gguf).unwrap().set_len(len - 4096).unwrap();
    let r = common::qforge(&[&"quantize", &gguf, &"-o", &out.join("x.gguf"), &"--type", &"Q4_K_M"]);
    let err = assert_clean_failure(&r, &out);
    assert!(err.contains("tiny.gguf") && err.contains("truncated"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Signals

/// Run `args` (whose output is `dest`), send `signal` as soon as the temporary output appears,
/// and check the process exits with 130 leaving neither the output nor a temporary file. A
/// run that finishes before the signal lands must have committed a whole output; it is
/// removed and the run retried. At least one run must actually be interrupted.
fn interrupt(signal: i32, args: &[OsString], out_dir: &Path, dest: &Path) {
    let mut interrupted = 0;
    for attempt in 0..20 {
        let mut child = spawn(args);
        let pid = child.id() as i32;
        // SAFETY: plain kill(2) of our own child.
        let signalled = when_temp_appears(&mut child, out_dir, || assert_eq!(unsafe { libc::kill(pid, signal) }, 0));
        let out = child.wait_with_output().unwrap();
        let stderr = stderr_of(&out);
        assert!(!stderr.contains("panicked"), "{stderr}");
        let entries = dir_entries(out_dir);
        assert!(!entries.iter().any(|e| e.contains("qforge-tmp")), "attempt {attempt}: temporary left: {entries:?}");
        if !entries.is_empty() {
            // Committed before the signal arrived: the output must be whole.
            assert!(out.status.success() || out.status.code() == Some(130), "{:?} {stderr}", out.status);
            assert_eq!(entries.len(), 1, "{entries:?}");
            if dest.is_dir() {
                assert_eq!(dir_entries(dest).len(), 4);
                fs::remove_dir_all(dest).unwrap();
            } else {
                qforge_ok(&[&"inspect", &dest]);
                fs::remove_file(dest).unwrap();
            }
            continue;
        }
        assert!(signalled, "attempt {attempt}: finished without output: {stderr}");
        assert_eq!(out.status.code(), Some(130), "{stderr}");
        assert!(stderr.contains("interrupted"), "{stderr}");
        assert!(!dest.exists());
        interrupted += 1;
        if interrupted == 2 {
            return;
        }
    }
    assert!(interrupted > 0, "no run could be interrupted before it finished");
}

fn interrupt_quantize(signal: i32) {
    let out = tmp();
    let dest = out.path().join("x.gguf");
    let args = os(&[&"-q", &"quantize", &common::small(), &"-o", &dest, &"--type", &"Q4_K_M"]);
    interrupt(signal, &args, out.path(), &dest);
}

#[test]
fn sigint_during_quantize() {
    interrupt_quantize(libc::SIGINT);
}

#[test]
fn sigterm_during_quantize() {
    interrupt_quantize(libc::SIGTERM);
}

/// SIGTERM during GGUF → HF export (bad_input.rs covers SIGINT there, and both signals for
/// HF → GGUF).
#[test]
fn sigterm_during_export_to_hf() {
    let g = tmp();
    let gguf = g.path().join("small.gguf");
    qforge_ok(&[&"-q", &"convert", &common::small(), &"-o", &gguf, &"--outtype", &"f32"]);
    let out = tmp();
    let dest = out.path().join("hf");
    let args = os(&[&"-q", &"convert", &gguf, &"-o", &dest, &"--to", &"hf", &"--outtype", &"f32"]);
    interrupt(libc::SIGTERM, &args, out.path(), &dest);
}

/// SIGINT and SIGTERM during a GGUF → GGUF convert (the other direction's input).
#[test]
fn signals_during_gguf_to_gguf_convert() {
    let g = tmp();
    let gguf = g.path().join("small.gguf");
    qforge_ok(&[&"-q", &"convert", &common::small(), &"-o", &gguf, &"--outtype", &"f32"]);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let out = tmp();
        let dest = out.path().join("x.gguf");
        let args = os(&[&"-q", &"convert", &gguf, &"-o", &dest, &"--outtype", &"q8_0"]);
        interrupt(signal, &args, out.path(), &dest);
    }
}
