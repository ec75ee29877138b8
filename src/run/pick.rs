//! The run an apply advances, picked under the plan's lock: the keyed run, the named one, the latest unfinished
//! one, or a new one (whose first state is written before that lock is released); `concurrency:` may refuse a
//! new run, and a run of another plan file, a destroyed run or `--from` over torn-down hosts are refused.

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::run::new_run::{fresh_state, new_run_id, plan_file_name};
use crate::run::run_select::{check_run_id, existing, RunSelector};
use crate::run::session::ApplyOptions;
use crate::run::walker::{self, Decision};
use crate::state::store::{RunLock, Store};
use crate::state::{RunState, RunStatus};
use crate::status::fmt_time;

/// What an apply picked under the plan's lock.
pub(super) enum Picked {
    /// Advance this run (locked); `resumed` when it existed before.
    Run {
        id: String,
        resumed: bool,
        lock: RunLock,
        notes: Vec<String>,
    },
    /// Nothing to do: the keyed run has succeeded, or `concurrency: forbid` refused a new run.
    Nothing {
        run: Option<String>,
        message: String,
    },
}

/// The run an apply would advance, read-only (for the preview): the keyed run, the named one, or the latest
/// unfinished one; None for a new run.
pub(super) async fn target_run(
    store: &Store,
    sel: &RunSelector,
    from: Option<usize>,
    key: Option<&str>,
) -> Result<Option<RunState>> {
    if let Some(key) = key {
        return match crate::run::run_key::lookup(store, key).await? {
            Some(id) => store.load(&id).await,
            None => Ok(None),
        };
    }
    let previous = if sel.new {
        None
    } else {
        existing(store, sel).await?
    };
    Ok(previous.filter(|p| !p.status.is_finished() || sel.run.is_some() || from.is_some()))
}

/// Picks the run to apply and takes its lock; the caller holds the plan's lock. A new run's first state is
/// written before that lock is released, so a concurrent apply finds this run (and its lock), not none.
pub(super) async fn pick_run(
    plan: &Plan,
    store: &Store,
    opts: &ApplyOptions,
    from: Option<usize>,
    key: Option<&str>,
) -> Result<Picked> {
    if let (None, Some(id)) = (key, &opts.selector.run) {
        check_run_id(id)?;
        if store.load(id).await?.is_none() {
            return Err(Error::Usage(format!(
                "plan `{}` has no run `{id}`; start a new one with `plan apply {}`",
                plan.name,
                plan.file.display()
            )));
        }
    }
    // A key whose index names a run that has no state yet: a crash between the two writes. Create it now.
    let keyed_id = match key {
        Some(k) => crate::run::run_key::lookup(store, k).await?,
        None => None,
    };
    let resume = target_run(store, &opts.selector, from, key).await?;
    if let (Some(k), Some(p)) = (key, &resume) {
        if p.status == RunStatus::Succeeded && from.is_none() {
            return Ok(Picked::Nothing {
                run: Some(p.run_id.clone()),
                message: format!(
                    "run {} (key `{k}`) succeeded at {}: nothing to do\n  = help: `plan apply {} --run-key {} --from STEP` reruns part of it; another key starts a new run",
                    p.run_id,
                    fmt_time(p.finished_at.unwrap_or(p.started_at)),
                    plan.file.display(),
                    shlex::try_quote(k).unwrap_or_default()
                ),
            });
        }
    }
    if let Some(p) = &resume {
        check_resumable(plan, p, from)?;
    }
    let mut notes = Vec::new();
    if resume.is_none() && keyed_id.is_none() {
        match crate::run::concurrency::admit(plan, store).await? {
            crate::run::concurrency::Admission::Refused(message) => {
                return Ok(Picked::Nothing { run: None, message })
            }
            crate::run::concurrency::Admission::Start { notes: n } => notes = n,
        }
    }
    let run_id = match (&resume, keyed_id) {
        (Some(p), _) => p.run_id.clone(),
        (None, Some(id)) => id,
        (None, None) => new_run_id(),
    };
    let lock = store.lock(&run_id, &plan.file).await?;
    if resume.is_none() {
        let created = async {
            if let Some(k) = key {
                crate::run::run_key::record(store, k, &run_id).await?;
            }
            let mut run = fresh_state(plan, run_id.clone());
            run.run_key = key.map(str::to_string);
            store.save(&mut run).await
        }
        .await;
        if let Err(e) = created {
            let _ = lock.release().await;
            return Err(e);
        }
    }
    Ok(Picked::Run {
        id: run_id,
        resumed: resume.is_some(),
        lock,
        notes,
    })
}

/// Whether this plan file may continue `run`: its own file's run, not destroyed, and (with `--from`) with the
/// hosts that the steps to rerun need still there.
fn check_resumable(plan: &Plan, run: &RunState, from: Option<usize>) -> Result<()> {
    let file = plan.file.display();
    if let Some(owner) = run
        .plan_file
        .as_deref()
        .filter(|f| *f != plan_file_name(plan))
    {
        return Err(Error::Usage(format!("run {} belongs to the plan file `{owner}`, not {file} (both are plan `{}` and share its state)", run.run_id, plan.name)).with_help(format!("apply `{owner}` to continue it, or give this plan its own `plan:` name")));
    }
    if run.status == RunStatus::Destroyed {
        return Err(Error::Usage(format!(
            "run {} was destroyed and cannot be continued",
            run.run_id
        ))
        .with_help(format!("start a new run with `plan apply {file}`")));
    }
    let Some(from) = from else { return Ok(()) };
    // A step that will not rerun but whose resources are gone: the steps that rerun would find no host.
    let decisions = walker::decide(plan, run, Some(from));
    // Only a teardown to rerun: it needs no host (destroying what is gone is a no-op).
    let needs_hosts = plan.steps.iter().zip(&decisions).any(|(s, (d, _))| {
        matches!(d, Decision::Run | Decision::Rerun(_))
            && !matches!(s.kind, crate::plan::StepKind::Teardown(_))
    });
    if !needs_hosts {
        return Ok(());
    }
    let gone = plan.steps.iter().zip(&decisions).find(|(s, (d, _))| {
        matches!(d, Decision::Skip) && run.step(&s.id).resources.iter().any(|r| r.destroyed)
    });
    match gone {
        Some((s, _)) => Err(Error::Usage(format!("--from {}: the resources of step `{}` in run {} were torn down, and rerunning from `{}` would not re-create them", plan.steps[from].id, s.id, run.run_id, plan.steps[from].id)).with_help(format!("rerun from `{}` to re-create them, or start a new run with `plan apply {file}`", s.id))),
        None => Ok(()),
    }
}
