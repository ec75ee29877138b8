//! A run step: its script (inline or a template file, checked for the shell context of every value it
//! interpolates), env, heartbeat, lock and files.

use std::path::Path;
use std::time::Duration;

use super::pending::Pending;
use super::step::{StepCtx, Uses};
use super::{valid_name, Compiler, SSM_MAX_TIMEOUT};
use crate::diagnostic::{Diagnostic, Location, Span};
use crate::loader;
use crate::plan::{HeartbeatSpec, RunSpec, Script, StepKind, Target};
use crate::plan_file::RawHeartbeat;
use crate::script_template;
use crate::template;

impl Compiler {
    pub(super) fn run_step(
        &mut self,
        p: &Pending,
        path: &str,
        ctx: &StepCtx<'_>,
        timeout: Option<Duration>,
        uses: &mut Uses,
    ) -> Option<StepKind> {
        let raw = &p.raw;
        let on = self.host_ref(&p.id, path, "on", raw.on.as_ref(), ctx, &mut uses.deps);
        let detach = raw.detach.unwrap_or(false);
        let script = self.script(p, path, ctx, uses);
        if let Some(lock) = &raw.lock {
            if !valid_name(lock) {
                self.error_help(
                    self.at(&format!("{path}.lock")),
                    format!("invalid lock name `{lock}`"),
                    "use letters, digits, `-`, `_` and `.`",
                );
            }
        }
        if matches!(ctx.target, Some(Target::Aws { .. })) && !detach {
            self.attached_timeout(&p.id, path, timeout);
        }
        let (files, files_digest) = self.step_files(&p.id, path, raw.files.as_ref());
        let heartbeat = self.heartbeat(path, raw.heartbeat.clone().unwrap_or_default(), ctx);
        Some(StepKind::Run(RunSpec {
            on: on?,
            script: script?,
            detach,
            lock: raw.lock.clone(),
            heartbeat,
            files,
            files_digest,
        }))
    }

    /// The script of a run step: inline (`run`) or a template file (`script`), exactly one of them.
    fn script(
        &mut self,
        p: &Pending,
        path: &str,
        ctx: &StepCtx<'_>,
        uses: &mut Uses,
    ) -> Option<Script> {
        match (&p.raw.script, &p.raw.run) {
            (Some(_), Some(_)) => {
                self.error_help(
                    self.key_at(&format!("{path}.run")),
                    format!("step `{}` has both `script` and `run`", p.id),
                    "keep one: `script` names a template file, `run` is an inline script",
                );
                None
            }
            (None, None) => {
                self.error_help(
                    self.key_at(path),
                    format!("run step `{}` has neither `script` nor `run`", p.id),
                    "add `run: |` with a shell script, or `script: templates/NAME.sh.j2`",
                );
                None
            }
            (None, Some(inline)) => {
                self.check_script_contexts(&format!("{path}.run"), inline, None);
                Some(Script {
                    name: template::inline_script_name(&p.id),
                    path: None,
                    source: inline.clone(),
                })
            }
            (Some(file), None) => self.script_file(&p.id, path, file, ctx, uses),
        }
    }

    /// An attached step on aws is an SSM command, which runs at most 48 hours.
    fn attached_timeout(&mut self, id: &str, path: &str, timeout: Option<Duration>) {
        if let Some(t) = timeout.filter(|t| *t > SSM_MAX_TIMEOUT) {
            self.error_help(
                self.at(&format!("{path}.timeout")),
                format!(
                    "step `{id}` has a timeout of {} but is attached; SSM commands run at most 48h",
                    humantime::format_duration(t)
                ),
                "set `detach: true` for steps longer than 48 hours",
            );
        }
    }

    fn heartbeat(&mut self, path: &str, hb: RawHeartbeat, ctx: &StepCtx<'_>) -> HeartbeatSpec {
        HeartbeatSpec {
            stale_after: self.duration(
                &format!("{path}.heartbeat.stale_after"),
                hb.stale_after.as_deref(),
                ctx.vars_ctx,
            ),
            interval: self.duration(
                &format!("{path}.heartbeat.interval"),
                hb.interval.as_deref(),
                ctx.vars_ctx,
            ),
            progress: hb.progress,
            metrics: hb.metrics,
        }
    }

