//! The aws target's executor: a host is an EC2 instance reached through SSM Run Command (AWS-RunShellScript).
//! Every `run` step goes through the same host wrapper as on the local target; this module ships the wrapper
//! and the rendered script inside the command, and reads results back from the command's output.
//!
//! Host paths are prefixed with `${SORTIE_HOST_ROOT:-}` (empty on AWS), the one seam that lets several test
//! instances share a machine (docs/TEST_ENDPOINT.md).

use std::fmt::Write as _;
use std::time::Duration;

use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::types::CommandInvocationStatus;
use indexmap::IndexMap;
use sha2::Digest as _;

use crate::error::{Error, Result};
use crate::host::local::{HostStatus, LaunchSpec, WRAPPER};
use crate::host::ssm_command_size::Staging;
use crate::host::ssm_files::SHA_MISMATCH;
pub use crate::host::ssm_files::{Bundle, Delivery};
pub use crate::host::ssm_poll::{Pace, SsmPoll};

/// SSM's largest executionTimeout; a longer wait is split into several commands.
pub const MAX_EXECUTION: Duration = Duration::from_secs(172_800);
/// How long SSM lets a launch command run (it only starts the step).
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(300);
const OUTPUTS_MARK: &str = "===SORTIE-OUTPUTS===";
const LOG_MARK: &str = "===SORTIE-LOG===";
/// A host where nothing was launched yet (the apply died before the launch command) has no wrapper: every step
/// on it is absent.
const NO_WRAPPER_YET: &str = "[ -f \"$H/wrapper.sh\" ] || { echo state=absent; exit 0; }\n";

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

/// A finished command invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command_id: String,
    /// Success, Failed, TimedOut, Cancelled.
    pub status: String,
    pub details: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Invocation {
    pub fn succeeded(&self) -> bool {
        self.status == "Success"
    }

    /// One line saying how the command ended, for errors. The SSM agent appends "failed to run commands: exit
    /// status N" to stderr, which says less than the line before it.
    pub fn describe(&self) -> String {
        let tail = self
            .stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.starts_with("failed to run commands"))
            .unwrap_or("")
            .trim();
        let mut s = format!(
            "SSM command {} {} ({}, exit {})",
            self.command_id, self.status, self.details, self.code
        );
        if !tail.is_empty() {
            let _ = write!(s, ": {tail}");
        }
        s
    }
}

/// Shell-quotes one value.
pub(crate) fn q(value: &str) -> String {
    shlex::try_quote(value).map_or_else(|_| "''".to_string(), |c| c.into_owned())
}

/// The host's sortie directory and a step's status directory, as shell expressions.
const HOME: &str = "\"${SORTIE_HOST_ROOT:-}/var/lib/sortie\"";

pub(crate) fn step_dir(step: &str) -> String {
    format!(
        "\"${{SORTIE_HOST_ROOT:-}}/var/lib/sortie/steps\"/{}",
        q(step)
    )
}

