//! Plans and run states the cost tests share.

use std::path::Path;

use indexmap::IndexMap;

use crate::compiler::compile;
use crate::plan::Plan;
use crate::state::{Resource, RunState, StepState};
use crate::variables::Overrides;

pub(super) fn plan_of(text: &str) -> Plan {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, text).expect("write");
    compile(Path::new(&file), &Overrides::default())
        .expect("valid")
        .plan
}

pub(super) const PLAN: &str = "plan: p
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

pub(super) fn aws(region: &str, types: &str) -> Plan {
    plan_of(&PLAN.replace("REGION", region).replace("TYPES", types))
}

pub(super) fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

pub(super) fn resource(destroyed_at: Option<f64>) -> Resource {
    Resource {
        destroyed: destroyed_at.is_some(),
        destroyed_at,
        ..Resource::new(crate::state::ResourceKind::Ec2Instance, "i-1")
    }
}

pub(super) fn run_with(steps: &[(&str, StepState)]) -> RunState {
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
