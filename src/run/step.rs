//! How each step kind applies and destroys on the local target. The runner calls these from a task per attempt;
//! `begin` checkpoints the attempt (and its handle) before anything is created or launched.

use std::time::Duration;

use indexmap::IndexMap;
use serde_json::Value as Json;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::host::local::{HostStatus, LaunchSpec, LocalHost, LocalVolume};
use crate::host::protocol::HostState;
use crate::plan::{InstanceSpec, Plan, Step, StepKind, Target};
use crate::state::{Resource, ResourceKind};
use crate::template;

/// Messages from a step task to the runner, which owns the state.
pub enum Msg {
    /// Record this attempt's handle in state, checkpoint, then reply.
    Begin {
        step: usize,
        handle: IndexMap<String, String>,
        ack: oneshot::Sender<()>,
    },
    Progress {
        step: usize,
        progress: String,
    },
    /// An event to pass on as it is (e.g. a capacity failover).
    Event(crate::event::Event),
    Done {
        step: usize,
        outcome: Outcome,
    },
}

/// How one attempt ended.
pub enum Outcome {
    Succeeded {
        outputs: IndexMap<String, String>,
        resources: Vec<Resource>,
    },
    Failed {
        error: String,
        /// What to do about it (`Error::help`), stored beside the error.
        help: Option<String>,
    },
    /// Teardown and destroy: these resources are gone now.
    Destroyed {
        steps: Vec<String>,
    },
    /// A detached step left running on its host (`--no-wait`).
    LeftRunning,
    /// The step's host went away under it (terminated, stopped, impaired, reclaimed by spot): the runner may
    /// re-provision the host and run the step again there.
    HostLost {
        instance_id: String,
        error: String,
    },
    Cancelled,
}

/// What a step task needs to know.
pub struct Job {
    pub index: usize,
    pub step: Step,
    pub attempt: u32,
    /// The attempt was already running when this apply started: attach instead of launching.
    pub reattach: bool,
    /// An earlier attempt may still be running on the host (forced rerun after a crash): cancel it first.
    pub cancel_previous: bool,
    pub run_id: String,
    pub plan_name: String,
    pub target: Target,
    pub state_location: crate::plan::StateLocation,
    /// Idempotency token of this attempt (stored in state before any create call).
    pub token: String,
    /// An instance step re-provisioned beside a volume that outlived its host: the zone it must launch in.
    pub placement: Option<String>,
    /// The handle recorded by the previous apply (re-attach finds its work through it).
    pub handle: IndexMap<String, String>,
    /// Sandbox root (local target only).
    pub root: std::path::PathBuf,
    /// The plan's directory, absolute: where local uploads may land.
    pub plan_dir: std::path::PathBuf,
    pub vars: IndexMap<String, Json>,
    /// Outputs of every succeeded step, by id.
    pub outputs: IndexMap<String, IndexMap<String, String>>,
    /// Resources per step, for teardown.
    pub resources: IndexMap<String, Vec<Resource>>,
    pub wait_detached: bool,
    pub poll: Duration,
    pub tx: mpsc::UnboundedSender<Msg>,
    pub cancel: tokio::sync::watch::Receiver<bool>,
}

/// The sandbox root of the local target (empty for other targets).
pub fn local_root(plan: &Plan) -> std::path::PathBuf {
    match &plan.target {
        Target::Local { root } => root.clone(),
        Target::Aws { .. } => std::path::PathBuf::new(),
    }
}

impl Job {
    pub(crate) async fn begin(&self, handle: IndexMap<String, String>) {
        let (ack, wait) = oneshot::channel();
        if self
            .tx
            .send(Msg::Begin {
                step: self.index,
                handle,
                ack,
            })
            .is_ok()
        {
            let _ = wait.await;
        }
    }

    fn host_of(&self, host_step: &str) -> LocalHost {
        LocalHost::at(&self.root, &self.run_id, host_step)
    }

    pub async fn execute(self) {
        let aws = matches!(self.target, Target::Aws { .. });
        let outcome = match (self.step.kind.clone(), aws) {
            (StepKind::Instance(_), false) => self.instance().await,
            (StepKind::Instance(_), true) => self.aws_instance().await,
            (StepKind::Volume(v), false) => self.volume(&v.attach_to, &v.mount).await,
            (StepKind::Volume(_), true) => self.aws_volume().await,
            (StepKind::Run(_), _) => self.run().await,
            (StepKind::Teardown(t), false) => self.teardown(&t.destroys).await,
            (StepKind::Teardown(t), true) => self.aws_destroy(&t.destroys).await,
        };
        let outcome = outcome.unwrap_or_else(|e| Outcome::Failed {
            error: e.to_string(),
            help: e.help(),
        });
        let _ = self.tx.send(Msg::Done {
            step: self.index,
            outcome,
        });
    }

