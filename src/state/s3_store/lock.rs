//! Lock objects (`<run>/lock.json`, and `plan-lock.json` beside the runs): created with If-None-Match: *, naming
//! their owner and an expiry; broken when their holder is gone; released only by their owner.

use std::path::Path;
use std::time::SystemTime;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::primitives::ByteStream;

use super::lock_holder::{describe_holder, holder_is_dead_here};
use super::{is_precondition_failure, S3Store};
use crate::error::{Error, Result};
use crate::state::s3_lock_lease::LockDoc;

const LOCK_FILE: &str = "lock.json";
/// The plan's lock, beside the run prefixes (not a run: it has no `<run>/state.json`).
const PLAN_LOCK_FILE: &str = "plan-lock.json";
/// A lock object can vanish between our failed create and our read of it (its holder released it): try again.
const LOCK_ATTEMPTS: usize = 3;

/// Proof that this process created a run's lock object. Release it explicitly: it does not end with the process.
pub struct S3Lock {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    owner: String,
    /// Renews the lease while the lock is held (see s3_lock_lease).
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for S3Lock {
    fn drop(&mut self) {
        if let Some(task) = self.renewal.take() {
            task.abort();
        }
    }
}

impl S3Store {
    /// Takes the run's lock without waiting; a held lock names its holder.
    pub async fn lock(&self, run: &str, plan_file: &Path) -> Result<S3Lock> {
        self.acquire(self.key(run, LOCK_FILE))
            .await?
            .map_err(|holder| Error::Locked {
                run: run.to_string(),
                holder,
                plan: plan_file.display().to_string(),
            })
    }

    /// Takes the plan's lock (`<prefix>/<plan>/plan-lock.json`) without waiting: held while an apply picks or
    /// creates its run, so that concurrent applies cannot each start one. A held lock names its holder.
    pub async fn lock_plan(&self, plan_file: &Path) -> Result<S3Lock> {
        self.acquire(self.plan_lock_key())
            .await?
            .map_err(|holder| Error::PlanLocked {
                name: self.plan.clone(),
                holder,
                plan: plan_file.display().to_string(),
            })
    }

    fn plan_lock_key(&self) -> String {
        format!("{}{PLAN_LOCK_FILE}", self.base)
    }

    /// Creates a lock object with If-None-Match: *. Held by another: Ok(Err(holder description)).
    async fn acquire(&self, key: String) -> Result<std::result::Result<S3Lock, String>> {
        let owner = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let body = new_lock_body(&owner)?;
        let mut holder = None;
        for _ in 0..LOCK_ATTEMPTS {
            let put = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .content_type("application/json")
                .if_none_match("*")
                .body(ByteStream::from(body.clone()))
                .send()
                .await;
            match put {
                Ok(out) => return Ok(Ok(self.held_lock(key, owner, &body, out.e_tag()))),
                Err(e) if is_precondition_failure(&e) => {}
                Err(e) => return Err(self.sdk_error("PutObject", &key, e)),
            }
            // Held. By whom? (If the SDK retried a create that had in fact succeeded, by us.)
            let Some((bytes, etag)) = self.get(&key).await? else {
                continue;
            };
            match LockDoc::parse(&bytes) {
                Some(held) if held.owner == owner => {
                    return Ok(Ok(self.held_lock(key, owner, &body, etag.as_deref())))
                }
                // A holder on this very host whose process is gone (kill -9, a crashed CI job) can never
                // release it: break it, but only the exact object we read (If-Match), then try again.
                Some(held) if holder_is_dead_here(&held) || held.expired(SystemTime::now()) => {
                    self.break_stale(&key, &held, etag.as_deref()).await?;
                    continue;
                }
                Some(held) => holder = Some(describe_holder(&held, SystemTime::now())),
                None => {
                    holder = Some(format!(
                        "an unknown process (the lock object {} is unreadable)",
                        self.url(&key)
                    ))
                }
            }
            break;
        }
        Ok(Err(holder.unwrap_or_else(|| "an unknown process".into())))
    }

