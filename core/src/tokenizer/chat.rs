//! Chat templates: the model's Jinja template rendered with minijinja, with the variables and
//! helpers Hugging Face's `apply_chat_template` provides (`messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`, `raise_exception`, Python string methods).

use crate::error::{Error, Result};
use minijinja::{context, Environment, ErrorKind, Value};

/// Special-token texts a template may refer to.
pub(crate) struct TemplateTokens<'a> {
    pub bos: &'a str,
    pub eos: &'a str,
}

/// Renders `template` for `messages` (`(role, content)` pairs).
pub(crate) fn render(
    template: &str,
    messages: &[(&str, &str)],
    add_generation_prompt: bool,
    tokens: &TemplateTokens<'_>,
) -> Result<String> {
    let mut env = Environment::new();
    // Hugging Face renders with trim_blocks and lstrip_blocks on.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| Error::unsupported(format!("chat template does not parse: {e}")))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| Error::unsupported(format!("chat template: {e}")))?;
    let messages: Vec<Value> = messages
        .iter()
        .map(|(role, content)| context! { role => *role, content => *content })
        .collect();
    tmpl.render(context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => tokens.bos,
        eos_token => tokens.eos,
    })
    .map_err(|e| Error::invalid_config(format!("chat template failed: {e}")))
}

/// Marks the start of a message's content in a rendering (a Unicode noncharacter: never in
/// text that means something, and removed from contents before rendering).
const CONTENT_START: char = '\u{FDD0}';
/// Marks the end of a message's content.
const CONTENT_END: char = '\u{FDD1}';

/// A rendered chat prompt and where in it the messages' contents lie (byte ranges).
pub(crate) struct RenderedChat {
    /// The prompt, exactly as [`render`] gives it.
    pub text: String,
    /// Byte ranges of `text` that are message content (to be tokenized as plain text).
    pub contents: Vec<std::ops::Range<usize>>,
}

/// Renders `messages` and locates their contents: renders once plainly and once with every
/// content between markers; when the marked rendering minus its markers equals the plain one,
/// the markers give the ranges. A template that transforms contents (e.g. `.strip()`) breaks
/// that equality; then no range is known (`contents` is empty) and the caller must not trust
/// the text's control tokens.
pub(crate) fn render_with_contents(
    template: &str,
    messages: &[(&str, &str)],
    add_generation_prompt: bool,
    tokens: &TemplateTokens<'_>,
) -> Result<(RenderedChat, bool)> {
    let clean: Vec<(&str, String)> = messages
        .iter()
        .map(|(r, c)| (*r, c.replace([CONTENT_START, CONTENT_END], "")))
        .collect();
    let plain_msgs: Vec<(&str, &str)> = clean.iter().map(|(r, c)| (*r, c.as_str())).collect();
    let plain = render(template, &plain_msgs, add_generation_prompt, tokens)?;
    let marked_contents: Vec<String> = clean
        .iter()
        .map(|(_, c)| format!("{CONTENT_START}{c}{CONTENT_END}"))
        .collect();
    let marked_msgs: Vec<(&str, &str)> = clean
        .iter()
        .zip(&marked_contents)
        .map(|((r, _), c)| (*r, c.as_str()))
        .collect();
    let marked = render(template, &marked_msgs, add_generation_prompt, tokens)?;
    let mut text = String::with_capacity(plain.len());
    let mut contents = Vec::new();
    let mut open: Option<usize> = None;
    let mut balanced = true;
    for ch in marked.chars() {
        match ch {
            CONTENT_START => balanced &= open.replace(text.len()).is_none(),
            CONTENT_END => match open.take() {
                Some(start) => contents.push(start..text.len()),
                None => balanced = false,
            },
            c => text.push(c),
        }
    }
    let located = balanced && open.is_none() && text == plain;
    if !located {
        contents.clear();
    }
    Ok((
        RenderedChat {
            text: plain,
            contents,
        },
        located,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKENS: TemplateTokens<'static> = TemplateTokens {
        bos: "<s>",
        eos: "</s>",
    };

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let t = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'].strip() }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let out = render(t, &[("user", " Hi ")], true, &TOKENS).expect("render");
        assert_eq!(
            out,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn contents_are_located_unless_the_template_transforms_them() {
        let t = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}";
        let msgs = [("system", "Be nice"), ("user", "x<|im_end|>y\u{FDD0}")];
        let (r, located) = render_with_contents(t, &msgs, false, &TOKENS).expect("render");
        assert!(located);
        let spans: Vec<&str> = r.contents.iter().map(|c| &r.text[c.clone()]).collect();
        assert_eq!(spans, ["Be nice", "x<|im_end|>y"]);
        let strip =
            "{% for m in messages %}<|im_start|>{{ m['content'].strip() }}<|im_end|>{% endfor %}";
        let (r, located) =
            render_with_contents(strip, &[("user", " Hi ")], false, &TOKENS).expect("render");
        assert!(!located);
        assert!(r.contents.is_empty());
        assert_eq!(r.text, "<|im_start|>Hi<|im_end|>");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = "{{ bos_token }}{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}";
        assert_eq!(
            render(t, &[("user", "x")], false, &TOKENS).expect("ok"),
            "<s>"
        );
        let err = render(t, &[("system", "x")], false, &TOKENS).expect_err("must fail");
        assert!(err.message.contains("first must be user"), "{err}");
    }
}
