//! How each step kind applies and is destroyed on the aws target: EC2 instances and EBS volumes through
//! `aws_provider`, scripts through `ssm_host` and the host wrapper. The local twin is `step_exec`.

use std::time::Duration;

use indexmap::IndexMap;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::host::local::{HostStatus, LaunchSpec};
use crate::host::protocol::{exit, HostState};
use crate::host::ssm::{self, OutputLocation, Pace, SsmHost, SsmPoll};
use crate::plan::{RunSpec, StateLocation, StepKind, Target};
use crate::run::step::{Job, Msg, Outcome};
use crate::run::step_files;
use crate::run::step_watch::{HeartbeatProbe, StepWatch, Verdict};
use crate::state::{Resource, ResourceKind};
use crate::target::aws::{AwsProvider, PollConfig, ProvisionEvent, Tags};

/// The volume script (docs/HOST_PROTOCOL.md): find the NVMe device by volume id, mkfs only when empty, mount, fstab.
pub const VOLUME_SCRIPT: &str = include_str!("../host/volume.sh");

/// `SORTIE_POLL_INTERVAL` (e.g. `200ms`) shortens every AWS poll: real AWS needs seconds, a test endpoint not.
fn poll_override() -> Option<Duration> {
    std::env::var("SORTIE_POLL_INTERVAL")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
}

/// How many wait commands in a row may end without the step's result before the step fails.
const MAX_REWAITS: u32 = 5;

pub fn provider_poll() -> PollConfig {
    match poll_override() {
        Some(d) => PollConfig {
            initial: d,
            max: d * 4,
            ..PollConfig::default()
        },
        None => PollConfig::default(),
    }
}

fn ssm_poll() -> SsmPoll {
    match poll_override() {
        Some(d) => SsmPoll {
            schedule: crate::backoff::Backoff::new(d, 1.5, d * 4),
            relaxed_max: d * 4,
            ..SsmPoll::default()
        },
        None => SsmPoll::default(),
    }
}

/// The run's SSM output location: beside the state when state is in S3.
pub fn output_location(state: &StateLocation, plan: &str, run: &str) -> Option<OutputLocation> {
    match state {
        StateLocation::S3 { bucket, prefix } => Some(OutputLocation {
            bucket: bucket.clone(),
            prefix: s3_path(&[prefix, plan, run, "ssm"]),
        }),
        StateLocation::Dir(_) => None,
    }
}

/// One of the keys below, by what it names.
type StepKey = fn(&StateLocation, &str, &str, &str) -> Option<String>;

/// Where a step's heartbeat lives in S3: `<prefix>/<plan>/<run>/steps/<step>/heartbeat.json`.
pub fn heartbeat_key(state: &StateLocation, plan: &str, run: &str, step: &str) -> Option<String> {
    step_object_key(state, plan, run, step, "heartbeat.json")
}

/// Where the host puts the tail of a running step's log for `plan logs -f` (deleted when the step ends).
pub fn log_tail_key(state: &StateLocation, plan: &str, run: &str, step: &str) -> Option<String> {
    step_object_key(state, plan, run, step, "log-tail")
}

fn step_object_key(
    state: &StateLocation,
    plan: &str,
    run: &str,
    step: &str,
    name: &str,
) -> Option<String> {
    match state {
        StateLocation::S3 { prefix, .. } => {
            Some(s3_path(&[prefix, plan, run, "steps", step, name]))
        }
        StateLocation::Dir(_) => None,
    }
}

/// An S3 key of `parts` joined with `/`; an empty part (the state's prefix may be empty) is left out.
fn s3_path(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/")
}

impl Job {
    fn tags(&self) -> Tags {
        Tags {
            plan: self.plan_name.clone(),
            run: self.run_id.clone(),
            step: self.step.id.clone(),
            token: self.token.clone(),
        }
    }

