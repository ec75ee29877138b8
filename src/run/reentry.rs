//! Re-entry: what an apply on an existing run does with each step (DESIGN.md, "State and re-entry").

use crate::plan::{Plan, StepKind};
use crate::state::{self, RunState, StepStatus};

/// What re-entry decided for a step before the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Run,
    Skip,
    Rerun(String),
    Reconcile,
}

/// Decides, for every step, what this apply will do with it. `from` forces a step and its descendants.
///
/// Without `from`, a host that is gone makes its steps run again: an instance whose resources were torn down (a
/// failed run's `when: always` teardown) is re-created when a step on it must run, and the steps that ran on it
/// run again after it, because what they left on its disk went with it. With `from`, the user named where to
/// start, and `pick::check_resumable` refuses a start that would need a torn-down host.
pub fn decide(plan: &Plan, state: &RunState, from: Option<usize>) -> Vec<(Decision, String)> {
    let mut gone: Vec<Option<String>> = vec![None; plan.steps.len()];
    loop {
        let out = decide_with(plan, state, from, &gone);
        if from.is_some() {
            return out;
        }
        match needed_gone_host(plan, state, &out) {
            Some((host, reason)) if gone[host].is_none() => gone[host] = Some(reason),
            _ => return out,
        }
    }
}

/// An instance step that would be skipped although its instance was torn down and a step on it must run.
fn needed_gone_host(
    plan: &Plan,
    state: &RunState,
    out: &[(Decision, String)],
) -> Option<(usize, String)> {
    plan.steps.iter().enumerate().find_map(|(i, host)| {
        let resources = &state.step(&host.id).resources;
        let torn_down = matches!(host.kind, StepKind::Instance(_))
            && out[i].0 == Decision::Skip
            && !resources.is_empty()
            && resources.iter().all(|r| r.destroyed);
        if !torn_down {
            return None;
        }
        let user = plan.steps.iter().enumerate().find(|(j, s)| {
            matches!(out[*j].0, Decision::Run | Decision::Rerun(_))
                && match &s.kind {
                    StepKind::Run(r) => r.on == host.id,
                    StepKind::Volume(v) => v.attach_to == host.id,
                    _ => false,
                }
        })?;
        Some((
            i,
            format!(
                "its instance was torn down, and `{}` must run on it",
                user.1.id
            ),
        ))
    })
}

fn decide_with(
    plan: &Plan,
    state: &RunState,
    from: Option<usize>,
    gone: &[Option<String>],
) -> Vec<(Decision, String)> {
    let n = plan.steps.len();
    let mut out = vec![(Decision::Run, String::new()); n];
    let mut forced = vec![false; n];
    if let Some(f) = from {
        for d in plan.dag.descendants(f) {
            forced[d] = true;
        }
    }
    for &i in plan.dag.order() {
        let step = &plan.steps[i];
        let st = state.step(&step.id);
        let digest = state::digest(&step.definition);
        // A teardown reruns too: whatever runs again may re-create what it destroys. A succeeded step after one
        // that failed (`when: always`) runs again after it.
        let upstream_rerun = plan
            .dag
            .dependencies(i)
            .iter()
            .any(|&d| matches!(out[d].0, Decision::Run | Decision::Rerun(_)));
        out[i] = if forced[i] {
            (
                Decision::Rerun(format!("--from {}", plan.steps[from.unwrap_or(i)].id)),
                "forced".into(),
            )
        } else if let Some(reason) = &gone[i] {
            (Decision::Rerun(reason.clone()), "host gone".into())
        } else {
            match st.status {
                StepStatus::Succeeded if st.digest.as_deref() != Some(digest.as_str()) => (
                    Decision::Rerun("its definition changed".into()),
                    "changed".into(),
                ),
                StepStatus::Succeeded if upstream_rerun => (
                    Decision::Rerun("a step it depends on runs again".into()),
                    "upstream".into(),
                ),
                StepStatus::Succeeded => (Decision::Skip, "succeeded before, unchanged".into()),
                StepStatus::Running => (
                    Decision::Reconcile,
                    "was running when the last apply stopped".into(),
                ),
                StepStatus::Pending => (Decision::Run, "not run yet".into()),
                other => (Decision::Run, format!("{} last time", other.as_str())),
            }
        };
    }
    out
}
