//! `plan destroy`: removes every resource a run owns, dependents first, and marks the run destroyed.

use crate::error::Result;
use crate::plan::Plan;
use crate::run::run_select::{require, store, RunSelector};
use crate::state::store::Store;
use crate::state::{self, RunState, RunStatus, StepStatus};
use crate::target::Target;

/// Removes every resource the run owns, dependents first. Idempotent.
pub async fn destroy(plan: &Plan, sel: &RunSelector) -> Result<String> {
    let store = store(plan).await?;
    let found = require(&store, plan, sel).await?;
    let lock = store.lock(&found.run_id, &plan.file).await?;
    let result = destroy_locked(plan, &store, found, "cancelled: the run was destroyed").await;
    let released = lock.release().await;
    let text = result?;
    released?;
    Ok(text)
}

/// Destroys a run whose lock the caller holds; steps still running are marked cancelled with `why` (their
/// processes end with their host).
pub(super) async fn destroy_locked(
    plan: &Plan,
    store: &Store,
    found: RunState,
    why: &str,
) -> Result<String> {
    let mut run = store.load(&found.run_id).await?.unwrap_or(found);
    let order: Vec<(String, Vec<state::Resource>)> = plan
        .dag
        .order()
        .iter()
        .rev()
        .map(|&i| plan.steps[i].id.clone())
        .chain(
            run.steps
                .keys()
                .filter(|k| plan.step(k).is_none())
                .cloned()
                .collect::<Vec<_>>(),
        )
        .filter_map(|id| run.steps.get(&id).map(|s| (id, s.resources.clone())))
        .filter(|(_, r)| r.iter().any(|r| !r.destroyed))
        .collect();
    let done = Target::of(plan).await.destroy(order).await?;
    let mut count = 0;
    for id in &done {
        for r in &mut run.step_mut(id).resources {
            if !r.destroyed {
                r.destroyed = true;
                r.destroyed_at = Some(state::now());
                count += 1;
            }
        }
    }
    run.status = RunStatus::Destroyed;
    run.finished_at.get_or_insert_with(state::now);
    for st in run.steps.values_mut() {
        if st.status == StepStatus::Running {
            st.status = StepStatus::Cancelled;
            st.error = Some(why.to_string());
            st.finished_at = Some(state::now());
        }
    }
    store.save(&mut run).await?;
    Ok(format!("run {}: destroyed {count} resources\n", run.run_id))
}
