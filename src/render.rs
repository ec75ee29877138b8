//! `plan render FILE STEP`: a run step's script exactly as its host would receive it. It is rendered by the
//! runner's own code (`step::template_context`, `host_context`, `render_run_script`) with the outputs of the
//! chosen run (the latest by default). What no run has produced yet becomes a placeholder string, which goes
//! through the same context escaping as any value, so the printed script stays valid shell.

use indexmap::IndexMap;
use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::plan::{Plan, RunSpec, StepKind, Target};
use crate::run::run_select::{self, RunSelector};
use crate::run::step;
use crate::state::RunState;
use crate::template;

/// What `plan render` prints: the script (stdout) and a note on where its values came from (stderr).
pub struct Rendered {
    pub script: String,
    pub note: String,
}

type Outputs = IndexMap<String, IndexMap<String, String>>;

/// The run step `step` of `plan`, rendered with the run `sel` picks (the latest when it names none).
pub async fn render(plan: &Plan, sel: &RunSelector, step: &str) -> Result<Rendered> {
    let spec = run_spec(plan, step)?;
    let store = run_select::store(plan).await?;
    let run = run_select::existing(&store, sel).await?;
    if let (Some(id), None) = (&sel.run, &run) {
        return Err(Error::Usage(format!(
            "{}: plan `{}` has no run `{id}`",
            plan.file.display(),
            plan.name
        )));
    }
    let (ctx, note) = match &run {
        Some(run) => (
            context_of_run(plan, run, step, spec),
            format!("rendered with the outputs of run {}", run.run_id),
        ),
        None => (
            context_without_run(plan, spec),
            format!(
                "plan `{}` has no runs yet: the run id, the host and earlier steps' outputs are placeholders",
                plan.name
            ),
        ),
    };
    let script = step::render_run_script(spec, &ctx)
        .map_err(|e| Error::runtime(format!("{}: step `{step}`: {e}", plan.file.display())))?;
    // Like every command's output: the values of secret-named variables never reach the terminal.
    Ok(Rendered {
        script: crate::scrub::text(&script),
        note,
    })
}

/// The spec of the run step `step`; any other step is bad input naming the plan file.
fn run_spec<'p>(plan: &'p Plan, step: &str) -> Result<&'p RunSpec> {
    let file = plan.file.display();
    let runs: Vec<&str> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.kind, StepKind::Run(_)))
        .map(|s| s.id.as_str())
        .collect();
    let help = format!("its run steps are: {}", runs.join(", "));
    match plan.step(step).map(|s| &s.kind) {
        Some(StepKind::Run(spec)) => Ok(spec),
        Some(_) => Err(Error::Usage(format!(
            "{file}: step `{step}` is of kind `{}`; only `run` steps have a script to render",
            plan.step(step).map_or("", |s| s.kind_name().as_str())
        ))
        .with_help(help)),
        None => Err(
            Error::Usage(format!("{file}: plan `{}` has no step `{step}`", plan.name))
                .with_help(help),
        ),
    }
}

fn context_of_run(plan: &Plan, run: &RunState, step: &str, spec: &RunSpec) -> minijinja::Value {
    let mut outputs = run.succeeded_outputs();
    fill_missing_outputs(plan, spec, &mut outputs);
    let root = step::local_root(plan);
    let local = matches!(plan.target, Target::Local { .. }).then_some(root.as_path());
    let host = step::host_context(local, &run.run_id, &spec.on, &outputs);
    let run_json = run_data(plan, &run.run_id, run.step(step).attempt.max(1));
    step::template_context(&plan.vars, run_json, &outputs, Some(host))
}

fn context_without_run(plan: &Plan, spec: &RunSpec) -> minijinja::Value {
    let mut outputs = Outputs::new();
    fill_missing_outputs(plan, spec, &mut outputs);
    let host = match &plan.target {
        // The sandbox's path names the run.
        Target::Local { .. } => serde_json::json!({
            "home": "<host home: no run yet>",
            "name": "<host name: no run yet>",
        }),
        Target::Aws { .. } => step::host_context(None, "", &spec.on, &outputs),
    };
    let run_json = run_data(plan, "<run id: no run yet>", 1);
    step::template_context(&plan.vars, run_json, &outputs, Some(host))
}

fn run_data(plan: &Plan, id: &str, attempt: u32) -> Json {
    serde_json::json!({ "id": id, "plan": plan.name, "attempt": attempt, "plan_dir": plan.absolute_dir() })
}

/// Adds a placeholder for every `steps.<id>.outputs.<key>` the script uses that `outputs` lacks (and, on AWS,
/// the host's `instance_id`), and an entry for every step it names, so that rendering never fails on a value
/// that a run would have.
fn fill_missing_outputs(plan: &Plan, spec: &RunSpec, outputs: &mut Outputs) {
    let env = template::environment();
    let refs =
        template::references(&env, &spec.script.name, &spec.script.source).unwrap_or_default();
    let mut wanted: Vec<(String, Option<String>)> = refs
        .iter()
        .filter(|r| r.root() == "steps")
        .filter_map(|r| {
            let parts: Vec<&str> = r.0.split('.').collect();
            let name = *parts.get(1)?;
            let id = plan
                .steps
                .iter()
                .find(|s| s.id == name || template::step_alias(&s.id) == name)?;
            let key = (parts.get(2) == Some(&"outputs"))
                .then(|| parts.get(3).map(|k| k.to_string()))
                .flatten();
            Some((id.id.clone(), key))
        })
        .collect();
    if matches!(plan.target, Target::Aws { .. }) {
        wanted.push((spec.on.clone(), Some("instance_id".into())));
    }
    for (id, key) in wanted {
        let entry = outputs.entry(id.clone()).or_default();
        if let Some(key) = key {
            entry
                .entry(key.clone())
                .or_insert_with(|| format!("<output of {id}.{key}: not produced yet>"));
        }
    }
}
