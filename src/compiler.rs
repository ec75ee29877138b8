//! Turns a plan file into a validated [`Plan`], collecting every problem instead of stopping at the first.
//!
//! loader → yaml → plan_file (raw serde, unknown keys collected) → variables → plan-level templates →
//! typed steps → template references → dag.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;

use crate::dag::Dag;
use crate::diagnostic::{did_you_mean, Diagnostic, Location, Span};
use crate::lifetime_check;
use crate::plan::{Plan, StateLocation, Step, StepKind, Target};
use crate::plan_file::{self, KindName, PlanFile, RawStep, When};
use crate::source::Sources;
use crate::template::{self, Reference};
use crate::variables::{self, Overrides};
use crate::{loader, yaml};

mod files;
mod kinds;
mod operation;
mod references;
mod scripts;

/// SSM Run Command's maximum executionTimeout: longer attached steps cannot be watched to the end.
pub const SSM_MAX_TIMEOUT: Duration = Duration::from_secs(172_800);
const DEFAULT_BACKOFF: Duration = Duration::from_secs(5);
const VOLUME_TYPES: &[&str] = &["gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"];

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

struct Compiler {
    file: PathBuf,
    dir: PathBuf,
    sources: Sources,
    problems: Vec<Diagnostic>,
    spans: yaml::LazySpans,
    env: minijinja::Environment<'static>,
}

/// A step as read, before typing.
struct Pending {
    id: String,
    raw: RawStep,
    json: Json,
    kind: KindName,
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

    fn run(&mut self, overrides: &Overrides) -> Option<Plan> {
        let text = match loader::read_text(&self.file, "plan file") {
            Ok(text) => text,
            Err(d) => {
                self.problems.push(d);
                return None;
            }
        };
        self.sources.insert(&self.file, text.clone());
        let doc = match yaml::parse(&text) {
            Ok(doc) => doc,
            Err(e) => {
                let d = Diagnostic::new(
                    &self.file,
                    e.span.map_or(Location::File, Location::Span),
                    e.message,
                );
                self.problems.push(match e.help {
                    Some(h) => d.with_help(h),
                    None => d,
                });
                return None;
            }
        };
        self.spans = doc.spans;
        if !matches!(doc.value, yaml::Value::Mapping(_)) {
            self.error_help(
                self.at(""),
                "a plan must be a YAML mapping",
                "start with `plan: NAME` and `steps:`; see examples/quickstart.yaml",
            );
            return None;
        }
        // Steps are read from the document in place (one at a time, so each gets its own errors); the plan-level
        // pass only checks that `steps` is a mapping.
        let raw: PlanFile<serde::de::IgnoredAny> = self.deserialize(&doc.value, "")?;
        let steps: Vec<(String, &yaml::Value)> = doc
            .value
            .get("steps")
            .and_then(yaml::Value::as_mapping)
            .map(|m| m.iter().map(|(k, v)| (yaml::scalar_text(k), v)).collect())
            .unwrap_or_default();

        let vars = variables::resolve(
            &self.file,
            &raw.vars,
            overrides,
            &mut self.sources,
            &mut self.problems,
        );
        let vars_ctx = template::value(serde_json::json!({ "vars": vars }));

        let name = raw.plan.clone();
        if !valid_name(&name) {
            self.error_help(
                self.at("plan"),
                format!("invalid plan name `{name}`"),
                "use letters, digits, `-` and `_` (it names state directories and tags)",
            );
        }
        let description = raw
            .description
            .as_deref()
            .and_then(|d| self.render_compile_time("description", d, &vars_ctx));
        let target = self.target(&raw, &vars_ctx);
        let state = self.state(&raw, &vars_ctx);
        let operation = self.operation(&raw, &vars, &vars_ctx);
        let defaults = raw.defaults.clone().unwrap_or_default();
        let default_timeout =
            self.duration("defaults.timeout", defaults.timeout.as_deref(), &vars_ctx);
        let default_backoff =
            self.duration("defaults.backoff", defaults.backoff.as_deref(), &vars_ctx);

        let pending = self.read_steps(steps);
        if pending.is_empty() && self.problems.is_empty() {
            self.error_help(
                self.at("steps"),
                "the plan has no steps",
                "add at least one step under `steps:`",
            );
        }
        let ids: Vec<String> = pending.iter().map(|p| p.id.clone()).collect();
        let mut index: HashMap<String, usize> = HashMap::with_capacity(ids.len() * 2);
        for (i, id) in ids.iter().enumerate() {
            index.insert(template::step_alias(id), i);
        }
        for (i, id) in ids.iter().enumerate() {
            index.insert(id.clone(), i);
        }
        let instances: Vec<&str> = pending
            .iter()
            .filter(|p| p.kind == KindName::Instance)
            .map(|p| p.id.as_str())
            .collect();
        let instances: Vec<String> = instances.into_iter().map(str::to_string).collect();
        let resources: Vec<String> = pending
            .iter()
            .filter(|p| matches!(p.kind, KindName::Instance | KindName::Volume))
            .map(|p| p.id.clone())
            .collect();

        let mut steps = Vec::with_capacity(pending.len());
        let mut edges: Vec<(usize, usize, String)> = Vec::new();
        for (position, p) in pending.into_iter().enumerate() {
            let ctx = StepCtx {
                ids: &ids,
                index: &index,
                instances: &instances,
                resources: &resources,
                vars: &vars,
                vars_ctx: &vars_ctx,
                target: target.as_ref(),
                default_timeout,
                default_retries: defaults.retries.unwrap_or(0),
                default_backoff: default_backoff.unwrap_or(DEFAULT_BACKOFF),
            };
            if let Some((step, deps)) = self.step(p, &ctx) {
                for (dep, origin) in deps {
                    if let Some(&d) = index.get(&dep) {
                        edges.push((d, position, origin));
                    }
                }
                steps.push(step);
            }
        }
        self.files_need_s3(&steps, target.as_ref(), state.as_ref());
        if !self.problems.is_empty() {
            return None;
        }
        self.duplicate_mounts(&steps);
        if !self.problems.is_empty() {
            return None;
        }
        self.implicit_teardown_edges(&steps, &mut edges);
        let dag = self.dag(&ids, &edges)?;
        for (i, step) in steps.iter_mut().enumerate() {
            step.needs = dag
                .dependencies(i)
                .into_iter()
                .map(|d| ids[d].clone())
                .collect();
        }
        Some(Plan {
            name,
            description,
            file: self.file.clone(),
            dir: self.dir.clone(),
            vars,
            target: target?,
            state: state?,
            steps,
            dag,
            operation: operation?,
        })
    }

