//! The lease of an S3 lock object (`lock.json`): it expires, so a holder that died on another machine does not
//! block the run for ever, and its holder renews it, so a long apply (it waits 15 hours for `train`) keeps it.
//! An expired lock is taken over only past a margin for clock skew between machines.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};

/// How long a lock object is valid after its last renewal. `SORTIE_S3_LOCK_TTL` shortens it (tests).
pub fn ttl() -> Duration {
    std::env::var("SORTIE_S3_LOCK_TTL")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .filter(|d| *d >= Duration::from_secs(1))
        .unwrap_or(Duration::from_secs(3600))
}

/// Clocks of two machines may disagree: an expired lock is taken over only this long after its expiry
/// (5 minutes for the default hour).
pub fn skew_margin() -> Duration {
    ttl() / 12
}

/// The body of a lock object (`lock.json`, `plan-lock.json`). Read back it is untrusted (another process, another
/// version of sortie): a missing field is empty, and a body that does not parse is no lock document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LockDoc {
    /// Random, per acquisition: who may renew and release it.
    pub owner: String,
    pub pid: u32,
    pub host: String,
    /// RFC 3339.
    pub since: String,
    /// RFC 3339: renewed while held, taken over once past (with the skew margin).
    pub expires: String,
}

impl LockDoc {
    pub fn parse(bytes: &[u8]) -> Option<LockDoc> {
        serde_json::from_slice(bytes).ok()
    }

    /// True when `expires` lies more than the skew margin in the past.
    pub fn expired(&self, now: SystemTime) -> bool {
        humantime::parse_rfc3339(&self.expires).is_ok_and(|t| t + skew_margin() <= now)
    }
}

/// Renews the lock at a third of its TTL: the same document with a later `expires`, written only over the
/// object we wrote last (If-Match). If it changed, someone broke or took over the lock: say so and stop.
pub fn spawn_renewal(
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    mut doc: LockDoc,
    mut etag: Option<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = ttl() / 3;
        loop {
            tokio::time::sleep(every).await;
            let now = SystemTime::now();
            doc.expires = humantime::format_rfc3339_seconds(now + ttl()).to_string();
            let Ok(body) = serde_json::to_vec_pretty(&doc) else {
                return;
            };
            let mut put = client
                .put_object()
                .bucket(&bucket)
                .key(&key)
                .content_type("application/json")
                .body(ByteStream::from(body));
            if let Some(etag) = &etag {
                put = put.if_match(etag);
            }
            match put.send().await {
                Ok(out) => etag = out.e_tag().map(str::to_string),
                Err(e) if super::s3_store::is_precondition_failure(&e) => {
                    tracing::error!(
                        "the lock s3://{bucket}/{key} is no longer ours (broken with `plan unlock --force`, or \
                         taken over after it expired); not renewing it"
                    );
                    return;
                }
                Err(e) => tracing::warn!(
                    "renewing the lock s3://{bucket}/{key}: {}; trying again in {}",
                    crate::target::aws::error::AwsError::from_sdk("", &e).cause(),
                    humantime::format_duration(every)
                ),
            }
        }
    })
}
