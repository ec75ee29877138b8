//! What a run has spent: its resources priced from their creation to their teardown (or now).

use super::pricing::{dearest, push_root, push_volume, region_note};
use super::Cost;
use crate::plan::{Plan, StepKind, Target};
use crate::prices::{self, PriceTable};
use crate::state::{Resource, RunState, StepStatus};

/// What the run's resources have cost so far (or in all, once torn down); None for the local target.
pub fn spent(plan: &Plan, run: &RunState, now: f64) -> Option<Cost> {
    spent_with(plan, run, now, prices::table())
}

fn spent_with(plan: &Plan, run: &RunState, now: f64, table: &PriceTable) -> Option<Cost> {
    if !matches!(plan.target, Target::Aws { .. }) {
        return None;
    }
    let mut cost = Cost::new();
    region_note(plan, table, &mut cost);
    for step in &plan.steps {
        let st = run.step(&step.id);
        let Some(hours) = lived_hours(&st.resources, st.status, st.started_at, now) else {
            continue;
        };
        match &step.kind {
            StepKind::Instance(spec) => {
                // The type actually launched; while it is being launched, the dearest it may be.
                let launched = st.outputs.get("instance_type").cloned();
                let (ty, price) = match launched {
                    Some(ty) => {
                        let p = table.instance_hour(&ty);
                        if p.is_none() {
                            cost.unknown.push(format!("no price for {ty}"));
                        }
                        (ty, p)
                    }
                    None => match dearest(table, spec, &mut cost) {
                        Some((p, ty)) => (ty, Some(p)),
                        None => (spec.instance_types.join("|"), None),
                    },
                };
                cost.push(&step.id, ty, hours, price.map(|p| p * hours));
                push_root(&mut cost, table, &step.id, spec.root_size_bytes, hours);
            }
            StepKind::Volume(v) => {
                push_volume(&mut cost, table, &step.id, v, hours);
            }
            _ => {}
        }
    }
    Some(cost.close())
}

/// How long a resource step's resources lived: from the step's start (the create call) to their teardown, or
/// to `now`. None when it created nothing.
fn lived_hours(
    resources: &[Resource],
    status: StepStatus,
    started: Option<f64>,
    now: f64,
) -> Option<f64> {
    let start = started?;
    if resources.is_empty() && status != StepStatus::Running {
        return None;
    }
    let end = if !resources.is_empty() && resources.iter().all(|r| r.destroyed) {
        resources
            .iter()
            .filter_map(|r| r.destroyed_at)
            .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))))
            .unwrap_or(now)
    } else {
        now
    };
    Some((end - start).max(0.0) / 3600.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::test_plans::{aws, close, resource, run_with};
    use crate::state::StepState;

    #[test]
    fn spend_runs_from_creation_to_teardown_at_the_launched_type() {
        let plan = aws("us-east-1", "[g5.2xlarge, g6.2xlarge]");
        let mut host = StepState::pending();
        host.status = StepStatus::Succeeded;
        host.started_at = Some(1000.0);
        host.outputs
            .insert("instance_type".into(), "g6.2xlarge".into());
        host.resources = vec![resource(Some(1000.0 + 7200.0))];
        let mut data = StepState::pending();
        data.status = StepStatus::Succeeded;
        data.started_at = Some(1000.0 + 60.0);
        data.resources = vec![resource(None)];
        let run = run_with(&[("host", host), ("data", data)]);
        // Three hours after the start: the instance was torn down after two, the volume still exists.
        let cost = spent(&plan, &run, 1000.0 + 3.0 * 3600.0).expect("aws plan");
        assert_eq!(cost.lines[0].what, "g6.2xlarge");
        assert!(close(cost.lines[0].usd.expect("priced"), 0.9776 * 2.0));
        assert!(close(
            cost.lines[1].usd.expect("priced"),
            100.0 * 0.08 * 2.0 / 730.0
        ));
        let volume_hours = 3.0 - 60.0 / 3600.0;
        assert!(close(
            cost.lines[2].usd.expect("priced"),
            300.0 * 0.08 * volume_hours / 730.0
        ));
        let total = cost.total_usd.expect("total");
        assert!(close(total, cost.lines.iter().filter_map(|l| l.usd).sum()));
        // Nothing created yet: no spend at all.
        let none = spent(&plan, &run_with(&[]), 5000.0).expect("aws plan");
        assert!(none.lines.is_empty());
        assert_eq!(none.total_usd, Some(0.0));
    }
}