    fn output_of(&self, step: &str, key: &str) -> Result<String> {
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

    async fn ssm_host(&self, host_step: &str) -> Result<SsmHost> {
        let config = crate::target::aws::config::sdk_config(&self.target).await;
        Ok(SsmHost {
            ssm: aws_sdk_ssm::Client::new(&config),
            s3: crate::target::aws::config::s3_client(&config),
            instance_id: self.output_of(host_step, "instance_id")?,
            output: output_location(&self.state_location, &self.plan_name, &self.run_id),
            poll: ssm_poll(),
        })
    }

    pub(crate) async fn aws_instance(&self) -> Result<Outcome> {
        let StepKind::Instance(spec) = &self.step.kind else {
            return Err(Error::runtime("not an instance step"));
        };
        self.begin(IndexMap::from([("token".to_string(), self.token.clone())]))
            .await;
        let provider = AwsProvider::new(&self.target, provider_poll()).await;
        let tx = self.tx.clone();
        let step = self.step.id.clone();
        let mut on_event = move |event: ProvisionEvent| {
            let ProvisionEvent::Failover {
                instance_type,
                availability_zone,
                subnet,
                market,
                code,
                message,
            } = event;
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
        let mut spec = spec.clone();
        if let Some(zone) = &self.placement {
            // Pinned beside a volume that outlived the host: only this zone (or the step's subnets in it).
            spec.availability_zones = vec![zone.clone()];
        }
        let out = match provider
            .create_instance(&spec, &self.tags(), &mut on_event)
            .await
        {
            Ok(out) => out,
            Err(e) => {
                // An instance that launched but never became usable (e.g. SSM never came online) must not outlive
                // this failure: the next attempt has a new token and would never adopt it.
                if let Ok(Some(id)) = provider.find_instance_by_token(&self.token).await {
                    if let Err(t) = provider.terminate_instance(&id).await {
                        tracing::warn!("could not terminate {id} after a failed launch: {t}");
                    }
                }
                return Err(e);
            }
        };
        let mut outputs = IndexMap::from([
            ("instance_id".to_string(), out.instance_id.clone()),
            ("availability_zone".to_string(), out.availability_zone),
            ("private_ip".to_string(), out.private_ip),
            ("instance_type".to_string(), out.instance_type),
            ("market".to_string(), out.market),
            ("image_id".to_string(), out.image_id),
            (
                "connect".to_string(),
                format!("aws ssm start-session --target {}", out.instance_id),
            ),
        ]);
        if let Some(ttl) = spec.ttl {
            // The host armed its deadline just before launch: launch time + ttl is within seconds of it.
            let deadline = out.launched_at + ttl.as_secs();
            outputs.insert("expires_at".into(), crate::ttl::rfc3339(deadline));
        }
        let resources = vec![Resource::new(ResourceKind::Ec2Instance, out.instance_id)];
        Ok(Outcome::Succeeded { outputs, resources })
    }

    pub(crate) async fn aws_volume(&self) -> Result<Outcome> {
        let StepKind::Volume(spec) = &self.step.kind else {
            return Err(Error::runtime("not a volume step"));
        };
        let instance_id = self.output_of(&spec.attach_to, "instance_id")?;
        let az = self.output_of(&spec.attach_to, "availability_zone")?;
        self.begin(IndexMap::from([("token".to_string(), self.token.clone())]))
            .await;
        let provider = AwsProvider::new(&self.target, provider_poll()).await;
        let vol = provider
            .create_volume(spec, &instance_id, &az, &self.tags())
            .await?;
        let host = self.ssm_host(&spec.attach_to).await?;
        let mount = self.render_plain("mount", &spec.mount)?;
        let resources = vec![Resource {
            keep: spec.keep,
            host: Some(instance_id.clone()),
            mount: Some(mount.clone()),
            ..Resource::new(ResourceKind::EbsVolume, vol.volume_id.clone())
        }];
        let script = format!(
            "cat > /tmp/sortie-volume.sh <<'SORTIE_VOLUME_EOF'\n{VOLUME_SCRIPT}SORTIE_VOLUME_EOF\nsh /tmp/sortie-volume.sh mount {} {} {}\n",
            shlex::try_quote(&vol.volume_id).unwrap_or_default(),
            shlex::try_quote(&vol.device).unwrap_or_default(),
            shlex::try_quote(&mount).unwrap_or_default(),
        );
        let inv = host.run(&script, Duration::from_secs(600)).await?;
        if !inv.succeeded() {
            return Err(Error::runtime(format!(
                "cannot mount volume {} at {mount}: {}",
                vol.volume_id,
                inv.describe()
            )));
        }
        let mut outputs: IndexMap<String, String> = inv
            .stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| matches!(*k, "volume_id" | "device" | "mount_path"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        outputs.entry("volume_id".into()).or_insert(vol.volume_id);
        Ok(Outcome::Succeeded { outputs, resources })
    }

    /// Runs the step on its SSM host. An error that came of the host going away (a command SSM refused or lost
    /// because the instance is gone) is a lost host, with EC2's reason.
    pub(crate) async fn aws_run(&self, script: String, launch: LaunchSpec) -> Result<Outcome> {
        let StepKind::Run(spec) = &self.step.kind else {
            return Err(Error::runtime("not a run step"));
        };
        let error = match self.aws_run_on(spec, script, launch).await {
            Err(error @ (Error::Runtime { .. } | Error::Aws(_))) => error,
            other => return other,
        };
        let Ok(instance_id) = self.output_of(&spec.on, "instance_id") else {
            return Err(error);
        };
        let config = crate::target::aws::config::sdk_config(&self.target).await;
        let ec2 = aws_sdk_ec2::Client::new(&config);
        match crate::run::step_watch::host_gone(&ec2, &instance_id).await {
            Some(reason) => Ok(Outcome::HostLost {
                instance_id,
                error: reason,
            }),
            None => Err(error),
        }
    }

    async fn aws_run_on(
        &self,
        spec: &RunSpec,
        script: String,
        launch: LaunchSpec,
    ) -> Result<Outcome> {
        let host = self.ssm_host(&spec.on).await?;
        let id = self.step.id.clone();
        if self.cancel_previous {
            let previous = host.status(&id).await?;
            if previous.state.is_live() {
                host.cancel(&id, Duration::from_secs(30)).await?;
            }
        }
        let mut wait_command = if self.reattach {
            self.handle.get("wait_command").cloned()
        } else {
            None
        };
        let already = self.reattach && {
            let st = host.status(&id).await?;
            st.attempt == Some(self.attempt) && st.state != HostState::Absent
        };
        if !already {
            let mut launch = launch;
            // Only a spot host gets interruption notices: its wrapper watches the instance metadata for one.
            if self
                .output_of(&spec.on, "market")
                .is_ok_and(|m| m == "spot")
            {
                launch.env.push(("SORTIE_SPOT".into(), "1".into()));
            }
            if let Some(url) = self.put_url(&host, heartbeat_key).await {
                launch.env.push(("SORTIE_HEARTBEAT_URL".into(), url));
            }
            if let Some(url) = self.put_url(&host, log_tail_key).await {
                launch.env.push(("SORTIE_LOG_URL".into(), url));
            }
            self.begin(IndexMap::from([(
                "host".to_string(),
                host.instance_id.clone(),
            )]))
            .await;
            let files = self.files_bundle(spec).await?;
            let status = host
                .launch(&id, self.attempt, &script, &launch, files)
                .await?;
            if status.state == HostState::Failed && status.exit_code == Some(exit::BUSY) {
                return Ok(Outcome::Failed {
                    error: status.error.unwrap_or_else(|| "lock busy".into()),
                    help: None,
                });
            }
        }
        if spec.detach && !self.wait_detached {
            return Ok(Outcome::LeftRunning);
        }
        let mut cancel = self.cancel.clone();
        let (pace_tx, mut pace) = tokio::sync::watch::channel(Pace::default());
        let mut watch = self.step_watch(spec, pace_tx).await;
        let mut rewaits = 0;
        loop {
            let command = match wait_command.take() {
                Some(c) => c,
                None => {
                    // One command waits on the host for the whole step (bounded by SSM's 48 h), so polling
                    // costs one GetCommandInvocation per interval, not a status command.
                    let timeout = self
                        .step
                        .timeout
                        .map_or(ssm::MAX_EXECUTION, |t| t + Duration::from_secs(300));
                    let c = host.send(&SsmHost::wait_script(&id), timeout).await?;
                    self.begin(IndexMap::from([
                        ("host".to_string(), host.instance_id.clone()),
                        ("wait_command".to_string(), c.clone()),
                    ]))
                    .await;
                    c
                }
            };
            let waited = {
                let wait = host.wait(&command, &mut cancel, &mut pace);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        r = &mut wait => break r,
                        _ = tokio::time::sleep(watch.next_in()) => {
                            match watch.check(&host, &id).await {
                                None => {}
                                Some(Verdict::Stalled(reason)) => {
                                    host.cancel(&id, Duration::from_secs(30)).await?;
                                    host.cancel_command(&command).await;
                                    return Ok(Outcome::Failed { error: reason, help: None });
                                }
                                Some(Verdict::HostGone(reason)) => {
                                    host.cancel_command(&command).await;
                                    return Ok(host_lost(&host, reason));
                                }
                            }
                        }
                    }
                }
            };
            let inv = match waited {
                Ok(inv) => inv,
                // A command from before a crash may have expired: wait again with a new one.
                Err(e) if self.reattach => {
                    tracing::warn!("re-attaching {id}: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if *cancel.borrow() {
                host.cancel(&id, Duration::from_secs(30)).await?;
                return Ok(Outcome::Cancelled);
            }
            let (status, outputs, _log) = ssm::split_wait_output(&inv.stdout);
            if let Some(notice) = status
                .spot_notice
                .as_deref()
                .filter(|_| !status.is_finished())
            {
                // The host goes within two minutes, and the step with it: end it now, with the reason.
                host.cancel_command(&command).await;
                let error = format!(
                    "host {} is being reclaimed by EC2 (spot interruption notice: {notice})",
                    host.instance_id
                );
                return Ok(host_lost(&host, error));
            }
            if !status.is_finished() {
                rewaits += 1;
                match ended_without_result(&host, &id, &inv, spec.detach, &watch, rewaits).await {
                    Some(Ok(())) => continue,
                    Some(Err(error)) => return Ok(host_lost(&host, error)),
                    None => {}
                }
            }
            self.scrub_s3(&host, &command, &outputs).await;
            return Ok(outcome_of(&status, outputs, &inv, self.step.timeout));
        }
    }

    /// The step's files as one archive for the host (checked against the digest the plan was compiled with).
    async fn files_bundle(&self, spec: &RunSpec) -> Result<Option<ssm::Bundle>> {
        if spec.files.is_empty() {
            return Ok(None);
        }
        let (id, ships) = (self.step.id.clone(), spec.files.clone());
        let digest = spec.files_digest.clone().unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            let all = step_files::rescan(&id, &ships, &digest)?;
            let archive = step_files::archive(&all)
                .map_err(|e| Error::io(format!("cannot pack the files of step `{id}`"), e))?;
            let dests = ships.into_iter().map(|s| s.dest).collect();
            Ok(Some(ssm::Bundle { archive, dests }))
        })
        .await
        .map_err(|e| Error::runtime(format!("packing files: {e}")))?
    }

    /// What the step printed is in S3 (the wait command's output, the heartbeat), written by SSM and the host:
    /// rewrite it scrubbed, and delete a staged script (it holds the rendered secrets).
    async fn scrub_s3(&self, host: &SsmHost, command: &str, outputs: &IndexMap<String, String>) {
        for (k, v) in outputs {
            if crate::state::is_secret_name(k) {
                crate::scrub::add_secret(v);
            }
        }
        let Some(out) = &host.output else {
            return;
        };
        let prefix = out.prefix.trim_end_matches('/');
        crate::s3_scrub::scrub_prefix(&host.s3, &out.bucket, &format!("{prefix}/{command}/")).await;
        if let Some((bucket, key)) = self.step_object(heartbeat_key) {
            crate::s3_scrub::scrub_object(&host.s3, &bucket, &key).await;
        }
        // The full log is in the wait command's output now; the tail was only for following it live.
        if let Some((bucket, key)) = self.step_object(log_tail_key) {
            crate::s3_scrub::delete(&host.s3, &bucket, &key).await;
        }
        let script = format!("{prefix}/scripts/{}.{}", self.step.id, self.attempt);
        crate::s3_scrub::delete(&host.s3, &out.bucket, &script).await;
    }

    /// What is watched while the step runs: its uploaded heartbeat (only with S3 state, where the host uploads
    /// it), every 2 minutes, or a tenth of `stale_after` down to 1 minute; its host every 5 minutes. With the wait's
    /// own polls that is about 54 calls an hour in steady state (docs/BENCHMARKS.md).
    async fn step_watch(
        &self,
        spec: &RunSpec,
        pace: tokio::sync::watch::Sender<Pace>,
    ) -> StepWatch {
        let heartbeat = self.step_object(heartbeat_key).map(|(bucket, key)| {
            let stale = spec.heartbeat.stale_after;
            let every = poll_override().unwrap_or_else(|| {
                stale.map_or(Duration::from_secs(120), |s| {
                    (s / 10).clamp(Duration::from_secs(60), Duration::from_secs(120))
                })
            });
            HeartbeatProbe {
                stall: stale.map(crate::run::stall::StallWatch::new),
                every,
                bucket,
                key,
            }
        });
        let config = crate::target::aws::config::sdk_config(&self.target).await;
        let host_every = poll_override().unwrap_or(Duration::from_secs(300));
        StepWatch::new(
            heartbeat,
            aws_sdk_ec2::Client::new(&config),
            host_every,
            pace,
        )
    }

    /// The bucket and key of one of this step's objects beside the run's state (only with S3 state).
    fn step_object(&self, key: StepKey) -> Option<(String, String)> {
        let key = key(
            &self.state_location,
            &self.plan_name,
            &self.run_id,
            &self.step.id,
        )?;
        match &self.state_location {
            StateLocation::S3 { bucket, .. } => Some((bucket.clone(), key)),
            StateLocation::Dir(_) => None,
        }
    }

    /// A presigned PUT for one of this step's objects (heartbeat, log tail), so `plan status` and `plan logs -f`
    /// read them without SSM. Valid for the step's timeout (at most the 7 days SigV4 allows); none without S3
    /// state.
    async fn put_url(&self, host: &SsmHost, key: StepKey) -> Option<String> {
        let (bucket, key) = self.step_object(key)?;
        let valid = self
            .step
            .timeout
            .unwrap_or(Duration::from_secs(86_400))
            .min(Duration::from_secs(7 * 86_400));
        let presign = aws_sdk_s3::presigning::PresigningConfig::expires_in(valid).ok()?;
        let req = host
            .s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .presigned(presign)
            .await
            .ok()?;
        Some(req.uri().to_string())
    }

    pub(crate) async fn aws_destroy(&self, destroys: &[String]) -> Result<Outcome> {
        self.begin(IndexMap::new()).await;
        let resources: Vec<(String, Vec<Resource>)> = destroys
            .iter()
            .rev()
            .filter_map(|s| self.resources.get(s).map(|r| (s.clone(), r.clone())))
            .collect();
        let done = destroy_aws(&self.target, &resources).await?;
        let provider = AwsProvider::new(&self.target, provider_poll()).await;
        let left: Vec<(String, String)> = provider
            .resources_of_run(&self.run_id)
            .await?
            .into_iter()
            .filter(|(_, id)| {
                !resources
                    .iter()
                    .flat_map(|(_, r)| r)
                    .any(|r| r.keep && r.id == *id)
            })
            .collect();
        if !left.is_empty() {
            return Err(Error::runtime(format!(
                "teardown finished but these resources of run {} still exist: {}",
                self.run_id,
                left.iter()
                    .map(|(k, id)| format!("{k} {id}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(Outcome::Destroyed { steps: done })
    }
}

/// Unmounts a volume before it is detached, so no write is lost. Best effort: the instance may be gone already.
async fn unmount(config: &aws_config::SdkConfig, instance: &str, mount: &str) {
    let host = SsmHost {
        ssm: aws_sdk_ssm::Client::new(config),
        s3: crate::target::aws::config::s3_client(config),
        instance_id: instance.to_string(),
        output: None,
        poll: ssm_poll(),
    };
    let script = format!(
        "cat > /tmp/sortie-volume.sh <<'SORTIE_VOLUME_EOF'\n{VOLUME_SCRIPT}SORTIE_VOLUME_EOF\nsh /tmp/sortie-volume.sh unmount {}\n",
        shlex::try_quote(mount).unwrap_or_default()
    );
    match tokio::time::timeout(
        Duration::from_secs(180),
        host.run(&script, Duration::from_secs(120)),
    )
    .await
    {
        Ok(Ok(inv)) if inv.succeeded() => {}
        Ok(Ok(inv)) => tracing::warn!("unmounting {mount} on {instance}: {}", inv.describe()),
        Ok(Err(e)) => tracing::warn!("unmounting {mount} on {instance}: {e}"),
        Err(_) => {
            tracing::warn!("unmounting {mount} on {instance} took too long; detaching anyway")
        }
    }
}

fn host_lost(host: &SsmHost, error: String) -> Outcome {
    Outcome::HostLost {
        instance_id: host.instance_id.clone(),
        error,
    }
}

/// A wait command ended without the step's result. `Some(Ok)`: wait again with a new command (a detached step
/// longer than one SSM command may last, or an agent that restarted or updated itself under the command while
/// the step goes on: a step is never failed for what happened to the command that watched it). `Some(Err)`: the
/// host is gone, with EC2's reason, which says more than SSM. `None`: the wrapper cannot answer; the step fails
/// with what SSM said. Re-waits are bounded by [`MAX_REWAITS`].
async fn ended_without_result(
    host: &SsmHost,
    id: &str,
    inv: &ssm::Invocation,
    detach: bool,
    watch: &StepWatch,
    rewaits: u32,
) -> Option<std::result::Result<(), String>> {
    if let Some(reason) = watch.host_gone(&host.instance_id).await {
        return Some(Err(reason));
    }
    if inv.status == "TimedOut" && detach {
        return Some(Ok(()));
    }
    let on_host = host.status(id).await.map(|s| s.state).unwrap_or_default();
    let known = on_host.is_live() || on_host.is_finished();
    (rewaits <= MAX_REWAITS && known).then(|| {
        tracing::warn!(
            "the wait for `{id}` ended without a result ({}); the step is {on_host} on the host, waiting again",
            inv.describe()
        );
        Ok(())
    })
}

fn outcome_of(
    status: &HostStatus,
    outputs: IndexMap<String, String>,
    inv: &ssm::Invocation,
    timeout: Option<Duration>,
) -> Outcome {
    match status.state {
        HostState::Succeeded => Outcome::Succeeded {
            outputs,
            resources: Vec::new(),
        },
        HostState::TimedOut => Outcome::Failed {
            error: format!(
                "timed out after {}",
                timeout
                    .map(|t| humantime::format_duration(t).to_string())
                    .unwrap_or_default()
            ),
            help: None,
        },
        HostState::Cancelled => Outcome::Cancelled,
        HostState::Failed => Outcome::Failed {
            error: format!(
                "exit code {}{}",
                status
                    .exit_code
                    .map_or_else(|| "?".into(), |c| c.to_string()),
                status
                    .error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
            help: None,
        },
        // A status with no attempt in it is no status at all (nothing came back): not a lost step.
        HostState::Lost if status.attempt.is_some() => Outcome::Failed {
            error: "the step's processes vanished without an exit code (instance rebooted?)".into(),
            help: None,
        },
        _ => Outcome::Failed {
            error: format!(
                "the wait on the host ended without a result: {}",
                inv.describe()
            ),
            help: None,
        },
    }
}

/// Destroys AWS resources: unmounts volumes (best effort, so no write is lost), then terminates every instance,
/// then deletes the volumes. Instances go first and always, whatever fails with a volume: a volume stuck in
/// `detaching` must never keep a GPU running until its max_lifetime. A terminated instance releases its
/// volumes, so they are deleted after. Every resource is tried; the first error is returned after all of them.
pub async fn destroy_aws(
    target: &Target,
    resources: &[(String, Vec<Resource>)],
) -> Result<Vec<String>> {
    // Owned lists, so nothing borrowed by a closure is held across an await (the future must be Send).
    let mut instances: Vec<(String, String)> = Vec::new();
    let mut volumes: Vec<(String, Resource)> = Vec::new();
    for (step, rs) in resources {
        for r in rs.iter().filter(|r| !r.destroyed && !r.keep) {
            match r.kind {
                ResourceKind::Ec2Instance => instances.push((step.clone(), r.id.clone())),
                ResourceKind::EbsVolume => volumes.push((step.clone(), r.clone())),
                other => {
                    return Err(Error::runtime(format!(
                        "cannot destroy a `{other}` resource on the aws target"
                    )))
                }
            }
        }
    }
    let provider = AwsProvider::new(target, provider_poll()).await;
    let config = crate::target::aws::config::sdk_config(target).await;
    for (_, r) in &volumes {
        if let (Some(instance), Some(mount)) = (&r.host, &r.mount) {
            unmount(&config, instance, mount).await;
        }
    }
    let mut failed: Vec<String> = Vec::new();
    let mut first_error = None;
    for (step, id) in &instances {
        if let Err(e) = provider.terminate_instance(id).await {
            failed.push(step.clone());
            first_error.get_or_insert(e);
        }
    }
    for (step, r) in &volumes {
        if let Err(e) = provider.delete_volume(&r.id).await {
            failed.push(step.clone());
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(resources
            .iter()
            .map(|(step, _)| step.clone())
            .filter(|step| !failed.contains(step))
            .collect()),
    }
}

/// An SSM host of `run` outside a walk (`plan logs`, `plan extend`), with the plan's own client settings.
pub(crate) async fn ssm_host_for(
    plan: &crate::plan::Plan,
    run_id: &str,
    instance_id: &str,
) -> SsmHost {
    let config = crate::target::aws::config::sdk_config(&plan.target).await;
    SsmHost {
        ssm: aws_sdk_ssm::Client::new(&config),
        s3: crate::target::aws::config::s3_client(&config),
        instance_id: instance_id.to_string(),
        output: output_location(&plan.state, &plan.name, run_id),
        poll: crate::host::ssm::SsmPoll::default(),
    }
}
