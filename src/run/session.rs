//! The commands that act on runs: apply, preview, destroy, unlock (status and runs: status.rs; logs: logs.rs).
//! They pick the run, hold its lock, and hand the DAG to the runner.

use std::time::Duration;

use crate::error::{exit, Error, Result};
use crate::plan::Plan;
use crate::reporter::{OutputFormat, Reporter};
use crate::run::walker::{self, Decision, RunOptions};
use crate::state::store::{RunLock, Store};
use crate::state::{self, RunState, RunStatus, StepState, StepStatus};
use crate::target::Target;

pub use crate::logs::logs;
use crate::status::fmt_time;
pub use crate::status::{runs, status_of};

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

/// Run ids sort by creation time: UTC date, time to the millisecond, and a random tail against collisions.
fn new_run_id() -> String {
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

/// `--run` becomes a path segment and an S3 key: only the generated format is accepted.
fn check_run_id(id: &str) -> Result<()> {
    if state::is_run_id(id) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--run `{id}` is not a run id; run ids look like {}",
            state::RUN_ID_PATTERN
        )))
    }
}

/// The name of the plan's file, which a run records: see `RunState::plan_file`.
fn plan_file_name(plan: &Plan) -> String {
    plan.file
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

fn fresh_state(plan: &Plan, run_id: String) -> RunState {
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

/// What an apply picked under the plan's lock.
enum Picked {
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

/// The run an apply would advance, read-only (for the preview): the keyed run, the named one, or the latest
/// unfinished one; None for a new run.
async fn target_run(
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
async fn pick_run(
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

/// What apply would do, and why. Changes nothing.
pub async fn preview(
    plan: &Plan,
    sel: &RunSelector,
    from: Option<&str>,
    run_key: Option<&str>,
) -> Result<String> {
    let store = store(plan).await?;
    let from_index = match from {
        Some(id) => Some(plan.index_of(id).ok_or_else(|| {
            Error::Usage(format!("--from: plan `{}` has no step `{id}`", plan.name))
        })?),
        None => None,
    };
    let key = crate::run::run_key::resolve(plan, run_key)?;
    Ok(preview_with(plan, &store, sel, from_index, key.as_deref())
        .await?
        .0)
}

/// The preview text of an apply with these choices (also what apply shows before it asks).
async fn preview_with(
    plan: &Plan,
    store: &Store,
    sel: &RunSelector,
    from_index: Option<usize>,
    key: Option<&str>,
) -> Result<(String, bool)> {
    let previous = target_run(store, sel, from_index, key).await?;
    if let (Some(k), Some(p)) = (key, &previous) {
        if p.status == RunStatus::Succeeded && from_index.is_none() {
            return Ok((
                format!(
                    "plan {}: run {} (key `{k}`) has succeeded: apply does nothing\n",
                    plan.name, p.run_id
                ),
                false,
            ));
        }
    }
    if previous.is_none() && plan.operation.concurrency == crate::plan_file::Concurrency::Forbid {
        if let Some(other) = crate::run::concurrency::unfinished(store).await?.first() {
            return Ok((
                format!(
                    "plan {}: run {} is unfinished and the plan says `concurrency: forbid`: apply starts nothing\n",
                    plan.name, other.run_id
                ),
                false,
            ));
        }
    }
    let replaced = if previous.is_none()
        && plan.operation.concurrency == crate::plan_file::Concurrency::Replace
    {
        let ids: Vec<String> = crate::run::concurrency::unfinished(store)
            .await?
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        if ids.is_empty() {
            String::new()
        } else {
            format!(
                " (first cancels and tears down the unfinished run {}: concurrency: replace)",
                ids.join(", ")
            )
        }
    } else {
        String::new()
    };
    let continuing = previous.is_some();
    let (header, run) = match previous {
        Some(p) => (format!("continuing run {}", p.run_id), p),
        None => (
            format!("new run{replaced}"),
            fresh_state(plan, "preview".into()),
        ),
    };
    let decisions = walker::decide(plan, &run, from_index);
    let width = plan
        .steps
        .iter()
        .map(|s| s.id.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!("plan {}: {header}\n", plan.name);
    for &i in plan.dag.order() {
        let (decision, why) = &decisions[i];
        let (action, why) = match decision {
            Decision::Run => ("run", why.clone()),
            Decision::Skip => ("skip", why.clone()),
            Decision::Rerun(reason) => ("rerun", reason.clone()),
            Decision::Reconcile => ("reconcile", why.clone()),
        };
        out.push_str(&format!(
            "  {:<width$}  {action:<9}  {why}\n",
            plan.steps[i].id
        ));
    }
    if let Some(estimate) = crate::cost::estimate(plan) {
        out.push_str(&crate::cost::estimate_text(plan, &estimate));
    }
    if let Some(spent) = crate::cost::spent(plan, &run, state::now()).filter(|_| continuing) {
        out.push_str(&crate::cost::status_line(plan, &spent));
    }
    let acts = decisions.iter().any(|(d, _)| *d != Decision::Skip);
    Ok((out, acts))
}

/// Breaks a run's lock: for a holder that died without releasing it (S3). Directory locks end with their process.
pub async fn unlock(plan: &Plan, sel: &RunSelector) -> Result<String> {
    if let Some(id) = &sel.run {
        check_run_id(id)?;
    }
    let store = store(plan).await?;
    // The plan's lock too: an apply that died while picking its run leaves it behind on S3.
    let plan_note = if store.unlock_plan().await? {
        format!("plan {}: lock broken\n", plan.name)
    } else {
        String::new()
    };
    // A named run needs no readable state: its lock may be all that is left of it.
    let run_id = match &sel.run {
        Some(id) => id.clone(),
        None if !plan_note.is_empty() => match existing(&store, sel).await? {
            Some(run) => run.run_id,
            None => return Ok(plan_note),
        },
        None => require(&store, plan, sel).await?.run_id,
    };
    // A live directory lock cannot be broken (it ends with its process): say who holds it.
    if let Some(holder) = store.live_holder(&run_id) {
        return Err(Error::Locked {
            run: run_id,
            holder,
            plan: plan.file.display().to_string(),
        });
    }
    Ok(plan_note
        + &if store.unlock(&run_id).await? {
            format!("run {run_id}: lock broken\n")
        } else {
            format!(
            "run {run_id}: no lock to break (a directory lock is released when its process ends)\n"
        )
        })
}

/// Removes every resource the run owns, dependents first. Idempotent.
pub async fn destroy(plan: &Plan, sel: &RunSelector) -> Result<String> {
    let store = store(plan).await?;
    let found = require(&store, plan, sel).await?;
    let lock = store.lock(&found.run_id, &plan.file).await?;
    let result = destroy_locked(plan, &store, found, "cancelled: the run was destroyed").await;
    let released = lock.release().await;
    let text = result?;
    released?;
    Ok(text)
}

/// Destroys a run whose lock the caller holds; steps still running are marked cancelled with `why` (their
/// processes end with their host).
pub(crate) async fn destroy_locked(
    plan: &Plan,
    store: &Store,
    found: RunState,
    why: &str,
) -> Result<String> {
    let mut run = store.load(&found.run_id).await?.unwrap_or(found);
    let order: Vec<(String, Vec<state::Resource>)> = plan
        .dag
        .order()
        .iter()
        .rev()
        .map(|&i| plan.steps[i].id.clone())
        .chain(
            run.steps
                .keys()
                .filter(|k| plan.step(k).is_none())
                .cloned()
                .collect::<Vec<_>>(),
        )
        .filter_map(|id| run.steps.get(&id).map(|s| (id, s.resources.clone())))
        .filter(|(_, r)| r.iter().any(|r| !r.destroyed))
        .collect();
    let done = Target::of(plan).await.destroy(order).await?;
    let mut count = 0;
    for id in &done {
        for r in &mut run.step_mut(id).resources {
            if !r.destroyed {
                r.destroyed = true;
                r.destroyed_at = Some(state::now());
                count += 1;
            }
        }
    }
    run.status = RunStatus::Destroyed;
    run.finished_at.get_or_insert_with(state::now);
    for st in run.steps.values_mut() {
        if st.status == StepStatus::Running {
            st.status = StepStatus::Cancelled;
            st.error = Some(why.to_string());
            st.finished_at = Some(state::now());
        }
    }
    store.save(&mut run).await?;
    Ok(format!("run {}: destroyed {count} resources\n", run.run_id))
}
