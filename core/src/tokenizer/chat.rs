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
