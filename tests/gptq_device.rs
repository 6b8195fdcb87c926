//! `quantize --method gptq --device ...` on the tiny fixture, with and without the `cuda`
//! feature: `cpu` always works, `auto` runs (on the CPU, saying why in one line when the
//! feature is built in but no device is usable; silently without the feature), `cuda` fails
//! cleanly where it cannot work. Where a device is usable (feature `cuda` on a GPU machine),
//! `--device cuda` must give nearly the same checkpoint as `--device cpu`.

mod common;

use std::ffi::{OsStr, OsString};
use std::path::Path;

use common::{qforge, qforge_err, qforge_ok, tiny};
use serde_json::Value as Json;

/// `quantize INPUT --method gptq ... --device DEVICE -o OUT`, with a quick calibration (2
/// windows of 128 tokens: a few seconds per run) and GPTQ's standard objective (asymmetric
/// calibration, the default, runs on the CPU only).
fn gptq_args(input: &Path, out: &Path, device: &str) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["quantize".into(), input.into(), "--no-asymmetric".into()];
    v.extend(["--method", "gptq", "--nsamples", "2", "--seqlen", "128", "--device", device, "-o"].map(OsString::from));
    v.push(out.into());
    v
}

fn refs(v: &[OsString]) -> Vec<&dyn AsRef<OsStr>> {
    v.iter().map(|s| s as &dyn AsRef<OsStr>).collect()
}

/// Whether this build can use a GPU here (probed in-process, as the binary will).
fn device_usable() -> Result<(), String> {
    #[cfg(feature = "cuda")]
    {
        qforge::quant::gptq::cuda::CudaBackend::probe().map(|_| ()).map_err(|e| e.reason)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err("built without the `cuda` feature".into())
    }
}

#[test]
fn device_cuda_fails_cleanly_without_a_device() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, out) = (tiny(), tmp.path().join("g"));
    if device_usable().is_ok() {
        let _ = writeln_skip("device_cuda_fails_cleanly_without_a_device: a CUDA device is usable here");
        return;
    }
    let e = qforge_err(&refs(&gptq_args(&t, &out, "cuda")));
    if cfg!(feature = "cuda") {
        assert!(e.contains("no usable CUDA device"), "{e}");
    } else {
        assert!(e.contains("built without the `cuda` feature"), "{e}");
    }
    assert_eq!(e.lines().count(), 1, "one line: {e}");
    assert!(!out.exists());
}

#[test]
fn device_auto_and_cpu_run() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tiny();
    for device in ["auto", "cpu"] {
        let out = tmp.path().join(device);
        let mut a: Vec<OsString> = vec!["--json".into()];
        a.extend(gptq_args(&t, &out, device));
        let r = qforge(&refs(&a));
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "--device {device}: {stderr}");
        let j: Json = serde_json::from_slice(&r.stdout).unwrap();
        let notes = stderr.matches("no usable CUDA device").count();
        match (device, device_usable()) {
            ("auto", Err(why)) if cfg!(feature = "cuda") => {
                assert_eq!(notes, 1, "one note: {stderr}");
                assert!(stderr.contains("GPTQ runs on the CPU"), "{stderr}");
                println!("--device auto without a device ({why}): {}", stderr.trim());
                assert_eq!(j["device"], "cpu");
            }
            ("auto", Ok(())) => assert_eq!(j["device"], "cuda"),
            _ => {
                assert_eq!(notes, 0, "--device {device}: {stderr}");
                assert!(!stderr.contains("CUDA"), "--device {device}: {stderr}");
                assert_eq!(j["device"], "cpu");
            }
        }
        assert!(out.join("model.safetensors").exists());
    }
    // With the default objective (asymmetric calibration, CPU only) `auto` is the CPU on every
    // machine, without probing for a device: the same result everywhere.
    let out = tmp.path().join("default");
    let a: Vec<OsString> = ["--json", "quantize", "--method", "gptq", "--nsamples", "2", "--seqlen", "128", "-o"]
        .map(OsString::from)
        .into_iter()
        .chain([out.into(), t.into()])
        .collect();
    let r = qforge(&refs(&a));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    let j: Json = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!((&j["device"], &j["asymmetric"]), (&Json::from("cpu"), &Json::from(0.25)), "{j}");
    assert!(!stderr.contains("CUDA"), "{stderr}");
}

