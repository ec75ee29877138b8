//! `concurrency:` — what an apply that would start a new run does while another run of the plan is unfinished:
//! start it beside (`allow`), start nothing (`forbid`), or cancel and tear down the other first (`replace`).
//! Checked under the plan's lock, so two applies never both see "nothing unfinished".

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::plan_file::Concurrency;
use crate::state::store::Store;
use crate::state::RunState;

/// May a new run start?
pub enum Admission {
    /// Yes; `notes` says what was replaced.
    Start { notes: Vec<String> },
    /// No (`forbid`): the message says which run is in the way.
    Refused(String),
}

/// The plan's unfinished runs, newest first. An unreadable state document is skipped with a warning, as in
/// `plan runs`: it cannot be continued either.
pub async fn unfinished(store: &Store) -> Result<Vec<RunState>> {
    let mut found = Vec::new();
    for id in store.runs().await?.into_iter().rev() {
        match store.load(&id).await {
            Ok(Some(run)) if !run.status.is_finished() => found.push(run),
            Ok(_) => {}
            Err(e @ Error::CorruptState { .. }) => {
                tracing::warn!("{e}");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

/// Applies the plan's `concurrency` before a new run starts. The caller holds the plan's lock.
pub async fn admit(plan: &Plan, store: &Store) -> Result<Admission> {
    let mode = plan.operation.concurrency;
    if mode == Concurrency::Allow {
        return Ok(Admission::Start { notes: Vec::new() });
    }
    let others = unfinished(store).await?;
    if mode == Concurrency::Forbid {
        return Ok(match others.first() {
            Some(run) => Admission::Refused(format!(
                "run {} of plan {} is unfinished ({}), and the plan says `concurrency: forbid`: no new run was started; `plan apply {}{}` continues it",
                run.run_id,
                plan.name,
                run.status.as_str(),
                plan.file.display(),
                run.run_key
                    .as_ref()
                    .map(|k| format!(" --run-key {}", shlex::try_quote(k).unwrap_or_default()))
                    .unwrap_or_default()
            )),
            None => Admission::Start { notes: Vec::new() },
        });
    }
    let mut notes = Vec::new();
    for run in others {
        let id = run.run_id.clone();
        let lock = store.lock(&id, &plan.file).await?;
        let result = crate::run::destroy::destroy_locked(
            plan,
            store,
            run,
            "cancelled: the run was replaced by a new one (concurrency: replace)",
        )
        .await;
        let released = lock.release().await;
        let text = result?;
        released?;
        notes.push(format!(
            "concurrency: replace: {}",
            text.trim_end().replace('\n', "; ")
        ));
    }
    Ok(Admission::Start { notes })
}
