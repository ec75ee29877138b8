//! Waiting for a run step on an SSM host: one command waits on the host for the whole step (bounded by SSM's
//! 48 h), so polling costs one GetCommandInvocation per interval, while a watch reads the uploaded heartbeat and
//! asks EC2 about the host now and then. A wait command that ends without the step's result is replaced.

use std::time::Duration;

use indexmap::IndexMap;

use crate::error::{Error, Result};
use crate::host::ssm::{self, Pace, SsmHost};
use crate::plan::RunSpec;
use crate::run::run_step::Ended;
use crate::run::step::{Job, Outcome};
use crate::run::step_files;
use crate::run::step_watch::{HeartbeatProbe, StepWatch, Verdict};
use crate::state::Handle;
use crate::target::aws::objects::{heartbeat_key, log_tail_key, step_object, StepKey};
use crate::target::aws::target::{poll_override, CANCEL_GRACE};

/// How many wait commands in a row may end without the step's result before the step fails.
const MAX_REWAITS: u32 = 5;

impl Job {
    pub(crate) async fn wait_ssm(&self, host: &SsmHost, spec: &RunSpec) -> Result<Ended> {
        let id = &self.step.id;
        let crate::target::Target::Aws(aws) = &self.ctx.target else {
            return Err(Error::runtime("an SSM host outside the aws target"));
        };
        let mut wait_command = if self.reattach {
            self.handle.wait_command().map(str::to_string)
        } else {
            None
        };
        let mut cancel = self.cancel.clone();
        let (pace_tx, mut pace) = tokio::sync::watch::channel(Pace::default());
        let mut watch = self.step_watch(aws.ec2().clone(), spec, pace_tx);
        let mut rewaits = 0;
        loop {
            let command = match wait_command.take() {
                Some(c) => c,
                None => self.send_wait(host).await?,
            };
            let waited = {
                let wait = host.wait(&command, &mut cancel, &mut pace);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        r = &mut wait => break r,
                        _ = tokio::time::sleep(watch.next_in()) => {
                            if let Some(verdict) = watch.check(host, id).await {
                                return self.watched_end(host, &command, verdict).await.map(Ended::Decided);
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
                host.cancel(id, CANCEL_GRACE).await?;
                return Ok(Ended::Decided(Outcome::Cancelled));
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
                return Ok(Ended::Decided(host_lost(host, error)));
            }
            if !status.is_finished() {
                rewaits += 1;
                match ended_without_result(host, id, &inv, spec.detach, &watch, rewaits).await {
                    Some(Ok(())) => continue,
                    Some(Err(error)) => return Ok(Ended::Decided(host_lost(host, error))),
                    None => {}
                }
            }
            self.scrub_s3(host, &command, &outputs).await;
            return Ok(Ended::Reported {
                status,
                outputs,
                tail: String::new(),
                unanswered: Some(inv.describe()),
            });
        }
    }

    /// Sends the command that waits for the step on the host, and records it before waiting on it.
    async fn send_wait(&self, host: &SsmHost) -> Result<String> {
        let timeout = self
            .step
            .timeout
            .map_or(ssm::MAX_EXECUTION, |t| t + Duration::from_secs(300));
        let command = host
            .send(&SsmHost::wait_script(&self.step.id), timeout)
            .await?;
        self.begin(Handle::SsmRun {
            host: host.instance_id.clone(),
            wait_command: Some(command.clone()),
        })
        .await;
        Ok(command)
    }

    /// The step ends on what its watch saw: a stall (cancel it on the host), or the host gone.
    async fn watched_end(
        &self,
        host: &SsmHost,
        command: &str,
        verdict: Verdict,
    ) -> Result<Outcome> {
        match verdict {
            Verdict::Stalled(reason) => {
                host.cancel(&self.step.id, CANCEL_GRACE).await?;
                host.cancel_command(command).await;
                Ok(Outcome::Failed {
                    error: reason,
                    help: None,
                })
            }
            Verdict::HostGone(reason) => {
                host.cancel_command(command).await;
                Ok(host_lost(host, reason))
            }
        }
    }

    /// The step's files as one archive for the host (checked against the digest the plan was compiled with).
    pub(crate) async fn files_bundle(&self, spec: &RunSpec) -> Result<Option<ssm::Bundle>> {
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
    fn step_watch(
        &self,
        ec2: aws_sdk_ec2::Client,
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
        let host_every = poll_override().unwrap_or(Duration::from_secs(300));
        StepWatch::new(heartbeat, ec2, host_every, pace)
    }

    /// The bucket and key of one of this step's objects beside the run's state (only with S3 state).
    fn step_object(&self, key: StepKey) -> Option<(String, String)> {
        step_object(
            key,
            &self.ctx.state_location,
            &self.ctx.plan_name,
            &self.ctx.run_id,
            &self.step.id,
        )
    }

    /// A presigned PUT for one of this step's objects (heartbeat, log tail), so `plan status` and `plan logs -f`
    /// read them without SSM. Valid for the step's timeout (at most the 7 days SigV4 allows); none without S3
    /// state.
    pub(crate) async fn put_url(&self, host: &SsmHost, key: StepKey) -> Option<String> {
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
