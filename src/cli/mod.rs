//! The `qforge` command line: clap definitions and dispatch. Results go to stdout (`--json`
//! for machines), progress and notes to stderr.

mod compare;
mod convert;
mod generate;
mod imatrix;
mod inspect;
mod perplexity;
mod quantize;
mod session;
mod stages;
mod tokenize;
mod ui;
mod verify;

use clap::{Args, Parser, Subcommand};

pub use ui::Ui;

/// What `convert` and `quantize` record in, and allow into, the files they write.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// general.name to record (default: derived from the input's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Write even if weights hold NaN or Inf (normally an error naming the tensor).
    #[arg(long)]
    pub allow_nonfinite: bool,
    /// Hugging Face output: at most this many bytes per safetensors file (B, KB, MB, GB or
    /// KiB, MiB, GiB), sharded with model.safetensors.index.json as transformers'
    /// save_pretrained does.
    #[arg(long, value_name = "SIZE", default_value = "5GB", value_parser = crate::convert::shards::parse_size)]
    pub max_shard_size: u64,
}

#[derive(Parser, Debug)]
#[command(
    name = "qforge",
    version,
    about = "Quantize, convert and verify LLaMA-family models",
    long_about = "qforge loads Hugging Face checkpoints (safetensors) and GGUF files, converts and \
                  quantizes them, and writes GGUF that llama.cpp runs unchanged.",
    after_help = "Examples:\n  qforge convert models/tiny-llama -o tiny-f16.gguf --outtype f16\n  \
                  qforge quantize models/tiny-llama -o tiny-q4_k_m.gguf --type Q4_K_M\n  \
                  qforge compare models/tiny-llama tiny-q4_k_m.gguf --text wiki.test.raw\n  \
                  qforge inspect tiny-f16.gguf --json | jq '.tensors | length'\n  \
                  qforge convert tiny-f16.gguf -o tiny-hf --to hf\n  \
                  qforge tokenize tiny-f16.gguf --text 'Hello world' --json"
)]
pub struct Cli {
    /// No progress bars or notes on stderr (errors are still printed).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More detail on stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Print the result as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Convert(convert::ConvertArgs),
    Quantize(quantize::QuantizeArgs),
    Inspect(inspect::InspectArgs),
    Perplexity(perplexity::PerplexityArgs),
    Compare(compare::CompareArgs),
    Verify(verify::VerifyArgs),
    Generate(generate::GenerateArgs),
    Imatrix(imatrix::ImatrixArgs),
    Tokenize(tokenize::TokenizeArgs),
}

/// Run the CLI and return the process exit code: 0 success, 1 failure, 2 bad usage,
/// 130 interrupted.
pub fn main() -> i32 {
    // Die quietly on a closed pipe (`qforge inspect x.gguf | head`), like other Unix tools,
    // instead of panicking in println!.
    // SAFETY: resetting a signal disposition at startup, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tune_allocator();
    crate::output::install_signal_cleanup();
    crate::formats::mapped::install_sigbus_handler();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    if let Some(n) = cli.threads {
        if n == 0 {
            eprintln!("qforge: error: --threads must be at least 1");
            return 2;
        }
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global() {
            eprintln!("qforge: error: cannot start {n} threads: {e}");
            return 1;
        }
    }
    let ui = Ui::new(cli.quiet, cli.verbose, cli.json);
    let result = match &cli.command {
        Command::Convert(a) => convert::run(a, &ui),
        Command::Quantize(a) => quantize::run(a, &ui),
        Command::Inspect(a) => inspect::run(a, &ui),
        Command::Perplexity(a) => perplexity::run(a, &ui),
        Command::Compare(a) => compare::run(a, &ui),
        Command::Verify(a) => verify::run(a, &ui),
        Command::Generate(a) => generate::run(a, &ui),
        Command::Imatrix(a) => imatrix::run(a, &ui),
        Command::Tokenize(a) => tokenize::run(a, &ui),
    };
    // An input truncated while mapped was read as zeros from then on: whatever the command
    // computed is garbage, even if it "succeeded" (perplexity, compare...).
    let result = result.and_then(|()| crate::formats::mapped::check().map_err(Into::into));
    if let Some(kb) = peak_rss_kb() {
        ui.detail(format!("peak RSS {:.1} MB", kb as f64 / 1024.0));
    }
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("qforge: error: {}", ui::chain(&e));
            1
        }
    }
}

/// The forward pass allocates activation buffers of a few MB per layer and window. glibc
/// serves those with fresh mmaps and unmaps them on free, so every window paid page faults
/// and zeroing again (~10% of perplexity time). Keeping freed memory for reuse removes that.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator thresholds; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), for `-v` reports and benchmarks.
pub fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
