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
use crate::plan::{
    HeartbeatSpec, InstanceSpec, Plan, RunSpec, Script, StateLocation, Step, StepKind, Target,
    TeardownSpec, VolumeSpec,
};
use crate::plan_file::{self, KindName, PlanFile, RawStep, When};
use crate::script_template;
use crate::source::Sources;
use crate::template::{self, Reference};
use crate::variables::{self, Overrides};
use crate::{loader, yaml};

mod files;
mod operation;

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

    /// Checks a reference to another step; reports unknown ids and self-references.
    fn step_ref(
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
    fn template_refs(
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
    fn check_refs(
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

    fn instance(&mut self, path: &str, raw: &RawStep, ctx: &StepCtx<'_>) -> Option<StepKind> {
        let max_lifetime = self.duration(
            &format!("{path}.max_lifetime"),
            raw.max_lifetime.as_deref(),
            ctx.vars_ctx,
        );
        let ttl = self.duration(&format!("{path}.ttl"), raw.ttl.as_deref(), ctx.vars_ctx);
        let root_size_bytes = self.size(
            &format!("{path}.root_size"),
            raw.root_size.as_deref(),
            ctx.vars_ctx,
        );
        // Every string the provider sends to AWS is rendered now: only `vars` are known, and a literal
        // `{{ vars.image }}` would reach EC2 as an AMI id.
        let types = self.texts(
            &format!("{path}.instance_types"),
            raw.instance_types.as_deref(),
            ctx,
        );
        let image = self.text(&format!("{path}.image"), raw.image.as_deref(), ctx);
        let profile = self.text(&format!("{path}.profile"), raw.profile.as_deref(), ctx);
        let subnets = self.subnets(path, raw, ctx);
        let security_groups = self.texts(
            &format!("{path}.security_groups"),
            raw.security_groups.as_deref(),
            ctx,
        );
        let availability_zones = self.texts(
            &format!("{path}.availability_zones"),
            raw.availability_zones.as_deref(),
            ctx,
        );
        if matches!(ctx.target, Some(Target::Aws { .. })) {
            if types.is_empty() {
                self.error_help(
                    self.key_at(path),
                    "an instance step on the aws target needs `instance_types`",
                    "e.g. `instance_types: [g5.2xlarge, g6.2xlarge]` (tried in order)",
                );
            }
            if raw.image.is_none() {
                self.error_help(
                    self.key_at(path),
                    "an instance step on the aws target needs `image`",
                    "an AMI id, or `ssm:/aws/service/...` for a public SSM parameter",
                );
            }
        }
        Some(StepKind::Instance(InstanceSpec {
            instance_types: types,
            image,
            profile,
            market: raw.market.unwrap_or_default(),
            max_lifetime,
            ttl,
            subnets,
            security_groups,
            availability_zones,
            root_size_bytes,
        }))
    }

    /// A string field rendered at compile time (`vars` only).
    fn text(&mut self, path: &str, text: Option<&str>, ctx: &StepCtx<'_>) -> Option<String> {
        self.render_compile_time(path, text?, ctx.vars_ctx)
    }

    /// `subnets`, or the one `subnet`; each decides its zone, so neither goes with `availability_zones`.
    fn subnets(&mut self, path: &str, raw: &RawStep, ctx: &StepCtx<'_>) -> Vec<String> {
        if raw.subnet.is_some() && raw.subnets.is_some() {
            self.error_help(
                self.key_at(&format!("{path}.subnets")),
                "`subnet` and `subnets` together",
                "list every subnet under `subnets` (one per availability zone)",
            );
        }
        let zones_too = raw.availability_zones.is_some();
        let subnets = match (&raw.subnet, &raw.subnets) {
            (Some(one), None) => self
                .text(&format!("{path}.subnet"), Some(one.as_str()), ctx)
                .into_iter()
                .collect(),
            _ => self.texts(&format!("{path}.subnets"), raw.subnets.as_deref(), ctx),
        };
        if let Some(i) = (1..subnets.len()).find(|&i| subnets[..i].contains(&subnets[i])) {
            self.error_help(
                self.at(&format!("{path}.subnets[{i}]")),
                format!("subnet `{}` is listed twice", subnets[i]),
                "list each subnet once, one per availability zone",
            );
        }
        if zones_too && (raw.subnet.is_some() || raw.subnets.is_some()) {
            self.error_help(
                self.key_at(&format!("{path}.availability_zones")),
                "`availability_zones` with a subnet: a subnet lies in one zone, and decides it",
                "drop `availability_zones`, and list one subnet per zone under `subnets` in the order to try",
            );
        }
        subnets
    }

    /// A list of strings rendered at compile time; an entry that fails is reported and left out.
    fn texts(&mut self, path: &str, list: Option<&[String]>, ctx: &StepCtx<'_>) -> Vec<String> {
        list.unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, t)| self.render_compile_time(&format!("{path}[{i}]"), t, ctx.vars_ctx))
            .collect()
    }

    /// The instance a step runs on or attaches to: the named one, or the only one.
    fn host_ref(
        &mut self,
        me: &str,
        path: &str,
        field: &str,
        given: Option<&String>,
        ctx: &StepCtx<'_>,
        deps: &mut Vec<(String, String)>,
    ) -> Option<String> {
        let origin = format!("{path}.{field}");
        match given {
            Some(host) => {
                if !self.step_ref(me, host, &origin, ctx, field) {
                    return None;
                }
                if !ctx.instances.contains(host) {
                    self.error_help(
                        self.at(&origin),
                        format!("`{field}` must name an instance step, but `{host}` is not one"),
                        format!("the instance steps are: {}", ctx.instances.join(", ")),
                    );
                    return None;
                }
                deps.push((host.clone(), origin));
                Some(host.clone())
            }
            None if ctx.instances.len() == 1 => {
                deps.push((ctx.instances[0].clone(), origin));
                Some(ctx.instances[0].clone())
            }
            None => {
                let help = if ctx.instances.is_empty() {
                    "add a step with `kind: instance`".to_string()
                } else {
                    format!("set `{field}:` to one of: {}", ctx.instances.join(", "))
                };
                self.error_help(
                    self.key_at(path),
                    format!("step `{me}` needs `{field}`: which instance?"),
                    help,
                );
                None
            }
        }
    }

    fn volume(
        &mut self,
        me: &str,
        path: &str,
        raw: &RawStep,
        ctx: &StepCtx<'_>,
        deps: &mut Vec<(String, String)>,
    ) -> Option<StepKind> {
        let attach_to = self.host_ref(me, path, "attach_to", raw.attach_to.as_ref(), ctx, deps);
        let size = match &raw.size {
            Some(s) => self.size(&format!("{path}.size"), Some(s), ctx.vars_ctx),
            None => {
                self.error_help(
                    self.key_at(path),
                    format!("volume step `{me}` needs `size`"),
                    "e.g. `size: 300GiB`",
                );
                None
            }
        };
        let volume_type = raw.volume_type.clone().unwrap_or_else(|| "gp3".to_string());
        if !VOLUME_TYPES.contains(&volume_type.as_str()) {
            self.error_help(
                self.at(&format!("{path}.type")),
                format!("unknown EBS volume type `{volume_type}`"),
                format!("expected one of: {}", VOLUME_TYPES.join(", ")),
            );
        }
        let mount = match &raw.mount {
            Some(m) if template::is_template(m) => Some(m.clone()),
            Some(m) if m.starts_with('/') => self.safe_mount(path, m).then(|| m.clone()),
            Some(m) => {
                self.error_help(
                    self.at(&format!("{path}.mount")),
                    format!("mount point `{m}` is not an absolute path"),
                    "e.g. `mount: /mnt/training`",
                );
                None
            }
            None => {
                self.error_help(
                    self.key_at(path),
                    format!("volume step `{me}` needs `mount`"),
                    "e.g. `mount: /mnt/training`",
                );
                None
            }
        };
        Some(StepKind::Volume(VolumeSpec {
            attach_to: attach_to?,
            size_bytes: size?,
            volume_type,
            iops: raw.iops,
            throughput: raw.throughput,
            mount: mount?,
            keep: raw.keep.unwrap_or(false),
        }))
    }

    /// A step's `env:` cannot set the host wrapper's own protocol variables (docs/HOST_PROTOCOL.md): a step that
    /// set `SORTIE_HOME` or `SORTIE_STEP_DIR` would point the wrapper somewhere else.
    fn reserved_env(&mut self, path: &str, key: &str) {
        if key.to_ascii_uppercase().starts_with("SORTIE_") {
            self.error_help(
                self.key_at(&format!("{path}.env.{key}")),
                format!("`{key}` is reserved for the host wrapper"),
                "variables starting with `SORTIE_` belong to sortie; choose another name",
            );
        }
    }

    /// A mount point is where a volume is linked (local) or mounted (AWS) on its host: `..` could reach outside
    /// the sandbox, and `/` would cover the whole host.
    fn safe_mount(&mut self, path: &str, mount: &str) -> bool {
        let problem = if mount.split('/').any(|c| c == "..") {
            "contains `..`"
        } else if mount.split('/').all(|c| c.is_empty() || c == ".") {
            "is the root directory"
        } else {
            return true;
        };
        self.error_help(
            self.at(&format!("{path}.mount")),
            format!("mount point `{mount}` {problem}"),
            "mount a volume on its own directory, e.g. `mount: /mnt/training`",
        );
        false
    }

    /// Two volumes mounted at the same point of one instance would hide one another.
    fn duplicate_mounts(&mut self, steps: &[Step]) {
        let mut seen: HashMap<(&str, String), &str> = HashMap::new();
        for step in steps {
            let StepKind::Volume(v) = &step.kind else {
                continue;
            };
            if template::is_template(&v.mount) {
                continue;
            }
            let normal: Vec<&str> = v
                .mount
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect();
            let key = (v.attach_to.as_str(), normal.join("/"));
            if let Some(&first) = seen.get(&key) {
                self.error_help(
                    self.at(&format!("{}.mount", yaml::join_key("steps", &step.id))),
                    format!(
                        "volumes `{first}` and `{}` are both mounted at `{}` on instance `{}`",
                        step.id, v.mount, v.attach_to
                    ),
                    "give each volume of an instance its own mount point",
                );
            } else {
                seen.insert(key, &step.id);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_step(
        &mut self,
        p: &Pending,
        path: &str,
        ctx: &StepCtx<'_>,
        timeout: Option<Duration>,
        deps: &mut Vec<(String, String)>,
        used_vars: &mut BTreeSet<String>,
    ) -> Option<StepKind> {
        let raw = &p.raw;
        let on = self.host_ref(&p.id, path, "on", raw.on.as_ref(), ctx, deps);
        let detach = raw.detach.unwrap_or(false);
        let script = match (&raw.script, &raw.run) {
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
            (Some(file), None) => self.script_file(&p.id, path, file, ctx, deps, used_vars),
        };
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
            if let Some(t) = timeout.filter(|t| *t > SSM_MAX_TIMEOUT) {
                self.error_help(
                    self.at(&format!("{path}.timeout")),
                    format!(
                        "step `{}` has a timeout of {} but is attached; SSM commands run at most 48h",
                        p.id,
                        humantime::format_duration(t)
                    ),
                    "set `detach: true` for steps longer than 48 hours",
                );
            }
        }
        let (files, files_digest) = self.step_files(&p.id, path, raw.files.as_ref());
        let hb = raw.heartbeat.clone().unwrap_or_default();
        let heartbeat = HeartbeatSpec {
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
        };
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

    fn script_file(
        &mut self,
        me: &str,
        path: &str,
        file: &str,
        ctx: &StepCtx<'_>,
        deps: &mut Vec<(String, String)>,
        used_vars: &mut BTreeSet<String>,
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
            Ok(refs) => self.check_refs(
                me,
                &origin,
                &refs,
                ctx,
                deps,
                used_vars,
                Some((&full, &source)),
            ),
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
    fn check_script_contexts(&mut self, origin: &str, source: &str, file: Option<&Path>) {
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
    fn inline_location(
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

    fn teardown(
        &mut self,
        me: &str,
        path: &str,
        raw: &RawStep,
        ctx: &StepCtx<'_>,
    ) -> Option<StepKind> {
        let destroys = match &raw.destroys {
            None => ctx.resources.to_vec(),
            Some(list) => {
                for (i, id) in list.iter().enumerate() {
                    let origin = format!("{path}.destroys[{i}]");
                    if self.step_ref(me, id, &origin, ctx, "destroys")
                        && !ctx.resources.contains(id)
                    {
                        self.error(
                            self.at(&origin),
                            format!("`{id}` is not an instance or volume step"),
                        );
                    }
                }
                list.clone()
            }
        };
        Some(StepKind::Teardown(TeardownSpec { destroys }))
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

fn script_span(p: &script_template::Problem) -> Span {
    Span {
        line: p.line,
        column: p.column,
        len: p.len,
    }
}

/// The span of the first occurrence of `needle` in a template file (for errors about a reference).
fn find_in(source: &str, needle: &str, from_line: usize) -> Location {
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

/// The literal serde quotes in "invalid type: integer `42`, expected ...": the offending key or value.
fn literal_in(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("invalid type: ")?;
    let start = rest.find('`')? + 1;
    let len = rest[start..].find('`')?;
    Some(&rest[start..start + len])
}
