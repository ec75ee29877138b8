//! Typing each read step: its dependencies (`needs` and the templates it holds), timing, env, its kind's own
//! fields, and the definition that its state digest is taken over.

use std::collections::{BTreeSet, HashMap};

use indexmap::IndexMap;
use serde_json::Value as Json;

use super::graph::Edge;
use super::header::Defaults;
use super::pending::Pending;
use crate::plan::{Step, StepKind, Target};
use crate::plan_file::{KindName, When};
use crate::template;
use crate::yaml;

/// The steps' names, for checking references between them.
pub(super) struct Names {
    /// Step ids in plan order.
    pub ids: Vec<String>,
    /// Step index by id and by template alias (`prep_data` for `prep-data`).
    pub index: HashMap<String, usize>,
    pub instances: Vec<String>,
    /// Instance and volume steps: what a teardown destroys.
    pub resources: Vec<String>,
}

impl Names {
    pub fn of(pending: &[Pending]) -> Names {
        let ids: Vec<String> = pending.iter().map(|p| p.id.clone()).collect();
        let mut index: HashMap<String, usize> = HashMap::with_capacity(ids.len() * 2);
        for (i, id) in ids.iter().enumerate() {
            index.insert(template::step_alias(id), i);
        }
        // Ids go in after aliases, so an id wins over another step's alias.
        for (i, id) in ids.iter().enumerate() {
            index.insert(id.clone(), i);
        }
        let of_kinds = |kinds: &[KindName]| -> Vec<String> {
            pending
                .iter()
                .filter(|p| kinds.contains(&p.kind))
                .map(|p| p.id.clone())
                .collect()
        };
        Names {
            instances: of_kinds(&[KindName::Instance]),
            resources: of_kinds(&[KindName::Instance, KindName::Volume]),
            ids,
            index,
        }
    }
}

/// What every step is compiled against.
pub(super) struct StepCtx<'a> {
    pub names: &'a Names,
    pub vars: &'a IndexMap<String, Json>,
    pub vars_ctx: &'a minijinja::Value,
    pub target: Option<&'a Target>,
    pub defaults: &'a Defaults,
}

/// What a step's references add up to.
#[derive(Default)]
pub(super) struct Uses {
    /// The steps it depends on, each with the key path of the reference (where a cycle is reported).
    pub deps: Vec<(String, String)>,
    /// The `vars` its templates read: they join its definition, so changing one re-runs the step.
    pub vars: BTreeSet<String>,
}

impl super::Compiler {
    /// Every step typed, and the dependency edges between them.
    pub(super) fn typed_steps(
        &mut self,
        pending: Vec<Pending>,
        ctx: &StepCtx<'_>,
    ) -> (Vec<Step>, Vec<Edge>) {
        let mut steps = Vec::with_capacity(pending.len());
        let mut edges: Vec<Edge> = Vec::new();
        for (position, p) in pending.into_iter().enumerate() {
            if let Some((step, deps)) = self.step(p, ctx) {
                for (dep, origin) in deps {
                    if let Some(&d) = ctx.names.index.get(&dep) {
                        edges.push((d, position, origin));
                    }
                }
                steps.push(step);
            }
        }
        (steps, edges)
    }

    fn step(&mut self, p: Pending, ctx: &StepCtx<'_>) -> Option<(Step, Vec<(String, String)>)> {
        let path = yaml::join_key("steps", &p.id);
        let before = self.problems.len();
        let mut uses = Uses::default();
        self.needs(&p, &path, ctx, &mut uses);
        let timeout = self
            .duration(
                &format!("{path}.timeout"),
                p.raw.timeout.as_deref(),
                ctx.vars_ctx,
            )
            .or(ctx.defaults.timeout);
        let backoff = self
            .duration(
                &format!("{path}.backoff"),
                p.raw.backoff.as_deref(),
                ctx.vars_ctx,
            )
            .unwrap_or(ctx.defaults.backoff);
        for key in p.raw.env.keys() {
            self.check_env_name(&path, key);
        }
        self.template_refs(&p.id, &path, &p.json, ctx, &mut uses);
        let kind = match p.kind {
            KindName::Instance => self.instance(&path, &p.raw, ctx),
            KindName::Volume => self.volume(&p.id, &path, &p.raw, ctx, &mut uses.deps),
            KindName::Run => self.run_step(&p, &path, ctx, timeout, &mut uses),
            KindName::Teardown => self.teardown(&p.id, &path, &p.raw, ctx),
        };
        if self.problems.len() > before {
            return None;
        }
        let kind = kind?;
        let when = p.raw.when.unwrap_or(if p.kind == KindName::Teardown {
            When::Always
        } else {
            When::OnSuccess
        });
        let retries = p.raw.retries.unwrap_or(ctx.defaults.retries);
        let Pending { id, raw, json, .. } = p;
        let step = Step {
            id,
            description: raw.description,
            needs: Vec::new(),
            when,
            timeout,
            retries,
            backoff,
            env: raw.env,
            definition: definition(json, &kind, uses.vars, ctx.vars),
            kind,
        };
        Some((step, uses.deps))
    }

    /// `needs`: each must name another step.
    fn needs(&mut self, p: &Pending, path: &str, ctx: &StepCtx<'_>, uses: &mut Uses) {
        for (i, need) in p.raw.needs.iter().enumerate() {
            let origin = format!("{path}.needs[{i}]");
            if self.step_ref(&p.id, need, &origin, ctx, "needs") {
                uses.deps.push((need.clone(), origin));
            }
        }
    }

    fn check_env_name(&mut self, path: &str, key: &str) {
        if !valid_env_name(key) {
            self.error_help(
                self.key_at(&format!("{path}.env.{key}")),
                format!("invalid environment variable name `{key}`"),
                "use letters, digits and `_`, not starting with a digit",
            );
        }
        self.reserved_env(path, key);
    }
}

/// What the step's digest is taken over: the step as written, its script, the vars it reads, its files' content.
fn definition(
    json: Json,
    kind: &StepKind,
    used_vars: BTreeSet<String>,
    vars: &IndexMap<String, Json>,
) -> Json {
    let (script_source, files_digest) = match kind {
        StepKind::Run(run) => (
            Json::String(run.script.source.clone()),
            run.files_digest.clone(),
        ),
        _ => (Json::Null, None),
    };
    let used_vars: serde_json::Map<String, Json> = used_vars
        .into_iter()
        .filter_map(|k| vars.get(&k).map(|v| (k, v.clone())))
        .collect();
    let mut definition = serde_json::Map::from_iter([
        ("step".to_string(), json),
        ("script".to_string(), script_source),
        ("vars".to_string(), Json::Object(used_vars)),
    ]);
    // Only steps with files get the key, so the digests of every other step stay as they were.
    if let Some(d) = files_digest {
        definition.insert("files".to_string(), Json::String(d));
    }
    Json::Object(definition)
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
