//! Template injection: a value interpolated into a script reaches it byte for byte in every shell context, and
//! never runs a command. The real `plan` binary applies plans whose steps write the value they received to a
//! file and publish its hex dump as an output; a marker file that every hostile value tries to create must never
//! exist. Each context runs under dash (no shebang: the wrapper's `sh`) and under bash (a `#!/bin/bash` shebang).

use std::path::Path;
use std::time::Duration;

use serde_json::Value as Json;

use crate::apply::{run_plan, status_json};
use crate::test_builder::Test;
use crate::test_builder::{Deadline as _, DEADLINE};

/// A shell context: the script lines that store `{{ vars.X }}` in `got`, and what `got` then holds.
struct Context {
    name: &'static str,
    script: &'static str,
    expect: fn(&str) -> Option<String>,
}

fn same(v: &str) -> Option<String> {
    Some(v.to_string())
}
fn dot(v: &str) -> Option<String> {
    Some(format!("{v}."))
}
/// A heredoc line: refused when the value could end the heredoc.
fn heredoc(v: &str) -> Option<String> {
    (!v.split('\n').any(|l| l.trim_start_matches('\t') == "EOF")).then(|| format!("{v}\n"))
}
/// dash loses the first byte of a non-ASCII character that follows a delimiter-like start of a heredoc line
/// (`Eé` before `EOF`); an unquoted heredoc avoids it with an empty expansion, a quoted one refuses the value.
fn dash_hazard(v: &str) -> bool {
    v.split('\n').any(|l| {
        let common = l
            .bytes()
            .zip("EOF".bytes())
            .take_while(|(a, b)| a == b)
            .count();
        common >= 1 && l.as_bytes().get(common).is_some_and(|b| *b >= 0x80)
    })
}
/// A quoted heredoc line: also refused for the dash hazard.
fn heredoc_quoted(v: &str) -> Option<String> {
    heredoc(v).filter(|_| !dash_hazard(v))
}
/// A quoted `<<-` heredoc line: also refused when a line of the value starts with a tab, which `<<-` strips.
fn heredoc_dash(v: &str) -> Option<String> {
    heredoc_quoted(v).filter(|_| !v.split('\n').any(|l| l.starts_with('\t')))
}
fn integer(v: &str) -> Option<String> {
    v.parse::<i64>().ok().map(|n| format!("{n}\n"))
}
fn one_minus(v: &str) -> Option<String> {
    v.parse::<i64>().ok().map(|n| format!("{}\n", 1 - n))
}
fn comment(v: &str) -> Option<String> {
    (!v.contains(['\n', '\r'])).then(|| "ok".to_string())
}

const CONTEXTS: &[Context] = &[
    Context {
        name: "bare",
        script: "printf '%s' {{ vars.X }} > got",
        expect: same,
    },
    Context {
        name: "double",
        script: "printf '%s' \"{{ vars.X }}\" > got",
        expect: same,
    },
    Context {
        name: "single",
        script: "printf '%s' '{{ vars.X }}' > got",
        expect: same,
    },
    Context {
        name: "assign",
        script: "v=\"pre-{{ vars.X }}\"; printf '%s' \"${v#pre-}\" > got",
        expect: same,
    },
    Context {
        name: "heredoc",
        script: "cat > got <<EOF\n{{ vars.X }}\nEOF",
        expect: heredoc,
    },
    Context {
        name: "heredoc_quoted",
        script: "cat > got <<'EOF'\n{{ vars.X }}\nEOF",
        expect: heredoc_quoted,
    },
    Context {
        name: "heredoc_dash",
        script: "cat > got <<-\"EOF\"\n{{ vars.X }}\n\tEOF",
        expect: heredoc_dash,
    },
    Context {
        name: "cmdsub",
        script: "v=$(printf '%s' {{ vars.X }}; echo .)\nprintf '%s' \"$v\" > got",
        expect: dot,
    },
    Context {
        name: "cmdsub_in_double",
        script: "printf '%s' \"$(printf '%s' \"{{ vars.X }}\"; echo .)\" > got",
        expect: dot,
    },
    Context {
        name: "backticks",
        script: "v=`printf '%s' {{ vars.X }}; echo .`\nprintf '%s' \"$v\" > got",
        expect: dot,
    },
    Context {
        name: "arith",
        script: "echo $(( {{ vars.X }} )) > got",
        expect: integer,
    },
    Context {
        name: "arith_after_minus",
        script: "echo $((1-{{ vars.X }})) > got",
        expect: one_minus,
    },
    Context {
        name: "comment",
        script: "# note: {{ vars.X }}\nprintf ok > got",
        expect: comment,
    },
];

