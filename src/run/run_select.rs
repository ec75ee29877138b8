//! Which run a command is about: `--run`, or the latest; the run must exist for most commands (apply picks its
//! own: `pick.rs`).

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::state::store::Store;
use crate::state::{self, RunState};

/// Which run a command is about.
#[derive(Debug, Clone, Default)]
pub struct RunSelector {
    pub run: Option<String>,
    pub new: bool,
}

impl RunSelector {
    /// The named run, or the latest one.
    pub fn named(run: Option<String>) -> RunSelector {
        RunSelector { run, new: false }
    }
}

pub(crate) async fn store(plan: &Plan) -> Result<Store> {
    Store::open(plan).await
}

/// `--run` becomes a path segment and an S3 key: only the generated format is accepted.
pub(crate) fn check_run_id(id: &str) -> Result<()> {
    if state::is_run_id(id) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--run `{id}` is not a run id; run ids look like {}",
            state::RUN_ID_PATTERN
        )))
    }
}

/// The run to act on: the named one, else the latest (for apply: the latest unfinished one, else a new one).
pub(crate) async fn existing(store: &Store, sel: &RunSelector) -> Result<Option<RunState>> {
    match &sel.run {
        Some(id) => {
            check_run_id(id)?;
            store.load(id).await
        }
        None => match store.runs().await?.last() {
            Some(id) => store.load(id).await,
            None => Ok(None),
        },
    }
}

pub(crate) async fn require(store: &Store, plan: &Plan, sel: &RunSelector) -> Result<RunState> {
    existing(store, sel).await?.ok_or_else(|| {
        Error::Usage(match &sel.run {
            Some(id) => format!("plan `{}` has no run `{id}`", plan.name),
            None => format!(
                "plan `{}` has no runs yet; start one with `plan apply {}`",
                plan.name,
                plan.file.display()
            ),
        })
    })
}

/// The chosen run of the plan (for commands outside this module).
pub(crate) async fn require_run(plan: &Plan, sel: &RunSelector) -> Result<RunState> {
    require(&store(plan).await?, plan, sel).await
}