    /// Deserializes `value` (found at `path`), reporting unknown keys and type errors as diagnostics.
    fn deserialize<T: DeserializeOwned>(&mut self, value: &yaml::Value, path: &str) -> Option<T> {
        let mut unknown: Vec<Vec<String>> = Vec::new();
        let result: Result<T, _> = {
            let mut record = |p: serde_ignored::Path<'_>| unknown.push(ignored_segments(&p));
            serde_ignored::deserialize(value, &mut record)
        };
        for segments in unknown {
            self.unknown_key(path, &segments);
        }
        match result {
            Ok(v) => Some(v),
            // Only a value that does not fit pays for tracking its key path: deserialize it again.
            Err(_) => {
                let Err(e) = serde_path_to_error::deserialize::<_, T>(value) else {
                    return None;
                };
                let mut full = path.to_string();
                for segment in e.path().iter() {
                    full = match segment {
                        serde_path_to_error::Segment::Seq { index } => format!("{full}[{index}]"),
                        serde_path_to_error::Segment::Map { key } => yaml::join_key(&full, key),
                        serde_path_to_error::Segment::Enum { variant } => {
                            yaml::join_key(&full, variant)
                        }
                        serde_path_to_error::Segment::Unknown => full,
                    };
                }
                let inner = e.into_inner().to_string();
                let inner = inner
                    .split(" at line ")
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let shown = if full.is_empty() {
                    "the plan".to_string()
                } else {
                    format!("`{full}`")
                };
                if inner.starts_with("missing field") {
                    let location = if full.is_empty() {
                        Location::Span(Span {
                            line: 1,
                            column: 1,
                            len: 1,
                        })
                    } else {
                        self.key_at(&full)
                    };
                    self.error(location, format!("{inner} in {shown}"));
                } else {
                    // A key that is not a string (`42:` as a step id) is reported on its own line, not the map's.
                    let location = literal_in(&inner)
                        .and_then(|lit| self.spans.key(&yaml::join_key(&full, lit)))
                        .map_or_else(|| self.at(&full), Location::Span);
                    self.error(location, format!("invalid value for {shown}: {inner}"));
                }
                None
            }
        }
    }