/// Hostile values; `MARK` becomes the marker's path. Each would create the marker if it were not escaped.
const VALUES: &[&str] = &[
    "$(touch MARK)",
    "`touch MARK`",
    "'; touch MARK; '",
    "\"; touch MARK; \"",
    "\\\"; touch MARK; #\\",
    "x\nEOF\ntouch MARK\ncat <<EOF",
    "EOF",
    "x; touch MARK",
    "x && touch MARK",
    "$(touch${IFS}MARK)",
    "* ? [a-z] ~ {a,b}",
    "-n",
    "--help",
    "a\\\\b\\$c\\`d\\",
    "line1\nline2\n",
    "'\"'\"'$(touch MARK)\"'",
    "42",
    "",
    "a[$(touch MARK)]",
    "x\r\ny",
    "010",
    "-5",
    "\tindented",
    "Eé",
    "x\nEOé-EOFé",
];

fn plan(ctx: &Context, shebang: &str, values: &[String]) -> String {
    let mut plan = format!(
        "plan: inj\ntarget: {{ provider: local }}\nvars:\n{}steps:\n  host: {{ kind: instance }}\n",
        values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("  v{i}: {}\n", Json::from(v.as_str())))
            .collect::<String>()
    );
    for i in 0..values.len() {
        let body = ctx.script.replace("vars.X", &format!("vars.v{i}"));
        let mut script = format!("{shebang}{body}\necho \"hex=$(od -An -tx1 -v got | tr -d ' \\n')\" >> \"$SORTIE_OUTPUT\"\n");
        script = script.replace('\n', "\n      ");
        plan.push_str(&format!(
            "  s{i}:\n    kind: run\n    on: host\n    run: |\n      {}\n",
            script.trim_end()
        ));
    }
    plan
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn check(ctx: &Context, shebang: &str) {
    let t = Test::new();
    let dir = t.dir.path();
    let marker = dir.join("PWNED");
    let values: Vec<String> = VALUES
        .iter()
        .map(|v| v.replace("MARK", &marker.to_string_lossy()))
        .collect();
    std::fs::write(dir.join("p.yaml"), plan(ctx, shebang, &values)).expect("write plan");
    let ran = run_plan(
        dir,
        &["apply", "p.yaml", "--parallelism", "8"],
        Duration::from_secs(120),
    );
    let status = status_json(dir, "p.yaml", None);
    assert!(
        !marker.exists(),
        "{} ({shebang}): a value ran a command\n{}",
        ctx.name,
        ran.show()
    );
    for (i, v) in values.iter().enumerate() {
        let step = &status["steps"][format!("s{i}")];
        match (ctx.expect)(v) {
            Some(want) => assert_eq!(
                step["outputs"]["hex"].as_str(),
                Some(hex(&want).as_str()),
                "{} ({shebang}) value {v:?}: step {step}\n{}",
                ctx.name,
                ran.show()
            ),
            None => {
                assert_eq!(
                    step["status"], "failed",
                    "{} value {v:?} should be refused: {step}",
                    ctx.name
                );
                let error = step["error"].to_string();
                assert!(
                    error.contains("cannot be placed in"),
                    "{} value {v:?}: {error}",
                    ctx.name
                );
            }
        }
    }
}

fn check_all(shebang: &str) {
    for ctx in CONTEXTS {
        check(ctx, shebang);
    }
}

#[test]
fn test_e2e_injection_matrix_under_sh() {
    check_all("");
}

#[test]
fn test_e2e_injection_matrix_under_bash() {
    check_all("#!/bin/bash\n");
}

