//! The aws target's executor: a host is an EC2 instance reached through SSM Run Command (AWS-RunShellScript).
//! Every `run` step goes through the same host wrapper as on the local target; this module sends the commands
//! (`ssm_scripts.rs` writes them: the wrapper and the rendered script inside the launch, or fetched from S3 as
//! `ssm_staging.rs` puts them there) and reads results back from their output (`ssm_invocation.rs`; the log:
//! `ssm_log.rs`).
//!
//! Host paths are prefixed with `${SORTIE_HOST_ROOT:-}` (empty on AWS), the one seam that lets several test
//! instances share a machine (docs/TEST_ENDPOINT.md).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::host::local::{HostStatus, LaunchSpec};
use crate::host::ssm_files::SHA_MISMATCH;
pub use crate::host::ssm_files::{Bundle, Delivery};
pub use crate::host::ssm_invocation::Invocation;
pub use crate::host::ssm_poll::{Pace, SsmPoll};
pub use crate::host::ssm_scripts::split_wait_output;
pub use crate::host::ssm_staging::Staged;
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::types::CommandInvocationStatus;

/// SSM's largest executionTimeout; a longer wait is split into several commands.
pub const MAX_EXECUTION: Duration = Duration::from_secs(172_800);
/// How long SSM lets a launch command run (it only starts the step).
pub(super) const LAUNCH_TIMEOUT: Duration = Duration::from_secs(300);

/// Where SSM writes command output (the full stdout; GetCommandInvocation truncates at 24,000 characters).
#[derive(Debug, Clone)]
pub struct OutputLocation {
    pub bucket: String,
    pub prefix: String,
}

#[derive(Debug, Clone)]
pub struct SsmHost {
    pub ssm: aws_sdk_ssm::Client,
    pub s3: aws_sdk_s3::Client,
    pub instance_id: String,
    pub output: Option<OutputLocation>,
    pub poll: SsmPoll,
}

impl SsmHost {
    /// Sends `script` as one AWS-RunShellScript command; returns its command id.
    pub async fn send(&self, script: &str, timeout: Duration) -> Result<String> {
        let secs = timeout.as_secs().clamp(60, MAX_EXECUTION.as_secs());
        let size = crate::host::ssm_command_size::parameters_size(script, secs);
        if size > crate::host::ssm_command_size::PARAMETERS_BUDGET {
            return Err(Error::runtime(format!(
                "the command for {} is {size} bytes, over the {} bytes sortie keeps an SSM command under \
                 (SSM's limit is 64 KB, its document included)",
                self.instance_id,
                crate::host::ssm_command_size::PARAMETERS_BUDGET
            )));
        }
        let mut req = self
            .ssm
            .send_command()
            .document_name("AWS-RunShellScript")
            .instance_ids(&self.instance_id)
            .parameters("commands", vec![script.to_string()])
            .parameters("executionTimeout", vec![secs.to_string()])
            .timeout_seconds(600);
        if let Some(out) = &self.output {
            req = req
                .output_s3_bucket_name(&out.bucket)
                .output_s3_key_prefix(&out.prefix);
        }
        let sent = req.send().await.map_err(|e| {
            crate::target::aws::error::AwsError::from_sdk(
                format!("SSM SendCommand to {}", self.instance_id),
                &e,
            )
        })?;
        sent.command()
            .and_then(|c| c.command_id())
            .map(str::to_string)
            .ok_or_else(|| Error::runtime("SSM SendCommand returned no command id"))
    }