    fn unknown_key(&mut self, base: &str, segments: &[String]) {
        let Some((key, parents)) = segments.split_last() else {
            return;
        };
        let mut parent = base.to_string();
        for s in parents {
            parent = yaml::join_key(&parent, s);
        }
        let full = yaml::join_key(&parent, key);
        let candidates: &[&str] = match (base, parents.first().map(String::as_str), parents.len()) {
            ("", None, _) => plan_file::TOP_FIELDS,
            // The plan-level pass skips over every step (IgnoredAny); steps are checked one by one.
            ("", Some("steps"), _) => return,
            ("", Some("target"), 1) => plan_file::TARGET_FIELDS,
            ("", Some("defaults"), 1) => plan_file::DEFAULTS_FIELDS,
            ("", Some("notify"), 1) => plan_file::NOTIFY_FIELDS,
            // A step's own keys are checked in `read_steps`, which knows its kind.
            (b, None, _) if b.starts_with("steps.") => return,
            (b, Some("heartbeat"), 1) if b.starts_with("steps.") => plan_file::HEARTBEAT_FIELDS,
            _ => &[],
        };
        let message = if parent.is_empty() {
            format!("unknown key `{key}` at the top of the plan")
        } else {
            format!("unknown key `{key}` in `{parent}`")
        };
        let location = self.key_at(&full);
        match did_you_mean(key, candidates.iter().copied()) {
            Some(s) => self.error_help(location, message, format!("did you mean `{s}`?")),
            None if !candidates.is_empty() => self.error_help(
                location,
                message,
                format!("expected one of: {}", candidates.join(", ")),
            ),
            None => self.error(location, message),
        }
    }

    /// Renders a plan-level field now; it may use `vars` only.
    fn render_compile_time(
        &mut self,
        path: &str,
        text: &str,
        ctx: &minijinja::Value,
    ) -> Option<String> {
        if !template::is_template(text) {
            return Some(text.to_string());
        }
        let refs = self.references(path, text)?;
        let mut ok = true;
        for r in &refs {
            if r.root() != "vars" {
                ok = false;
                self.error_help(
                    self.at(path),
                    format!(
                        "`{path}` is rendered when the plan is compiled, so it cannot use `{}`",
                        r.0
                    ),
                    "only `vars` are known at compile time",
                );
            }
        }
        if !ok {
            return None;
        }
        match template::render_str(&self.env, path, text, ctx) {
            Ok(s) => Some(s),
            Err(e) => {
                self.error(
                    self.at(path),
                    format!("cannot render `{path}`: {}", template::error_message(&e)),
                );
                None
            }
        }
    }

    /// Parses a template (reporting syntax errors at the YAML position) and checks its `vars` references.
    fn references(&mut self, path: &str, text: &str) -> Option<BTreeSet<Reference>> {
        match template::references(&self.env, path, text) {
            Ok(refs) => Some(refs),
            Err(e) => {
                self.error(
                    self.at(path),
                    format!(
                        "template error in `{path}`: {}",
                        template::error_message(&e)
                    ),
                );
                None
            }
        }
    }

    fn target(
        &mut self,
        raw: &PlanFile<serde::de::IgnoredAny>,
        ctx: &minijinja::Value,
    ) -> Option<Target> {
        let t = raw.target.clone().unwrap_or_default();
        let field =
            |name: &str, value: &Option<String>, this: &mut Compiler| -> Option<Option<String>> {
                match value {
                    Some(v) => this
                        .render_compile_time(&format!("target.{name}"), v, ctx)
                        .map(Some),
                    None => Some(None),
                }
            };
        let provider = field("provider", &t.provider, self)?;
        let region = field("region", &t.region, self)?;
        let endpoint_url = field("endpoint_url", &t.endpoint_url, self)?;
        let profile = field("profile", &t.profile, self)?;
        let root = field("root", &t.root, self)?;
        match provider.as_deref().unwrap_or("local") {
            "local" => Some(Target::Local {
                root: root.map_or_else(
                    || self.dir.join(".sortie").join("hosts"),
                    |r| self.dir.join(r),
                ),
            }),
            "aws" => Some(Target::Aws {
                region,
                endpoint_url,
                profile,
            }),
            other => {
                self.error_help(
                    self.at("target.provider"),
                    format!("unknown target provider `{other}`"),
                    "expected `local` or `aws`",
                );
                None
            }
        }
    }

