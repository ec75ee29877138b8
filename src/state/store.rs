//! Where run state lives: a directory (flock + atomic rename) or S3 (conditional writes). Both keep one
//! document per run, refuse a second writer, and never overwrite an update they have not seen.

use std::path::Path;

use crate::error::Result;
use crate::plan::{Plan, StateLocation};
use crate::state::dir_store::{DirLock, DirStore};
use crate::state::journal::Appended;
use crate::state::s3_store::{S3Lock, S3Store};
use crate::state::RunState;

pub use crate::state::dir_store::{hostname, write_atomic};

pub enum Store {
    Dir(DirStore),
    S3(S3Store),
}

/// Proof that this process owns a run (or, while it picks one, the plan). Release it explicitly; a directory lock also ends with the process.
pub enum RunLock {
    Dir(DirLock),
    S3(S3Lock),
}

impl RunLock {
    pub async fn release(self) -> Result<()> {
        match self {
            RunLock::Dir(lock) => {
                drop(lock);
                Ok(())
            }
            RunLock::S3(lock) => lock.release().await,
        }
    }
}

impl Store {
    /// The store a plan names.
    pub async fn open(plan: &Plan) -> Result<Store> {
        match &plan.state {
            StateLocation::Dir(dir) => Ok(Store::Dir(DirStore::new(dir.clone(), &plan.name))),
            StateLocation::S3 { bucket, prefix } => {
                let config = crate::target::aws::config::sdk_config(&plan.target).await;
                Ok(Store::S3(S3Store::new(
                    crate::target::aws::config::s3_client(&config),
                    bucket,
                    prefix,
                    &plan.name,
                )))
            }
        }
    }

    /// Run ids, oldest first. A listing is untrusted (anyone with write access to the store can add an entry):
    /// only ids of the generated format are runs; others are skipped with a warning.
    pub async fn runs(&self) -> Result<Vec<String>> {
        let listed = match self {
            Store::Dir(s) => s.runs()?,
            Store::S3(s) => s.runs().await?,
        };
        Ok(listed
            .into_iter()
            .filter(|id| {
                let ok = crate::state::is_run_id(id);
                if !ok {
                    tracing::warn!("ignoring `{id}` in the state store: not a run id");
                }
                ok
            })
            .collect())
    }

    pub async fn load(&self, run: &str) -> Result<Option<RunState>> {
        match self {
            Store::Dir(s) => s.load(run),
            Store::S3(s) => s.load(run).await,
        }
    }

    pub async fn lock(&self, run: &str, plan_file: &Path) -> Result<RunLock> {
        match self {
            Store::Dir(s) => s.lock(run, plan_file).map(RunLock::Dir),
            Store::S3(s) => s.lock(run, plan_file).await.map(RunLock::S3),
        }
    }

    /// Takes the plan's lock, held while an apply picks or creates its run.
    pub async fn lock_plan(&self, plan_file: &Path) -> Result<RunLock> {
        match self {
            Store::Dir(s) => s.lock_plan(plan_file).map(RunLock::Dir),
            Store::S3(s) => s.lock_plan(plan_file).await.map(RunLock::S3),
        }
    }

    /// Breaks the plan's lock (S3: a dead holder's lock object). A directory lock dies with its process.
    pub async fn unlock_plan(&self) -> Result<bool> {
        match self {
            Store::Dir(_) => Ok(false),
            Store::S3(s) => s.unlock_plan().await,
        }
    }

    /// Breaks a run's lock (S3: a dead holder's lock object). A directory lock dies with its process.
    pub async fn unlock(&self, run: &str) -> Result<bool> {
        match self {
            Store::Dir(_) => Ok(false),
            Store::S3(s) => s.unlock(run).await,
        }
    }

    /// Who holds a directory run lock now, if anyone (S3 locks are not probed: `unlock` breaks them).
    pub fn live_holder(&self, run: &str) -> Option<String> {
        match self {
            Store::Dir(s) => crate::state::lock_probe::live_holder(s.state_path(run).parent()?),
            Store::S3(_) => None,
        }
    }

    /// A small document of the plan beside its runs (the run-key index), or None.
    pub async fn read_doc(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Store::Dir(s) => s.read_doc(name),
            Store::S3(s) => s.read_doc(name).await,
        }
    }

    pub async fn write_doc(&self, name: &str, bytes: &[u8]) -> Result<()> {
        match self {
            Store::Dir(s) => s.write_doc(name, bytes),
            Store::S3(s) => s.write_doc(name, bytes).await,
        }
    }

    /// Writes state (serial + 1); a concurrent change is a conflict, never overwritten. While a journal is open
    /// (directory store, large runs), only what changed is appended; it is folded into the document once it has
    /// grown past it.
    pub async fn save(&self, state: &mut RunState) -> Result<()> {
        if let Store::Dir(s) = self {
            match s.append(state)? {
                Appended::Yes => return Ok(()),
                Appended::No => {}
                Appended::Compact => {
                    s.end_journal();
                    self.save_whole(state).await?;
                    return s.begin_journal(state);
                }
            }
        }
        self.save_whole(state).await
    }

    /// Journals the checkpoints of a walk over `state` (just saved) when the run is large enough to gain from it.
    pub fn begin_journal(&self, state: &RunState) -> Result<()> {
        match self {
            Store::Dir(s) if crate::state::journal::wanted(state.steps.len()) => {
                s.begin_journal(state)
            }
            _ => Ok(()),
        }
    }

    /// `begin_journal` whatever the run's size (tests).
    #[cfg(test)]
    pub fn begin_journal_always(&self, state: &RunState) -> Result<()> {
        match self {
            Store::Dir(s) => s.begin_journal(state),
            Store::S3(_) => Ok(()),
        }
    }

    /// The walk's last checkpoint: `state` is written whole, ending the walk's journal if it had one, so
    /// `state.json` alone is the run again.
    pub async fn end_journal(&self, state: &mut RunState) -> Result<()> {
        if let Store::Dir(s) = self {
            s.end_journal();
        }
        self.save_whole(state).await
    }

    async fn save_whole(&self, state: &mut RunState) -> Result<()> {
        // What is stored has every known secret value scrubbed (a failing step's error may quote one).
        let mut clean = crate::scrub::current()
            .value(&*state)
            .unwrap_or_else(|| state.clone());
        let saved = match self {
            Store::Dir(s) => s.save(&mut clean),
            Store::S3(s) => s.save(&mut clean).await,
        };
        state.serial = clean.serial;
        if saved.is_ok() {
            state.changed.0.clear();
        }
        saved
    }
}
