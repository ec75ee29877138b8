//! A run step's script as a template: which interpreter runs it, and, for shell scripts, the shell context of
//! every `{{ … }}` (found by `shell_context`), so that rendering escapes each value for the place it lands in.
//!
//! The wrapper runs a script without a shebang under `sh`, so the decision follows the shebang, never the file
//! name. A script for another interpreter (`#!/usr/bin/env python3`) gets no shell escaping, so each of its
//! expressions must say how it is inserted: `| tojson` (a literal) or `| safe` (raw).

use minijinja::machinery::{tokenize, Span, Token};
use minijinja::syntax::SyntaxConfig;

use crate::shell_context::{Refusal, Scanner, State};
use crate::shell_escape::Escape;

/// The name of the filter that the rewritten template applies to every expression of a shell script.
pub const ESCAPE_FILTER: &str = "__sortie_escape";

const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "ksh", "mksh", "zsh", "posh"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interpreter {
    Shell,
    /// The program a non-shell shebang names (`python3`).
    Other(String),
}

/// Which interpreter runs `source`: its shebang's, or `sh` when it has none.
pub fn interpreter(source: &str) -> Interpreter {
    let Some(line) = source.lines().next().and_then(|l| l.strip_prefix("#!")) else {
        return Interpreter::Shell;
    };
    let mut words = line.split_whitespace();
    let mut program = words.next().unwrap_or("sh");
    if basename(program) == "env" {
        program = words.find(|w| !w.starts_with('-')).unwrap_or("sh");
    }
    let name = basename(program);
    if SHELLS.contains(&name) {
        Interpreter::Shell
    } else {
        Interpreter::Other(name.to_string())
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A template problem at a position of the script (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub len: usize,
    pub message: String,
    pub help: String,
}

/// A script ready to render: for a shell script, the source with each expression routed through
/// `ESCAPE_FILTER(slot)`, and the escape of each slot.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub source: String,
    pub escapes: Vec<Escape>,
    pub shell: bool,
}

/// Analyses `source`; every expression whose context is unsafe or unknown is a problem.
pub fn prepare(source: &str) -> Result<Prepared, Vec<Problem>> {
    let tokens: Vec<(Token<'_>, Span)> =
        match tokenize(source, false, SyntaxConfig::default()).collect() {
            Ok(t) => t,
            Err(e) => {
                return Err(vec![Problem {
                    line: e.line().unwrap_or(1),
                    column: 1,
                    len: 1,
                    message: format!(
                        "template syntax error: {}",
                        crate::template::error_message(&e)
                    ),
                    help: "fix the template syntax".into(),
                }])
            }
        };
    let shell = interpreter(source) == Interpreter::Shell;
    let mut walk = Walk {
        scanner: Scanner::new(),
        blocks: Vec::new(),
        problems: Vec::new(),
        inserts: Vec::new(),
        shell,
    };
    let mut i = 0;
    while i < tokens.len() {
        i = walk.token(&tokens, i);
    }
    if !walk.problems.is_empty() {
        return Err(walk.problems);
    }
    let escapes = walk.scanner.finish();
    let source = if shell {
        rewrite(source, &walk.inserts)
    } else {
        source.to_string()
    };
    Ok(Prepared {
        source,
        escapes,
        shell,
    })
}

enum Block {
    If {
        start: State,
        ends: Vec<State>,
        has_else: bool,
    },
    For {
        start: State,
    },
    Other,
}

struct Walk {
    scanner: Scanner,
    blocks: Vec<Block>,
    problems: Vec<Problem>,
    /// (start, end) byte offsets of each expression, in slot order.
    inserts: Vec<(usize, usize)>,
    shell: bool,
}

impl Walk {
    /// Handles the token at `i`; returns the index of the next one to look at.
    fn token(&mut self, tokens: &[(Token<'_>, Span)], i: usize) -> usize {
        match &tokens[i].0 {
            Token::TemplateData(text) => {
                if self.shell {
                    self.scanner.text(text);
                }
                i + 1
            }
            Token::VariableStart => {
                let end = find(tokens, i, |t| matches!(t, Token::VariableEnd));
                self.expression(tokens, i, end);
                end + 1
            }
            Token::BlockStart => {
                let end = find(tokens, i, |t| matches!(t, Token::BlockEnd));
                if self.shell {
                    self.statement(tokens, i, end);
                }
                end + 1
            }
            _ => i + 1,
        }
    }

    fn expression(&mut self, tokens: &[(Token<'_>, Span)], start: usize, end: usize) {
        let inner = &tokens[(start + 1).min(end)..end];
        let (Some(first), Some(last)) = (inner.first(), inner.last()) else {
            return;
        };
        let span = join(&tokens[start].1, &tokens[end.min(tokens.len() - 1)].1);
        if !self.shell {
            if !ends_with_explicit_filter(inner) {
                self.problems.push(problem(
                    &span,
                    "a value interpolated into a script that is not run by a shell is not escaped".into(),
                    "end the expression with `| tojson` to insert a literal (a string, number, list), or with \
                     `| safe` to insert it raw"
                        .into(),
                ));
            }
            return;
        }
        match self.scanner.expression() {
            Ok(_) => self
                .inserts
                .push((first.1.start_offset as usize, last.1.end_offset as usize)),
            Err(r) => self.refused(&span, r),
        }
    }

    fn statement(&mut self, tokens: &[(Token<'_>, Span)], start: usize, end: usize) {
        let span = join(&tokens[start].1, &tokens[end.min(tokens.len() - 1)].1);
        let keyword = match tokens.get(start + 1) {
            Some((Token::Ident(k), _)) => *k,
            _ => return,
        };
        let inner = &tokens[(start + 1).min(end)..end];
        match keyword {
            "if" => self.blocks.push(Block::If {
                start: self.scanner.snapshot(),
                ends: Vec::new(),
                has_else: false,
            }),
            "elif" | "else" => self.branch(keyword == "else", &span),
            "endif" => {
                if let Some(Block::If {
                    start,
                    mut ends,
                    has_else,
                }) = self.blocks.pop()
                {
                    ends.push(self.scanner.snapshot());
                    if !has_else {
                        ends.push(start);
                    }
                    self.merge(ends, &span);
                }
            }
            "for" => self.blocks.push(Block::For {
                start: self.scanner.snapshot(),
            }),
            "endfor" | "break" | "continue" => self.loop_point(keyword == "endfor", &span),
            "set" if inner.iter().any(|(t, _)| matches!(t, Token::Assign)) => {}
            "with" | "block" => self.blocks.push(Block::Other),
            "endwith" | "endblock" => {
                self.blocks.pop();
            }
            "do" | "raw" | "endraw" => {}
            _ => self.problems.push(problem(
                &span,
                format!("`{{% {keyword} %}}` in a shell script: the shell context of what it emits cannot be followed"),
                "inline the text, or compute the value with `{% set name = … %}` and write `{{ name }}`".into(),
            )),
        }
    }

    fn branch(&mut self, is_else: bool, span: &Span) {
        let now = self.scanner.snapshot();
        match self.blocks.last_mut() {
            Some(Block::If {
                start,
                ends,
                has_else,
            }) => {
                ends.push(now);
                *has_else |= is_else;
                let start = start.clone();
                self.scanner.restore(start);
            }
            Some(Block::For { start }) if is_else => {
                // `{% for %}…{% else %}`: the body must end where it started; the else branch starts there too.
                let start = start.clone();
                self.merge(vec![start.clone(), now], span);
                self.scanner.restore(start);
            }
            _ => {}
        }
    }

    /// A loop body runs any number of times, so wherever it can end it must be in the context it started in.
    fn loop_point(&mut self, is_end: bool, span: &Span) {
        let start = self.blocks.iter().rev().find_map(|b| match b {
            Block::For { start } => Some(start.clone()),
            _ => None,
        });
        if let Some(start) = start {
            let now = self.scanner.snapshot();
            self.merge(vec![start, now], span);
        }
        if is_end {
            self.blocks.pop();
        }
    }

    fn merge(&mut self, states: Vec<State>, span: &Span) {
        if let Err(r) = self.scanner.merge(states) {
            self.refused(span, r);
        }
    }

    fn refused(&mut self, span: &Span, r: Refusal) {
        self.problems.push(problem(span, r.message, r.help));
    }
}

fn find(tokens: &[(Token<'_>, Span)], from: usize, is_end: impl Fn(&Token<'_>) -> bool) -> usize {
    tokens[from..]
        .iter()
        .position(|(t, _)| is_end(t))
        .map_or(tokens.len(), |p| from + p)
}

fn join(a: &Span, b: &Span) -> Span {
    Span {
        end_line: b.end_line,
        end_col: b.end_col,
        end_offset: b.end_offset,
        ..*a
    }
}

fn problem(span: &Span, message: String, help: String) -> Problem {
    let len = if span.end_line == span.start_line {
        (span.end_col.saturating_sub(span.start_col) as usize).max(1)
    } else {
        2
    };
    Problem {
        line: span.start_line as usize,
        column: span.start_col as usize + 1,
        len,
        message,
        help,
    }
}

/// Whether the expression's last top-level filter is `safe` or `tojson` (with or without arguments).
fn ends_with_explicit_filter(tokens: &[(Token<'_>, Span)]) -> bool {
    let mut depth = 0i32;
    let mut last_pipe = None;
    for (i, (t, _)) in tokens.iter().enumerate() {
        match t {
            Token::ParenOpen | Token::BracketOpen | Token::BraceOpen => depth += 1,
            Token::ParenClose | Token::BracketClose | Token::BraceClose => depth -= 1,
            Token::Pipe if depth == 0 => last_pipe = Some(i),
            _ => {}
        }
    }
    let Some(p) = last_pipe else {
        return false;
    };
    let named = matches!(
        tokens.get(p + 1),
        Some((Token::Ident("safe" | "tojson"), _))
    );
    let rest = &tokens[(p + 2).min(tokens.len())..];
    named
        && (rest.is_empty()
            || (matches!(rest.first(), Some((Token::ParenOpen, _)))
                && matches!(rest.last(), Some((Token::ParenClose, _)))))
}

/// The source with `(` before and `) | ESCAPE_FILTER(n)` after the n-th expression.
fn rewrite(source: &str, inserts: &[(usize, usize)]) -> String {
    let mut out = String::with_capacity(source.len() + inserts.len() * 32);
    let mut at = 0;
    for (slot, (start, end)) in inserts.iter().enumerate() {
        out.push_str(&source[at..*start]);
        out.push('(');
        out.push_str(&source[*start..*end]);
        out.push_str(&format!(") | {ESCAPE_FILTER}({slot})"));
        at = *end;
    }
    out.push_str(&source[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell_escape::Heredoc;

    fn escapes(source: &str) -> Vec<Escape> {
        prepare(source)
            .unwrap_or_else(|p| panic!("refused {source:?}: {p:?}"))
            .escapes
    }

    fn refused(source: &str) -> Problem {
        match prepare(source) {
            Ok(p) => panic!("accepted {source:?}: {:?}", p.escapes),
            Err(mut problems) => problems.remove(0),
        }
    }

    fn doc(delimiter: &str, quoted: bool, prefix: Option<&str>, suffix: Option<&str>) -> Escape {
        Escape::Heredoc(Heredoc {
            delimiter: delimiter.into(),
            quoted,
            strip_tabs: false,
            prefix: prefix.map(str::to_string),
            suffix: suffix.map(str::to_string),
        })
    }

    #[test]
    fn interpreter_follows_the_shebang_not_the_name() {
        assert_eq!(interpreter("echo hi"), Interpreter::Shell);
        assert_eq!(interpreter("#!/bin/bash\n"), Interpreter::Shell);
        assert_eq!(
            interpreter("#!/usr/bin/env -S bash -e\n"),
            Interpreter::Shell
        );
        assert_eq!(
            interpreter("#!/usr/bin/env python3\n"),
            Interpreter::Other("python3".into())
        );
    }

    #[test]
    fn contexts_of_common_shapes() {
        use Escape::*;
        assert_eq!(
            escapes("echo {{ a }} \"{{ b }}\" '{{ c }}'"),
            vec![Bare, Double, Single]
        );
        assert_eq!(
            escapes("echo a#{{ a }} # {{ b }}\necho {{ c }}"),
            vec![Bare, Comment, Bare]
        );
        assert_eq!(
            escapes("n=$(( {{ a }} + 1 )); (( n += {{ b }} )); echo $(({{ c }}))"),
            vec![Arith, Arith, Arith]
        );
        assert_eq!(
            escapes("x=\"$(echo \"{{ a }}\" {{ b }})\""),
            vec![Double, Bare]
        );
        assert_eq!(
            escapes("v=\"$(case $x in a) echo {{ a }};; esac)\"; echo \"{{ b }}\""),
            vec![Bare, Double]
        );
        assert_eq!(escapes("x=`echo {{ a }}`"), vec![Backtick(Box::new(Bare))]);
    }

    #[test]
    fn heredocs_are_followed_line_by_line() {
        let got =
            escapes("cat <<A <<'B'; echo \"{{ a }}\"\nx{{ b }}y\nA\n{{ c }}\nB\necho {{ d }}\n");
        assert_eq!(
            got,
            vec![
                Escape::Double,
                doc("A", false, Some("x"), Some("y")),
                doc("B", true, Some(""), Some("")),
                Escape::Bare
            ]
        );
    }

    #[test]
    fn control_flow_must_agree_on_the_context() {
        assert_eq!(
            escapes("{% for i in xs %}echo \"{{ i }}\"\n{% endfor %}{% if c %}x{% else %}y{% endif %}{{ a }}"),
            vec![Escape::Double, Escape::Bare]
        );
        let p = refused("{% if c %}\"{% endif %}{{ a }}");
        assert!(p.message.contains("different shell contexts"), "{p:?}");
        refused("{% for i in xs %}\"{{ i }}{% endfor %}");
    }

    #[test]
    fn refusals_say_where_and_what_to_write() {
        for (source, line, column) in [
            ("echo ${X:-{{ a }}}", 1, 11),
            ("echo $'{{ a }}'", 1, 8),
            ("echo \\{{ a }}", 1, 7),
            ("echo ${{ a }}", 1, 7),
            ("cat <<{{ a }}\nx\n", 1, 7),
            ("cat <<EOF\n$(echo {{ a }})\nEOF\n", 2, 8),
            ("echo \"`echo {{ a }}`\"", 1, 13),
            ("{% macro m() %}x{% endmacro %}", 1, 1),
            ("#!/usr/bin/env python3\nprint({{ a }})", 2, 7),
        ] {
            let p = refused(source);
            assert_eq!((p.line, p.column), (line, column), "{source:?}: {p:?}");
            assert!(!p.help.is_empty());
        }
    }

    #[test]
    fn other_interpreters_accept_explicit_filters() {
        let p = prepare("#!/usr/bin/env python3\nx = {{ a | tojson }}\ny = {{ b | safe }}\nz = {{ c | tojson(indent=2) }}")
            .expect("accepted");
        assert!(!p.shell);
    }

    #[test]
    fn the_rewrite_routes_every_expression_through_the_filter() {
        let p = prepare("a {{ x | upper }} b {{- y -}} c").expect("ok");
        assert_eq!(
            p.source,
            format!("a {{{{ (x | upper) | {ESCAPE_FILTER}(0) }}}} b {{{{- (y) | {ESCAPE_FILTER}(1) -}}}} c")
        );
    }
}
