//! A new run: its id, and its first state.

use crate::plan::Plan;
use crate::state::{self, RunState, RunStatus, StepState};

/// Run ids sort by creation time: UTC date, time to the millisecond, and a random tail against collisions.
pub(super) fn new_run_id() -> String {
    let now = std::time::SystemTime::now();
    let millis = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_millis());
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let (date, time) = stamp.split_at(8.min(stamp.len()));
    format!("{date}-{time}-{millis:03}-{:02x}", fastrand::u8(..))
}

/// The name of the plan's file, which a run records: see `RunState::plan_file`.
pub(super) fn plan_file_name(plan: &Plan) -> String {
    plan.file
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

pub(super) fn fresh_state(plan: &Plan, run_id: String) -> RunState {
    RunState {
        version: state::STATE_VERSION,
        lineage: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
        serial: 0,
        plan: plan.name.clone(),
        run_id,
        plan_digest: state::digest(&serde_json::json!(plan
            .steps
            .iter()
            .map(|s| &s.definition)
            .collect::<Vec<_>>())),
        target: plan.target.provider().into(),
        status: RunStatus::Running,
        started_at: state::now(),
        finished_at: None,
        vars: state::redacted_vars(&plan.vars),
        steps: plan
            .steps
            .iter()
            .map(|s| (s.id.clone(), StepState::pending()))
            .collect(),
        plan_file: Some(plan_file_name(plan)),
        run_key: None,
        changed: Default::default(),
    }
}
