//! `plan apply`: picks the run under the plan's lock (`pick.rs`), holds its lock, and hands the DAG to the
//! walker; `record_output` writes one output under the run's lock (`plan extend`). The other commands on runs
//! are re-exported here for the CLI: preview, destroy, unlock (and status, runs, logs: status.rs, logs.rs).

use std::time::Duration;

use crate::error::{exit, Error, Result};
use crate::plan::Plan;
use crate::reporter::{OutputFormat, Reporter};
use crate::run::new_run::{fresh_state, plan_file_name};
use crate::run::pick::{pick_run, target_run, Picked};
use crate::run::preview::preview_with;
use crate::run::run_select::store;
use crate::run::walker::{self, RunOptions};
use crate::state::store::Store;
use crate::state::{self, RunState, RunStatus, StepState, StepStatus};
use crate::target::Target;

pub use crate::logs::logs;
pub use crate::run::destroy::destroy;
pub use crate::run::preview::preview;
pub use crate::run::run_select::RunSelector;
pub use crate::run::unlock::unlock;
pub use crate::status::{runs, status_of};

/// Records one output of a step under the run's lock (`plan extend`'s new deadline).
pub(crate) async fn record_output(
    plan: &Plan,
    run_id: &str,
    step: &str,
    key: &str,
    value: &str,
) -> Result<()> {
    let store = store(plan).await?;
    let lock = store.lock(run_id, &plan.file).await?;
    let saved = async {
        let Some(mut run) = store.load(run_id).await? else {
            return Ok(());
        };
        run.step_mut(step)
            .outputs
            .insert(key.to_string(), value.to_string());
        store.save(&mut run).await
    }
    .await;
    let released = lock.release().await;
    saved?;
    released
}

pub struct ApplyOptions {
    pub selector: RunSelector,
    pub from: Option<String>,
    pub parallelism: usize,
    /// How long to advance the run: `None` waits for everything, zero leaves detached steps at once
    /// (`--no-wait`), anything else leaves every running step on its host when it runs out (`--wait`).
    pub wait: Option<Duration>,
    /// `--run-key`: overrides the plan's `run_key`.
    pub run_key: Option<String>,
    /// `--yes`: do not ask before spending (AWS).
    pub yes: bool,
    pub output: OutputFormat,
}

pub async fn apply(plan: &Plan, opts: ApplyOptions) -> Result<i32> {
    // On AWS: credentials, the state bucket and the instance profiles, before anything is asked or created.
    crate::doctor::precheck(plan).await?;
    let store = store(plan).await?;
    let from = match &opts.from {
        Some(id) => Some(plan.index_of(id).ok_or_else(|| {
            Error::Usage(format!("--from: plan `{}` has no step `{id}`", plan.name))
        })?),
        None => None,
    };
    let key = crate::run::run_key::resolve(plan, opts.run_key.as_deref())?;
    // `budget:` holds a new run to its estimate before anything is asked, written or created.
    if plan.operation.budget.is_some()
        && target_run(&store, &opts.selector, from, key.as_deref())
            .await?
            .is_none()
    {
        crate::cost::check_new_run(plan)?;
    }
    if !opts.yes && crate::confirm::asks(plan) {
        let (preview, acts) =
            preview_with(plan, &store, &opts.selector, from, key.as_deref()).await?;
        if acts && !crate::confirm::ask(plan, &preview)? {
            eprintln!("apply cancelled: nothing was changed");
            return Ok(exit::FAILED);
        }
    }
    let reporter = Reporter::new(opts.output);
    // Picking or creating the run happens under the plan's lock: applies started at once must not each start one.
    let plan_lock = store.lock_plan(&plan.file).await?;
    let picked = pick_run(plan, &store, &opts, from, key.as_deref()).await;
    let released = plan_lock.release().await;
    let (run_id, resumed, lock) = match picked? {
        Picked::Run {
            id,
            resumed,
            lock,
            notes,
        } => {
            if let Err(e) = released {
                let _ = lock.release().await;
                return Err(e);
            }
            for message in notes {
                reporter.emit(&crate::event::Event::Notice { message });
            }
            (id, resumed, lock)
        }
        Picked::Nothing { run, message } => {
            released?;
            reporter.emit(&crate::event::Event::Notice { message });
            if let Some(run) = run {
                reporter.emit(&crate::event::Event::RunFinished {
                    run,
                    status: RunStatus::Succeeded.as_str().into(),
                    exit_code: exit::OK,
                });
            }
            return Ok(exit::OK);
        }
    };
    let result = apply_locked(plan, &store, run_id, resumed, from, &opts, &reporter).await;
    // Release on every path: an S3 lock left behind would need `plan unlock --force`.
    let released = lock.release().await;
    let code = result?;
    released?;
    Ok(code)
}

async fn apply_locked(
    plan: &Plan,
    store: &Store,
    run_id: String,
    resumed: bool,
    from: Option<usize>,
    opts: &ApplyOptions,
    reporter: &Reporter,
) -> Result<i32> {
    // Re-read under the lock: another apply may have written since.
    let mut run = match store.load(&run_id).await? {
        Some(s) => s,
        None => fresh_state(plan, run_id.clone()),
    };
    for s in &plan.steps {
        run.steps
            .entry(s.id.clone())
            .or_insert_with(StepState::pending);
    }
    run.vars = state::redacted_vars(&plan.vars);
    run.plan_file.get_or_insert_with(|| plan_file_name(plan));
    let target = crate::target::Target::of(plan).await;
    cancel_orphans(plan, &target, &mut run).await?;
    reporter.emit(&crate::event::Event::RunStarted {
        run: run_id,
        plan: plan.name.clone(),
        steps: plan.steps.len(),
        resumed,
    });
    let run_opts = RunOptions {
        parallelism: opts.parallelism.max(1),
        wait_detached: opts.wait != Some(Duration::ZERO),
        deadline: opts
            .wait
            .filter(|w| !w.is_zero())
            .map(|w| (tokio::time::Instant::now() + w, w)),
        poll: Duration::from_millis(200),
    };
    let venue = walker::Venue {
        target,
        store,
        reporter,
    };
    walker::walk(plan, run, venue, run_opts, from).await
}

/// Steps of the run that are no longer in the plan but still running (the plan was edited while they ran) are
/// cancelled before the walk, so that no teardown pulls their host from under them and the run is not marked
/// succeeded around them.
async fn cancel_orphans(plan: &Plan, target: &Target, run: &mut RunState) -> Result<()> {
    let orphans: Vec<String> = run
        .steps
        .iter()
        .filter(|(id, st)| plan.step(id).is_none() && st.status == StepStatus::Running)
        .map(|(id, _)| id.clone())
        .collect();
    for id in orphans {
        let st = run.step_mut(&id);
        if target.cancel_orphan(&id, &st.handle).await? {
            st.status = StepStatus::Cancelled;
            st.error = Some("cancelled: the step is no longer in the plan".into());
            st.finished_at = Some(state::now());
        }
    }
    Ok(())
}
