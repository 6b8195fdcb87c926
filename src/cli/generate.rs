use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::session::Loaded;
use super::Ui;
use crate::formats::tokenizer::token_type;
use crate::runtime::chat::{self, Message};
use crate::runtime::{KvCache, LlamaModel};

/// Generate text from a prompt (greedy at --temperature 0, else sampled), streamed to stdout.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    qforge generate models/tiny-llama --prompt 'The history of' -n 40\n  \
    qforge generate tiny-q8_0.gguf --prompt 'def main' --temperature 0.8 --top-p 0.9 --seed 7\n  \
    qforge generate SmolLM2-135M-Instruct.Q4_1.gguf --chat --prompt 'What is the capital of France?'")]
pub struct GenerateArgs {
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long, default_value_t = 64)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling: smallest set of tokens whose probability reaches p.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Take the prompt as a user message and apply the model's chat template
    /// (`tokenizer.chat_template`), as an instruct model expects; prints only the answer,
    /// which ends at the end-of-turn token.
    #[arg(long)]
    pub chat: bool,
    /// With --chat: a system message before the user's.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
}

/// SplitMix64: a tiny, well-mixed generator, enough for sampling.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn sample(logits: &[f32], args: &GenerateArgs, rng: &mut Rng) -> u32 {
    if args.temperature <= 0.0 {
        return crate::eval::argmax(logits) as u32;
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if args.top_k > 0 {
        idx.truncate(args.top_k);
    }
    let max = logits[idx[0]];
    let mut probs: Vec<f32> = idx.iter().map(|&i| ((logits[i] - max) / args.temperature).exp()).collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    let mut cum = 0.0;
    let mut keep = probs.len();
    for (i, p) in probs.iter().enumerate() {
        cum += p;
        if cum >= args.top_p {
            keep = i + 1;
            break;
        }
    }
    let total: f32 = probs[..keep].iter().sum();
    let mut r = rng.next_f32() * total;
    for (i, p) in probs[..keep].iter().enumerate() {
        r -= p;
        if r <= 0.0 {
            return idx[i] as u32;
        }
    }
    idx[keep - 1] as u32
}

pub fn run(args: &GenerateArgs, _ui: &Ui) -> Result<()> {
    let loaded = Loaded::open(&args.model)?;
    let model = LlamaModel::load(&loaded.file)?;
    let tok = &loaded.tokenizer;
    let prompt = if args.chat {
        let template = tok.vocab.chat_template.as_deref().ok_or_else(|| {
            anyhow::anyhow!("--chat: the model has no chat template (tokenizer.chat_template / chat_template)")
        })?;
        let name =
            |id: Option<u32>| id.and_then(|i| tok.vocab.tokens.get(i as usize)).map(String::as_str).unwrap_or("");
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message { role: "system", content: system });
        }
        messages.push(Message { role: "user", content: &args.prompt });
        let text = chat::render(template, &messages, name(tok.vocab.bos), name(tok.vocab.eos), true)?;
        tok.encode_chat(&text)?
    } else {
        tok.encode(&args.prompt)?
    };
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let ctx = model.config.context_length;
    if prompt.len() >= ctx {
        bail!("the prompt has {} tokens; the model's context is {ctx}", prompt.len());
    }
    let n = args.max_tokens.min(ctx - prompt.len());
    let mut cache = KvCache::new(&model.config, prompt.len() + n);
    let mut rng = Rng(args.seed);
    let vocab = model.vocab_size();
    let logits = model.forward(&prompt, &mut cache)?;
    let mut next = sample(&logits[(prompt.len() - 1) * vocab..], args, &mut rng);
    let mut generated = Vec::new();
    let mut printed = 0;
    let mut out = std::io::stdout().lock();
    if !args.chat {
        write!(out, "{}", args.prompt)?;
    }
    for step in 0..n {
        // A chat answer also ends at any other control token (end of turn, <|im_end|>, …).
        let control = tok.vocab.token_types.get(next as usize) == Some(&token_type::CONTROL);
        if Some(next) == tok.vocab.eos || (args.chat && control) {
            break;
        }
        generated.push(next);
        // Decode the whole continuation and print what is new, so multi-byte characters
        // split across tokens come out whole.
        let text = tok.decode(&generated)?;
        if text.len() > printed && !text.ends_with('\u{FFFD}') {
            write!(out, "{}", &text[printed..])?;
            out.flush()?;
            printed = text.len();
        }
        if step + 1 == n {
            break;
        }
        let logits = model.forward(&[next], &mut cache)?;
        next = sample(&logits, args, &mut rng);
    }
    writeln!(out)?;
    Ok(())
}
