//! What each fuzz target checks, as plain functions of the input bytes: a property that fails panics.
//!
//! Two users: the fuzz targets (fuzz/fuzz_targets/*.rs, one line each, built by cargo-fuzz with libFuzzer), and
//! the corpus regression test of the main crate (tests/fuzz_corpus.rs includes this file with `#[path]`), which
//! replays every committed corpus input on stable Rust in `cargo test`. So this file compiles in both crates and
//! uses only what both depend on: sortie, serde_json, tempfile.

use std::path::{Path, PathBuf};

use sortie::compiler::{compile, valid_name};
use sortie::plan::Plan;
use sortie::script_template::{self, Interpreter};
use sortie::state::dir_store::DirStore;
use sortie::state::{is_run_id, RunState};
use sortie::template;
use sortie::variables::Overrides;
use sortie::yaml;

/// The repository: the main crate's directory, or the parent of the fuzz crate's.
fn repo() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|d| d.join("fuzz/src/checks.rs").is_file())
        .unwrap_or(manifest)
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------------------------------
// plan_compile

thread_local! {
    /// One plan directory per thread (a temp dir per input would cost more than the compile), laid out like the
    /// repo so that seeds naming script files (`../templates/x.sh.j2`, `templates/ok.sh.j2`) find them.
    static PLAN_DIR: (tempfile::TempDir, PathBuf) = plan_dir();
}

fn plan_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temp dir for the plan");
    let repo = repo();
    copy_dir(&repo.join("templates"), &dir.path().join("templates"));
    let fixtures = repo.join("tests/fixtures/invalid/templates");
    copy_dir(&fixtures, &dir.path().join("templates"));
    copy_dir(&fixtures, &dir.path().join("plans/templates"));
    let path = dir.path().join("plans/plan.yaml");
    (dir, path)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy's directory");
    let entries = std::fs::read_dir(from).expect("read the directory to copy");
    for entry in entries.flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy a template");
    }
}

