//! The estimate of a new run: an upper bound, from the longest chain of step timeouts on each instance.

use super::pricing::{dearest, push_root, push_volume, region_note};
use super::Cost;
use crate::plan::{Plan, StepKind, Target};
use crate::prices::{self, PriceTable};

/// The estimate of a new run of an AWS plan; None for the local target (it costs nothing).
pub fn estimate(plan: &Plan) -> Option<Cost> {
    estimate_with(plan, prices::table())
}

fn estimate_with(plan: &Plan, table: &PriceTable) -> Option<Cost> {
    if !matches!(plan.target, Target::Aws { .. }) {
        return None;
    }
    let mut cost = Cost::new();
    region_note(plan, table, &mut cost);
    for step in &plan.steps {
        match &step.kind {
            StepKind::Instance(spec) => {
                let hours = instance_hours(plan, &step.id, &mut cost);
                let price = dearest(table, spec, &mut cost);
                let what = price
                    .as_ref()
                    .map_or_else(|| spec.instance_types.join("|"), |(_, ty)| ty.clone());
                cost.push(&step.id, what, hours, price.map(|(p, _)| p * hours));
                push_root(&mut cost, table, &step.id, spec.root_size_bytes, hours);
            }
            StepKind::Volume(v) => {
                let hours = instance_hours(plan, &v.attach_to, &mut Cost::new());
                push_volume(&mut cost, table, &step.id, v, hours);
                extras_note(v, &mut cost);
                if v.keep {
                    cost.note(format!(
                        "volume `{}` is kept: it is billed after the run until it is deleted",
                        step.id
                    ));
                }
            }
            _ => {}
        }
    }
    cost.note("hours are the longest chain of step timeouts on each instance (retries and boot time not counted)".into());
    Some(cost.close())
}

fn extras_note(v: &crate::plan::VolumeSpec, cost: &mut Cost) {
    let above = v.iops.is_some_and(|i| i > 3000) || v.throughput.is_some_and(|t| t > 125);
    if v.volume_type == "gp3" && above {
        cost.note(
            "gp3 IOPS above 3,000 and throughput above 125 MiB/s are billed extra and not counted"
                .into(),
        );
    }
}

/// Hours an instance is expected to live: the longest chain of its run steps' timeouts, or its `ttl` if longer,
/// at most its `max_lifetime`. A run step on it without
/// a timeout has no bound: that makes the estimate unknown.
fn instance_hours(plan: &Plan, instance: &str, cost: &mut Cost) -> f64 {
    for step in &plan.steps {
        if matches!(&step.kind, StepKind::Run(r) if r.on == instance) && step.timeout.is_none() {
            cost.unknown
                .push(format!("step `{}` has no timeout", step.id));
        }
    }
    let chain = crate::lifetime_check::longest_path(plan, instance).0;
    // A dev environment stays up until its `ttl` (unless destroyed first); `max_lifetime` caps everything.
    let ttl = plan.step(instance).and_then(|s| match &s.kind {
        StepKind::Instance(i) => Some((i.ttl, i.max_lifetime)),
        _ => None,
    });
    let (ttl, cap) = ttl.unwrap_or((None, None));
    let mut lives = ttl.map_or(chain, |t| t.max(chain));
    if let Some(cap) = cap {
        lives = lives.min(cap);
    }
    lives.as_secs_f64() / 3600.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::test_plans::{aws, close, plan_of, PLAN};

    #[test]
    fn estimate_prices_the_longest_timeout_chain_and_the_volumes() {
        let cost = estimate(&aws("us-east-1", "[g5.2xlarge]")).expect("aws plan");
        // b (3h) then c (20h): 23 hours.
        let hours: Vec<f64> = cost.lines.iter().map(|l| l.hours).collect();
        assert!(hours.iter().all(|h| close(*h, 23.0)), "{hours:?}");
        let usd: Vec<f64> = cost.lines.iter().map(|l| l.usd.expect("priced")).collect();
        assert!(close(usd[0], 1.212 * 23.0), "instance {}", usd[0]);
        assert!(
            close(usd[1], 100.0 * 0.08 * 23.0 / 730.0),
            "root {}",
            usd[1]
        );
        assert!(
            close(usd[2], 300.0 * 0.08 * 23.0 / 730.0),
            "volume {}",
            usd[2]
        );
        assert!(close(cost.total_usd.expect("total"), usd.iter().sum()));
        assert_eq!(cost.lines[2].what, "volume 300 GiB gp3");
        assert!(cost.unknown.is_empty());
        assert!(
            !cost.notes.iter().any(|n| n.contains("region")),
            "{:?}",
            cost.notes
        );
    }

    #[test]
    fn failover_is_priced_as_the_dearest_type_and_says_so() {
        let cost = estimate(&aws("us-east-1", "[g6.2xlarge, g5.2xlarge]")).expect("aws plan");
        assert_eq!(cost.lines[0].what, "g5.2xlarge");
        assert!(close(cost.lines[0].usd.expect("priced"), 1.212 * 23.0));
        assert!(cost
            .notes
            .iter()
            .any(|n| n
                == "failover between g6.2xlarge, g5.2xlarge: priced as the dearest, g5.2xlarge"));
    }

    #[test]
    fn other_regions_are_priced_as_us_east_1_with_a_note() {
        let cost = estimate(&aws("eu-west-1", "[g5.2xlarge]")).expect("aws plan");
        assert!(cost.total_usd.is_some());
        assert!(cost
            .notes
            .iter()
            .any(|n| n.starts_with("region eu-west-1: priced as us-east-1")));
    }

    #[test]
    fn a_run_step_without_timeout_leaves_the_estimate_unknown() {
        let plan = plan_of(
            &PLAN
                .replace("REGION", "us-east-1")
                .replace("TYPES", "[g5.2xlarge]")
                .replace(", timeout: 2h", ""),
        );
        let cost = estimate(&plan).expect("aws plan");
        assert_eq!(cost.total_usd, None);
        assert_eq!(cost.unknown, ["step `a` has no timeout"]);
    }

    #[test]
    fn a_dev_environment_lives_its_ttl_at_most_its_max_lifetime() {
        let dev = |extra: &str| {
            plan_of(&format!(
                "plan: p\ntarget: {{ provider: aws, region: us-east-1 }}\nsteps:\n  host: {{ kind: instance, instance_types: [g5.xlarge], image: ami-1{extra} }}\n  s: {{ kind: run, on: host, timeout: 20m, run: 'true' }}\n"
            ))
        };
        let hours = |p: &Plan| instance_hours(p, "host", &mut Cost::new());
        assert!(close(hours(&dev("")), 20.0 / 60.0));
        assert!(close(hours(&dev(", ttl: 8h")), 8.0));
        assert!(close(hours(&dev(", ttl: 8h, max_lifetime: 6h")), 6.0));
    }
}
