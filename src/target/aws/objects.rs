//! Where a run's objects live in S3 beside its state (only with S3 state): the SSM command output, and each
//! step's uploaded heartbeat and log tail. `plan status` and `plan logs -f` read them without SSM.

use crate::host::ssm::OutputLocation;
use crate::plan::StateLocation;

/// One of the keys below, by what it names.
pub type StepKey = fn(&StateLocation, &str, &str, &str) -> Option<String>;

/// The run's SSM output location: `<prefix>/<plan>/<run>/ssm`.
pub fn output_location(state: &StateLocation, plan: &str, run: &str) -> Option<OutputLocation> {
    match state {
        StateLocation::S3 { bucket, prefix } => Some(OutputLocation {
            bucket: bucket.clone(),
            prefix: s3_path(&[prefix, plan, run, "ssm"]),
        }),
        StateLocation::Dir(_) => None,
    }
}

/// Where a step's heartbeat lives in S3: `<prefix>/<plan>/<run>/steps/<step>/heartbeat.json`.
pub fn heartbeat_key(state: &StateLocation, plan: &str, run: &str, step: &str) -> Option<String> {
    step_object_key(state, plan, run, step, "heartbeat.json")
}

/// Where the host puts the tail of a running step's log for `plan logs -f` (deleted when the step ends).
pub fn log_tail_key(state: &StateLocation, plan: &str, run: &str, step: &str) -> Option<String> {
    step_object_key(state, plan, run, step, "log-tail")
}

/// The bucket and key of one of a step's objects.
pub fn step_object(
    key: StepKey,
    state: &StateLocation,
    plan: &str,
    run: &str,
    step: &str,
) -> Option<(String, String)> {
    let key = key(state, plan, run, step)?;
    match state {
        StateLocation::S3 { bucket, .. } => Some((bucket.clone(), key)),
        StateLocation::Dir(_) => None,
    }
}

fn step_object_key(
    state: &StateLocation,
    plan: &str,
    run: &str,
    step: &str,
    name: &str,
) -> Option<String> {
    match state {
        StateLocation::S3 { prefix, .. } => {
            Some(s3_path(&[prefix, plan, run, "steps", step, name]))
        }
        StateLocation::Dir(_) => None,
    }
}

/// An S3 key of `parts` joined with `/`; an empty part (the state's prefix may be empty) is left out.
fn s3_path(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/")
}
