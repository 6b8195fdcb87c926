//! Chat templates: a model's Jinja `chat_template` applied to a conversation, as transformers
//! renders it (`apply_chat_template`: `trim_blocks` and `lstrip_blocks` on, `messages`,
//! `add_generation_prompt`, `bos_token`/`eos_token`, `raise_exception`, `strftime_now`), with
//! minijinja and Python's string methods (`.strip()`, `.split()`, …) from minijinja-contrib.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;

use crate::error::{Error, Result};

#[derive(Serialize)]
pub struct Message<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

/// The prompt text of `messages` under `template`, ending with the assistant's turn opened when
/// `add_generation_prompt`.
pub fn render(
    template: &str,
    messages: &[Message<'_>],
    bos: &str,
    eos: &str,
    add_generation_prompt: bool,
) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, JinjaError> {
        Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
    let bad = |e: JinjaError| Error::Tokenizer(format!("chat template: {e:#}"));
    env.add_template("chat", template).map_err(bad)?;
    env.get_template("chat")
        .map_err(bad)?
        .render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos,
            eos_token => eos,
        })
        .map_err(bad)
}

/// Today's date (UTC) for the Llama-3.x templates' `strftime_now("%d %b %Y")`: `%d %m %Y %y %b
/// %B` and `%%`.
fn strftime_now(fmt: &str) -> String {
    let days =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() / 86_400).unwrap_or(0)
            as i64;
    let (y, m, d) = civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Year, month, day of a day count since 1970-01-01 (the proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_791), (2026, 12, 4));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn chatml_and_llama2_style_templates() {
        let chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + \
                      '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% \
                      endif %}";
        let m = [Message { role: "user", content: "Hi" }];
        assert_eq!(
            render(chatml, &m, "", "", true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        // Python string methods, raise_exception, bos_token, trim_blocks.
        let llama2 = "{{ bos_token }}{% for message in messages %}\n{% if message['role'] != 'user' %}{{ \
                      raise_exception('only user turns') }}{% endif %}\n{{ '[INST] ' + message['content'].strip() + ' \
                      [/INST]' }}\n{% endfor %}";
        let m = [Message { role: "user", content: "  Hello  " }];
        // trim_blocks eats the newline after a block tag, not after an expression (as Jinja2).
        assert_eq!(render(llama2, &m, "<s>", "</s>", true).unwrap(), "<s>[INST] Hello [/INST]\n");
        let m = [Message { role: "system", content: "x" }];
        assert!(render(llama2, &m, "<s>", "</s>", true).unwrap_err().to_string().contains("only user turns"));
        assert!(render("{% if %}", &m, "", "", true).unwrap_err().to_string().contains("chat template"));
        assert_eq!(strftime_now("%d %b %Y").len(), 11);
    }
}