/// The issue's own reproduction: `--var 'x=$(touch PWNED)'` into `"{{ vars.x }}"` of a script file without a
/// `.sh` extension.
#[test]
fn test_e2e_var_flag_cannot_run_commands_in_any_script_file() {
    for name in ["job", "job.bash", "job.j2", "job.sh.j2"] {
        let t = Test::new()
            .file(
                "p.yaml",
                format!(
                    "plan: p\ntarget: {{ provider: local }}\nvars: {{ x: hi }}\nsteps:\n  host: {{ kind: instance }}\n  \
                     a: {{ kind: run, on: host, script: {name} }}\n"
                ),
            )
            .file(name, "echo \"{{ vars.x }}\" > said\ncat <<EOF >> said\n{{ vars.x }}\nEOF\necho '{{ vars.x }}' >> said\n");
        let dir = t.dir.path();
        let ran = run_plan(
            dir,
            &["apply", "p.yaml", "--var", "x=$(touch PWNED)"],
            Duration::from_secs(60),
        );
        assert_eq!(ran.code, Some(0), "{name}: {}", ran.show());
        assert!(
            !dir.join("PWNED").exists(),
            "{name}: the --var ran a command"
        );
        let said = find_file(dir, "said").expect("said");
        assert_eq!(
            said, "$(touch PWNED)\n$(touch PWNED)\n$(touch PWNED)\n",
            "{name}"
        );
    }
}

fn find_file(dir: &Path, name: &str) -> Option<String> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(found) = find_file(&p, name) {
                return Some(found);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return std::fs::read_to_string(&p).ok();
        }
    }
    None
}

/// Random values through every context that has an exact escape reach a real `sh` unchanged.
#[test]
fn test_int_random_values_reach_the_script_unchanged_in_every_context() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let script = "\
printf '%s' {{ vars.x }} > bare
printf '%s' \"{{ vars.x }}\" > double
printf '%s' '{{ vars.x }}' > single
cat > doc <<EOF
{{ vars.x }}
EOF
cat > qdoc <<'EOF'
{{ vars.x }}
EOF
v=$(printf '%s' {{ vars.x }}; echo .); printf '%s' \"$v\" > cmdsub
v=\"$(printf '%s' \"{{ vars.x }}\"; echo .)\"; printf '%s' \"$v\" > nested
v=`printf '%s' {{ vars.x }}; echo .`; printf '%s' \"$v\" > backticks
";
    let files = [
        ("bare", ""),
        ("double", ""),
        ("single", ""),
        ("doc", "\n"),
        ("qdoc", "\n"),
        ("cmdsub", "."),
        ("nested", "."),
        ("backticks", "."),
    ];
    let shellish = prop_oneof![
        proptest::char::range('\u{1}', '\u{7f}'),
        Just('\n'),
        Just('é'),
        Just('\''),
        Just('"'),
        Just('\\'),
        Just('$'),
        Just('`'),
    ];
    let values = proptest::collection::vec(shellish, 0..40)
        .prop_map(|cs| cs.into_iter().collect::<String>())
        .prop_filter(
            "a line equal to the delimiter is refused, not escaped; so is, in the quoted heredoc, a line that \
             starts like the delimiter and goes on with a non-ASCII character (dash corrupts it)",
            |v| !v.split('\n').any(|l| l == "EOF" || starts_like_eof_then_non_ascii(l)),
        );
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    runner
        .run(&values, |value| {
            let dir = tempfile::tempdir().expect("tempdir");
            let ctx = sortie::template::value(serde_json::json!({ "vars": { "x": value } }));
            let rendered = sortie::template::render_script("t", script, &ctx).expect("render");
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(&rendered)
                .current_dir(dir.path())
                .output_within(DEADLINE)
                .expect("sh")
                .status;
            prop_assert!(
                status.success(),
                "script failed for {:?}:\n{}",
                value,
                rendered
            );
            for (file, tail) in files {
                let got = std::fs::read(dir.path().join(file)).expect("output file");
                prop_assert_eq!(
                    got,
                    format!("{value}{tail}").into_bytes(),
                    "{} for {:?}",
                    file,
                    value
                );
            }
            Ok(())
        })
        .expect("property");
}

/// `Eé`, `EOé`: what the escaper refuses in a quoted heredoc before `EOF` (src/shell_escape.rs,
/// `dash_heredoc_hazard`; refused, and tested, in the injection matrix).
fn starts_like_eof_then_non_ascii(line: &str) -> bool {
    let common = line
        .bytes()
        .zip("EOF".bytes())
        .take_while(|(a, b)| a == b)
        .count();
    common >= 1 && line.as_bytes().get(common).is_some_and(|b| *b >= 0x80)
}