    async fn instance(&self) -> Result<Outcome> {
        let host = self.host_of(&self.step.id);
        self.begin(IndexMap::from([(
            "home".to_string(),
            host.home.display().to_string(),
        )]))
        .await;
        host.create()?;
        let mut outputs = IndexMap::from([
            (
                "instance_id".to_string(),
                format!("local-{}-{}", self.run_id, self.step.id),
            ),
            ("instance_type".to_string(), "local".to_string()),
            ("availability_zone".to_string(), "local".to_string()),
            ("private_ip".to_string(), "127.0.0.1".to_string()),
            ("market".to_string(), "local".to_string()),
            ("home".to_string(), host.home.display().to_string()),
        ]);
        if let StepKind::Instance(InstanceSpec { ttl: Some(ttl), .. }) = &self.step.kind {
            let deadline = crate::ttl::arm_local(&host.home, *ttl)?;
            outputs.insert("expires_at".into(), crate::ttl::rfc3339(deadline));
        }
        let resources = vec![Resource::new(
            ResourceKind::LocalSandbox,
            host.home.display().to_string(),
        )];
        Ok(Outcome::Succeeded { outputs, resources })
    }

    async fn volume(&self, attach_to: &str, mount: &str) -> Result<Outcome> {
        let host = self.host_of(attach_to);
        let mount = self.render_plain("mount", mount)?;
        let volume = LocalVolume::at(&host, &self.step.id, &mount);
        self.begin(IndexMap::from([(
            "dir".to_string(),
            volume.dir.display().to_string(),
        )]))
        .await;
        if !host.exists() {
            return Err(Error::runtime(format!(
                "host `{attach_to}` is gone ({})",
                host.home.display()
            )));
        }
        volume.create()?;
        let outputs = IndexMap::from([
            (
                "volume_id".to_string(),
                format!("local-{}-{}", self.run_id, self.step.id),
            ),
            ("device".to_string(), volume.dir.display().to_string()),
            (
                "mount_path".to_string(),
                volume.mount_path.display().to_string(),
            ),
        ]);
        let resources = vec![Resource::new(
            ResourceKind::LocalVolume,
            volume.dir.display().to_string(),
        )];
        Ok(Outcome::Succeeded { outputs, resources })
    }

    /// The data templates see at run time.
    fn context(&self, host: Option<serde_json::Value>) -> minijinja::Value {
        let run = serde_json::json!({ "id": self.run_id, "plan": self.plan_name, "attempt": self.attempt, "plan_dir": self.plan_dir });
        template_context(&self.vars, run, &self.outputs, host)
    }

    pub(crate) fn render_plain(&self, field: &str, text: &str) -> Result<String> {
        if !template::is_template(text) {
            return Ok(text.to_string());
        }
        let env = template::environment();
        template::render_str(
            &env,
            &format!("steps.{}.{field}", self.step.id),
            text,
            &self.context(None),
        )
        .map_err(|e| {
            Error::runtime(format!(
                "cannot render `{field}`: {}",
                template::error_message(&e)
            ))
        })
    }

