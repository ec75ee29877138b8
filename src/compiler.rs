//! Turns a plan file into a validated [`Plan`], collecting every problem instead of stopping at the first.
//!
//! The phases, one file each under `compiler/`, in the order [`Compiler::run`] calls them:
//! `document` (read, parse YAML, plan-level keys, via `deserialize`) → variables → `header` (plan-level fields
//! rendered with `vars`, via `compile_time`) → `pending` (each step's keys and kind) → `step` (typed steps, with
//! `references`, `kinds`, `scripts`, `files`) → `checks` (rules across steps) → `graph` (teardown edges, DAG).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::diagnostic::{Diagnostic, Location};
use crate::lifetime_check;
use crate::plan::Plan;
use crate::plan_file::PlanFile;
use crate::source::Sources;
use crate::template;
use crate::variables::{self, Overrides};
use crate::yaml;

mod checks;
mod compile_time;
mod deserialize;
mod document;
mod files;
mod graph;
mod header;
mod kinds;
mod operation;
mod pending;
mod references;
mod scripts;
mod step;

/// SSM Run Command's maximum executionTimeout: longer attached steps cannot be watched to the end.
pub const SSM_MAX_TIMEOUT: Duration = Duration::from_secs(172_800);

/// A compiled plan with the sources it was read from.
#[derive(Debug)]
pub struct Compiled {
    pub plan: Plan,
    pub sources: Sources,
    /// Problems that do not stop the plan (e.g. an instance lifetime shorter than its steps may need).
    pub warnings: Vec<Diagnostic>,
}

impl Compiled {
    /// The warnings, rendered like errors (empty when there are none).
    pub fn render_warnings(&self) -> String {
        self.sources.render(&self.warnings)
    }
}

/// Why a plan did not compile: every problem found, and the sources to render them against.
#[derive(Debug)]
pub struct Invalid {
    pub diagnostics: Vec<Diagnostic>,
    pub sources: Sources,
}

impl Invalid {
    pub fn render(&self) -> String {
        self.sources.render(&self.diagnostics)
    }
}

/// Compiles the plan at `path`.
pub fn compile(path: &Path, overrides: &Overrides) -> Result<Compiled, Invalid> {
    let mut c = Compiler {
        file: path.to_path_buf(),
        dir: path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        sources: Sources::default(),
        problems: Vec::new(),
        spans: yaml::LazySpans::default(),
        env: template::environment(),
    };
    match c.run(overrides) {
        Some(plan) if c.problems.is_empty() => {
            let warnings = lifetime_check::warnings(&plan, |path| c.at(path));
            Ok(Compiled {
                plan,
                sources: c.sources,
                warnings,
            })
        }
        _ => Err(Invalid {
            diagnostics: c.problems,
            sources: c.sources,
        }),
    }
}

/// One compilation: the plan file, what was read, and every problem found so far.
struct Compiler {
    file: PathBuf,
    dir: PathBuf,
    sources: Sources,
    problems: Vec<Diagnostic>,
    spans: yaml::LazySpans,
    env: minijinja::Environment<'static>,
}

impl Compiler {
    fn at(&self, path: &str) -> Location {
        match self.spans.nearest(path) {
            Some(span) => Location::Span(span),
            None => Location::KeyPath(path.to_string()),
        }
    }

    fn key_at(&self, path: &str) -> Location {
        match self.spans.key(path) {
            Some(span) => Location::Span(span),
            None => self.at(path),
        }
    }

    fn error(&mut self, location: Location, message: impl Into<String>) {
        self.problems
            .push(Diagnostic::new(&self.file, location, message));
    }

    fn error_help(
        &mut self,
        location: Location,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.problems
            .push(Diagnostic::new(&self.file, location, message).with_help(help));
    }

    /// The phases in order. Diagnostics come out in this order too, which the invalid-plan fixtures pin.
    fn run(&mut self, overrides: &Overrides) -> Option<Plan> {
        let doc = self.document()?;
        // Steps are read from the document in place (one at a time, so each gets its own errors); the plan-level
        // pass only checks that `steps` is a mapping.
        let raw: PlanFile<serde::de::IgnoredAny> = self.deserialize(&doc, "")?;
        let vars = variables::resolve(
            &self.file,
            &raw.vars,
            overrides,
            &mut self.sources,
            &mut self.problems,
        );
        let vars_ctx = template::value(serde_json::json!({ "vars": vars }));
        let header = self.header(&raw, &vars, &vars_ctx);
        let pending = self.read_steps(document::step_values(&doc));
        let names = step::Names::of(&pending);
        let ctx = step::StepCtx {
            names: &names,
            vars: &vars,
            vars_ctx: &vars_ctx,
            target: header.target.as_ref(),
            defaults: &header.defaults,
        };
        let (mut steps, edges) = self.typed_steps(pending, &ctx);
        self.check_steps(&steps, &header)?;
        let dag = self.graph(&names.ids, &mut steps, edges)?;
        Some(Plan {
            name: header.name,
            description: header.description,
            file: self.file.clone(),
            dir: self.dir.clone(),
            vars,
            target: header.target?,
            state: header.state?,
            steps,
            dag,
            operation: header.operation?,
        })
    }
}

/// Names of plans, steps and locks: they become directory names, tags and lock files.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}