/// On a GPU machine: the checkpoint from `--device cuda` against `--device cpu`. Both must be
/// about equally good, and their codes must mostly agree. The bars are loose because GPTQ on
/// this setup is chaotic in the Hessian's last bits: with 2 × 128 calibration tokens the
/// Hessians are singular but for the damping, and each layer calibrates on the quantized
/// layers before it, so one flipped code reorders many after it. Measured on the CPU alone
/// (tiny, 16 windows): multiplying every Hessian entry by 1 + 1e-6·u (u uniform in ±1, the
/// size of the GPU's summation-order differences) moves the KLD against f32 by −0.6% to
/// +1.6% over three seeds and leaves 58–59% of the packed words equal; GPU vs CPU on an
/// H200: −2.0%, 64%. A wrong layout or a broken kernel moves the KLD many times over and
/// leaves almost no word equal (8 codes agree by chance once in 16⁸). The CUDA issue's own
/// 1% bar is for small-llama with 128 × 512 tokens (`tools/bench_gptq_cuda.sh --small`).
#[test]
fn device_cuda_matches_cpu_checkpoint() {
    if let Err(why) = device_usable() {
        let _ = writeln_skip(&format!("device_cuda_matches_cpu_checkpoint: no usable CUDA device ({why})"));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tiny();
    let (gpu, cpu) = (tmp.path().join("gpu"), tmp.path().join("cpu"));
    qforge_ok(&refs(&gptq_args(&t, &gpu, "cuda")));
    qforge_ok(&refs(&gptq_args(&t, &cpu, "cpu")));
    let (a, b) =
        (std::fs::read(gpu.join("model.safetensors")).unwrap(), std::fs::read(cpu.join("model.safetensors")).unwrap());
    let (sa, sb) =
        (safetensors::SafeTensors::deserialize(&a).unwrap(), safetensors::SafeTensors::deserialize(&b).unwrap());
    let (mut same, mut total) = (0usize, 0usize);
    for (name, ta) in sa.tensors() {
        let tb = sb.tensor(&name).unwrap();
        assert_eq!((ta.dtype(), ta.shape()), (tb.dtype(), tb.shape()), "{name}");
        if name.ends_with(".qweight") {
            let words = ta.data().chunks_exact(4).zip(tb.data().chunks_exact(4));
            same += words.clone().filter(|(x, y)| x == y).count();
            total += words.count();
        } else if name.ends_with(".g_idx") {
            assert_eq!(ta.data(), tb.data(), "{name}");
        }
    }
    let kld = |dir: &Path| -> f64 {
        let out = qforge_ok(&[&"--json", &"compare", &t, &dir, &"--text", &common::wiki(), &"--max-windows", &"16"]);
        let j: Json = serde_json::from_str(&out).unwrap();
        j["kld_mean"].as_f64().unwrap()
    };
    let (kg, kc) = (kld(&gpu), kld(&cpu));
    println!(
        "qweight words equal: {same}/{total} ({:.3}%); KLD vs f32 on 16 windows: cuda {kg:.5}, cpu {kc:.5}",
        100.0 * same as f64 / total as f64
    );
    assert!((kg / kc - 1.0).abs() <= 0.05, "KLD cuda {kg} vs cpu {kc}: more than 5% apart");
    assert!(same as f64 >= 0.3 * total as f64, "only {same}/{total} packed words agree");
}

/// A notice straight to stderr, past the harness's capture (visible in CI logs).
fn writeln_skip(msg: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stderr(), "SKIPPED {msg}")
}
