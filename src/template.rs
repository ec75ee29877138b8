//! minijinja set-up shared by compile-time rendering, analysis and run-time script rendering.
//!
//! Shell templates (`.sh`, `.sh.j2`, inline `run:` scripts) auto-escape with shell quoting, so an interpolated
//! value can never inject a command; `| safe` opts out explicitly. Undefined values are errors, never "".

use std::collections::BTreeSet;

use minijinja::{AutoEscape, Environment, Error, UndefinedBehavior, Value};

/// Names the templates may use that are not data: minijinja's global functions.
const GLOBAL_FUNCTIONS: &[&str] = &[
    "range",
    "dict",
    "namespace",
    "debug",
    "lipsum",
    "cycler",
    "joiner",
];

/// The roots of the data a template can see.
pub const CONTEXT_ROOTS: &[&str] = &["vars", "run", "steps", "host"];

/// Auto-escape mode name for shell templates.
const SHELL: &str = "sh";

/// Whether a template with this name is a shell script and gets shell-quoting auto-escape.
pub fn is_shell_template(name: &str) -> bool {
    name.ends_with(".sh") || name.ends_with(".sh.j2") || name.ends_with("#run")
}

/// The name given to a step's inline `run:` script.
pub fn inline_script_name(step: &str) -> String {
    format!("steps.{step}#run")
}

/// A fresh environment: strict undefined, shell auto-escape for shell templates.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|name| {
        if is_shell_template(name) {
            AutoEscape::Custom(SHELL.into())
        } else {
            AutoEscape::None
        }
    });
    env.set_formatter(|out, state, value| {
        if matches!(state.auto_escape(), AutoEscape::Custom(name) if name == SHELL)
            && !value.is_safe()
        {
            let text = render_plain(value)?;
            let quoted = shlex::try_quote(&text).map_err(|_| {
                Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    "a value interpolated into a shell script contains a NUL byte",
                )
            })?;
            out.write_str(&quoted).map_err(Error::from)
        } else {
            minijinja::escape_formatter(out, state, value)
        }
    });
    env
}

fn render_plain(value: &Value) -> Result<String, Error> {
    if value.is_undefined() {
        return Err(Error::new(
            minijinja::ErrorKind::UndefinedError,
            "undefined value",
        ));
    }
    Ok(value.to_string())
}

/// A reference found in a template: a dotted path such as `vars.region` or `steps.train.outputs.dir`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reference(pub String);

impl Reference {
    pub fn root(&self) -> &str {
        self.0.split('.').next().unwrap_or("")
    }

    /// The second segment (`region` in `vars.region`), if any.
    pub fn member(&self) -> Option<&str> {
        self.0.split('.').nth(1)
    }
}

/// Parses `source` (reporting syntax errors) and returns the data it refers to.
pub fn references(
    env: &Environment<'_>,
    name: &str,
    source: &str,
) -> Result<BTreeSet<Reference>, Error> {
    let template = env.template_from_named_str(name, source)?;
    Ok(template
        .undeclared_variables(true)
        .into_iter()
        .filter(|v| !GLOBAL_FUNCTIONS.contains(&v.as_str()))
        .map(Reference)
        .collect())
}

/// How a step id is written in templates: Jinja would read `prep-data` as a subtraction.
pub fn step_alias(id: &str) -> String {
    id.replace('-', "_")
}

/// Converts serializable data into a template value.
pub fn value<T: serde::Serialize>(data: T) -> Value {
    Value::from(minijinja::value::Serde(data))
}

/// Whether a string is a template at all (plain strings skip the template engine).
pub fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}

/// Renders a string template with `ctx`.
pub fn render_str(
    env: &Environment<'_>,
    name: &str,
    source: &str,
    ctx: &Value,
) -> Result<String, Error> {
    env.template_from_named_str(name, source)?.render(ctx)
}

/// A minijinja error as one line: what failed, without minijinja's own position suffix.
pub fn error_message(e: &Error) -> String {
    let mut message = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(detail) = e.source() {
        message.push_str(&format!(" ({detail})"));
    }
    message
}

use std::error::Error as _;

#[cfg(test)]
mod tests {
    use super::*;

    fn render(name: &str, source: &str, ctx: serde_json::Value) -> Result<String, Error> {
        render_str(&environment(), name, source, &value(&ctx))
    }

    #[test]
    fn shell_templates_quote_values() {
        let out = render(
            "x.sh.j2",
            "echo {{ vars.msg }}",
            serde_json::json!({"vars": {"msg": "$(touch /tmp/x); echo"}}),
        )
        .expect("render");
        assert_eq!(out, "echo '$(touch /tmp/x); echo'");
    }

    #[test]
    fn safe_opts_out_explicitly() {
        let out = render(
            "x.sh",
            "{{ vars.cmd | safe }}",
            serde_json::json!({"vars": {"cmd": "a && b"}}),
        )
        .expect("render");
        assert_eq!(out, "a && b");
    }

    #[test]
    fn other_templates_are_not_quoted() {
        let out = render(
            "x.py.j2",
            "print({{ vars.n }})",
            serde_json::json!({"vars": {"n": "a b"}}),
        )
        .expect("render");
        assert_eq!(out, "print(a b)");
    }

    #[test]
    fn undefined_is_an_error_not_empty() {
        let err = render(
            "x.sh",
            "echo {{ vars.nope }}",
            serde_json::json!({"vars": {}}),
        )
        .expect_err("strict");
        assert_eq!(err.kind(), minijinja::ErrorKind::UndefinedError);
    }

    #[test]
    fn finds_nested_references() {
        let refs = references(
            &environment(),
            "t",
            "{{ steps.a.outputs.x }}{% for i in range(3) %}{{ i }}{% endfor %}",
        )
        .expect("parse");
        assert_eq!(
            refs.into_iter().collect::<Vec<_>>(),
            vec![Reference("steps.a.outputs.x".into())]
        );
    }
}
