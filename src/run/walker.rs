//! The DAG walker: starts each step once its dependencies are done (up to `parallelism` at a time), skips the
//! dependents of a failure, still runs `when: always` steps, retries with backoff and jitter, checkpoints every
//! transition, and handles Ctrl-C (first: start nothing new; second: cancel attached steps).

use std::collections::HashMap;
use std::time::Duration;

use indexmap::IndexMap;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::host::Host;
use crate::plan::{Plan, StepKind};
use crate::plan_file::When;
use crate::reporter::Reporter;
use crate::run::step::{Job, Msg, RunContext};
use crate::state::store::Store;
use crate::state::{self, RunState, RunStatus, StepStatus};
use crate::target::Target;

pub use crate::run::reentry::{decide, Decision};

mod finish;
mod frontier;
mod host_loss;
mod outcome;
mod retry;
mod stop;

use frontier::Frontier;

/// Run steps at once on one SSM host: below the agent's 5 command workers (amazon-ssm-agent appconfig,
/// `Mds.CommandWorkersLimit`, default 5), with 2 left for launches, status probes, cancels and mounts.
const STEPS_PER_SSM_HOST: usize = 3;

/// How often a run under `budget:` adds up its spend.
const BUDGET_CHECK: Duration = Duration::from_secs(1);

pub struct RunOptions {
    pub parallelism: usize,
    /// Wait for detached steps (default) or leave them running and exit 4.
    pub wait_detached: bool,
    /// `--wait`: when the walk stops advancing (and the duration, for the message).
    pub deadline: Option<(tokio::time::Instant, Duration)>,
    pub poll: Duration,
}

struct Walker<'a> {
    plan: &'a Plan,
    state: RunState,
    store: &'a Store,
    reporter: &'a Reporter,
    opts: RunOptions,
    /// Steps whose task is running, with the attempt.
    running: HashMap<usize, u32>,
    /// The task of each running step, so an interrupt can stop watching detached ones.
    tasks: HashMap<usize, tokio::task::JoinHandle<()>>,
    /// Steps waiting out a retry delay: index → when.
    retry_at: HashMap<usize, tokio::time::Instant>,
    reattach: Vec<bool>,
    cancel_first: Vec<bool>,
    left_running: bool,
    stopping: u8,
    /// Real values of secret-named outputs produced in this apply (state keeps only `<redacted>`): later steps of
    /// the same apply render with them.
    secret_outputs: IndexMap<String, IndexMap<String, String>>,
    /// `budget:` was reached (the message): nothing but teardowns starts, and the run ends failed.
    over_budget: Option<String>,
    /// Stall notifications on their way; their warnings are shown when the run ends.
    notifications: Vec<tokio::task::JoinHandle<Vec<String>>>,
    /// How often each host was re-provisioned in this apply.
    replaced: HashMap<usize, u32>,
    /// The steps whose dependencies have ended: what a scheduling pass looks at.
    frontier: Frontier,
    /// What every step's task shares (the target and its clients among it).
    ctx: std::sync::Arc<RunContext>,
}

/// Where a walk runs, and on what: the plan's target (built once per command), its store and its reporter.
pub struct Venue<'a> {
    pub target: Target,
    pub store: &'a Store,
    pub reporter: &'a Reporter,
}