    pub(super) fn script_file(
        &mut self,
        me: &str,
        path: &str,
        file: &str,
        ctx: &StepCtx<'_>,
        uses: &mut Uses,
    ) -> Option<Script> {
        let origin = format!("{path}.script");
        let full = self.dir.join(file);
        let source = match loader::read_text(&full, "script template") {
            Ok(s) => s,
            Err(d) => {
                self.error_help(
                    self.at(&origin),
                    format!(
                        "cannot read script template `{}`: {}",
                        full.display(),
                        d.message
                            .trim_start_matches("cannot read script template: ")
                    ),
                    "script paths are relative to the plan file",
                );
                return None;
            }
        };
        self.sources.insert(&full, source.clone());
        match template::references(&self.env, file, &source) {
            Ok(refs) => self.check_refs(me, &origin, &refs, ctx, uses, Some((&full, &source))),
            Err(e) => {
                let location = match (e.line(), e.range()) {
                    (Some(line), range) => Location::Span(span_in(&source, line, range)),
                    (None, _) => Location::File,
                };
                self.problems.push(Diagnostic::new(
                    &full,
                    location,
                    format!(
                        "template error in `{file}`: {}",
                        template::error_message(&e)
                    ),
                ));
                return None;
            }
        }
        self.check_script_contexts(&origin, &source, Some(&full));
        Some(Script {
            name: file.to_string(),
            path: Some(full),
            source,
        })
    }

    /// Refuses a script whose values cannot all be escaped for the shell context they land in (or, for a
    /// script of another interpreter, that does not say how each value is inserted).
    pub(super) fn check_script_contexts(
        &mut self,
        origin: &str,
        source: &str,
        file: Option<&Path>,
    ) {
        // Without template syntax there is no value to place, and nothing to refuse.
        if !template::is_template(source) {
            return;
        }
        if template::references(&self.env, origin, source).is_err() {
            return; // the syntax error is reported where the references are checked
        }
        let Err(problems) = script_template::prepare(source) else {
            return;
        };
        for p in problems {
            let (diag_file, location) = match file {
                Some(f) => (f.to_path_buf(), Location::Span(script_span(&p))),
                None => (self.file.clone(), self.inline_location(origin, source, &p)),
            };
            self.problems.push(
                Diagnostic::new(
                    &diag_file,
                    location,
                    format!("unsafe interpolation: {}", p.message),
                )
                .with_help(p.help),
            );
        }
    }

    /// Where line `p.line` of an inline `run: |` script is in the plan file, else the key.
    pub(super) fn inline_location(
        &self,
        origin: &str,
        script: &str,
        p: &script_template::Problem,
    ) -> Location {
        let start = self.spans.nearest(origin).map_or(1, |s| s.line);
        let (Some(plan), Some(first), Some(wanted)) = (
            self.sources.get(&self.file),
            script.lines().next(),
            script.lines().nth(p.line.saturating_sub(1)),
        ) else {
            return self.at(origin);
        };
        let lines: Vec<&str> = plan.lines().collect();
        let block = (start.saturating_sub(1)..lines.len()).find(|&i| {
            let l = lines[i];
            l.ends_with(first) && l[..l.len() - first.len()].trim().is_empty()
        });
        let Some(block) = block else {
            return self.at(origin);
        };
        let indent = lines[block].len() - first.len();
        match lines.get(block + p.line - 1) {
            Some(l) if l.len() >= indent && &l[indent..] == wanted => Location::Span(Span {
                line: block + p.line,
                column: l[..indent].chars().count() + p.column,
                len: p.len,
            }),
            _ => self.at(origin),
        }
    }
}

fn script_span(p: &script_template::Problem) -> Span {
    Span {
        line: p.line,
        column: p.column,
        len: p.len,
    }
}

/// The span of the first occurrence of `needle` in a template file (for errors about a reference).
pub(super) fn find_in(source: &str, needle: &str, from_line: usize) -> Location {
    for (n, line) in source.lines().enumerate().skip(from_line.saturating_sub(1)) {
        if let Some(col) = line.find(needle) {
            return Location::Span(Span {
                line: n + 1,
                column: line[..col].chars().count() + 1,
                len: needle.chars().count(),
            });
        }
    }
    Location::File
}

/// A span for a template error on `line`, narrowed to the error's byte range when it lies on that line.
fn span_in(source: &str, line: usize, range: Option<std::ops::Range<usize>>) -> Span {
    let start_of_line: usize = source
        .lines()
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    let text = source.lines().nth(line.saturating_sub(1)).unwrap_or("");
    match range {
        Some(r) if r.start >= start_of_line && r.start <= start_of_line + text.len() => {
            let col = text[..(r.start - start_of_line).min(text.len())]
                .chars()
                .count()
                + 1;
            let len = r.end.saturating_sub(r.start).clamp(1, text.len().max(1));
            Span {
                line,
                column: col,
                len,
            }
        }
        _ => Span {
            line,
            column: 1,
            len: text.chars().count().max(1),
        },
    }
}
