//! `plan logs [-f]`: a step's output, from its host's status directory or the copy kept beside the state (local),
//! or from S3 (AWS: the live log tail while it runs, then the full log of the command that waited for it).

use std::io::Write;
use std::time::Duration;

use crate::error::{exit, Error, Result};
use crate::plan::{Plan, Target};
use crate::run::run_select::{require, store, RunSelector};
use crate::state::store::Store;
use crate::state::RunState;

pub async fn logs(plan: &Plan, sel: &RunSelector, step: &str, follow: bool) -> Result<i32> {
    let store = store(plan).await?;
    if plan.step(step).is_none() {
        return Err(Error::Usage(format!(
            "plan `{}` has no step `{step}`",
            plan.name
        )));
    }
    let mut run = require(&store, plan, sel).await?;
    let handle = run.step(step).handle.clone();
    if let (Some(host), true) = (handle.ssm_host(), matches!(plan.target, Target::Aws { .. })) {
        return aws_logs(plan, &store, run, step, host, follow).await;
    }
    let kept = |run: &RunState| {
        crate::run::step_logs::kept_path(
            &plan.state,
            &plan.name,
            &run.run_id,
            step,
            run.step(step).attempt,
        )
        .filter(|p| p.is_file())
    };
    let live = handle
        .status_dir()
        .map(|d| std::path::Path::new(d).join("output.log"));
    let mut out = std::io::stdout().lock();
    // A finished attempt is served from the copy kept beside the state (its host may be gone).
    if run.step(step).status.is_final() || !follow {
        if let Some(path) = kept(&run).or(live.clone().filter(|p| p.is_file())) {
            crate::run::step_logs::stream(&path, &mut out)?;
            return Ok(exit::OK);
        }
    }
    let live = live.ok_or_else(|| {
        Error::Usage(format!(
            "step `{step}` of run {} has no log (it has not run on a host)",
            run.run_id
        ))
    })?;
    if !follow || run.step(step).status.is_final() {
        return Err(Error::Usage(format!(
            "the log of step `{step}` of run {} is gone ({} does not exist)",
            run.run_id,
            live.display()
        )));
    }
    let mut follower = crate::run::step_logs::Follower::new(live);
    loop {
        follower.pump(&mut out, false)?;
        run = require(&store, plan, &RunSelector::named(Some(run.run_id.clone()))).await?;
        if run.step(step).status.is_final() {
            // The open file outlives teardown; a log never opened is read from its kept copy.
            match kept(&run).filter(|_| !follower.opened()) {
                Some(path) => crate::run::step_logs::stream(&path, &mut out)?,
                None => follower.pump(&mut out, true)?,
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(exit::OK)
}

/// On AWS the log comes back with the command that waited for the step: the full stdout SSM wrote to S3 (or,
/// without an S3 output location, the first 24,000 characters GetCommandInvocation returns).
async fn aws_logs(
    plan: &Plan,
    store: &Store,
    mut run: RunState,
    step: &str,
    host: &str,
    follow: bool,
) -> Result<i32> {
    let mut out = std::io::stdout().lock();
    // Bytes of the step's log already printed (the live tail and the full log count from the same start).
    let mut printed = 0u64;
    let mut tail = crate::log_follow::LogTail::new(plan, &run.run_id, step).await;
    // A running step (its apply may have left it with --wait or --no-wait): what the host has sent so far, and
    // with -f until it ends.
    while !run.step(step).status.is_final() {
        if let Some(t) = tail.as_mut() {
            let text = t.new_text(&mut printed).await;
            let _ = out.write_all(crate::scrub::text(&text).as_bytes());
            let _ = out.flush();
        }
        if !follow {
            return Ok(exit::OK);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        run = require(store, plan, &RunSelector::named(Some(run.run_id.clone()))).await?;
    }
    // The full log comes with the command that waited for the step's end.
    let Some(command) = run.step(step).handle.wait_command().map(str::to_string) else {
        return Err(Error::Usage(format!(
            "step `{step}` of run {} ended without a wait command on its host, so its full log is not kept",
            run.run_id
        )));
    };
    let host = run.step(step).handle.ssm_host().unwrap_or(host);
    let ssm_host = crate::target::AwsTarget::new(plan)
        .await
        .host(&run.run_id, host);
    let log = ssm_host.fetch_log(&command).await?;
    let rest = crate::log_follow::after(&log, printed);
    let _ = out.write_all(crate::scrub::text(rest).as_bytes());
    Ok(exit::OK)
}
