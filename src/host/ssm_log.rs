//! The log of a step on an SSM host, read back from its wait command's output.

use crate::error::{Error, Result};
use crate::host::ssm::{split_wait_output, SsmHost};

impl SsmHost {
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
}
