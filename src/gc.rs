//! `plan gc`: finds cloud resources tagged with the plan that no run will clean up, and with `--yes` removes them
//! (instances first: their root volumes go with them, data volumes are then free). The backstop behind "zero
//! leaked instances": a run that lost its state still left its tags.
//!
//! A resource is garbage when its run is unknown to the state store or finished, or when its run still says
//! running but cannot be: its instance is terminated (a host that died under an apply that then died too), or
//! nothing was checkpointed for `--stale-after`. A volume the run keeps is listed, and removed only with
//! `--include-kept`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::plan::{Plan, Target};
use crate::state::store::Store;
use crate::state::RunState;
use crate::target::aws::{self, AwsProvider, TaggedResource};

/// What `plan gc` is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    pub yes: bool,
    pub include_kept: bool,
    /// A run that says running but wrote no checkpoint for this long is abandoned.
    pub stale_after: Duration,
}

/// Why a resource is garbage (`true`) or kept (`false`).
fn verdict(
    state: Option<&RunState>,
    live_instances: &HashSet<&str>,
    stale_after: Duration,
) -> (String, bool) {
    let Some(state) = state else {
        return ("its run is unknown to the state store".into(), true);
    };
    if state.status.is_finished() {
        return ("its run is finished".into(), true);
    }
    let gone = state.steps.values().flat_map(|s| &s.resources).find(|r| {
        r.kind == crate::state::ResourceKind::Ec2Instance && !live_instances.contains(r.id.as_str())
    });
    if let Some(instance) = gone {
        return (
            format!(
                "its run says running, but its instance {} is terminated",
                instance.id
            ),
            true,
        );
    }
    let quiet = last_checkpoint(state).map_or(Duration::ZERO, |at| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(Duration::from_secs_f64(at.max(0.0)))
    });
    if quiet >= stale_after {
        return (
            format!(
                "its run says running, but has not been checkpointed for {} (--stale-after {})",
                humantime::format_duration(Duration::from_secs(quiet.as_secs())),
                humantime::format_duration(stale_after)
            ),
            true,
        );
    }
    ("its run is still going".into(), false)
}

/// When the run last changed: its start, or the latest step start or end (each is checkpointed).
fn last_checkpoint(state: &RunState) -> Option<f64> {
    state
        .steps
        .values()
        .flat_map(|s| [s.started_at, s.finished_at])
        .flatten()
        .chain([state.started_at])
        .reduce(f64::max)
}

/// Whether the run's state says it keeps this volume (`keep: true`).
fn kept_by(state: Option<&RunState>, id: &str) -> bool {
    state.is_some_and(|s| {
        s.steps
            .values()
            .flat_map(|st| &st.resources)
            .any(|res| res.id == id && res.keep)
    })
}

pub async fn gc(plan: &Plan, opts: GcOptions) -> Result<String> {
    if !matches!(plan.target, Target::Aws { .. }) {
        return Ok("nothing to collect: the local target's hosts are directories that teardown and destroy remove\n".into());
    }
    let store = Store::open(plan).await?;
    let target = crate::target::AwsTarget::new(plan).await;
    let provider = &target.provider;
    let found = provider.resources_tagged(aws::TAG_PLAN, &plan.name).await?;
    if found.is_empty() {
        return Ok(format!("no resources tagged sortie:plan={}\n", plan.name));
    }
    let live: HashSet<&str> = found
        .iter()
        .filter(|r| r.kind == aws::KIND_INSTANCE)
        .map(|r| r.id.as_str())
        .collect();
    // Each run's state, read once however many of its resources are found.
    let mut states: HashMap<&str, Option<RunState>> = HashMap::new();
    for r in found.iter().filter(|r| !r.run.is_empty()) {
        if !states.contains_key(r.run.as_str()) {
            states.insert(&r.run, store.load(&r.run).await?);
        }
    }
    let mut out = String::new();
    let mut garbage: Vec<&TaggedResource> = Vec::new();
    for r in &found {
        let state = states.get(r.run.as_str()).and_then(Option::as_ref);
        let (mut why, mut collect) = verdict(state, &live, opts.stale_after);
        if kept_by(state, &r.id) {
            if !collect {
                why = "the run keeps this volume".into();
            } else if opts.include_kept {
                why = format!("{why}; kept, but --include-kept");
            } else {
                why = format!(
                    "{why}; the run keeps this volume (remove it with --yes --include-kept)"
                );
                collect = false;
            }
        }
        out.push_str(&format!(
            "{:<8} {:<13} {:<22} run {:<24} {why}\n",
            if collect { "garbage" } else { "keep" },
            r.kind,
            r.id,
            if r.run.is_empty() { "?" } else { &r.run }
        ));
        if collect {
            garbage.push(r);
        }
    }
    if garbage.is_empty() {
        out.push_str("nothing to collect\n");
        return Ok(out);
    }
    if !opts.yes {
        out.push_str(&format!(
            "{} to collect; run again with --yes to remove them\n",
            garbage.len()
        ));
        return Ok(out);
    }
    remove(provider, garbage, out).await
}

/// Removes what was found to be garbage, instances first.
async fn remove(
    provider: &AwsProvider,
    mut garbage: Vec<&TaggedResource>,
    mut out: String,
) -> Result<String> {
    garbage.sort_by_key(|r| r.kind != aws::KIND_INSTANCE);
    let mut failed = Vec::new();
    for r in &garbage {
        let done = if r.kind == aws::KIND_INSTANCE {
            provider.terminate_instance(&r.id).await
        } else {
            provider.delete_volume(&r.id).await
        };
        match done {
            Ok(()) => out.push_str(&format!("removed  {} {}\n", r.kind, r.id)),
            Err(e) => failed.push(format!("{} {}: {e}", r.kind, r.id)),
        }
    }
    if failed.is_empty() {
        Ok(out)
    } else {
        Err(Error::runtime(format!(
            "{out}could not remove:\n  {}",
            failed.join("\n  ")
        )))
    }
}