    async fn run(&self) -> Result<Outcome> {
        let StepKind::Run(spec) = &self.step.kind else {
            return Err(Error::runtime("not a run step"));
        };
        if let Target::Aws { .. } = self.target {
            let host = host_context(
                &self.target,
                &self.root,
                &self.run_id,
                &spec.on,
                &self.outputs,
            );
            let (script, launch) = self.prepare_launch(host, None)?;
            return self.aws_run(script, launch).await;
        }
        let host = self.host_of(&spec.on);
        if !host.exists() {
            return Err(Error::runtime(format!(
                "host `{}` is gone ({})",
                spec.on,
                host.home.display()
            )));
        }
        let id = self.step.id.clone();
        if self.cancel_previous {
            let previous = host.status(&id).await?;
            if previous.state.is_live() {
                host.cancel(&id, Duration::from_secs(5)).await?;
            }
        }
        let mut status = if self.reattach {
            host.status(&id).await?
        } else {
            HostStatus::default()
        };
        // The launch runs inside `plan` (native supervisor): a kill -9 between writing the attempt and starting
        // its supervisor leaves it lost with no `started_at`. Its script never ran, so it is launched again.
        let never_started = self.reattach
            && status.state == HostState::Lost
            && !host.status_dir(&id).join("started_at").exists();
        let already = self.reattach
            && status.attempt == Some(self.attempt)
            && status.state != HostState::Absent
            && !never_started;
        if !already {
            let host_ctx = host_context(
                &self.target,
                &self.root,
                &self.run_id,
                &spec.on,
                &self.outputs,
            );
            let (script, mut launch) =
                self.prepare_launch(host_ctx, Some(host.home.display().to_string()))?;
            if never_started {
                launch.env.push(("SORTIE_RESTART_LOST".into(), "1".into()));
            }
            self.begin(IndexMap::from([(
                "status_dir".to_string(),
                host.status_dir(&id).display().to_string(),
            )]))
            .await;
            if !spec.files.is_empty() {
                let digest = spec.files_digest.as_deref().unwrap_or_default();
                let all = crate::run::step_files::rescan(&id, &spec.files, digest)?;
                crate::run::step_files::copy_local(&all, &host.home, &host.status_dir(&id))?;
            }
            status = host.launch(&id, self.attempt, &script, &launch).await?;
        }
        if spec.detach && !self.wait_detached && !status.is_finished() {
            return Ok(Outcome::LeftRunning);
        }
        let mut cancel = self.cancel.clone();
        let mut last_progress = None;
        // Short steps end in milliseconds: poll every 2 ms at first, backing off by 1.5x to `poll`. The cheap check reads the
        // exit code directly; the wrapper's full probe (liveness, heartbeat) runs about once a second.
        let mut delays =
            crate::backoff::Backoff::new(Duration::from_millis(2), 1.5, self.poll).delays();
        let mut last_probe = tokio::time::Instant::now();
        let mut stall = spec
            .heartbeat
            .stale_after
            .map(crate::run::stall::StallWatch::new);
        loop {
            if status.is_finished() || status.state == HostState::Lost {
                break;
            }
            if status.progress.is_some() && status.progress != last_progress {
                last_progress = status.progress.clone();
                let _ = self.tx.send(Msg::Progress {
                    step: self.index,
                    progress: last_progress.clone().unwrap_or_default(),
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(delays.next().unwrap_or(self.poll)) => {}
                changed = cancel.changed() => {
                    if changed.is_ok() && *cancel.borrow() {
                        host.cancel(&id, Duration::from_secs(5)).await?;
                        return Ok(Outcome::Cancelled);
                    }
                }
            }
            if let Some(done) = host.finished(&id, self.attempt) {
                status = done;
            } else if last_probe.elapsed() >= Duration::from_secs(1) {
                last_probe = tokio::time::Instant::now();
                status = host.status(&id).await?;
                if let Some(watch) = stall.as_mut() {
                    let beat = std::fs::read_to_string(host.status_dir(&id).join("heartbeat.json"))
                        .ok()
                        .and_then(|t| crate::run::stall::Beat::parse(&t));
                    if let Some(reason) = watch.observe(beat, std::time::Instant::now()) {
                        host.cancel(&id, Duration::from_secs(5)).await?;
                        return Ok(Outcome::Failed {
                            error: reason,
                            help: None,
                        });
                    }
                }
            }
        }
        self.keep_log(&host, &id);
        if status.progress.is_some() && status.progress != last_progress {
            let _ = self.tx.send(Msg::Progress {
                step: self.index,
                progress: status.progress.clone().unwrap_or_default(),
            });
        }
        match status.state {
            HostState::Succeeded => {
                let (outputs, problems) = host.outputs(&id);
                for message in problems {
                    let _ = self.tx.send(Msg::Event(crate::event::Event::Notice {
                        message: format!("  warning  {id}: {message}"),
                    }));
                }
                Ok(Outcome::Succeeded {
                    outputs,
                    resources: Vec::new(),
                })
            }
            HostState::TimedOut => Ok(Outcome::Failed {
                error: format!(
                    "timed out after {}",
                    self.step
                        .timeout
                        .map(|t| humantime::format_duration(t).to_string())
                        .unwrap_or_default()
                ),
                help: None,
            }),
            HostState::Cancelled => Ok(Outcome::Cancelled),
            HostState::Lost => Ok(Outcome::Failed {
                error: "the step's processes vanished without an exit code (host restarted?)"
                    .into(),
                help: None,
            }),
            _ => {
                let code = status
                    .exit_code
                    .map_or_else(|| "?".to_string(), |c| c.to_string());
                let detail = status.error.map(|e| format!(": {e}")).unwrap_or_default();
                let tail = last_line(&host.log_path(&id));
                let tail = if detail.is_empty() && !tail.is_empty() {
                    format!(": {tail}")
                } else {
                    String::new()
                };
                Ok(Outcome::Failed {
                    error: format!("exit code {code}{detail}{tail}"),
                    help: None,
                })
            }
        }
    }

    /// Copies the attempt's log beside the run's state: teardown deletes the host, and `plan logs` must still work.
    fn keep_log(&self, host: &LocalHost, id: &str) {
        let Some(to) = crate::run::step_logs::kept_path(
            &self.state_location,
            &self.plan_name,
            &self.run_id,
            id,
            self.attempt,
        ) else {
            return;
        };
        if let Err(e) = crate::run::step_logs::keep(&host.log_path(id), &to) {
            tracing::warn!("step `{id}`: the log was not kept: {e}");
        }
    }

    /// Renders the script and the environment of a run step for its host.
    fn prepare_launch(
        &self,
        host: serde_json::Value,
        home: Option<String>,
    ) -> Result<(String, LaunchSpec)> {
        let StepKind::Run(spec) = &self.step.kind else {
            return Err(Error::runtime("not a run step"));
        };
        let mut sources = vec![(spec.script.name.clone(), spec.script.source.clone())];
        sources.extend(
            self.step
                .env
                .iter()
                .map(|(k, v)| (format!("env.{k}"), v.clone())),
        );
        if let Some((id, key)) = crate::run::secret_outputs::unavailable(&self.outputs, &sources) {
            return Err(Error::runtime(crate::run::secret_outputs::message(
                &self.step.id,
                &id,
                &key,
            )));
        }
        let script = render_run_script(spec, &self.context(Some(host))).map_err(Error::runtime)?;
        let mut env: Vec<(String, String)> = home
            .map(|h| ("SORTIE_HOME".to_string(), h))
            .into_iter()
            .collect();
        for (k, v) in &self.step.env {
            env.push((k.clone(), self.render_plain(&format!("env.{k}"), v)?));
        }
        let launch = LaunchSpec {
            env,
            timeout: self.step.timeout,
            lock: spec.lock.clone(),
            progress: spec.heartbeat.progress.clone(),
            metrics: spec.heartbeat.metrics.clone(),
            heartbeat_interval: spec.heartbeat.interval,
        };
        Ok((script, launch))
    }

    async fn teardown(&self, destroys: &[String]) -> Result<Outcome> {
        self.begin(IndexMap::new()).await;
        destroy_resources(
            destroys
                .iter()
                .rev()
                .filter_map(|s| self.resources.get(s).map(|r| (s.clone(), r.clone())))
                .collect(),
            &self.root,
        )
        .await
        .map(|steps| Outcome::Destroyed { steps })
    }
}

/// The data a step's templates see at run time: `vars`, `run` (id, plan, attempt, plan_dir), the outputs of the
/// succeeded steps under `steps` (by id and by alias), and `host`. `plan render` builds it the same way.
pub(crate) fn template_context(
    vars: &IndexMap<String, Json>,
    run: Json,
    outputs: &IndexMap<String, IndexMap<String, String>>,
    host: Option<Json>,
) -> minijinja::Value {
    let mut steps = serde_json::Map::new();
    for (id, outputs) in outputs {
        let entry = serde_json::json!({ "outputs": outputs });
        steps.insert(template::step_alias(id), entry.clone());
        steps.insert(id.clone(), entry);
    }
    template::value(serde_json::json!({
        "vars": vars,
        "run": run,
        "steps": steps,
        "host": host,
    }))
}

/// What `host` is in the templates of a step that runs on `on`: its sandbox on the local target, the instance on
/// AWS.
pub(crate) fn host_context(
    target: &Target,
    root: &std::path::Path,
    run_id: &str,
    on: &str,
    outputs: &IndexMap<String, IndexMap<String, String>>,
) -> Json {
    match target {
        Target::Local { .. } => {
            let home = LocalHost::at(root, run_id, on).home;
            serde_json::json!({
                "home": home,
                "name": home.file_name().map(|n| n.to_string_lossy().to_string()),
            })
        }
        Target::Aws { .. } => {
            let instance = outputs
                .get(on)
                .and_then(|o| o.get("instance_id"))
                .cloned()
                .unwrap_or_default();
            serde_json::json!({ "home": "/var/lib/sortie", "name": on, "instance_id": instance })
        }
    }
}

/// A run step's script rendered with `ctx`: the text its host receives. The error names the script and line.
pub(crate) fn render_run_script(
    spec: &crate::plan::RunSpec,
    ctx: &minijinja::Value,
) -> std::result::Result<String, String> {
    template::render_script(&spec.script.name, &spec.script.source, ctx).map_err(|e| {
        let at = e.line().map(|l| format!(":{l}")).unwrap_or_default();
        format!(
            "cannot render {}{at}: {}",
            spec.script.name,
            template::error_message(&e)
        )
    })
}

/// Destroys resources in the order given (dependents first). Idempotent: missing things are fine.
/// Only what resolves under the sandbox `root` is deleted: see `inside_sandbox`.
pub async fn destroy_resources(
    resources: Vec<(String, Vec<Resource>)>,
    root: &std::path::Path,
) -> Result<Vec<String>> {
    let mut done = Vec::new();
    // Volumes before the hosts that hold them.
    let mut ordered = resources;
    ordered.sort_by_key(|(_, rs)| rs.iter().any(|r| r.kind == ResourceKind::LocalSandbox));
    for (step, rs) in ordered {
        for (i, r) in rs.iter().enumerate().filter(|(_, r)| !r.destroyed) {
            let key = format!("steps.{step}.resources[{i}].id");
            let local = matches!(
                r.kind,
                ResourceKind::LocalSandbox | ResourceKind::LocalVolume
            );
            if local && !inside_sandbox(root, &key, &r.id)? {
                continue; // Already gone.
            }
            match r.kind {
                ResourceKind::LocalSandbox => {
                    LocalHost {
                        home: r.id.clone().into(),
                    }
                    .destroy()
                    .await?
                }
                ResourceKind::LocalVolume => {
                    let dir = std::path::PathBuf::from(&r.id);
                    match std::fs::remove_dir_all(&dir) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(Error::io(
                                format!("cannot delete volume {}", dir.display()),
                                e,
                            ))
                        }
                    }
                }
                other => {
                    return Err(Error::runtime(format!(
                        "cannot destroy a `{other}` resource on this target"
                    )))
                }
            }
        }
        done.push(step);
    }
    Ok(done)
}

