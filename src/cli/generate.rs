use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::session::Loaded;
use super::Ui;
use crate::error::Error;
use crate::eval::generate::{generate, Sampling};
use crate::formats::tokenizer::token_type;
use crate::runtime::chat::{self, Message};
use crate::runtime::LlamaModel;

/// Generate text from a prompt (greedy at --temperature 0, else sampled), streamed to stdout;
/// with --json, one object with the text, the token ids and the prompt and generation speeds.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    qforge generate models/tiny-llama --prompt 'The history of' -n 40\n  \
    qforge generate tiny-q8_0.gguf --prompt 'def main' --temperature 0.8 --top-p 0.9 --seed 7\n  \
    qforge --json generate tiny-q4_k_m.gguf --prompt 'The' -n 128 | jq .decode_tokens_per_sec\n  \
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

pub fn run(args: &GenerateArgs, ui: &Ui) -> Result<()> {
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
    let sampling = Sampling { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, seed: args.seed };
    // A chat answer also ends at any other control token (end of turn, <|im_end|>, …).
    let stop = |t: u32| {
        Some(t) == tok.vocab.eos || (args.chat && tok.vocab.token_types.get(t as usize) == Some(&token_type::CONTROL))
    };
    let mut out = std::io::stdout().lock();
    let mut printed = 0;
    if !args.chat && !ui.json {
        write!(out, "{}", args.prompt)?;
    }
    let generated = generate(&model, &prompt, n, &sampling, stop, |tokens| {
        if ui.json {
            return Ok(());
        }
        // Decode the whole continuation and print what is new, so multi-byte characters
        // split across tokens come out whole.
        let text = tok.decode(tokens)?;
        if text.len() > printed && !text.ends_with('\u{FFFD}') {
            write!(out, "{}", &text[printed..]).and_then(|_| out.flush()).map_err(|e| Error::io("<stdout>", e))?;
            printed = text.len();
        }
        Ok(())
    })?;
    let text = tok.decode(&generated.tokens)?;
    if ui.json {
        let mut v = serde_json::to_value(&generated)?;
        v["text"] = serde_json::json!(text);
        v["prompt_ids"] = serde_json::json!(prompt);
        v["prompt_tokens_per_sec"] = serde_json::json!(generated.prompt_tokens_per_sec());
        v["decode_tokens_per_sec"] = serde_json::json!(generated.decode_tokens_per_sec());
        ui.print_json(&v);
    } else {
        if text.len() > printed {
            write!(out, "{}", &text[printed..])?;
        }
        writeln!(out)?;
    }
    ui.detail(format!(
        "prompt: {} tokens in {:.3} s ({:.1} tokens/s); generation: {} steps in {:.3} s ({:.1} tokens/s)",
        generated.prompt_tokens,
        generated.prompt_seconds,
        generated.prompt_tokens_per_sec(),
        generated.decode_steps,
        generated.decode_seconds,
        generated.decode_tokens_per_sec()
    ));
    Ok(())
}