    /// Polls a command until it ends. `cancel` turns into CancelCommand; `pace` (from the step's watcher) changes
    /// the cadence or asks for a poll now.
    pub async fn wait(
        &self,
        command_id: &str,
        cancel: &mut tokio::sync::watch::Receiver<bool>,
        pace: &mut tokio::sync::watch::Receiver<Pace>,
    ) -> Result<Invocation> {
        let started = tokio::time::Instant::now();
        let mut delays = self.poll.schedule.delays();
        let mut wake = pace.borrow().wake;
        // A dropped sender would make `changed()` ready for ever: stop listening to it instead.
        let (mut cancel_open, mut pace_open) = (true, true);
        loop {
            if let Some(inv) = self.poll_once(command_id, started).await? {
                return Ok(inv);
            }
            let due = tokio::time::Instant::now() + delays.next().unwrap_or(self.poll.relaxed_max);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => break,
                    changed = cancel.changed(), if cancel_open => match changed {
                        Ok(()) if *cancel.borrow() => {
                            self.cancel_command(command_id).await;
                            break;
                        }
                        Ok(()) => {}
                        Err(_) => cancel_open = false,
                    },
                    changed = pace.changed(), if pace_open => {
                        if changed.is_err() {
                            pace_open = false;
                            continue;
                        }
                        let now = *pace.borrow_and_update();
                        delays.set_max(if now.relaxed { self.poll.relaxed_max } else { self.poll.schedule.max });
                        if now.wake != wake {
                            wake = now.wake;
                            delays.reset();
                            break;
                        }
                    }
                }
            }
        }
    }

    /// One GetCommandInvocation: the invocation when the command is over.
    async fn poll_once(
        &self,
        command_id: &str,
        started: tokio::time::Instant,
    ) -> Result<Option<Invocation>> {
        match self
            .ssm
            .get_command_invocation()
            .command_id(command_id)
            .instance_id(&self.instance_id)
            .send()
            .await
        {
            Ok(inv) => {
                let status = inv
                    .status()
                    .cloned()
                    .unwrap_or(CommandInvocationStatus::Pending);
                let running = matches!(
                    status,
                    CommandInvocationStatus::Pending
                        | CommandInvocationStatus::InProgress
                        | CommandInvocationStatus::Delayed
                        | CommandInvocationStatus::Cancelling
                );
                Ok((!running).then(|| Invocation {
                    command_id: command_id.to_string(),
                    status: status.as_str().to_string(),
                    details: inv.status_details().unwrap_or_default().to_string(),
                    code: inv.response_code(),
                    stdout: inv
                        .standard_output_content()
                        .unwrap_or_default()
                        .to_string(),
                    stderr: inv.standard_error_content().unwrap_or_default().to_string(),
                }))
            }
            // Right after SendCommand the invocation may not exist yet.
            Err(e)
                if e.code() == Some("InvocationDoesNotExist")
                    && started.elapsed() < self.poll.unknown_grace =>
            {
                Ok(None)
            }
            Err(e) => Err(crate::target::aws::error::AwsError::from_sdk(
                format!(
                    "SSM GetCommandInvocation {command_id} on {}",
                    self.instance_id
                ),
                &e,
            )
            .into()),
        }
    }

    /// Best effort: the command may already be over.
    pub async fn cancel_command(&self, command_id: &str) {
        let _ = self
            .ssm
            .cancel_command()
            .command_id(command_id)
            .instance_ids(&self.instance_id)
            .send()
            .await;
    }

    /// Sends a script and waits for it.
    pub async fn run(&self, script: &str, timeout: Duration) -> Result<Invocation> {
        let id = self.send(script, timeout).await?;
        let (_cancel_tx, mut cancel) = tokio::sync::watch::channel(false);
        let (_pace_tx, mut pace) = tokio::sync::watch::channel(Pace::default());
        self.wait(&id, &mut cancel, &mut pace).await
    }

    /// Sends the launch command; big scripts travel through S3 (a presigned GET the host fetches with curl).
    pub async fn launch(
        &self,
        step: &str,
        attempt: u32,
        script: &str,
        spec: &LaunchSpec,
        files: Option<Bundle>,
    ) -> Result<HostStatus> {
        let env = spec.wrapper_env(30);
        let delivery = self.stage_files(step, files).await?;
        let (staged, command) = self
            .sized_launch(step, attempt, script, &env, delivery.as_ref())
            .await?;
        let launched = self.run(&command, LAUNCH_TIMEOUT).await;
        // A staged script or env that holds secrets is on the host now (0600); the S3 copy goes at once, so
        // the presigned URL that SSM keeps in its command history leads nowhere.
        for key in &staged.secret_keys {
            self.unstage(key).await;
        }
        let inv = launched?;
        if !inv.succeeded() {
            if let Some(d) = delivery
                .as_ref()
                .filter(|_| inv.stderr.contains(SHA_MISMATCH))
            {
                // The staged archive is bad: drop it so the next attempt uploads it again.
                self.unstage(&format!("files/{}.tar.gz", d.sha256)).await;
            }
            return Err(Error::runtime(format!(
                "cannot start step `{step}` on {}: {}",
                self.instance_id,
                inv.describe()
            )));
        }
        Ok(parse_status(&inv.stdout))
    }

    pub async fn status(&self, step: &str) -> Result<HostStatus> {
        let inv = self
            .run(&Self::status_script(step), Duration::from_secs(120))
            .await?;
        if !inv.succeeded() {
            return Err(Error::runtime(format!(
                "cannot read the status of step `{step}`: {}",
                inv.describe()
            )));
        }
        Ok(parse_status(&inv.stdout))
    }

    pub async fn cancel(&self, step: &str, grace: Duration) -> Result<HostStatus> {
        let inv = self
            .run(&Self::cancel_script(step, grace), Duration::from_secs(120))
            .await?;
        Ok(parse_status(&inv.stdout))
    }
}

pub use crate::host::local::parse_status;