    fn state(
        &mut self,
        raw: &PlanFile<serde::de::IgnoredAny>,
        ctx: &minijinja::Value,
    ) -> Option<StateLocation> {
        let Some(text) = &raw.state else {
            return Some(StateLocation::Dir(self.dir.join(".sortie").join("state")));
        };
        let text = self.render_compile_time("state", text, ctx)?;
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                self.error_help(
                    self.at("state"),
                    "the S3 state location has no bucket",
                    "write s3://BUCKET/PREFIX",
                );
                return None;
            }
            return Some(StateLocation::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        if text.contains("://") {
            self.error_help(
                self.at("state"),
                format!("unsupported state location `{text}`"),
                "use a directory or s3://BUCKET/PREFIX",
            );
            return None;
        }
        Some(StateLocation::Dir(self.dir.join(text)))
    }

    fn read_steps(&mut self, steps: Vec<(String, &yaml::Value)>) -> Vec<Pending> {
        let mut out = Vec::new();
        let mut aliases: HashMap<String, String> = HashMap::new();
        for (id, value) in steps {
            let path = yaml::join_key("steps", &id);
            if !valid_name(&id) {
                self.error_help(
                    self.key_at(&path),
                    format!("invalid step id `{id}`"),
                    "use letters, digits, `-` and `_`, at most 64 characters",
                );
                continue;
            }
            let json = yaml::to_json(value);
            let keys: Vec<String> = match value {
                yaml::Value::Mapping(m) => m.keys().map(yaml::scalar_text).collect(),
                _ => Vec::new(),
            };
            let Some(raw) = self.deserialize::<RawStep>(value, &path) else {
                continue;
            };
            let Some(kind) = raw.kind else {
                self.error_help(
                    self.key_at(&path),
                    format!("step `{id}` has no `kind`"),
                    "add `kind:` with one of: instance, volume, run, teardown",
                );
                continue;
            };
            let allowed = plan_file::kind_fields(kind);
            for key in &keys {
                let known = plan_file::STEP_FIELDS.contains(&key.as_str());
                if !known {
                    let location = self.key_at(&yaml::join_key(&path, key));
                    let message = format!("unknown key `{key}` in `{path}`");
                    let help = match did_you_mean(key, plan_file::STEP_FIELDS.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!(
                            "{} `{}` step takes: {}, {}",
                            if kind == KindName::Instance {
                                "an"
                            } else {
                                "a"
                            },
                            kind.as_str(),
                            plan_file::COMMON_FIELDS.join(", "),
                            allowed.join(", ")
                        ),
                    };
                    self.error_help(location, message, help);
                }
                if known
                    && !plan_file::COMMON_FIELDS.contains(&key.as_str())
                    && !allowed.contains(&key.as_str())
                {
                    let owner = [
                        KindName::Instance,
                        KindName::Volume,
                        KindName::Run,
                        KindName::Teardown,
                    ]
                    .into_iter()
                    .find(|k| plan_file::kind_fields(*k).contains(&key.as_str()))
                    .map_or("another", KindName::as_str);
                    self.error_help(
                        self.key_at(&yaml::join_key(&path, key)),
                        format!("`{key}` is not a field of a `{}` step", kind.as_str()),
                        format!("`{key}` belongs to `{owner}` steps"),
                    );
                }
            }
            if let Some(clash) = aliases.get(&template::step_alias(&id)) {
                self.error_help(
                    self.key_at(&path),
                    format!("step ids `{clash}` and `{id}` are the same in templates"),
                    "templates write dashes as underscores (`steps.prep_data`); rename one of them",
                );
                continue;
            }
            aliases.insert(template::step_alias(&id), id.clone());
            out.push(Pending {
                id,
                raw,
                json,
                kind,
            });
        }
        out
    }

