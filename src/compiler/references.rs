//! References between steps: `needs`, `on`/`attach_to`, and the `steps.X.outputs.Y` a template reads, each
//! checked against the plan (unknown step, not upstream, an output the step never makes).

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value as Json;

use super::scripts::find_in;
use super::{dash_help, Compiler, StepCtx};
use crate::diagnostic::{did_you_mean, Diagnostic, Location};
use crate::template::{self, Reference};
use crate::yaml;

impl Compiler {
    /// Checks a reference to another step; reports unknown ids and self-references.
    pub(super) fn step_ref(
        &mut self,
        me: &str,
        other: &str,
        origin: &str,
        ctx: &StepCtx<'_>,
        field: &str,
    ) -> bool {
        let ids = ctx.ids;
        if other == me {
            self.error_help(
                self.at(origin),
                format!("step `{me}` depends on itself through `{field}`"),
                "a step cannot depend on itself; remove the reference",
            );
            return false;
        }
        if ctx.index.get(other).is_some_and(|&i| ids[i] == other) {
            return true;
        }
        let message = format!("step `{me}` refers to unknown step `{other}` in `{field}`");
        match did_you_mean(other, ids.iter().map(String::as_str)) {
            Some(s) => self.error_help(self.at(origin), message, format!("did you mean `{s}`?")),
            None => self.error_help(
                self.at(origin),
                message,
                format!("the steps are: {}", ids.join(", ")),
            ),
        }
        false
    }

    /// Walks every string in the step; templates among them add dependencies and are checked for undefined names.
    pub(super) fn template_refs(
        &mut self,
        me: &str,
        path: &str,
        json: &Json,
        ctx: &StepCtx<'_>,
        deps: &mut Vec<(String, String)>,
        used_vars: &mut BTreeSet<String>,
    ) {
        match json {
            Json::String(s) if template::is_template(s) => {
                if let Some(refs) = self.references(path, s) {
                    self.check_refs(me, path, &refs, ctx, deps, used_vars, None);
                }
            }
            Json::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.template_refs(me, &format!("{path}[{i}]"), item, ctx, deps, used_vars);
                }
            }
            Json::Object(map) => {
                for (k, v) in map {
                    self.template_refs(me, &yaml::join_key(path, k), v, ctx, deps, used_vars);
                }
            }
            _ => {}
        }
    }

    /// Checks the references of one template. `file` is set for script files (errors point into the file).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn check_refs(
        &mut self,
        me: &str,
        origin: &str,
        refs: &BTreeSet<Reference>,
        ctx: &StepCtx<'_>,
        deps: &mut Vec<(String, String)>,
        used_vars: &mut BTreeSet<String>,
        file: Option<(&Path, &str)>,
    ) {
        for r in refs {
            // Locating a reference scans the source: only done for the ones that turn out to be errors.
            let locate = |this: &Compiler| match file {
                Some((_, source)) => find_in(source, &r.0, 1),
                None => {
                    let start = this.spans.nearest(origin).map_or(1, |s| s.line);
                    match this
                        .sources
                        .get(&this.file)
                        .map(|text| find_in(text, &r.0, start))
                    {
                        Some(found @ Location::Span(_)) => found,
                        _ => this.at(origin),
                    }
                }
            };
            let diag_file = file.map_or_else(|| self.file.clone(), |(f, _)| f.to_path_buf());
            match (r.root(), r.member()) {
                ("vars", Some(name)) => {
                    if ctx.vars.contains_key(name) {
                        used_vars.insert(name.to_string());
                    } else {
                        let d = Diagnostic::new(&diag_file, locate(self), format!("undefined variable `vars.{name}`"));
                        let help = match did_you_mean(name, ctx.vars.keys().map(String::as_str)) {
                            Some(s) => format!("did you mean `vars.{s}`?"),
                            None => "declare it under `vars:` in the plan".to_string(),
                        };
                        self.problems.push(d.with_help(help));
                    }
                }
                ("vars", None) => used_vars.extend(ctx.vars.keys().cloned()),
                ("steps", Some(alias)) => {
                    // Jinja reads `prep-data` as a subtraction, so dashed ids are written with underscores.
                    let other = ctx.index.get(alias).map_or(alias, |&i| ctx.ids[i].as_str());
                    if other == me {
                        self.problems.push(
                            Diagnostic::new(&diag_file, locate(self), format!("step `{me}` refers to its own outputs"))
                                .with_help("a step cannot depend on itself; remove the reference"),
                        );
                    } else if ctx.index.contains_key(other) {
                        deps.push((other.to_string(), origin.to_string()));
                    } else {
                        let message = format!("step `{me}` refers to unknown step `{other}` in `{}`", r.0);
                        let dashed = ctx.ids.iter().find(|i| i.starts_with(&format!("{other}-")));
                        let help = match (dashed, did_you_mean(other, ctx.ids.iter().map(String::as_str))) {
                            (Some(id), _) => dash_help(id),
                            (None, Some(s)) => format!("did you mean `{s}`?"),
                            (None, None) => format!("the steps are: {}", ctx.ids.join(", ")),
                        };
                        self.problems.push(Diagnostic::new(&diag_file, locate(self), message).with_help(help));
                    }
                }
                ("steps", None) => self.problems.push(
                    Diagnostic::new(&diag_file, locate(self), "`steps` is used without a step id")
                        .with_help("write `steps.<id>.outputs.<key>` (dashes in ids become underscores: `steps.prep_data`) so the dependency is known"),
                ),
                ("run", _) | ("host", _) => {}
                (root, _) => {
                    let dashed = ctx.ids.iter().find(|i| i.ends_with(&format!("-{root}")));
                    let help = match (dashed, did_you_mean(root, template::CONTEXT_ROOTS.iter().copied())) {
                        (Some(id), _) => dash_help(id),
                        (None, Some(s)) => format!("did you mean `{s}`?"),
                        (None, None) => "templates see `vars`, `run`, `steps.<id>.outputs` and `host`".to_string(),
                    };
                    self.problems
                        .push(Diagnostic::new(&diag_file, locate(self), format!("undefined variable `{}`", r.0)).with_help(help));
                }
            }
        }
    }
}