/// The plan compiler on arbitrary bytes: it returns a plan or diagnostics, never panics, and the diagnostics
/// (and warnings) render against the source, wherever their spans fall.
pub fn plan_compile(data: &[u8]) {
    PLAN_DIR.with(|(_, path)| {
        std::fs::write(path, data).expect("write the plan");
        match compile(path, &Overrides::default()) {
            Ok(compiled) => {
                let _ = compiled.render_warnings();
                let plan = &compiled.plan;
                assert_eq!(
                    plan.dag.order().len(),
                    plan.steps.len(),
                    "the DAG orders every step once"
                );
            }
            Err(invalid) => {
                assert!(
                    !invalid.diagnostics.is_empty(),
                    "an invalid plan names a problem"
                );
                let _ = invalid.render();
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------------------------
// yaml_parse

/// The YAML layer on arbitrary text: parsing (with its event pass for error positions) and the span index never
/// panic.
pub fn yaml_parse(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    match yaml::parse(source) {
        Ok(doc) => {
            let _ = yaml::to_json(&doc.value);
            let _ = yaml::scalar_text(&doc.value);
            if let yaml::Value::Mapping(map) = &doc.value {
                for key in map.keys() {
                    let path = yaml::scalar_text(key);
                    let _ = doc.spans.key(&path);
                    let _ = doc.spans.value(&path);
                    let _ = doc.spans.nearest(&format!("{path}.x[0]"));
                }
            }
        }
        Err(e) => {
            let _ = (e.message, e.span, e.help);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// state_load

/// The plan and run the state seeds belong to (examples/quickstart.yaml).
const STATE_PLAN: &str = "quickstart";
const STATE_RUN: &str = "20261201-040520-873-ca";

thread_local! {
    static STATE_ROOT: tempfile::TempDir = tempfile::tempdir().expect("a temp dir for the state store");
    /// The plan a loaded state is applied against (re-entry decides each step from it).
    static STATE_PLAN_COMPILED: Plan = compile(&repo().join("examples/quickstart.yaml"), &Overrides::default())
        .map(|c| c.plan)
        .unwrap_or_else(|invalid| panic!("examples/quickstart.yaml compiles: {}", invalid.render()));
}

/// The plan and run a state document is stored as: its own `plan` and `run_id` when they are names sortie could
/// have written (so that mutated documents still get past the identity check), else the seeds'.
fn stored_as(data: &[u8]) -> (String, String) {
    let doc: Option<serde_json::Value> = serde_json::from_slice(data).ok();
    let field = |key: &str| {
        doc.as_ref()
            .and_then(|d| d.get(key))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    };
    let plan = field("plan")
        .filter(|p| valid_name(p))
        .unwrap_or_else(|| STATE_PLAN.to_string());
    let run = field("run_id")
        .filter(|r| is_run_id(r))
        .unwrap_or_else(|| STATE_RUN.to_string());
    (plan, run)
}

/// The directory store's state reader on arbitrary bytes (state is untrusted: S3, a CI artifact): a state file
/// loads, or is refused with an error naming it, never a panic. What loads saves and loads back unchanged, and
/// re-entry (deciding what an apply does with each step) works on it.
pub fn state_load(data: &[u8]) {
    let (plan, run) = stored_as(data);
    STATE_ROOT.with(|root| {
        let store = DirStore::new(root.path().to_path_buf(), &plan);
        let path = store.state_path(&run);
        let run_dir = path.parent().expect("the state file is in a run directory");
        std::fs::create_dir_all(run_dir).expect("create the run directory");
        std::fs::write(&path, data).expect("write the state file");
        let loaded = store.load(&run);
        std::fs::remove_dir_all(root.path().join(&plan)).expect("remove the plan's state");
        match loaded {
            Ok(Some(state)) => loaded_state(&state),
            Ok(None) => panic!("an existing state file loaded as missing"),
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.contains("state.json"),
                    "the error does not name the file: {message}"
                );
            }
        }
    });
}

fn loaded_state(state: &RunState) {
    let text = serde_json::to_vec(state).expect("a loaded state serializes");
    let again: RunState = serde_json::from_slice(&text).expect("a saved state loads back");
    assert_eq!(&again, state, "the state changed on a save/load round trip");
    for id in state.steps.keys() {
        let _ = state.step(id).status.is_final();
    }
    STATE_PLAN_COMPILED.with(|plan| {
        let decisions = sortie::run::walker::decide(plan, state, None);
        assert_eq!(decisions.len(), plan.steps.len(), "a decision per step");
        let from = plan.steps.len() / 2;
        let _ = sortie::run::walker::decide(plan, state, Some(from));
    });
}

// ---------------------------------------------------------------------------------------------------------------
// template_render

/// What the script starts with, chosen by the first input byte: no shebang (run by `sh`), a shell's, another
/// interpreter's.
const SHEBANGS: &[&str] = &[
    "",
    "#!/bin/sh\n",
    "#!/bin/bash\n",
    "#!/usr/bin/env python3\n",
];

/// Template parsing, analysis and rendering on a fuzzed template with a fuzzed value: plan fields (the plain
/// environment) and run scripts (`script_template::prepare`, then `render_script`, the path every run step takes)
/// never panic, and every refusal says where and why.
///
/// Input: one byte choosing the shebang, then the template source, a 0xFF byte, and the value (0xFF never occurs
/// in UTF-8, so it cannot be part of either text).
pub fn template_render(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (source, value) = match rest.iter().position(|&b| b == 0xFF) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let shebang = SHEBANGS[usize::from(selector) % SHEBANGS.len()];
    let source = format!("{shebang}{}", String::from_utf8_lossy(source));
    let value = String::from_utf8_lossy(value);
    let ctx = template::value(serde_json::json!({
        "vars": {"v": value, "n": 3, "list": [value, "a b", 1], "map": {"k": value}, "flag": true},
        "run": {"id": value},
        "steps": {"train": {"outputs": {"dir": value}}},
        "host": {"workdir": "/tmp/w"},
    }));

    // A plan field.
    let env = template::environment();
    let _ = template::is_template(&source);
    let _ = template::references(&env, "vars.field", &source);
    let _ = template::render_str(&env, "vars.field", &source, &ctx);

    // A run step's script.
    match script_template::prepare(&source) {
        Ok(prepared) => {
            let shell = script_template::interpreter(&source) == Interpreter::Shell;
            assert_eq!(prepared.shell, shell, "prepare and interpreter disagree");
        }
        Err(problems) => {
            assert!(!problems.is_empty(), "a refused script names a problem");
            for p in &problems {
                assert!(
                    p.line >= 1 && p.column >= 1,
                    "a problem without a position: {p:?}"
                );
                assert!(!p.message.is_empty() && !p.help.is_empty(), "{p:?}");
            }
        }
    }
    if let Err(e) = template::render_script("steps.fuzz#run", &source, &ctx) {
        assert!(!template::error_message(&e).is_empty());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// template_shell_contexts

/// A fuzzed value in fixed run scripts, one per shell context the renderer escapes for. Where rendering succeeds,
/// reading the script back the way POSIX sh does (the decoders below, which refuse anything they cannot read
/// exactly: an unquoted expansion, glob, operator, a heredoc line that is the delimiter) must give exactly the
/// value. Where it fails, it is a refusal of the value, and values with a sure exact escape are never refused.
pub fn template_shell_contexts(data: &[u8]) {
    let value = String::from_utf8_lossy(data);
    let value = value.as_ref();
    for context in SHELL_CONTEXTS {
        let ctx = template::value(serde_json::json!({"vars": {"v": value}}));
        match template::render_script("steps.fuzz#run", context.script, &ctx) {
            Ok(out) => match (context.read)(&out) {
                Ok(got) if got == (context.expect)(value) => {}
                Ok(got) => panic!(
                    "{}: the shell reads {got:?}, not {:?}; value {value:?}, script {out:?}",
                    context.name,
                    (context.expect)(value)
                ),
                Err(why) => panic!("{}: {why}; value {value:?}, script {out:?}", context.name),
            },
            Err(e) => {
                let message = template::error_message(&e);
                assert!(
                    message.contains("cannot be placed in"),
                    "{}: not a refusal of the value: {message}",
                    context.name
                );
                assert!(
                    !(context.escapable)(value),
                    "{}: refused the value {value:?}: {message}",
                    context.name
                );
            }
        }
    }
}

/// A shell context: a script with `{{ vars.v }}` in it, how sh reads the script back, what it should read for a
/// value, and which values certainly have an exact escape there.
struct ShellContext {
    name: &'static str,
    script: &'static str,
    read: fn(&str) -> Result<String, String>,
    expect: fn(&str) -> String,
    escapable: fn(&str) -> bool,
}

const SHELL_CONTEXTS: &[ShellContext] = &[
    ShellContext {
        name: "bare",
        script: "printf '%s' {{ vars.v }}",
        read: |out| printf_arg(out, "", ""),
        expect: same,
        escapable: any_text,
    },
    ShellContext {
        name: "double quotes",
        script: "printf '%s' \"{{ vars.v }}\"",
        read: |out| printf_arg(out, "", ""),
        expect: same,
        escapable: any_text,
    },
    ShellContext {
        name: "single quotes",
        script: "printf '%s' '{{ vars.v }}'",
        read: |out| printf_arg(out, "", ""),
        expect: same,
        escapable: any_text,
    },
    ShellContext {
        name: "assignment",
        script: "v=pre-{{ vars.v }}-post",
        read: |out| one_word(out, ""),
        expect: |v| format!("v=pre-{v}-post"),
        escapable: any_text,
    },
    ShellContext {
        name: "assignment in double quotes",
        script: "v=\"pre-{{ vars.v }}\"",
        read: |out| one_word(out, ""),
        expect: |v| format!("v=pre-{v}"),
        escapable: any_text,
    },
    ShellContext {
        name: "command substitution",
        script: "v=$(printf '%s' {{ vars.v }})",
        read: |out| command_substitution(out, "v=$(", ")"),
        expect: same,
        escapable: any_text,
    },
    ShellContext {
        name: "double quotes in a command substitution in double quotes",
        script: "v=\"$(printf '%s' \"{{ vars.v }}\")\"",
        read: |out| command_substitution(out, "v=\"$(", ")\""),
        expect: same,
        escapable: any_text,
    },
    ShellContext {
        name: "backquotes",
        script: "v=`printf '%s' {{ vars.v }}`",
        read: backquoted,
        expect: same,
        escapable: any_text,
    },
    ShellContext {
        name: "single quotes in backquotes",
        script: "v=`printf '%s' '{{ vars.v }}'`",
        read: backquoted,
        expect: same,
        escapable: any_text,
    },
    ShellContext {
        name: "heredoc",
        script: "cat <<EOF\n{{ vars.v }}\nEOF",
        read: |out| heredoc(out, "cat <<EOF", "EOF", false, false),
        expect: line,
        escapable: no_delimiter_text,
    },
    ShellContext {
        name: "quoted heredoc",
        script: "cat <<'EOF'\n{{ vars.v }}\nEOF",
        read: |out| heredoc(out, "cat <<'EOF'", "EOF", true, false),
        expect: line,
        escapable: no_delimiter_text,
    },
    ShellContext {
        name: "heredoc with <<-",
        script: "cat <<-EOF\n{{ vars.v }}\n\tEOF",
        read: |out| heredoc(out, "cat <<-EOF", "EOF", false, true),
        expect: line,
        escapable: no_delimiter_text,
    },
    ShellContext {
        name: "quoted heredoc with <<-, indented",
        script: "cat <<-\"EOF\"\n\t{{ vars.v }}\nEOF",
        read: |out| heredoc(out, "cat <<-\"EOF\"", "EOF", true, true),
        expect: line,
        escapable: no_delimiter_text,
    },
    ShellContext {
        name: "heredoc, text around the value",
        script: "cat <<EOF\nE{{ vars.v }}F\nEOF",
        read: |out| heredoc(out, "cat <<EOF", "EOF", false, false),
        expect: |v| format!("E{v}F\n"),
        escapable: |v| no_delimiter_text(v) && !v.contains(['E', 'O', 'F']),
    },
    ShellContext {
        name: "heredoc, two values on a line",
        script: "cat <<'EOF'\n{{ vars.v }}{{ vars.v }}\nEOF",
        read: |out| heredoc(out, "cat <<'EOF'", "EOF", true, false),
        expect: |v| format!("{v}{v}\n"),
        // The other value is unknown to the escaper: an empty first or last line could meet it to form `EOF`.
        escapable: |v| {
            no_delimiter_text(v)
                && !v.contains(['E', 'O', 'F'])
                && !v.starts_with('\n')
                && !v.ends_with('\n')
                && !v.is_empty()
        },
    },
    ShellContext {
        name: "arithmetic",
        script: "echo $(( {{ vars.v }} ))",
        read: |out| arithmetic(out, "echo $(( ", " ))", ""),
        expect: decimal,
        escapable: small_integer,
    },
    ShellContext {
        name: "arithmetic after a minus",
        script: "echo $((1-{{ vars.v }}))",
        read: |out| arithmetic(out, "echo $((", "))", "1-"),
        expect: decimal,
        escapable: small_integer,
    },
    ShellContext {
        name: "comment",
        script: "echo a # {{ vars.v }}\necho b",
        read: comment,
        expect: same,
        escapable: |v| !v.contains(['\0', '\n', '\r']),
    },
];

fn same(v: &str) -> String {
    v.to_string()
}

/// An integer value as the decimal number it means (`007` is 7); other values as they are.
fn decimal(v: &str) -> String {
    v.parse::<i128>()
        .map_or_else(|_| v.to_string(), |n| n.to_string())
}

/// A heredoc body line: the value and the line's newline.
fn line(v: &str) -> String {
    format!("{v}\n")
}

/// Anything but NUL, which no shell script can hold.
fn any_text(v: &str) -> bool {
    !v.contains('\0')
}

/// Values that cannot form (part of) the delimiter line `EOF`, nor lose leading tabs to `<<-`.
fn no_delimiter_text(v: &str) -> bool {
    any_text(v) && !v.contains("EOF") && !v.contains('\t')
}

/// Decimal integers that certainly fit the shell's integers (C `long`, 64 bits).
fn small_integer(v: &str) -> bool {
    let digits = v.strip_prefix('-').unwrap_or(v);
    (1..=18).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Splits the text of one simple command into its words as sh does, where nothing but quote removal happens:
/// anything that would expand, glob, redirect, end or extend the command is an error (unquoted `$`, `` ` ``,
/// `*`, `?`, `[`, `~`, `{`, `}` (bash brace expansion), `#` at the start of a word, `;`, `&`, `|`, `<`, `>`,
/// `(`, `)`, a newline, an unclosed quote, a trailing backslash).
fn sh_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(e) => {
                    word.push(e);
                    in_word = true;
                }
                None => return Err("a trailing backslash".into()),
            },
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("an unclosed single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('\n') => {}
                            Some(e @ ('$' | '`' | '"' | '\\')) => word.push(e),
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                            None => return Err("an unclosed double quote".into()),
                        },
                        Some(e @ ('$' | '`')) => {
                            return Err(format!("an unescaped `{e}` in double quotes expands"))
                        }
                        Some(c) => word.push(c),
                        None => return Err("an unclosed double quote".into()),
                    }
                }
            }
            '#' if !in_word => return Err("a `#` starts a comment".into()),
            '$' | '`' => return Err(format!("an unquoted `{c}` expands")),
            '*' | '?' | '[' | '~' | '{' | '}' => {
                return Err(format!("an unquoted `{c}` is a pattern or expansion"))
            }
            ';' | '&' | '|' | '<' | '>' | '(' | ')' | '\n' => {
                return Err(format!("an unquoted {c:?} ends or redirects the command"))
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// `prefix printf '%s' X suffix` (prefix and suffix literal, around a command): X as sh reads it.
fn printf_arg(out: &str, prefix: &str, suffix: &str) -> Result<String, String> {
    let command = out
        .strip_prefix(prefix)
        .and_then(|o| o.strip_suffix(suffix))
        .ok_or("the text around the command changed")?;
    match sh_words(command)?.as_slice() {
        [printf, format, arg] if printf == "printf" && format == "%s" => Ok(arg.clone()),
        words => Err(format!("the command has the words {words:?}")),
    }
}

/// A script that is one word (an assignment): the word as sh reads it.
fn one_word(out: &str, prefix: &str) -> Result<String, String> {
    let text = out
        .strip_prefix(prefix)
        .ok_or("the script's start changed")?;
    match sh_words(text)?.as_slice() {
        [word] => Ok(word.clone()),
        words => Err(format!("the script has the words {words:?}")),
    }
}

/// `v=$(printf '%s' X)` and the like: the command inside `$(…)` must stay a plain `printf` (a `)` in it would
/// end the substitution early, which `sh_words` refuses).
fn command_substitution(out: &str, prefix: &str, suffix: &str) -> Result<String, String> {
    printf_arg(out, prefix, suffix)
}

/// `` v=`printf '%s' X` ``: inside backquotes a backslash before `$`, `` ` `` or `\` is removed first (POSIX), then
/// the command is read; an unescaped backquote ends the substitution.
fn backquoted(out: &str) -> Result<String, String> {
    let inner = out
        .strip_prefix("v=`")
        .and_then(|o| o.strip_suffix('`'))
        .ok_or("the text around the backquotes changed")?;
    let mut command = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('$' | '`' | '\\')) => command.push(e),
                Some(other) => {
                    command.push('\\');
                    command.push(other);
                }
                None => return Err("a trailing backslash in backquotes".into()),
            },
            '`' => return Err("an unescaped backquote ends the substitution early".into()),
            c => command.push(c),
        }
    }
    printf_arg(&command, "", "")
}

/// `opener` (`cat <<EOF`), a newline, then the body up to the first line that is exactly `delimiter` (after
/// removing leading tabs, for `<<-`), which must be the script's last line: the text `cat` reads.
fn heredoc(
    out: &str,
    opener: &str,
    delimiter: &str,
    quoted: bool,
    strip_tabs: bool,
) -> Result<String, String> {
    let rest = out
        .strip_prefix(opener)
        .and_then(|r| r.strip_prefix('\n'))
        .ok_or("the heredoc's opener changed")?;
    let lines: Vec<&str> = rest.split('\n').collect();
    let mut body = String::new();
    for (i, raw) in lines.iter().enumerate() {
        let text = if strip_tabs {
            raw.trim_start_matches('\t')
        } else {
            raw
        };
        if text == delimiter {
            return if i + 1 == lines.len() {
                Ok(body)
            } else {
                Err(format!(
                    "line {} is the delimiter: the heredoc ends early, the rest runs",
                    i + 2
                ))
            };
        }
        if quoted {
            body.push_str(text);
        } else {
            body.push_str(&unquoted_heredoc_line(text)?);
        }
        body.push('\n');
    }
    Err("the heredoc never ends".into())
}

/// The empty expansion the escaper puts before a non-ASCII character that follows a delimiter-like line start
/// (dash would lose a byte there): `${NAME:+}` is empty whether NAME is set or not.
const EMPTY_EXPANSION: &str = "${SORTIE_NONE:+}";

/// A line of an unquoted heredoc body: `\` escapes `$`, `` ` `` and `\` (and would join the next line at the
/// end of one, which makes where the body ends depend on the shell: refused); `$` and `` ` `` expand, except in
/// the one empty expansion the escaper writes.
fn unquoted_heredoc_line(text: &str) -> Result<String, String> {
    let mut decoded = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '$' && chars.as_str().starts_with(&EMPTY_EXPANSION[1..]) {
            chars = chars.as_str()[EMPTY_EXPANSION.len() - 1..].chars();
            continue;
        }
        match c {
            '\\' => match chars.next() {
                Some(e @ ('$' | '`' | '\\')) => decoded.push(e),
                Some(other) => {
                    decoded.push('\\');
                    decoded.push(other);
                }
                None => return Err("a backslash ends a line: it joins the next one".into()),
            },
            '$' | '`' => return Err(format!("an unescaped `{c}` in a heredoc expands")),
            c => decoded.push(c),
        }
    }
    Ok(decoded)
}

/// `$(( … ))` around `before` and the value: the operand after `before` as sh evaluates it, where only integer
/// constants (C syntax: `0x` hexadecimal, a leading `0` octal), unary and binary `+` and `-`, and parentheses are
/// allowed here. The whole expression is read, so that a `--` formed across `before` and the value is caught; the
/// value must be one operand, and is given back in decimal.
fn arithmetic(out: &str, prefix: &str, suffix: &str, before: &str) -> Result<String, String> {
    let inner = out
        .strip_prefix(prefix)
        .and_then(|o| o.strip_suffix(suffix))
        .ok_or("the text around the arithmetic changed")?;
    let tokens = arith_tokens(inner)?;
    let before = arith_tokens(before)?;
    if !tokens.starts_with(&before) {
        return Err(format!(
            "arithmetic {inner:?} changed the text before the value"
        ));
    }
    let mut parser = Arith {
        tokens,
        at: before.len(),
    };
    let operand = parser.unary()?;
    if parser.at != parser.tokens.len() {
        return Err(format!(
            "in arithmetic {inner:?} the value is not one operand"
        ));
    }
    Ok(operand.to_string())
}

#[derive(Debug, Clone, PartialEq)]
enum ArithToken {
    Number(i128),
    Plus,
    Minus,
    Open,
    Close,
}

fn arith_tokens(text: &str) -> Result<Vec<ArithToken>, String> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\n' => i += 1,
            b'+' | b'-' => {
                if bytes.get(i + 1) == Some(&c) {
                    return Err(format!(
                        "`{0}{0}` reads as the increment or decrement operator",
                        char::from(c)
                    ));
                }
                tokens.push(if c == b'+' {
                    ArithToken::Plus
                } else {
                    ArithToken::Minus
                });
                i += 1;
            }
            b'(' => {
                tokens.push(ArithToken::Open);
                i += 1;
            }
            b')' => {
                tokens.push(ArithToken::Close);
                i += 1;
            }
            b'0'..=b'9' => {
                let start = i;
                while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
                    i += 1;
                }
                tokens.push(ArithToken::Number(c_integer(&text[start..i])?));
            }
            _ => {
                return Err(format!(
                    "{:?} in arithmetic is an operator or a variable",
                    char::from(c)
                ))
            }
        }
    }
    Ok(tokens)
}

