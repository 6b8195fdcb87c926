//! Time and peak memory per stage of a command (load, calibrate, write, ...), for the `--json`
//! summaries: a user sizing a machine for a 70B model wants to know which stage needs the
//! memory, not only the whole run's peak.
//!
//! The peak is the kernel's resident-set high-water mark (`VmHWM`), reset at the start of each
//! stage through `/proc/self/clear_refs` (Linux ≥ 4.0), so each stage reports its own peak.
//! It counts mapped input pages the stage touched, as `/usr/bin/time` does. Where /proc is
//! not available the peak is `null`.

use std::time::Instant;

use serde_json::{json, Value};

/// The stages of one command, in order.
#[derive(Default)]
pub struct StageLog {
    done: Vec<Value>,
    current: Option<(&'static str, Instant)>,
}

impl StageLog {
    pub fn new() -> StageLog {
        StageLog::default()
    }

    /// End the current stage (if any) and start `name`.
    pub fn begin(&mut self, name: &'static str) {
        self.end();
        reset_peak_rss();
        self.current = Some((name, Instant::now()));
    }

    /// End the current stage (if any).
    pub fn end(&mut self) {
        if let Some((name, start)) = self.current.take() {
            self.done.push(json!({
                "stage": name,
                "seconds": start.elapsed().as_secs_f64(),
                "peak_rss_bytes": peak_rss(),
            }));
        }
    }

    /// The stages so far as JSON (`[{stage, seconds, peak_rss_bytes}]`), ending the current one.
    pub fn report(&mut self) -> Value {
        self.end();
        Value::Array(self.done.clone())
    }
}

fn reset_peak_rss() {
    // "5" resets the peak RSS (proc(5), /proc/pid/clear_refs); a failure leaves the
    // process-wide peak, which is still an upper bound.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// `VmHWM` of this process, in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}