/// Cancels a step that is no longer in the plan but still running on a local host (the plan was edited while
/// it ran). True if it was cancelled; false if it is not on a local host (it is left to its own timeout and the
/// run stays unfinished). The host comes from state, so it must lie under the sandbox root.
pub async fn cancel_orphan(
    root: &std::path::Path,
    step: &str,
    handle: &IndexMap<String, String>,
) -> Result<bool> {
    let Some(dir) = handle.get("status_dir") else {
        return Ok(false);
    };
    // `<home>/.sortie/steps/<step>`
    let Some(home) = std::path::Path::new(dir).ancestors().nth(3) else {
        return Ok(false);
    };
    let home_text = home.to_string_lossy();
    if !inside_sandbox(root, &format!("steps.{step}.handle.status_dir"), &home_text)? {
        return Ok(true); // The host is gone, and the step with it.
    }
    let host = LocalHost { home: home.into() };
    host.cancel(step, Duration::from_secs(5)).await?;
    Ok(true)
}

/// Whether a local resource path read from state still exists, refusing (exit 2) one that does not resolve,
/// symlinks followed, strictly under the sandbox root. State comes from S3 or a CI artifact: it is untrusted, and
/// a path such as `/home/me/data` or a sandbox linked elsewhere must never be deleted.
fn inside_sandbox(root: &std::path::Path, key: &str, id: &str) -> Result<bool> {
    let path = std::path::Path::new(id);
    let real = match std::fs::canonicalize(path) {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("cannot resolve {id}"), e)),
    };
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    if real.starts_with(&root) && real != root {
        return Ok(true);
    }
    Err(Error::Usage(format!(
        "refusing to delete {id} (`{key}` in the run's state): it resolves to {}, which is not under the sandbox root {}",
        real.display(),
        root.display()
    )))
}

fn last_line(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.chars().take(200).collect())
        })
        .unwrap_or_default()
}