pub async fn walk(
    plan: &Plan,
    mut run: RunState,
    venue: Venue<'_>,
    opts: RunOptions,
    from: Option<usize>,
) -> Result<i32> {
    let Venue {
        target,
        store,
        reporter,
    } = venue;
    let decisions = decide(plan, &run, from);
    let mut reattach = vec![false; plan.steps.len()];
    let mut cancel_first = vec![false; plan.steps.len()];
    for (i, (decision, _)) in decisions.iter().enumerate() {
        let st = run.step_mut(&plan.steps[i].id);
        match decision {
            Decision::Skip => {}
            Decision::Reconcile => reattach[i] = true,
            Decision::Run | Decision::Rerun(_) => {
                // A forced rerun of an attempt still running on its host must stop that attempt first.
                cancel_first[i] = st.status == StepStatus::Running;
                st.status = StepStatus::Pending;
                st.error = None;
                st.help = None;
                st.progress = None;
            }
        }
    }
    run.status = RunStatus::Running;
    run.finished_at = None;
    store.save(&mut run).await?;
    store.begin_journal(&run)?;
    let frontier = Frontier::new(plan, &run, &reattach);
    let ctx = std::sync::Arc::new(RunContext {
        run_id: run.run_id.clone(),
        plan_name: plan.name.clone(),
        target,
        state_location: plan.state.clone(),
        plan_dir: plan.absolute_dir(),
        vars: plan.vars.clone(),
        wait_detached: opts.wait_detached,
        poll: opts.poll,
    });
    let mut w = Walker {
        ctx,
        plan,
        state: run,
        store,
        reporter,
        opts,
        running: HashMap::new(),
        tasks: HashMap::new(),
        retry_at: HashMap::new(),
        reattach,
        cancel_first,
        left_running: false,
        stopping: 0,
        secret_outputs: IndexMap::new(),
        over_budget: None,
        notifications: Vec::new(),
        replaced: HashMap::new(),
        frontier,
    };
    w.run().await
}

