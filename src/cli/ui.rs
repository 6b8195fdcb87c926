//! Output conventions shared by every command: progress bars and notes on stderr (hidden by
//! `-q` and when stderr is not a terminal), results on stdout.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Ui {
    pub quiet: bool,
    pub verbose: bool,
    pub json: bool,
}

impl Ui {
    pub fn new(quiet: bool, verbose: bool, json: bool) -> Ui {
        Ui { quiet, verbose, json }
    }

    /// A byte-count progress bar on stderr.
    pub fn bytes_bar(&self, total: u64, msg: &str) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_message(msg.to_string());
        pb
    }

    /// A progress bar counting items (windows, tokens) with a free-form message.
    pub fn count_bar(&self, total: u64, unit: &str) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let template = format!("[{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}} {{msg}}");
        pb.set_style(
            ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb
    }

    /// A note on stderr (suppressed by `-q`). Printed directly rather than through indicatif,
    /// which drops messages when stderr is not a terminal.
    pub fn note(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("qforge: {}", msg.as_ref());
        }
    }

    pub fn warn(&self, msg: impl AsRef<str>) {
        eprintln!("qforge: warning: {}", msg.as_ref());
    }

    /// Per-tensor notes ("NAME: what happened") as one warning per kind of event, naming the
    /// first tensors and counting the rest (a model with 30 layers would otherwise print 200
    /// lines about the same fallback); every note with `-v`.
    pub fn warn_per_kind(&self, notes: &[String]) {
        if self.verbose {
            notes.iter().for_each(|n| self.warn(n));
            return;
        }
        let mut kinds: Vec<(&str, Vec<&str>)> = Vec::new();
        for n in notes {
            let (name, what) = n.split_once(": ").unwrap_or(("", n));
            match kinds.iter_mut().find(|(w, _)| *w == what) {
                Some((_, names)) => names.push(name),
                None => kinds.push((what, vec![name])),
            }
        }
        for (what, names) in kinds {
            match names.as_slice() {
                [""] => self.warn(what),
                [one] => self.warn(format!("{one}: {what}")),
                [a, b] => self.warn(format!("{a}, {b}: {what}")),
                [a, b, rest @ ..] => {
                    self.warn(format!("{a}, {b} and {} more tensors: {what} (-v lists them)", rest.len()))
                }
                [] => {}
            }
        }
    }

    pub fn detail(&self, msg: impl AsRef<str>) {
        if self.verbose && !self.quiet {
            eprintln!("qforge: {}", msg.as_ref());
        }
    }

    /// Print a JSON result on stdout.
    pub fn print_json(&self, v: &serde_json::Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
    }
}

/// An error and its causes on one line.
pub fn chain(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
    }
    s
}