    fn duration(
        &mut self,
        path: &str,
        text: Option<&str>,
        ctx: &minijinja::Value,
    ) -> Option<Duration> {
        let text = self.render_compile_time(path, text?, ctx)?;
        match humantime::parse_duration(text.trim()) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.error(self.at(path), format!("`{path}` must be longer than zero"));
                None
            }
            Err(e) => {
                self.error_help(
                    self.at(path),
                    format!("invalid duration `{text}` for `{path}`: {e}"),
                    "write a duration such as `90s`, `15m`, `20h` or `1h 30m`",
                );
                None
            }
        }
    }

    fn size(&mut self, path: &str, text: Option<&str>, ctx: &minijinja::Value) -> Option<u64> {
        let text = self.render_compile_time(path, text?, ctx)?;
        match text.trim().parse::<bytesize::ByteSize>() {
            Ok(size) if size.as_u64() > 0 => Some(size.as_u64()),
            Ok(_) => {
                self.error(self.at(path), format!("`{path}` must be larger than zero"));
                None
            }
            Err(e) => {
                self.error_help(
                    self.at(path),
                    format!("invalid size `{text}` for `{path}`: {e}"),
                    "write a size such as `300GiB` or `100 GB`",
                );
                None
            }
        }
    }

    fn step(&mut self, p: Pending, ctx: &StepCtx<'_>) -> Option<(Step, Vec<(String, String)>)> {
        let path = yaml::join_key("steps", &p.id);
        let raw = &p.raw;
        let before = self.problems.len();
        let mut deps: Vec<(String, String)> = Vec::new();
        for (i, need) in raw.needs.iter().enumerate() {
            let origin = format!("{path}.needs[{i}]");
            if self.step_ref(&p.id, need, &origin, ctx, "needs") {
                deps.push((need.clone(), origin));
            }
        }
        let timeout = self
            .duration(
                &format!("{path}.timeout"),
                raw.timeout.as_deref(),
                ctx.vars_ctx,
            )
            .or(ctx.default_timeout);
        let backoff = self
            .duration(
                &format!("{path}.backoff"),
                raw.backoff.as_deref(),
                ctx.vars_ctx,
            )
            .unwrap_or(ctx.default_backoff);
        for key in raw.env.keys() {
            if !valid_env_name(key) {
                self.error_help(
                    self.key_at(&format!("{path}.env.{key}")),
                    format!("invalid environment variable name `{key}`"),
                    "use letters, digits and `_`, not starting with a digit",
                );
            }
            self.reserved_env(&path, key);
        }
        let mut referenced_vars = BTreeSet::new();
        self.template_refs(&p.id, &path, &p.json, ctx, &mut deps, &mut referenced_vars);

        let kind = match p.kind {
            KindName::Instance => self.instance(&path, raw, ctx),
            KindName::Volume => self.volume(&p.id, &path, raw, ctx, &mut deps),
            KindName::Run => {
                self.run_step(&p, &path, ctx, timeout, &mut deps, &mut referenced_vars)
            }
            KindName::Teardown => self.teardown(&p.id, &path, raw, ctx),
        };
        if self.problems.len() > before {
            return None;
        }
        let (script_source, files_digest) = match &kind {
            Some(StepKind::Run(run)) => (
                Json::String(run.script.source.clone()),
                run.files_digest.clone(),
            ),
            _ => (Json::Null, None),
        };
        let used_vars: serde_json::Map<String, Json> = referenced_vars
            .into_iter()
            .filter_map(|k| ctx.vars.get(&k).map(|v| (k, v.clone())))
            .collect();
        let when = raw.when.unwrap_or(if p.kind == KindName::Teardown {
            When::Always
        } else {
            When::OnSuccess
        });
        let retries = raw.retries.unwrap_or(ctx.default_retries);
        let Pending { id, raw, json, .. } = p;
        let mut definition = serde_json::Map::from_iter([
            ("step".to_string(), json),
            ("script".to_string(), script_source),
            ("vars".to_string(), Json::Object(used_vars)),
        ]);
        // Only steps with files get the key, so the digests of every other step stay as they were.
        if let Some(d) = files_digest {
            definition.insert("files".to_string(), Json::String(d));
        }
        let definition = Json::Object(definition);
        Some((
            Step {
                id,
                description: raw.description,
                needs: Vec::new(),
                when,
                timeout,
                retries,
                backoff,
                env: raw.env,
                kind: kind?,
                definition,
            },
            deps,
        ))
    }

    /// A teardown runs after every step that is not downstream of it, so it never pulls a host from under one.
    fn implicit_teardown_edges(&self, steps: &[Step], edges: &mut Vec<(usize, usize, String)>) {
        let n = steps.len();
        let mut adjacency: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (a, b, _) in edges.iter() {
            adjacency[*a].push(*b);
        }
        let mut extra = Vec::new();
        for (t, step) in steps.iter().enumerate() {
            if !matches!(step.kind, StepKind::Teardown(_)) {
                continue;
            }
            let mut downstream = vec![false; n];
            let mut stack = vec![t];
            while let Some(i) = stack.pop() {
                for &j in &adjacency[i] {
                    if !downstream[j] {
                        downstream[j] = true;
                        stack.push(j);
                    }
                }
            }
            for (i, other) in steps.iter().enumerate() {
                if i != t && !downstream[i] && !matches!(other.kind, StepKind::Teardown(_)) {
                    extra.push((i, t, format!("steps.{}", step.id)));
                }
            }
        }
        edges.extend(extra);
    }

    fn dag(&mut self, ids: &[String], edges: &[(usize, usize, String)]) -> Option<Dag> {
        let pairs: Vec<(usize, usize)> = edges.iter().map(|(a, b, _)| (*a, *b)).collect();
        match Dag::build(ids.len(), &pairs) {
            Ok(dag) => Some(dag),
            Err(cycles) => {
                let origins: HashMap<(usize, usize), &str> = edges
                    .iter()
                    .map(|(a, b, o)| ((*a, *b), o.as_str()))
                    .collect();
                for cycle in cycles {
                    let members = &cycle.0;
                    let mut names: Vec<&str> = members.iter().map(|&i| ids[i].as_str()).collect();
                    names.push(ids[members[0]].as_str());
                    // Point at the reference from the first member to the second.
                    let first = members[0];
                    let second = members.get(1).copied().unwrap_or(first);
                    let origin = origins.get(&(second, first)).copied().unwrap_or_default();
                    let location = if origin.is_empty() {
                        self.key_at(&yaml::join_key("steps", &ids[first]))
                    } else {
                        self.at(origin)
                    };
                    self.error_help(
                        location,
                        format!("steps form a cycle: {}", names.join(" -> ")),
                        "each step needs the next one; remove one of these dependencies",
                    );
                }
                None
            }
        }
    }
}

