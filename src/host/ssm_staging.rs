//! What a launch puts in S3 instead of the SSM command: secrets (SSM keeps a command's parameters for 30 days),
//! and what would make the command too big; the host fetches it through a presigned GET, so it needs no S3
//! permission. A step's files are staged here too (`ssm_files.rs`).

use std::time::Duration;

use crate::error::{Error, Result};
use sha2::Digest as _;

use crate::host::ssm::{Bundle, Delivery, SsmHost, LAUNCH_TIMEOUT};
use crate::host::ssm_command_size::Staging;
use crate::host::ssm_scripts::env_exports;

/// What a launch fetches from S3 instead of carrying it in the SSM command, and the keys to delete after it.
#[derive(Debug, Default)]
pub struct Staged {
    pub script_url: Option<String>,
    pub env_url: Option<String>,
    pub secret_keys: Vec<String>,
}

impl SsmHost {
    /// The launch command, and what it fetches from S3: secrets always travel through S3, and the script, then
    /// the environment, too when the command would be over SSM's size limit.
    pub(super) async fn sized_launch(
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

    /// Stages a step's files (their archive) for the launch to fetch.
    pub(super) async fn stage_files(
        &self,
        step: &str,
        files: Option<Bundle>,
    ) -> Result<Option<Delivery>> {
        Ok(match files {
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
        })
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

    /// Best effort: deletes a staged object.
    pub(super) async fn unstage(&self, key: &str) {
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
}
