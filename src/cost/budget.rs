//! `budget:`: a new run whose estimate may cost more is refused; a running one is ended once its spend reaches it.

use super::{estimate, spent, usd};
use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::state::RunState;

/// `plan apply` of a new run under `budget:`: refused (exit 2, nothing created) when the estimate is above the
/// budget or cannot be made.
pub fn check_new_run(plan: &Plan) -> Result<()> {
    let (Some(budget), Some(cost)) = (plan.operation.budget, estimate(plan)) else {
        return Ok(());
    };
    let file = plan.file.display();
    match cost.total_usd {
        Some(total) if total <= budget => Ok(()),
        Some(total) => Err(Error::Usage(format!("{file}: the estimated cost of a new run, {}, is above its budget of {}; nothing was started", usd(total), usd(budget))).with_help(format!("the estimate is an upper bound (on-demand prices × the longest chain of step timeouts on each instance); `plan preview {file}` itemises it. Lower the timeouts, pick cheaper `instance_types`, or raise `budget:`"))),
        None => Err(Error::Usage(format!("{file}: cannot estimate the cost of a new run ({}), so it cannot be held to its budget of {}; nothing was started", cost.unknown.join("; "), usd(budget))).with_help("add the price to prices/aws.yaml, give every run step a `timeout`, or remove `budget:`")),
    }
}

/// While the run goes: the message that ends it once its spend has reached the budget.
pub fn over_budget(plan: &Plan, run: &RunState, now: f64) -> Option<String> {
    let budget = plan.operation.budget?;
    let spent = spent(plan, run, now)?.total_usd?;
    (spent >= budget).then(|| format!("budget of {} reached after {}", usd(budget), usd(spent)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::estimate_text;
    use crate::cost::test_plans::{aws, plan_of, run_with, PLAN};
    use crate::state::{StepState, StepStatus};

    #[test]
    fn an_unknown_type_gives_no_total_and_a_refusal() {
        let plan = aws("us-east-1", "[g5.2xlarge, x9.huge]");
        let cost = estimate(&plan).expect("aws plan");
        assert_eq!(cost.total_usd, None);
        assert_eq!(cost.unknown, ["no price for x9.huge"]);
        assert!(cost.lines[0].usd.is_none());
        let text = estimate_text(&plan, &cost);
        assert!(text.contains("unknown: no price for x9.huge"), "{text}");
        let err = check_new_run(&plan).expect_err("refused").to_string();
        assert!(
            err.contains("cannot estimate") && err.contains("no price for x9.huge"),
            "{err}"
        );
    }

    #[test]
    fn the_budget_refuses_an_estimate_above_it() {
        let plan = aws("us-east-1", "[g5.2xlarge]");
        // About $28.88: within 30.
        assert!(check_new_run(&plan).is_ok());
        let tight = plan_of(
            &PLAN
                .replace("REGION", "us-east-1")
                .replace("TYPES", "[g5.2xlarge]")
                .replace("budget: 30", "budget: 25"),
        );
        let err = check_new_run(&tight).expect_err("refused").to_string();
        assert!(
            err.contains("$28.88") && err.contains("budget of $25.00"),
            "{err}"
        );
    }

    #[test]
    fn the_local_target_costs_nothing() {
        let plan = plan_of("plan: p\nsteps:\n  host: { kind: instance }\n  a: { kind: run, on: host, timeout: 1h, run: 'true' }\n");
        assert!(estimate(&plan).is_none());
        assert!(check_new_run(&plan).is_ok());
    }

    #[test]
    fn spend_reaching_the_budget_ends_the_run() {
        let plan = aws("us-east-1", "[g5.2xlarge]");
        let mut host = StepState::pending();
        host.status = StepStatus::Running;
        host.started_at = Some(0.0);
        let run = run_with(&[("host", host)]);
        // An instance still launching is priced as the dearest of its types: 1.212/h (+ its root volume).
        assert_eq!(over_budget(&plan, &run, 3600.0), None);
        let message = over_budget(&plan, &run, 25.0 * 3600.0).expect("over");
        assert!(
            message.starts_with("budget of $30.00 reached after $30."),
            "{message}"
        );
    }
}