struct StepCtx<'a> {
    ids: &'a [String],
    /// Step index by id and by template alias (`prep_data` for `prep-data`).
    index: &'a HashMap<String, usize>,
    instances: &'a [String],
    resources: &'a [String],
    vars: &'a IndexMap<String, Json>,
    vars_ctx: &'a minijinja::Value,
    target: Option<&'a Target>,
    default_timeout: Option<Duration>,
    default_retries: u32,
    default_backoff: Duration,
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

fn dash_help(id: &str) -> String {
    format!(
        "in a template `steps.{id}` reads as a subtraction; write `steps.{}`",
        template::step_alias(id)
    )
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn ignored_segments(path: &serde_ignored::Path<'_>) -> Vec<String> {
    let mut segments = Vec::new();
    let mut p = path;
    loop {
        match p {
            serde_ignored::Path::Root => break,
            serde_ignored::Path::Seq { parent, index } => {
                segments.push(format!("[{index}]"));
                p = parent;
            }
            serde_ignored::Path::Map { parent, key } => {
                segments.push(key.clone());
                p = parent;
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => p = parent,
        }
    }
    segments.reverse();
    segments
}

/// The literal serde quotes in "invalid type: integer `42`, expected ...": the offending key or value.
fn literal_in(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("invalid type: ")?;
    let start = rest.find('`')? + 1;
    let len = rest[start..].find('`')?;
    Some(&rest[start..start + len])
}