    /// Deletes a lock whose holder is gone or whose lease expired: only the object that was read (If-Match).
    async fn break_stale(&self, key: &str, held: &LockDoc, etag: Option<&str>) -> Result<()> {
        tracing::warn!(
            "breaking the lock {}: its holder (pid {} on {}) is gone, or its lease expired at {} \
             and was not renewed",
            self.url(key),
            held.pid,
            held.host,
            held.expires
        );
        let mut delete = self.client.delete_object().bucket(&self.bucket).key(key);
        if let Some(etag) = etag {
            delete = delete.if_match(etag);
        }
        delete
            .send()
            .await
            .map_err(|e| self.sdk_error("DeleteObject", key, e))?;
        Ok(())
    }

    /// A lock we hold, with its lease renewed in the background until it is released or dropped.
    fn held_lock(&self, key: String, owner: String, body: &[u8], etag: Option<&str>) -> S3Lock {
        let doc = LockDoc::parse(body).unwrap_or_default();
        let renewal = tokio::runtime::Handle::try_current().ok().map(|_| {
            crate::state::s3_lock_lease::spawn_renewal(
                self.client.clone(),
                self.bucket.clone(),
                key.clone(),
                doc,
                etag.map(str::to_string),
            )
        });
        S3Lock {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key,
            owner,
            renewal,
        }
    }

    /// Breaks a run's lock, whoever holds it. True if a lock object was removed.
    pub async fn unlock(&self, run: &str) -> Result<bool> {
        self.break_lock(self.key(run, LOCK_FILE)).await
    }

    /// Breaks the plan's lock, whoever holds it. True if a lock object was removed.
    pub async fn unlock_plan(&self) -> Result<bool> {
        self.break_lock(self.plan_lock_key()).await
    }

    async fn break_lock(&self, key: String) -> Result<bool> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => return Ok(false),
            Err(e) => return Err(self.sdk_error("HeadObject", &key, e)),
        }
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| self.sdk_error("DeleteObject", &key, e))?;
        Ok(true)
    }
}

/// The body of a new lock object: a random owner, this process, and a lease that starts now.
fn new_lock_body(owner: &str) -> Result<Vec<u8>> {
    let now = SystemTime::now();
    let doc = LockDoc {
        owner: owner.to_string(),
        pid: std::process::id(),
        host: crate::state::store::hostname(),
        since: humantime::format_rfc3339_seconds(now).to_string(),
        expires: humantime::format_rfc3339_seconds(now + crate::state::s3_lock_lease::ttl())
            .to_string(),
    };
    serde_json::to_vec_pretty(&doc).map_err(|e| Error::runtime(format!("cannot encode lock: {e}")))
}

impl S3Lock {
    /// Deletes the lock object if it is still ours. A lock that was broken (and perhaps taken by another
    /// apply) is left alone, with a warning.
    pub async fn release(mut self) -> Result<()> {
        if let Some(task) = self.renewal.take() {
            task.abort();
        }
        let url = format!("s3://{}/{}", self.bucket, self.key);
        let fail = |op: &str, e: &dyn std::error::Error| {
            Error::runtime(format!("S3 {op} {url} failed: {}", DisplayErrorContext(e)))
        };
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                tracing::warn!("lock {url} was already gone (broken with `plan unlock --force`?)");
                return Ok(());
            }
            Err(e) => return Err(fail("GetObject", &e)),
        };
        let etag = out.e_tag().map(str::to_string);
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| fail("GetObject", &e))?
            .into_bytes();
        let owner = LockDoc::parse(&bytes).map(|d| d.owner);
        if owner.as_deref() != Some(self.owner.as_str()) {
            tracing::warn!(
                "lock {url} is no longer ours (it was broken and taken again); left alone"
            );
            return Ok(());
        }
        let mut delete = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&self.key);
        if let Some(etag) = etag {
            // Only the object we just read: a lock broken and re-taken in between stays.
            delete = delete.if_match(etag);
        }
        match delete.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_precondition_failure(&e) => {
                tracing::warn!("lock {url} changed while being released; left alone");
                Ok(())
            }
            Err(e)
                if e.code() == Some("NoSuchKey")
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 404) =>
            {
                Ok(())
            }
            Err(e) => Err(fail("DeleteObject", &e)),
        }
    }
}
