//! `plan preview`: what apply would do, and why (also what apply shows before it asks). Changes nothing.

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::run::new_run::fresh_state;
use crate::run::pick::target_run;
use crate::run::run_select::{store, RunSelector};
use crate::run::walker::{self, Decision};
use crate::state::store::Store;
use crate::state::{self, RunState, RunStatus};

/// What apply would do, and why. Changes nothing.
pub async fn preview(
    plan: &Plan,
    sel: &RunSelector,
    from: Option<&str>,
    run_key: Option<&str>,
) -> Result<String> {
    let store = store(plan).await?;
    let from_index = match from {
        Some(id) => Some(plan.index_of(id).ok_or_else(|| {
            Error::Usage(format!("--from: plan `{}` has no step `{id}`", plan.name))
        })?),
        None => None,
    };
    let key = crate::run::run_key::resolve(plan, run_key)?;
    Ok(preview_with(plan, &store, sel, from_index, key.as_deref())
        .await?
        .0)
}

/// The preview text of an apply with these choices (also what apply shows before it asks), and whether apply
/// would act at all.
pub(super) async fn preview_with(
    plan: &Plan,
    store: &Store,
    sel: &RunSelector,
    from_index: Option<usize>,
    key: Option<&str>,
) -> Result<(String, bool)> {
    let previous = target_run(store, sel, from_index, key).await?;
    if let Some(text) = starts_nothing(plan, store, previous.as_ref(), from_index, key).await? {
        return Ok((text, false));
    }
    let continuing = previous.is_some();
    let (header, run) = match previous {
        Some(p) => (format!("continuing run {}", p.run_id), p),
        None => (
            format!("new run{}", replace_note(plan, store).await?),
            fresh_state(plan, "preview".into()),
        ),
    };
    let decisions = walker::decide(plan, &run, from_index);
    let mut out = format!("plan {}: {header}\n", plan.name);
    out.push_str(&decision_lines(plan, &decisions));
    if let Some(estimate) = crate::cost::estimate(plan) {
        out.push_str(&crate::cost::estimate_text(plan, &estimate));
    }
    if let Some(spent) = crate::cost::spent(plan, &run, state::now()).filter(|_| continuing) {
        out.push_str(&crate::cost::status_line(plan, &spent));
    }
    let acts = decisions.iter().any(|(d, _)| *d != Decision::Skip);
    Ok((out, acts))
}

/// The whole preview when apply would start nothing: the keyed run has succeeded (and no `--from`), or
/// `concurrency: forbid` and another run is unfinished.
async fn starts_nothing(
    plan: &Plan,
    store: &Store,
    previous: Option<&RunState>,
    from_index: Option<usize>,
    key: Option<&str>,
) -> Result<Option<String>> {
    if let (Some(k), Some(p)) = (key, previous) {
        if p.status == RunStatus::Succeeded && from_index.is_none() {
            return Ok(Some(format!(
                "plan {}: run {} (key `{k}`) has succeeded: apply does nothing\n",
                plan.name, p.run_id
            )));
        }
    }
    if previous.is_none() && plan.operation.concurrency == crate::plan_file::Concurrency::Forbid {
        if let Some(other) = crate::run::concurrency::unfinished(store).await?.first() {
            return Ok(Some(format!(
                "plan {}: run {} is unfinished and the plan says `concurrency: forbid`: apply starts nothing\n",
                plan.name, other.run_id
            )));
        }
    }
    Ok(None)
}

/// What a new run's header adds under `concurrency: replace` when other runs are unfinished; else nothing.
async fn replace_note(plan: &Plan, store: &Store) -> Result<String> {
    if plan.operation.concurrency != crate::plan_file::Concurrency::Replace {
        return Ok(String::new());
    }
    let ids: Vec<String> = crate::run::concurrency::unfinished(store)
        .await?
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    Ok(if ids.is_empty() {
        String::new()
    } else {
        format!(
            " (first cancels and tears down the unfinished run {}: concurrency: replace)",
            ids.join(", ")
        )
    })
}

/// One line per step, in the DAG's order: its id, what apply does with it, and why.
fn decision_lines(plan: &Plan, decisions: &[(Decision, String)]) -> String {
    let width = plan
        .steps
        .iter()
        .map(|s| s.id.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = String::new();
    for &i in plan.dag.order() {
        let (decision, why) = &decisions[i];
        let (action, why) = match decision {
            Decision::Run => ("run", why.clone()),
            Decision::Skip => ("skip", why.clone()),
            Decision::Rerun(reason) => ("rerun", reason.clone()),
            Decision::Reconcile => ("reconcile", why.clone()),
        };
        out.push_str(&format!(
            "  {:<width$}  {action:<9}  {why}\n",
            plan.steps[i].id
        ));
    }
    out
}