/// Shell lines that write `bytes` to `path` (a shell expression) without any quoting hazard.
fn write_file(out: &mut String, path: &str, bytes: &[u8]) {
    let encoded = base64_encode(bytes);
    // A temp name per shell ($$): two steps launched at once on one host both write wrapper.sh.
    let _ = writeln!(
        out,
        "printf '%s' '{encoded}' | base64 -d > {path}.$$.tmp && mv -f {path}.$$.tmp {path}"
    );
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

    /// The command that installs the wrapper and the script, then starts `attempt` of `step` (the wrapper
    /// refuses duplicates, so sending it twice is harmless).
    pub fn launch_script(
        &self,
        step: &str,
        attempt: u32,
        script: &str,
        env: &[(String, String)],
        staged: &Staged,
        files: Option<&Delivery>,
    ) -> String {
        let mut s = String::from("set -eu\n");
        let _ = writeln!(s, "H={HOME}; mkdir -p \"$H/steps\" \"$H/scripts\"");
        write_file(&mut s, "\"$H/wrapper.sh\"", WRAPPER.as_bytes());
        let script_path = format!("\"$H/scripts\"/{}", q(&format!("{step}.{attempt}")));
        let env_path = format!("\"$H/scripts\"/{}", q(&format!("{step}.{attempt}.env")));
        // The rendered script may hold secrets: 0600 (a subshell, so the step keeps the host's umask).
        s.push_str("(umask 077\n");
        match &staged.script_url {
            Some(url) => {
                let _ = writeln!(
                    s,
                    "curl -fsS --retry 5 --retry-delay 1 -o {script_path} {}",
                    q(url)
                );
            }
            None => write_file(&mut s, &script_path, script.as_bytes()),
        }
        if let Some(url) = &staged.env_url {
            let _ = writeln!(
                s,
                "curl -fsS --retry 5 --retry-delay 1 -o {env_path} {}",
                q(url)
            );
        }
        s.push_str(")\n");
        if let Some(files) = files {
            files.script(&mut s, step, attempt);
        }
        if staged.env_url.is_some() {
            let _ = writeln!(s, ". {env_path}; rm -f {env_path}");
        } else {
            s.push_str(&env_exports(env));
        }
        let _ = writeln!(s, "export SORTIE_HOME=\"$H\"");
        let _ = writeln!(
            s,
            "sh \"$H/wrapper.sh\" launch {} {attempt} {script_path}",
            step_dir(step)
        );
        s
    }

    /// Puts what must not travel in the SSM command into S3: a script or env that holds a secret (by value, or
    /// by an env name such as *_TOKEN), since SSM keeps a command's parameters for 30 days, readable with
    /// ssm:ListCommands; and, as `staging` asks, what makes the command too big.
    async fn stage_launch(
        &self,
        step: &str,
        attempt: u32,
        script: &str,
        env: &[(String, String)],
        staging: Staging,
    ) -> Result<Staged> {
        let scrubber = crate::scrub::current();
        let secret = scrubber.text(script) != script
            || env
                .iter()
                .any(|(k, v)| crate::state::is_secret_name(k) || scrubber.text(v) != v.as_str());
        let secret = secret && self.output.is_some();
        let mut staged = Staged::default();
        if staging >= Staging::Script || secret {
            let key = format!("scripts/{step}.{attempt}");
            let what = format!("the script of `{step}`");
            staged.script_url = Some(
                self.stage(&what, &key, script.as_bytes().to_vec(), false)
                    .await?,
            );
            if secret {
                staged.secret_keys.push(key);
            }
        }
        if staging >= Staging::ScriptAndEnv || secret {
            let key = format!("scripts/{step}.{attempt}.env");
            let what = format!("the environment of `{step}`");
            let body = env_exports(env).into_bytes();
            staged.env_url = Some(self.stage(&what, &key, body, false).await?);
            if secret {
                staged.secret_keys.push(key);
            }
        }
        Ok(staged)
    }

    /// The command that waits for `step` on the host, then prints its outputs and its log (the full stdout is
    /// kept in S3 by SSM, which is where `plan logs` reads the log).
    pub fn wait_script(step: &str) -> String {
        let d = step_dir(step);
        format!(
            "H={HOME}\n{NO_WRAPPER_YET}sh \"$H/wrapper.sh\" wait {d} 5\nrc=$?\necho {OUTPUTS_MARK}\ncat {d}/outputs 2>/dev/null\necho {LOG_MARK}\ncat {d}/output.log 2>/dev/null\nexit $rc\n"
        )
    }

    pub fn status_script(step: &str) -> String {
        format!(
            "H={HOME}\n{NO_WRAPPER_YET}sh \"$H/wrapper.sh\" status {}\n",
            step_dir(step)
        )
    }

    pub fn cancel_script(step: &str, grace: Duration) -> String {
        format!(
            "H={HOME}\n{NO_WRAPPER_YET}sh \"$H/wrapper.sh\" cancel {} {}\n",
            step_dir(step),
            grace.as_secs()
        )
    }

    /// The launch command, and what it fetches from S3: secrets always travel through S3, and the script, then
    /// the environment, too when the command would be over SSM's size limit.
    async fn sized_launch(
        &self,
        step: &str,
        attempt: u32,
        script: &str,
        env: &[(String, String)],
        delivery: Option<&Delivery>,
    ) -> Result<(Staged, String)> {
        let timeout = LAUNCH_TIMEOUT.as_secs();
        let mut staging = Staging::AsNeeded;
        loop {
            let staged = self
                .stage_launch(step, attempt, script, env, staging)
                .await?;
            let command = self.launch_script(step, attempt, script, env, &staged, delivery);
            if crate::host::ssm_command_size::fits(&command, timeout) {
                return Ok((staged, command));
            }
            for key in &staged.secret_keys {
                self.unstage(key).await;
            }
            staging = match staging.more() {
                Some(more) => more,
                None => {
                    return Err(Error::runtime(format!(
                        "the launch command of `{step}` is {} bytes even with its script and environment in S3, \
                         over the {} bytes SSM takes (64 KB, its document included)",
                        crate::host::ssm_command_size::parameters_size(&command, timeout),
                        crate::host::ssm_command_size::PARAMETERS_BUDGET
                    )))
                }
            };
        }
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
        let delivery = match files {
            Some(bundle) => {
                let sha256 = crate::run::step_files::hex(&sha2::Sha256::digest(&bundle.archive));
                // Content-addressed: a retry or a rerun with the same files uploads nothing.
                let key = format!("files/{sha256}.tar.gz");
                let url = self
                    .stage(
                        &format!("the files of `{step}`"),
                        &key,
                        bundle.archive,
                        true,
                    )
                    .await?;
                Some(Delivery {
                    url,
                    sha256,
                    dests: bundle.dests,
                })
            }
            None => None,
        };
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

    /// The log part of a wait command's output: from S3 when SSM wrote it there (complete), else from
    /// GetCommandInvocation (at most 24,000 characters).
    pub async fn fetch_log(&self, command_id: &str) -> Result<String> {
        let stdout = match &self.output {
            Some(out) => {
                let key = format!(
                    "{}/{command_id}/{}/awsrunShellScript/0.awsrunShellScript/stdout",
                    out.prefix.trim_end_matches('/'),
                    self.instance_id
                );
                let got = self
                    .s3
                    .get_object()
                    .bucket(&out.bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(|e| {
                        crate::target::aws::error::AwsError::from_sdk(
                            format!("S3 GetObject s3://{}/{key} (the log)", out.bucket),
                            &e,
                        )
                    })?;
                let bytes = got
                    .body
                    .collect()
                    .await
                    .map_err(|e| Error::runtime(format!("cannot read the log: {e}")))?;
                String::from_utf8_lossy(&bytes.into_bytes()).into_owned()
            }
            None => {
                let inv = self
                    .ssm
                    .get_command_invocation()
                    .command_id(command_id)
                    .instance_id(&self.instance_id)
                    .send()
                    .await
                    .map_err(|e| {
                        crate::target::aws::error::AwsError::from_sdk(
                            format!("SSM GetCommandInvocation {command_id}"),
                            &e,
                        )
                    })?;
                inv.standard_output_content()
                    .unwrap_or_default()
                    .to_string()
            }
        };
        Ok(split_wait_output(&stdout).2)
    }

    /// Best effort: deletes a staged object.
    async fn unstage(&self, key: &str) {
        if let Some(out) = &self.output {
            let key = format!("{}/{key}", out.prefix.trim_end_matches('/'));
            let _ = self
                .s3
                .delete_object()
                .bucket(&out.bucket)
                .key(&key)
                .send()
                .await;
        }
    }

    /// Uploads `body` under the run's S3 prefix (unless `reuse` and it is there already) and returns a presigned
    /// GET the host fetches with curl: the host needs no S3 permission.
    async fn stage(&self, what: &str, key: &str, body: Vec<u8>, reuse: bool) -> Result<String> {
        let out = self.output.as_ref().ok_or_else(|| {
            Error::runtime(format!("{what} must travel through S3, and there is no S3 bucket to stage it in (keep state in S3)"))
        })?;
        let key = format!("{}/{key}", out.prefix.trim_end_matches('/'));
        let there = reuse
            && self
                .s3
                .head_object()
                .bucket(&out.bucket)
                .key(&key)
                .send()
                .await
                .is_ok();
        if !there {
            self.s3
                .put_object()
                .bucket(&out.bucket)
                .key(&key)
                .body(body.into())
                .send()
                .await
                .map_err(|e| {
                    crate::target::aws::error::AwsError::from_sdk(
                        format!("S3 PutObject s3://{}/{key} ({what})", out.bucket),
                        &e,
                    )
                })?;
        }
        let presign =
            aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(3600))
                .map_err(|e| Error::runtime(format!("cannot presign: {e}")))?;
        let req = self
            .s3
            .get_object()
            .bucket(&out.bucket)
            .key(&key)
            .presigned(presign)
            .await
            .map_err(|e| {
                Error::runtime(format!(
                    "cannot presign s3://{}/{key}: {}",
                    out.bucket,
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                ))
            })?;
        Ok(req.uri().to_string())
    }
}

/// What a launch fetches from S3 instead of carrying it in the SSM command, and the keys to delete after it.
#[derive(Debug, Default)]
pub struct Staged {
    pub script_url: Option<String>,
    pub env_url: Option<String>,
    pub secret_keys: Vec<String>,
}

/// `export K='v'` lines for the step's environment.
fn env_exports(env: &[(String, String)]) -> String {
    let mut s = String::new();
    for (k, v) in env {
        let _ = writeln!(s, "export {k}={}", q(v));
    }
    s
}

/// Splits a wait command's stdout into the wrapper's status, the step's outputs and its log.
pub fn split_wait_output(stdout: &str) -> (HostStatus, IndexMap<String, String>, String) {
    let (head, rest) = stdout.split_once(OUTPUTS_MARK).unwrap_or((stdout, ""));
    let (outputs, log) = rest.split_once(LOG_MARK).unwrap_or((rest, ""));
    let outputs = outputs
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect();
    (
        parse_status(head),
        outputs,
        log.trim_start_matches('\n').to_string(),
    )
}

pub use crate::host::local::parse_status;

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
    }

    #[test]
    fn wait_output_splits_into_status_outputs_and_log() {
        let out = format!("state=succeeded\nattempt=1\nexit_code=0\n{OUTPUTS_MARK}\na=1\nb=x=y\n{LOG_MARK}\nhello\n");
        let (status, outputs, log) = split_wait_output(&out);
        assert_eq!(status.state, crate::host::protocol::HostState::Succeeded);
        assert_eq!(outputs.get("b").map(String::as_str), Some("x=y"));
        assert_eq!(log, "hello\n");
    }
}
