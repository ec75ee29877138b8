//! A step's task: what it is given (`Job`), what it tells the walker (`Msg`, `Outcome`), and how each kind
//! applies through the run's `Target`. `begin` checkpoints the attempt (and its handle) before anything is
//! created or launched. Run steps: `run_step.rs`.

use std::time::Duration;

use indexmap::IndexMap;
use serde_json::Value as Json;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::host::local::LocalHost;
use crate::plan::{InstanceSpec, Plan, StateLocation, Step, StepKind, VolumeSpec};
use crate::state::{Handle, Resource};
use crate::target::aws::{ProvisionEvent, Tags};
use crate::target::{Created, Target};
use crate::template;

/// Messages from a step task to the runner, which owns the state.
pub enum Msg {
    /// Record this attempt's handle in state, checkpoint, then reply.
    Begin {
        step: usize,
        handle: Handle,
        ack: oneshot::Sender<()>,
    },
    Progress {
        step: usize,
        progress: String,
    },
    /// An event to pass on as it is (e.g. a capacity failover).
    Event(Event),
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

/// What every step of a walk shares, built once per walk: a start copies an `Arc`, not the plan's vars.
pub struct RunContext {
    pub run_id: String,
    pub plan_name: String,
    /// The target and its clients, built once per command.
    pub target: Target,
    pub state_location: StateLocation,
    /// The plan's directory, absolute: where local uploads may land.
    pub plan_dir: std::path::PathBuf,
    pub vars: IndexMap<String, Json>,
    pub wait_detached: bool,
    pub poll: Duration,
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
    /// Idempotency token of this attempt (stored in state before any create call).
    pub token: String,
    /// An instance step re-provisioned beside a volume that outlived its host: the zone it must launch in.
    pub placement: Option<String>,
    /// The handle recorded by the previous apply (re-attach finds its work through it).
    pub handle: Handle,
    /// Outputs of the succeeded steps this one reads, by id.
    pub outputs: IndexMap<String, IndexMap<String, String>>,
    /// Resources per step, for teardown.
    pub resources: IndexMap<String, Vec<Resource>>,
    pub ctx: std::sync::Arc<RunContext>,
    pub tx: mpsc::UnboundedSender<Msg>,
    pub cancel: tokio::sync::watch::Receiver<bool>,
}

/// The sandbox root of the local target (empty for other targets).
pub fn local_root(plan: &Plan) -> std::path::PathBuf {
    match &plan.target {
        crate::plan::Target::Local { root } => root.clone(),
        crate::plan::Target::Aws { .. } => std::path::PathBuf::new(),
    }
}

impl Job {
    pub(crate) async fn begin(&self, handle: Handle) {
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

    pub async fn execute(self) {
        let outcome = match &self.step.kind {
            StepKind::Instance(spec) => self.instance(spec).await,
            StepKind::Volume(spec) => self.volume(spec).await,
            StepKind::Run(_) => self.run().await,
            StepKind::Teardown(t) => self.teardown(&t.destroys).await,
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

    fn succeeded(created: Created) -> Outcome {
        Outcome::Succeeded {
            outputs: created.outputs,
            resources: created.resources,
        }
    }

    fn tags(&self) -> Tags {
        Tags {
            plan: self.ctx.plan_name.clone(),
            run: self.ctx.run_id.clone(),
            step: self.step.id.clone(),
            token: self.token.clone(),
        }
    }

    pub(crate) fn output_of(&self, step: &str, key: &str) -> Result<String> {
        self.outputs
            .get(step)
            .and_then(|o| o.get(key))
            .cloned()
            .ok_or_else(|| {
                Error::runtime(format!(
                    "step `{step}` has no output `{key}` (has it succeeded in this run?)"
                ))
            })
    }

    async fn instance(&self, spec: &InstanceSpec) -> Result<Outcome> {
        let (run, id) = (&self.ctx.run_id, &self.step.id);
        let created = match &self.ctx.target {
            Target::Local(t) => {
                self.begin(t.instance_handle(run, id)).await;
                t.create_instance(run, id, spec.ttl)?
            }
            Target::Aws(t) => {
                self.begin(Handle::Token {
                    token: self.token.clone(),
                })
                .await;
                let mut spec = spec.clone();
                if let Some(zone) = &self.placement {
                    // Pinned beside a volume that outlived the host: only this zone (or its subnets in it).
                    spec.availability_zones = vec![zone.clone()];
                }
                let (tx, step) = (self.tx.clone(), id.clone());
                let mut on_event = move |ProvisionEvent::Failover {
                                             instance_type,
                                             availability_zone,
                                             subnet,
                                             market,
                                             code,
                                             message,
                                         }| {
                    let _ = tx.send(Msg::Event(Event::StepFailover {
                        step: step.clone(),
                        instance_type,
                        availability_zone,
                        subnet,
                        market,
                        code,
                        message,
                    }));
                };
                t.create_instance(&spec, &self.tags(), &mut on_event)
                    .await?
            }
        };
        Ok(Self::succeeded(created))
    }

    async fn volume(&self, spec: &VolumeSpec) -> Result<Outcome> {
        let (run, id) = (&self.ctx.run_id, &self.step.id);
        let mount = self.render_plain("mount", &spec.mount)?;
        let created = match &self.ctx.target {
            Target::Local(t) => {
                let dir = t.volume(run, id, &spec.attach_to, &mount).dir;
                self.begin(Handle::LocalVolume {
                    dir: dir.display().to_string(),
                })
                .await;
                t.create_volume(run, id, &spec.attach_to, &mount)?
            }
            Target::Aws(t) => {
                let instance_id = self.output_of(&spec.attach_to, "instance_id")?;
                let az = self.output_of(&spec.attach_to, "availability_zone")?;
                self.begin(Handle::Token {
                    token: self.token.clone(),
                })
                .await;
                let host = t.host(run, &instance_id);
                t.create_volume(spec, &host, &az, &self.tags(), &mount)
                    .await?
            }
        };
        Ok(Self::succeeded(created))
    }

    /// Destroys what the steps in `destroys` made, dependents first. On AWS, anything of the run still tagged
    /// afterwards (other than `keep` volumes) fails the teardown: nothing may leak.
    async fn teardown(&self, destroys: &[String]) -> Result<Outcome> {
        self.begin(Handle::None).await;
        let resources: Vec<(String, Vec<Resource>)> = destroys
            .iter()
            .rev()
            .filter_map(|s| self.resources.get(s).map(|r| (s.clone(), r.clone())))
            .collect();
        let steps = self.ctx.target.destroy(resources.clone()).await?;
        if let Target::Aws(t) = &self.ctx.target {
            t.check_gone(&self.ctx.run_id, &resources).await?;
        }
        Ok(Outcome::Destroyed { steps })
    }

    /// The data templates see at run time.
    fn context(&self, host: Option<serde_json::Value>) -> minijinja::Value {
        let run = serde_json::json!({ "id": self.ctx.run_id, "plan": self.ctx.plan_name, "attempt": self.attempt, "plan_dir": self.ctx.plan_dir });
        template_context(&self.ctx.vars, run, &self.outputs, host)
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

    /// Renders the script and the environment of a run step for its host.
    pub(crate) fn prepare_launch(
        &self,
        host: serde_json::Value,
        home: Option<String>,
    ) -> Result<(String, crate::host::LaunchSpec)> {
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
        let launch = crate::host::LaunchSpec {
            env,
            timeout: self.step.timeout,
            lock: spec.lock.clone(),
            progress: spec.heartbeat.progress.clone(),
            metrics: spec.heartbeat.metrics.clone(),
            heartbeat_interval: spec.heartbeat.interval,
        };
        Ok((script, launch))
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
    local_root: Option<&std::path::Path>,
    run_id: &str,
    on: &str,
    outputs: &IndexMap<String, IndexMap<String, String>>,
) -> Json {
    match local_root {
        Some(root) => {
            let home = LocalHost::at(root, run_id, on).home;
            serde_json::json!({
                "home": home,
                "name": home.file_name().map(|n| n.to_string_lossy().to_string()),
            })
        }
        None => {
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

pub(crate) fn last_line(path: &std::path::Path) -> String {
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
