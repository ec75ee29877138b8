//! minijinja set-up shared by compile-time rendering, analysis and run-time script rendering.
//!
//! Run-step scripts are rendered by `render_script`, which escapes every value for the shell context it lands in
//! (`script_template`, `shell_context`, `shell_escape`); `| safe` opts out explicitly. Plan fields are rendered
//! without escaping: they are not scripts. Undefined values are errors, never "".

use std::collections::BTreeSet;

use minijinja::{AutoEscape, Environment, Error, UndefinedBehavior, Value};

use crate::script_template;

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

/// Auto-escape mode of script templates: every expression goes through the context escape filter.
const SHELL: &str = "sh";

/// The name given to a step's inline `run:` script.
pub fn inline_script_name(step: &str) -> String {
    format!("steps.{step}#run")
}

/// A fresh environment for plan fields and analysis: strict undefined, no escaping (nothing here is a script).
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_filter("tojson", tojson);
    env
}

/// `tojson` as a plain string: in a shell script it is then escaped for its context like any other value.
fn tojson(value: &Value) -> Result<Value, Error> {
    serde_json::to_string(value).map(Value::from).map_err(|e| {
        Error::new(
            minijinja::ErrorKind::InvalidOperation,
            "cannot serialize to JSON",
        )
        .with_source(e)
    })
}

/// Renders a run step's script. A shell script (no shebang, or a shell's) has every value escaped for the
/// shell context it lands in; a script for another interpreter is rendered as written (validation made each of
/// its expressions say `| tojson` or `| safe`).
pub fn render_script(name: &str, source: &str, ctx: &Value) -> Result<String, Error> {
    let prepared = script_template::prepare(source).map_err(|problems| {
        let p = &problems[0];
        Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("line {}:{}: {} ({})", p.line, p.column, p.message, p.help),
        )
    })?;
    if !prepared.shell {
        return render_str(&environment(), name, source, ctx);
    }
    let escapes = std::sync::Arc::new(prepared.escapes);
    let mut env = environment();
    env.set_auto_escape_callback(|_| AutoEscape::Custom(SHELL.into()));
    env.add_filter(
        script_template::ESCAPE_FILTER,
        move |value: &Value, slot: usize| -> Result<Value, Error> {
            if value.is_safe() {
                return Ok(value.clone());
            }
            let escape = escapes.get(slot).ok_or_else(|| {
                Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    "unknown escape slot",
                )
            })?;
            let text = render_plain(value)?;
            escape
                .apply(&text)
                .map(Value::from_safe_string)
                .map_err(|why| {
                    Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!("a value cannot be placed in {}: {}", escape.name(), why.0),
                    )
                })
        },
    );
    // Fail closed: a value that did not pass the escape filter is never written into a script.
    env.set_formatter(|out, state, value| {
        if matches!(state.auto_escape(), AutoEscape::Custom(name) if name == SHELL)
            && !value.is_safe()
        {
            return Err(Error::new(
                minijinja::ErrorKind::InvalidOperation,
                "a value reached a shell script without being escaped for its context",
            ));
        }
        minijinja::escape_formatter(out, state, value)
    });
    env.template_from_named_str(name, &prepared.source)?
        .render(ctx)
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
        render_script(name, source, &value(&ctx))
    }

    fn msg(source: &str) -> String {
        render(
            "t",
            source,
            serde_json::json!({"vars": {"msg": "$(touch /tmp/x); echo"}}),
        )
        .expect("render")
    }

    #[test]
    fn shell_values_are_escaped_for_their_context() {
        assert_eq!(msg("echo {{ vars.msg }}"), "echo '$(touch /tmp/x); echo'");
        assert_eq!(
            msg("echo \"{{ vars.msg }}\""),
            "echo \"\\$(touch /tmp/x); echo\""
        );
        assert_eq!(msg("echo '{{ vars.msg }}'"), "echo '$(touch /tmp/x); echo'");
        assert_eq!(
            msg("cat <<EOF\n{{ vars.msg }}\nEOF"),
            "cat <<EOF\n\\$(touch /tmp/x); echo\nEOF"
        );
    }

    #[test]
    fn the_file_name_does_not_decide() {
        for name in ["job", "job.bash", "job.j2", "x.py.j2"] {
            let out = render(
                name,
                "echo {{ vars.m }}",
                serde_json::json!({"vars": {"m": "a b"}}),
            )
            .expect("render");
            assert_eq!(out, "echo 'a b'", "{name}");
        }
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
    fn other_interpreters_take_explicit_filters() {
        let out = render(
            "x",
            "#!/usr/bin/env python3\nprint({{ vars.n | tojson }})",
            serde_json::json!({"vars": {"n": "a'b"}}),
        )
        .expect("render");
        assert_eq!(out, "#!/usr/bin/env python3\nprint(\"a'b\")");
        let err = render(
            "x",
            "#!/usr/bin/env python3\nprint({{ vars.n }})",
            serde_json::json!({"vars": {"n": "x"}}),
        )
        .expect_err("refused");
        assert!(err.to_string().contains("tojson"), "{err}");
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
