//! The one run loop for `run` steps, on any host: cancel a previous attempt that may still run, re-attach or
//! launch, wait for the end, and turn what the host reports into an outcome. Waiting is the host's own
//! (`local_wait.rs` polls files; `ssm_wait.rs` parks one command on the host); the rest is shared.

use indexmap::IndexMap;

use crate::error::{Error, Result};
use crate::host::protocol::{exit, HostState};
use crate::host::{Host, HostStatus, LaunchSpec};
use crate::plan::{RunSpec, StepKind};
use crate::run::step::{host_context, Job, Outcome};

/// How a wait ended, whatever the host.
pub(crate) enum Ended {
    /// The host reported the attempt's end (or that it was lost).
    Reported {
        status: HostStatus,
        outputs: IndexMap<String, String>,
        /// The log's last line, for a failure that says nothing itself (local hosts).
        tail: String,
        /// What SSM said of a wait that ended without the step's result (SSM hosts).
        unanswered: Option<String>,
    },
    /// The step ended here without the host's verdict: cancelled, stalled, its host gone.
    Decided(Outcome),
}

impl Job {
    pub(crate) async fn run(&self) -> Result<Outcome> {
        let StepKind::Run(spec) = &self.step.kind else {
            return Err(Error::runtime("not a run step"));
        };
        let instance = self.output_of(&spec.on, "instance_id").ok();
        let host = self
            .ctx
            .target
            .host(&self.ctx.run_id, &spec.on, instance.as_deref())?;
        let error = match self.run_on(&host, spec).await {
            Err(error @ (Error::Runtime { .. } | Error::Aws(_))) => error,
            other => return other,
        };
        // An error that came of the host going away (a command SSM refused or lost because the instance is gone)
        // is a lost host, with EC2's reason: the walker may re-provision it.
        if let (Some(id), crate::target::Target::Aws(t)) = (host.instance_id(), &self.ctx.target) {
            if let Some(reason) = t.host_gone(id).await {
                return Ok(Outcome::HostLost {
                    instance_id: id.to_string(),
                    error: reason,
                });
            }
        }
        Err(error)
    }

    async fn run_on(&self, host: &Host, spec: &RunSpec) -> Result<Outcome> {
        let id = &self.step.id;
        if self.cancel_previous && host.status(id).await?.state.is_live() {
            host.cancel(id).await?;
        }
        let mut status = if self.reattach {
            host.status(id).await?
        } else {
            HostStatus::default()
        };
        let never_started =
            self.reattach && status.state == HostState::Lost && host.never_started(id);
        let already = self.reattach
            && status.attempt == Some(self.attempt)
            && status.state != HostState::Absent
            && !never_started;
        if !already {
            status = self.launch(host, spec, never_started).await?;
            if status.state == HostState::Failed && status.exit_code == Some(exit::BUSY) {
                return Ok(Outcome::Failed {
                    error: status.error.unwrap_or_else(|| "lock busy".into()),
                    help: None,
                });
            }
        }
        if spec.detach && !self.ctx.wait_detached && !status.is_finished() {
            return Ok(Outcome::LeftRunning);
        }
        let ended = match host {
            Host::Local(h) => self.wait_local(h, spec, status).await?,
            Host::Ssm(h) => self.wait_ssm(h, spec).await?,
        };
        Ok(match ended {
            Ended::Decided(outcome) => outcome,
            Ended::Reported {
                status,
                outputs,
                tail,
                unanswered,
            } => self.outcome_of(status, outputs, &tail, unanswered),
        })
    }

    /// Renders the script, records the handle, ships the step's files and launches the attempt.
    async fn launch(&self, host: &Host, spec: &RunSpec, restart: bool) -> Result<HostStatus> {
        let id = &self.step.id;
        let ctx = host_context(
            self.ctx.target.local().map(|l| l.root.as_path()),
            &self.ctx.run_id,
            &spec.on,
            &self.outputs,
        );
        let home = match host {
            Host::Local(h) => Some(h.home.display().to_string()),
            Host::Ssm(_) => None,
        };
        let (script, mut launch) = self.prepare_launch(ctx, home)?;
        if restart {
            // Its script never ran (see `Host::never_started`): the supervisor may take the lost attempt over.
            launch.env.push(("SORTIE_RESTART_LOST".into(), "1".into()));
        }
        match host {
            Host::Local(h) => {
                // The walker records a local step's handle with its start; a re-attached one has it already.
                let handle = host.handle(id);
                if self.handle != handle {
                    self.begin(handle).await;
                }
                if !spec.files.is_empty() {
                    let digest = spec.files_digest.as_deref().unwrap_or_default();
                    let all = crate::run::step_files::rescan(id, &spec.files, digest)?;
                    crate::run::step_files::copy_local(&all, &h.home, &h.status_dir(id))?;
                }
                h.launch(id, self.attempt, &script, &launch).await
            }
            Host::Ssm(h) => {
                self.ssm_env(h, &spec.on, &mut launch).await;
                self.begin(host.handle(id)).await;
                let files = self.files_bundle(spec).await?;
                h.launch(id, self.attempt, &script, &launch, files).await
            }
        }
    }

    /// What the host reported, as the step's outcome.
    fn outcome_of(
        &self,
        status: HostStatus,
        outputs: IndexMap<String, String>,
        tail: &str,
        unanswered: Option<String>,
    ) -> Outcome {
        let failed = |error: String| Outcome::Failed { error, help: None };
        match status.state {
            HostState::Succeeded => Outcome::Succeeded {
                outputs,
                resources: Vec::new(),
            },
            HostState::TimedOut => failed(format!(
                "timed out after {}",
                self.step
                    .timeout
                    .map(|t| humantime::format_duration(t).to_string())
                    .unwrap_or_default()
            )),
            HostState::Cancelled => Outcome::Cancelled,
            // A status with no attempt in it is no status at all (nothing came back): not a lost step.
            HostState::Lost if status.attempt.is_some() => failed(
                "the step's processes vanished without an exit code (host restarted?)".into(),
            ),
            state => match unanswered.filter(|_| state != HostState::Failed) {
                Some(said) => failed(format!(
                    "the wait on the host ended without a result: {said}"
                )),
                None => {
                    let code = status
                        .exit_code
                        .map_or_else(|| "?".to_string(), |c| c.to_string());
                    let error = status.error.map(|e| format!(": {e}")).unwrap_or_default();
                    let tail = if error.is_empty() && !tail.is_empty() {
                        format!(": {tail}")
                    } else {
                        String::new()
                    };
                    failed(format!("exit code {code}{error}{tail}"))
                }
            },
        }
    }

    /// The environment only an SSM host gets: spot notices, and where to upload its heartbeat and log tail.
    async fn ssm_env(&self, host: &crate::host::ssm::SsmHost, on: &str, launch: &mut LaunchSpec) {
        // Only a spot host gets interruption notices: its wrapper watches the instance metadata for one.
        if self.output_of(on, "market").is_ok_and(|m| m == "spot") {
            launch.env.push(("SORTIE_SPOT".into(), "1".into()));
        }
        use crate::target::aws::objects::{heartbeat_key, log_tail_key};
        if let Some(url) = self.put_url(host, heartbeat_key).await {
            launch.env.push(("SORTIE_HEARTBEAT_URL".into(), url));
        }
        if let Some(url) = self.put_url(host, log_tail_key).await {
            launch.env.push(("SORTIE_LOG_URL".into(), url));
        }
    }
}
