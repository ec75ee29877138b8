//! References between steps: `needs`, `on`/`attach_to`, and the `steps.X.outputs.Y` a template reads, each
//! checked against the plan (unknown step, not upstream, an output the step never makes).

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value as Json;

use super::scripts::find_in;
use super::step::{StepCtx, Uses};
use super::Compiler;
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
        let ids = &ctx.names.ids;
        if other == me {
            self.error_help(
                self.at(origin),
                format!("step `{me}` depends on itself through `{field}`"),
                "a step cannot depend on itself; remove the reference",
            );
            return false;
        }
        if ctx.names.index.get(other).is_some_and(|&i| ids[i] == other) {
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
        uses: &mut Uses,
    ) {
        match json {
            Json::String(s) if template::is_template(s) => {
                if let Some(refs) = self.references(path, s) {
                    self.check_refs(me, path, &refs, ctx, uses, None);
                }
            }
            // Key paths are spelled out only towards a template: most of a step is plain values.
            Json::Array(items) => {
                for (i, item) in items.iter().enumerate().filter(|(_, v)| holds_template(v)) {
                    self.template_refs(me, &format!("{path}[{i}]"), item, ctx, uses);
                }
            }
            Json::Object(map) => {
                for (k, v) in map.iter().filter(|(_, v)| holds_template(v)) {
                    self.template_refs(me, &yaml::join_key(path, k), v, ctx, uses);
                }
            }
            _ => {}
        }
    }

    /// Checks the references of one template. `file` is set for script files (errors point into the file).
    pub(super) fn check_refs(
        &mut self,
        me: &str,
        origin: &str,
        refs: &BTreeSet<Reference>,
        ctx: &StepCtx<'_>,
        uses: &mut Uses,
        file: Option<(&Path, &str)>,
    ) {
        for r in refs {
            let problem = match (r.root(), r.member()) {
                ("vars", Some(name)) => var_ref(name, ctx, uses),
                ("vars", None) => {
                    uses.vars.extend(ctx.vars.keys().cloned());
                    None
                }
                ("steps", Some(alias)) => output_ref(me, alias, r, origin, ctx, uses),
                ("steps", None) => Some((
                    "`steps` is used without a step id".to_string(),
                    "write `steps.<id>.outputs.<key>` (dashes in ids become underscores: `steps.prep_data`) so \
                     the dependency is known"
                        .to_string(),
                )),
                ("run", _) | ("host", _) => None,
                (root, _) => Some(unknown_root(root, r, ctx)),
            };
            if let Some((message, help)) = problem {
                let diag_file = file.map_or_else(|| self.file.clone(), |(f, _)| f.to_path_buf());
                let location = self.ref_location(origin, &r.0, file);
                self.problems
                    .push(Diagnostic::new(&diag_file, location, message).with_help(help));
            }
        }
    }

    /// Where a reference is written. It scans the source, so it is only done for the ones that are errors.
    fn ref_location(&self, origin: &str, needle: &str, file: Option<(&Path, &str)>) -> Location {
        if let Some((_, source)) = file {
            return find_in(source, needle, 1);
        }
        let start = self.spans.nearest(origin).map_or(1, |s| s.line);
        match self
            .sources
            .get(&self.file)
            .map(|text| find_in(text, needle, start))
        {
            Some(found @ Location::Span(_)) => found,
            _ => self.at(origin),
        }
    }
}

/// Whether a string somewhere in `json` is a template.
fn holds_template(json: &Json) -> bool {
    match json {
        Json::String(s) => template::is_template(s),
        Json::Array(items) => items.iter().any(holds_template),
        Json::Object(map) => map.values().any(holds_template),
        _ => false,
    }
}

/// A problem found in a reference: its message and help.
type Problem = Option<(String, String)>;

/// `vars.NAME`: declared, and then read by the step.
fn var_ref(name: &str, ctx: &StepCtx<'_>, uses: &mut Uses) -> Problem {
    if ctx.vars.contains_key(name) {
        uses.vars.insert(name.to_string());
        return None;
    }
    let help = match did_you_mean(name, ctx.vars.keys().map(String::as_str)) {
        Some(s) => format!("did you mean `vars.{s}`?"),
        None => "declare it under `vars:` in the plan".to_string(),
    };
    Some((format!("undefined variable `vars.{name}`"), help))
}

/// `steps.ALIAS...`: another step's outputs, so a dependency on it.
fn output_ref(
    me: &str,
    alias: &str,
    r: &Reference,
    origin: &str,
    ctx: &StepCtx<'_>,
    uses: &mut Uses,
) -> Problem {
    let names = ctx.names;
    // Jinja reads `prep-data` as a subtraction, so dashed ids are written with underscores.
    let other = names
        .index
        .get(alias)
        .map_or(alias, |&i| names.ids[i].as_str());
    if other == me {
        return Some((
            format!("step `{me}` refers to its own outputs"),
            "a step cannot depend on itself; remove the reference".to_string(),
        ));
    }
    if names.index.contains_key(other) {
        uses.deps.push((other.to_string(), origin.to_string()));
        return None;
    }
    let message = format!("step `{me}` refers to unknown step `{other}` in `{}`", r.0);
    let dashed = names
        .ids
        .iter()
        .find(|i| i.starts_with(&format!("{other}-")));
    let help = match (
        dashed,
        did_you_mean(other, names.ids.iter().map(String::as_str)),
    ) {
        (Some(id), _) => dash_help(id),
        (None, Some(s)) => format!("did you mean `{s}`?"),
        (None, None) => format!("the steps are: {}", names.ids.join(", ")),
    };
    Some((message, help))
}

/// A root that templates do not have (often the tail of a dashed step id, `steps.prep-data`).
fn unknown_root(root: &str, r: &Reference, ctx: &StepCtx<'_>) -> (String, String) {
    let ids = &ctx.names.ids;
    let dashed = ids.iter().find(|i| i.ends_with(&format!("-{root}")));
    let help = match (
        dashed,
        did_you_mean(root, template::CONTEXT_ROOTS.iter().copied()),
    ) {
        (Some(id), _) => dash_help(id),
        (None, Some(s)) => format!("did you mean `{s}`?"),
        (None, None) => "templates see `vars`, `run`, `steps.<id>.outputs` and `host`".to_string(),
    };
    (format!("undefined variable `{}`", r.0), help)
}

fn dash_help(id: &str) -> String {
    format!(
        "in a template `steps.{id}` reads as a subtraction; write `steps.{}`",
        template::step_alias(id)
    )
}
