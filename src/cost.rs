//! What an AWS run costs: the estimate before it starts (an upper bound from the step timeouts), its spend so
//! far (from the times in its state), and `budget:` (refuse a new run that may cost more; the runner stops one
//! whose spend reaches it). Prices come from the dated table in `prices/aws.yaml`.

use std::fmt::Write as _;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::plan::{InstanceSpec, Plan, StepKind, Target};
use crate::prices::{self, PriceTable, HOURS_PER_MONTH};
use crate::state::{Resource, RunState, StepStatus};

/// One priced item: an instance, its root volume, or a volume.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub step: String,
    /// `g5.2xlarge`, `root volume 100 GiB gp3`, `volume 300 GiB gp3`.
    pub what: String,
    pub hours: f64,
    /// None when the item has no price.
    pub usd: Option<f64>,
}

/// An estimate or a spend: its lines, and a total only when every line has a price.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cost {
    pub lines: Vec<Line>,
    pub total_usd: Option<f64>,
    /// Why there is no total ("no price for x1.large").
    pub unknown: Vec<String>,
    /// Caveats the reader must see (spot, failover, region, extras not counted).
    pub notes: Vec<String>,
}

impl Cost {
    fn new() -> Cost {
        Cost {
            lines: Vec::new(),
            total_usd: None,
            unknown: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn push(&mut self, step: &str, what: String, hours: f64, usd: Option<f64>) {
        self.lines.push(Line {
            step: step.to_string(),
            what,
            hours,
            usd,
        });
    }

    fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    fn close(mut self) -> Cost {
        self.total_usd = (self.unknown.is_empty() && self.lines.iter().all(|l| l.usd.is_some()))
            .then(|| self.lines.iter().filter_map(|l| l.usd).sum());
        self
    }
}

/// The dearest of an instance step's types (failover launches any of them): the price, and the type.
fn dearest(table: &PriceTable, spec: &InstanceSpec, cost: &mut Cost) -> Option<(f64, String)> {
    let mut best: Option<(f64, String)> = None;
    for ty in &spec.instance_types {
        match table.instance_hour(ty) {
            Some(p) if best.as_ref().is_none_or(|(b, _)| p > *b) => best = Some((p, ty.clone())),
            Some(_) => {}
            None => cost.unknown.push(format!("no price for {ty}")),
        }
    }
    if spec.instance_types.len() > 1 {
        if let Some((_, ty)) = &best {
            cost.note(format!(
                "failover between {}: priced as the dearest, {ty}",
                spec.instance_types.join(", ")
            ));
        }
    }
    if spec.market == crate::plan_file::Market::Spot {
        cost.note(format!("spot: {}", table.spot));
    }
    best.filter(|_| cost.unknown.is_empty())
}

fn ebs(
    table: &PriceTable,
    volume_type: &str,
    bytes: u64,
    hours: f64,
    cost: &mut Cost,
) -> Option<f64> {
    let gib = crate::target::aws::gib_ceil(bytes) as f64;
    match table.ebs_gb_month(volume_type) {
        Some(p) => Some(gib * p * hours / HOURS_PER_MONTH),
        None => {
            cost.unknown.push(format!("no price for EBS {volume_type}"));
            None
        }
    }
}

fn region_note(plan: &Plan, table: &PriceTable, cost: &mut Cost) {
    let Target::Aws { region, .. } = &plan.target else {
        return;
    };
    match region.as_deref() {
        Some(r) if r == table.region => {}
        Some(r) => cost.note(format!(
            "region {r}: priced as {} ({})",
            table.region, table.other_regions
        )),
        None => cost.note(format!(
            "the plan names no region: priced as {}",
            table.region
        )),
    }
}

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
                let usd = ebs(table, &v.volume_type, v.size_bytes, hours, &mut cost);
                cost.push(
                    &step.id,
                    format!("volume {} GiB {}", gib(v.size_bytes), v.volume_type),
                    hours,
                    usd,
                );
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

fn gib(bytes: u64) -> i32 {
    crate::target::aws::gib_ceil(bytes)
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

/// An instance's root volume (gp3), if the plan sizes it.
fn push_root(cost: &mut Cost, table: &PriceTable, step: &str, bytes: Option<u64>, hours: f64) {
    if let Some(bytes) = bytes {
        let usd = ebs(table, "gp3", bytes, hours, cost);
        cost.push(
            step,
            format!("root volume {} GiB gp3", gib(bytes)),
            hours,
            usd,
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
                let usd = ebs(table, &v.volume_type, v.size_bytes, hours, &mut cost);
                cost.push(
                    &step.id,
                    format!("volume {} GiB {}", gib(v.size_bytes), v.volume_type),
                    hours,
                    usd,
                );
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

/// `$12.34`; amounts under a cent keep their first significant digits (`$0.000012`).
pub fn usd(amount: f64) -> String {
    if amount == 0.0 || amount.abs() >= 0.01 {
        format!("${amount:.2}")
    } else {
        let text = format!("{amount:.8}");
        format!("${}", text.trim_end_matches('0'))
    }
}

fn hours_text(hours: f64) -> String {
    let secs = (hours * 3600.0).round() as u64;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// The estimate, as `plan preview` shows it (and `plan apply` before it asks).
pub fn estimate_text(plan: &Plan, cost: &Cost) -> String {
    let table = prices::table();
    let mut out = format!(
        "estimated cost (upper bound; on-demand {} prices of {}):\n",
        table.region, table.as_of
    );
    let width = cost
        .lines
        .iter()
        .map(|l| l.step.len())
        .max()
        .unwrap_or(4)
        .max(5);
    for l in &cost.lines {
        let amount = l.usd.map_or_else(|| "?".to_string(), usd);
        let _ = writeln!(
            out,
            "  {:<width$}  {:<28} {:>10}  {}",
            l.step,
            l.what,
            hours_text(l.hours),
            amount
        );
    }
    match cost.total_usd {
        Some(t) => {
            let _ = writeln!(out, "  {:<width$}  {t}", "total", t = usd(t));
        }
        None => {
            let _ = writeln!(
                out,
                "  {:<width$}  unknown: {}",
                "total",
                cost.unknown.join("; ")
            );
        }
    }
    if let Some(budget) = plan.operation.budget {
        let verdict = match cost.total_usd {
            Some(t) if t <= budget => "within it",
            _ => "a new run would be refused",
        };
        let _ = writeln!(out, "  {:<width$}  {} ({verdict})", "budget", usd(budget));
    }
    for n in &cost.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    out
}

/// The one-line summary of `plan status`: spend so far, and the estimate and budget beside it.
pub fn status_line(plan: &Plan, spent: &Cost) -> String {
    let so_far = match spent.total_usd {
        Some(t) => usd(t),
        None => format!("unknown ({})", spent.unknown.join("; ")),
    };
    let mut out = format!("cost so far: {so_far} (on-demand prices)");
    if let Some(e) = estimate(plan).and_then(|e| e.total_usd) {
        let _ = write!(out, "; estimate {}", usd(e));
    }
    if let Some(b) = plan.operation.budget {
        let _ = write!(out, "; budget {}", usd(b));
    }
    out + "\n"
}

/// The `cost` field of `plan status --output json`.
pub fn status_json(plan: &Plan, spent: &Cost) -> serde_json::Value {
    serde_json::json!({
        "spent_usd": spent.total_usd,
        "estimate_usd": estimate(plan).and_then(|e| e.total_usd),
        "budget_usd": plan.operation.budget,
        "lines": spent.lines,
        "unknown": spent.unknown,
        "prices_as_of": prices::table().as_of,
    })
}

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
    use std::path::Path;

    use indexmap::IndexMap;

    use super::*;
    use crate::compiler::compile;
    use crate::state::StepState;
    use crate::variables::Overrides;

    fn plan_of(text: &str) -> Plan {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, text).expect("write");
        compile(Path::new(&file), &Overrides::default())
            .expect("valid")
            .plan
    }

    const PLAN: &str = "plan: p
target: { provider: aws, region: REGION }
budget: 30
steps:
  host: { kind: instance, instance_types: TYPES, image: ami-1, root_size: 100GiB }
  data: { kind: volume, attach_to: host, size: 300GiB, mount: /mnt/d }
  a: { kind: run, on: host, needs: [data], timeout: 2h, run: 'true' }
  b: { kind: run, on: host, needs: [data], timeout: 3h, run: 'true' }
  c: { kind: run, on: host, needs: [a, b], timeout: 20h, run: 'true' }
  down: { kind: teardown, needs: [c], when: always }
";

    fn aws(region: &str, types: &str) -> Plan {
        plan_of(&PLAN.replace("REGION", region).replace("TYPES", types))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

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
    fn other_regions_are_priced_as_us_east_1_with_a_note() {
        let cost = estimate(&aws("eu-west-1", "[g5.2xlarge]")).expect("aws plan");
        assert!(cost.total_usd.is_some());
        assert!(cost
            .notes
            .iter()
            .any(|n| n.starts_with("region eu-west-1: priced as us-east-1")));
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

    fn resource(destroyed_at: Option<f64>) -> Resource {
        Resource {
            destroyed: destroyed_at.is_some(),
            destroyed_at,
            ..Resource::new(crate::state::ResourceKind::Ec2Instance, "i-1")
        }
    }

    fn run_with(steps: &[(&str, StepState)]) -> RunState {
        RunState {
            version: crate::state::STATE_VERSION,
            lineage: "l".into(),
            serial: 0,
            plan: "p".into(),
            run_id: "r".into(),
            plan_digest: String::new(),
            target: "aws".into(),
            status: crate::state::RunStatus::Running,
            started_at: 0.0,
            finished_at: None,
            vars: IndexMap::new(),
            steps: steps
                .iter()
                .map(|(k, s)| (k.to_string(), s.clone()))
                .collect(),
            plan_file: None,
            run_key: None,
            changed: Default::default(),
        }
    }

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

    #[test]
    fn amounts_print_in_dollars() {
        assert_eq!(usd(28.8849), "$28.88");
        assert_eq!(usd(0.0), "$0.00");
        assert_eq!(usd(0.0000125), "$0.0000125");
        assert_eq!(usd(0.5), "$0.50");
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
