//! `plan gc`: finds cloud resources tagged with the plan whose run is finished or unknown to the state store,
//! and with `--yes` removes them (instances first: their root volumes go with them, data volumes are then free).
//! The backstop behind "zero leaked instances": a run that lost its state still left its tags.

use crate::aws_provider::{self, AwsProvider, TaggedResource};
use crate::aws_steps::provider_poll;
use crate::error::{Error, Result};
use crate::plan::{Plan, Target};
use crate::state::RunStatus;
use crate::state_store::Store;

/// Why a resource is garbage, or why it is kept.
fn verdict(status: Option<RunStatus>) -> (&'static str, bool) {
    match status {
        None => ("its run is unknown to the state store", true),
        Some(s) if s.is_finished() => ("its run is finished", true),
        Some(_) => ("its run is still going", false),
    }
}

pub async fn gc(plan: &Plan, yes: bool) -> Result<String> {
    if !matches!(plan.target, Target::Aws { .. }) {
        return Ok("nothing to collect: the local target's hosts are directories that teardown and destroy remove\n".into());
    }
    let store = Store::open(plan).await?;
    let provider = AwsProvider::new(&plan.target, provider_poll()).await;
    let found = provider
        .resources_tagged(aws_provider::TAG_PLAN, &plan.name)
        .await?;
    let mut out = String::new();
    let mut garbage: Vec<TaggedResource> = Vec::new();
    for r in found {
        let state = if r.run.is_empty() {
            None
        } else {
            store.load(&r.run).await?
        };
        // A volume the run asked to keep is never garbage.
        let kept = state.as_ref().is_some_and(|s| {
            s.steps
                .values()
                .flat_map(|st| &st.resources)
                .any(|res| res.id == r.id && res.kind.ends_with("-kept"))
        });
        let (why, collect) = verdict(state.map(|s| s.status));
        let (why, collect) = if kept {
            ("the run keeps this volume", false)
        } else {
            (why, collect)
        };
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
    if out.is_empty() {
        return Ok(format!("no resources tagged sortie:plan={}\n", plan.name));
    }
    if garbage.is_empty() {
        out.push_str("nothing to collect\n");
        return Ok(out);
    }
    if !yes {
        out.push_str(&format!(
            "{} to collect; run again with --yes to remove them\n",
            garbage.len()
        ));
        return Ok(out);
    }
    garbage.sort_by_key(|r| r.kind != aws_provider::KIND_INSTANCE);
    let mut failed = Vec::new();
    for r in &garbage {
        let done = if r.kind == aws_provider::KIND_INSTANCE {
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
        Err(Error::Runtime(format!(
            "{out}could not remove:\n  {}",
            failed.join("\n  ")
        )))
    }
}