impl Walker<'_> {
    fn id(&self, i: usize) -> &str {
        &self.plan.steps[i].id
    }

    fn status(&self, i: usize) -> StepStatus {
        self.state.step(self.id(i)).status
    }

    async fn checkpoint(&mut self) -> Result<()> {
        self.store.save(&mut self.state).await
    }

    fn run_failed(&self) -> bool {
        self.plan
            .steps
            .iter()
            .any(|s| self.state.step(&s.id).status == StepStatus::Failed)
    }

    async fn run(&mut self) -> Result<i32> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let (cancel_tx, cancel_rx) = watch::channel(false);
        // Listen once, for the whole walk: a signal between two polls is not lost. SIGTERM (a cancelled CI job)
        // counts as a first Ctrl-C.
        let mut interrupt = signal(SignalKind::interrupt())
            .map_err(|e| Error::io("cannot listen for Ctrl-C", e))?;
        let mut terminate = signal(SignalKind::terminate())
            .map_err(|e| Error::io("cannot listen for SIGTERM", e))?;
        loop {
            if self.stopping == 0 {
                self.check_budget(&cancel_tx).await?;
                self.settle().await?;
                self.start_ready(&tx, &cancel_rx).await?;
            }
            if self.running.is_empty() && (self.stopping > 0 || self.retry_at.is_empty()) {
                break;
            }
            let next_retry = self.retry_at.values().min().copied();
            let deadline = self
                .opts
                .deadline
                .filter(|_| self.stopping == 0)
                .map(|(at, _)| at);
            // Spend grows with time alone: look again every second while there is a budget to watch.
            let budget_tick = (self.plan.operation.budget.is_some() && self.over_budget.is_none())
                .then(|| tokio::time::Instant::now() + BUDGET_CHECK);
            tokio::select! {
                msg = rx.recv() => if let Some(msg) = msg { self.handle(msg).await?; },
                _ = interrupt.recv() => self.interrupt(&cancel_tx),
                _ = terminate.recv() => self.interrupt(&cancel_tx),
                _ = sleep_until(next_retry) => {}
                _ = sleep_until(deadline) => self.out_of_time(),
                _ = sleep_until(budget_tick) => {}
            }
        }
        self.finish().await
    }

    /// Decides the `when:` of each step whose dependencies have just ended: skipped when it can never run (a
    /// dependency failed, or nothing failed for an `on_failure` step); a skip ends it, which may bring its
    /// dependents here in turn.
    async fn settle(&mut self) -> Result<()> {
        while let Some(i) = self.frontier.next_unsettled(self.plan.dag.order()) {
            if self.status(i) != StepStatus::Pending
                || self.running.contains_key(&i)
                || self.retry_at.contains_key(&i)
            {
                continue;
            }
            let deps = self.plan.dag.dependencies(i);
            let bad = deps
                .iter()
                .find(|&&d| self.status(d) != StepStatus::Succeeded)
                .copied();
            // Over budget, every teardown runs, whatever its `when`: the resources must go.
            let when = match self.plan.steps[i].kind {
                StepKind::Teardown(_) if self.over_budget.is_some() => When::Always,
                _ => self.plan.steps[i].when,
            };
            let skip_reason = match (when, bad) {
                (When::OnSuccess, Some(d)) => {
                    Some(format!("`{}` {}", self.id(d), self.status(d).as_str()))
                }
                (When::OnFailure, _) if !self.run_failed() => Some("nothing failed".to_string()),
                _ => None,
            };
            if let Some(reason) = skip_reason {
                let id = self.id(i).to_string();
                let st = self.state.step_mut(&id);
                st.status = StepStatus::Skipped;
                st.error = Some(format!("skipped: {reason}"));
                self.reporter.emit(&Event::StepFinished {
                    step: id,
                    status: "skipped".into(),
                    attempt: st.attempt,
                    duration_secs: 0.0,
                    error: Some(reason),
                    help: None,
                });
                self.frontier.ended(self.plan, &self.state, i);
                self.checkpoint().await?;
            }
        }
        Ok(())
    }

    /// On AWS each running step holds one SSM command on its host (the command that waits for it), and the SSM
    /// agent runs at most 5 at once (CommandWorkersLimit); a sixth would wait undelivered. Steps beyond
    /// `STEPS_PER_SSM_HOST` wait their turn here, which leaves the agent room for launches, probes and cancels.
    fn host_is_full(&self, i: usize) -> bool {
        let (crate::plan::Target::Aws { .. }, StepKind::Run(r)) =
            (&self.plan.target, &self.plan.steps[i].kind)
        else {
            return false;
        };
        let on_host = self
            .running
            .keys()
            .filter(|&&j| matches!(&self.plan.steps[j].kind, StepKind::Run(o) if o.on == r.on))
            .count();
        on_host >= STEPS_PER_SSM_HOST
    }

    async fn start_ready(
        &mut self,
        tx: &mpsc::UnboundedSender<Msg>,
        cancel: &watch::Receiver<bool>,
    ) -> Result<()> {
        let now = tokio::time::Instant::now();
        let mut from = 0;
        while let Some((p, i)) = self.frontier.next_ready(self.plan.dag.order(), from) {
            from = p + 1;
            if self.running.len() >= self.opts.parallelism {
                break;
            }
            let status = self.status(i);
            let reattach = self.reattach[i] && status == StepStatus::Running;
            if self.running.contains_key(&i) || !(status == StepStatus::Pending || reattach) {
                continue;
            }
            if self.retry_at.get(&i).is_some_and(|t| *t > now) {
                continue;
            }
            if self.host_is_full(i) {
                continue;
            }
            self.retry_at.remove(&i);
            self.reattach[i] = false;
            self.frontier.started(i);
            self.start(i, reattach, tx, cancel).await?;
        }
        Ok(())
    }

    /// Records the start of step `i`'s attempt (or its re-attachment) and spawns its task.
    async fn start(
        &mut self,
        i: usize,
        reattach: bool,
        tx: &mpsc::UnboundedSender<Msg>,
        cancel: &watch::Receiver<bool>,
    ) -> Result<()> {
        let step = self.plan.steps[i].clone();
        let run_id = self.state.run_id.clone();
        let st = self.state.step_mut(&step.id);
        if !reattach {
            st.attempt += 1;
            st.status = StepStatus::Running;
            st.started_at = Some(state::now());
            st.finished_at = None;
            // A volume that outlived its host keeps its token: the new attempt adopts it, data and all.
            let live_volume = matches!(step.kind, StepKind::Volume(_))
                && st.token.is_some()
                && st.resources.iter().any(|r| !r.destroyed);
            if !live_volume {
                st.token = Some(format!("{run_id}-{}-{}", step.id, st.attempt));
            }
            // A re-attached attempt runs the definition it was started with: keep that digest, so a step
            // edited meanwhile shows as changed on the next apply.
            st.digest = Some(state::digest(&step.definition));
            // A local run step's handle is known before its task starts: recorded in this checkpoint, its
            // task need not checkpoint again before launching (one fsync less per step).
            if let (StepKind::Run(spec), Target::Local(t)) = (&step.kind, &self.ctx.target) {
                st.handle = Host::Local(t.host(&run_id, &spec.on)).handle(&step.id);
            }
        }
        let attempt = st.attempt;
        self.checkpoint().await?;
        self.reporter.emit(&if reattach {
            Event::StepReattached {
                step: step.id.clone(),
                attempt,
            }
        } else {
            Event::StepStarted {
                step: step.id.clone(),
                attempt,
            }
        });
        let (outputs, resources) = self.inputs(i);
        let st = self.state.step(&step.id);
        let job = Job {
            index: i,
            attempt,
            reattach,
            cancel_previous: std::mem::take(&mut self.cancel_first[i]),
            token: st.token.clone().unwrap_or_default(),
            handle: st.handle.clone(),
            placement: self.placement(i),
            outputs,
            resources,
            ctx: self.ctx.clone(),
            tx: tx.clone(),
            cancel: cancel.clone(),
            step,
        };
        self.running.insert(i, attempt);
        self.tasks.insert(i, tokio::spawn(job.execute()));
        Ok(())
    }

    /// What step `i`'s task reads of other steps: the outputs of its dependencies (every step a template refers
    /// to is one, as is its host), and the resources of its dependencies or, for a teardown, of what it destroys.
    /// Only these are copied, so a start costs the same in a plan of 10 steps or 10,000.
    #[allow(clippy::type_complexity)]
    fn inputs(
        &self,
        i: usize,
    ) -> (
        IndexMap<String, IndexMap<String, String>>,
        IndexMap<String, Vec<state::Resource>>,
    ) {
        let mut from: Vec<&str> = self
            .plan
            .dag
            .dependencies(i)
            .into_iter()
            .map(|d| self.id(d))
            .collect();
        from.push(self.id(i));
        if let StepKind::Teardown(t) = &self.plan.steps[i].kind {
            from.extend(t.destroys.iter().map(String::as_str));
        }
        let mut outputs = IndexMap::new();
        let mut resources = IndexMap::new();
        for id in from {
            let Some(st) = self.state.steps.get(id) else {
                continue;
            };
            if st.status == StepStatus::Succeeded {
                let mut o = st.outputs.clone();
                if let Some(real) = self.secret_outputs.get(id) {
                    o.extend(real.clone());
                }
                outputs.insert(id.to_string(), o);
            }
            resources.insert(id.to_string(), st.resources.clone());
        }
        (outputs, resources)
    }

    async fn handle(&mut self, msg: Msg) -> Result<()> {
        match msg {
            Msg::Begin { step, handle, ack } => {
                let id = self.id(step).to_string();
                self.state.step_mut(&id).handle = handle;
                self.checkpoint().await?;
                let _ = ack.send(());
            }
            Msg::Progress { step, progress } => {
                let id = self.id(step).to_string();
                self.state.step_mut(&id).progress = Some(progress.clone());
                self.reporter
                    .emit(&Event::StepProgress { step: id, progress });
            }
            Msg::Event(event) => self.reporter.emit(&event),
            Msg::Done { step, outcome } => self.done(step, outcome).await?,
        }
        Ok(())
    }
}

async fn sleep_until(when: Option<tokio::time::Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