/// A C integer constant as sh arithmetic reads it: `0x1f`, `017` (octal), `42`.
fn c_integer(text: &str) -> Result<i128, String> {
    let (digits, radix) =
        if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            (hex, 16)
        } else if text.len() > 1 && text.starts_with('0') {
            (&text[1..], 8)
        } else {
            (text, 10)
        };
    if digits.len() > 30 {
        return Err(format!(
            "the constant {text} overflows the shell's integers"
        ));
    }
    let n = i128::from_str_radix(digits, radix)
        .map_err(|_| format!("{text} is not a C integer constant"))?;
    // dash saturates a constant beyond the shell's integers, bash wraps it.
    if n > i128::from(i64::MAX) {
        return Err(format!(
            "the constant {text} overflows the shell's integers"
        ));
    }
    Ok(n)
}

/// sum := unary (('+' | '-') unary)*; unary := ('+' | '-') unary | '(' sum ')' | number. The constants are at most
/// `i64::MAX`, and the expressions short, so i128 does not overflow before the checked sums do.
struct Arith {
    tokens: Vec<ArithToken>,
    at: usize,
}

impl Arith {
    fn next(&mut self) -> Option<ArithToken> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn sum(&mut self) -> Result<i128, String> {
        let mut total = self.unary()?;
        while let Some(op @ (ArithToken::Plus | ArithToken::Minus)) = self.tokens.get(self.at) {
            let minus = *op == ArithToken::Minus;
            self.at += 1;
            let operand = self.unary()?;
            total = if minus {
                total.checked_sub(operand)
            } else {
                total.checked_add(operand)
            }
            .filter(|t| t.unsigned_abs() <= i64::MAX.unsigned_abs().into())
            .ok_or("arithmetic overflows the shell's integers")?;
        }
        Ok(total)
    }

    fn unary(&mut self) -> Result<i128, String> {
        match self.next() {
            Some(ArithToken::Plus) => self.unary(),
            Some(ArithToken::Minus) => Ok(-self.unary()?),
            Some(ArithToken::Open) => {
                let inner = self.sum()?;
                match self.next() {
                    Some(ArithToken::Close) => Ok(inner),
                    _ => Err("an unclosed parenthesis in arithmetic".into()),
                }
            }
            Some(ArithToken::Number(n)) => Ok(n),
            other => Err(format!("arithmetic expects a number, found {other:?}")),
        }
    }
}

/// `echo a # X\necho b`: the comment runs to the end of its line, and the next line must be the template's.
fn comment(out: &str) -> Result<String, String> {
    let rest = out
        .strip_prefix("echo a # ")
        .ok_or("the text before the comment changed")?;
    let (text, after) = rest
        .split_once('\n')
        .ok_or("the line after the comment is gone")?;
    if after == "echo b" {
        Ok(text.to_string())
    } else {
        Err(format!(
            "the comment ended early, the script runs {after:?}"
        ))
    }
}
