//! The S3 state store: `<prefix>/<plan>/<run>/state.json`, written with conditional PutObject (If-Match on the
//! ETag this store last read or wrote, If-None-Match: * for a new run), guarded by `<prefix>/<plan>/<run>/lock.json`,
//! an object created with If-None-Match: * that names its owner and an expiry.
//!
//! S3 makes the condition check and the write one atomic step, so two writers that started from the same
//! document cannot both succeed: the loser gets `Error::Conflict` and nothing is overwritten. Retries of
//! throttling and 5xx errors are the SDK's (see `aws.rs`); nothing here retries a failed write.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;

use crate::error::{Error, Result};
use crate::state::s3_lock_lease::LockDoc;
use crate::state::RunState;

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock.json";
/// The plan's lock, beside the run prefixes (not a run: it has no `<run>/state.json`).
const PLAN_LOCK_FILE: &str = "plan-lock.json";
/// A lock object can vanish between our failed create and our read of it (its holder released it): try again.
const LOCK_ATTEMPTS: usize = 3;

pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// `<prefix>/<plan>/`, or `<plan>/` with an empty prefix.
    base: String,
    plan: String,
    /// Per run, the state document this store last read or wrote: a save must follow it.
    seen: Mutex<HashMap<String, Seen>>,
}

/// What a save's condition rests on: the stored document's ETag, and the lineage and serial it carries.
#[derive(Debug, Clone)]
struct Seen {
    etag: String,
    lineage: String,
    serial: u64,
}

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
    pub fn new(client: aws_sdk_s3::Client, bucket: &str, prefix: &str, plan: &str) -> S3Store {
        S3Store {
            client,
            bucket: bucket.to_string(),
            base: base_prefix(prefix, plan),
            plan: plan.to_string(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self, run: &str, file: &str) -> String {
        format!("{}{run}/{file}", self.base)
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    fn seen(&self) -> MutexGuard<'_, HashMap<String, Seen>> {
        // The map is only ever replaced entry by entry, so a panic elsewhere cannot leave it half-written.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sdk_error<E>(&self, op: &str, key: &str, e: SdkError<E>) -> Error
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
    {
        crate::target::aws::error::AwsError::from_sdk(format!("S3 {op} {}", self.url(key)), &e)
            .into()
    }

    /// A 403 on a GET. S3 answers a missing key with 403 instead of 404 when the caller may not list the
    /// bucket, and the state of a new run is such a key: name the grant that is most likely missing.
    fn denied_get<E>(&self, key: &str, e: SdkError<E>) -> Error
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
    {
        let code = e.code().unwrap_or("AccessDenied").to_string();
        Error::runtime(format!("S3 denied GetObject {} ({code}, HTTP 403). If the object does not exist yet (a new run's state), \
             S3 answers 403 instead of 404 because this identity may not list the bucket: {}", self.url(key), DisplayErrorContext(&e))).with_help(format!("grant \
             s3:ListBucket on arn:aws:s3:::{} with no s3:prefix condition, and s3:GetObject on the state prefix \
             (docs/IAM.md, statements StateList and State)", self.bucket))
    }

    /// Run ids, oldest first (ids sort by creation time). Only runs with a state document count, as in the
    /// directory store: a run whose first apply died before its first write has a lock object but no state.
    pub async fn runs(&self) -> Result<Vec<String>> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.base)
            .into_paginator()
            .send();
        let mut runs = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.sdk_error("ListObjectsV2", &self.base, e))?;
            for object in page.contents() {
                let Some(rest) = object
                    .key()
                    .and_then(|k| k.strip_prefix(self.base.as_str()))
                else {
                    continue;
                };
                if let Some((run, STATE_FILE)) = rest.split_once('/') {
                    if !run.is_empty() {
                        runs.push(run.to_string());
                    }
                }
            }
        }
        runs.sort();
        runs.dedup();
        Ok(runs)
    }

    /// Reads a run's state and remembers its ETag for the next save. A document that is not valid state is an
    /// error that names it; it is never rewritten.
    pub async fn load(&self, run: &str) -> Result<Option<RunState>> {
        let key = self.key(run, STATE_FILE);
        let Some((bytes, etag)) = self.get(&key).await? else {
            self.seen().remove(run);
            return Ok(None);
        };
        let corrupt = |reason: String| Error::CorruptState {
            path: PathBuf::from(self.url(&key)),
            reason,
        };
        let state: RunState = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        crate::state::check_document(&state, &self.plan, run).map_err(corrupt)?;
        match etag {
            Some(etag) => {
                self.seen().insert(
                    run.to_string(),
                    Seen {
                        etag,
                        lineage: state.lineage.clone(),
                        serial: state.serial,
                    },
                );
            }
            None => {
                self.seen().remove(run);
            }
        }
        Ok(Some(state))
    }

    /// An object's bytes and ETag, or None if there is no such key.
    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 403) => {
                return Err(self.denied_get(key, e))
            }
            Err(e) => return Err(self.sdk_error("GetObject", key, e)),
        };
        let etag = out.e_tag().map(str::to_string);
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| {
                Error::runtime(format!(
                    "S3 GetObject {} failed while reading the body: {}",
                    self.url(key),
                    DisplayErrorContext(&e)
                ))
            })?
            .into_bytes()
            .to_vec();
        Ok(Some((bytes, etag)))
    }

    /// A small document of the plan beside its runs (`<prefix>/<plan>/<name>`), or None.
    pub async fn read_doc(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get(&format!("{}{name}", self.base))
            .await?
            .map(|(bytes, _)| bytes))
    }

    /// Writes a plan document (the caller holds the plan's lock, so there is one writer).
    pub async fn write_doc(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let key = format!("{}{name}", self.base);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(bytes.to_vec()))
            .send()
            .await
            .map_err(|e| self.sdk_error("PutObject", &key, e))?;
        Ok(())
    }

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
        let now = SystemTime::now();
        let doc = LockDoc {
            owner: owner.clone(),
            pid: std::process::id(),
            host: crate::state::store::hostname(),
            since: humantime::format_rfc3339_seconds(now).to_string(),
            expires: humantime::format_rfc3339_seconds(now + crate::state::s3_lock_lease::ttl())
                .to_string(),
        };
        let body = serde_json::to_vec_pretty(&doc)
            .map_err(|e| Error::runtime(format!("cannot encode lock: {e}")))?;
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
                    tracing::warn!(
                        "breaking the lock {}: its holder (pid {} on {}) is gone, or its lease expired at {} \
                         and was not renewed",
                        self.url(&key),
                        held.pid,
                        held.host,
                        held.expires
                    );
                    let mut delete = self.client.delete_object().bucket(&self.bucket).key(&key);
                    if let Some(etag) = &etag {
                        delete = delete.if_match(etag);
                    }
                    delete
                        .send()
                        .await
                        .map_err(|e| self.sdk_error("DeleteObject", &key, e))?;
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

    /// Writes state (serial + 1) if the stored document is still the one this store last read or wrote (or,
    /// for a run this store has not seen, the one stored now). Anything else is a conflict: `state` is left
    /// unchanged and nothing is overwritten.
    /// Records the document just written, for the next save's condition. Without an ETag, the next save reads
    /// the document first.
    fn remember(&self, run: &str, etag: Option<&str>, state: &RunState) {
        let mut seen = self.seen();
        match etag {
            Some(etag) => {
                seen.insert(
                    run.to_string(),
                    Seen {
                        etag: etag.to_string(),
                        lineage: state.lineage.clone(),
                        serial: state.serial,
                    },
                );
            }
            None => {
                seen.remove(run);
            }
        }
    }

    /// `Some(etag)` when the object at `key` is exactly `body`.
    async fn holds(&self, key: &str, body: &[u8]) -> Option<Option<String>> {
        match self.get(key).await {
            Ok(Some((bytes, etag))) if bytes == body => Some(etag),
            _ => None,
        }
    }

    pub async fn save(&self, state: &mut RunState) -> Result<()> {
        let run = state.run_id.clone();
        let key = self.key(&run, STATE_FILE);
        let cached = self.seen().get(&run).cloned();
        let expected = match cached {
            Some(seen) => Some(seen),
            None => {
                // Never seen: read what is there (a corrupt document stops here, untouched).
                self.load(&run).await?;
                self.seen().get(&run).cloned()
            }
        };
        let conflict = |state: &RunState| Error::Conflict {
            run: state.run_id.clone(),
            expected: state.serial,
        };
        if let Some(seen) = &expected {
            if seen.lineage != state.lineage || seen.serial != state.serial {
                return Err(conflict(state));
            }
        }
        state.serial += 1;
        let body = match serde_json::to_vec_pretty(state) {
            Ok(b) => b,
            Err(e) => {
                state.serial -= 1;
                return Err(Error::runtime(format!("cannot encode state: {e}")));
            }
        };
        let put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(body.clone()));
        let put = match &expected {
            Some(seen) => put.if_match(&seen.etag),
            None => put.if_none_match("*"),
        };
        match put.send().await {
            Ok(out) => {
                self.remember(&run, out.e_tag(), state);
                Ok(())
            }
            // The SDK retries a write whose answer was lost (a timeout, a 500 after S3 stored it); the retry then
            // fails its own condition. If what is there is byte for byte what we wrote, the write is ours.
            Err(e) if is_precondition_failure(&e) => match self.holds(&key, &body).await {
                Some(etag) => {
                    self.remember(&run, etag.as_deref(), state);
                    Ok(())
                }
                None => {
                    state.serial -= 1;
                    Err(conflict(state))
                }
            },
            Err(e) => {
                state.serial -= 1;
                // If-Match on a key that is gone answers 404 NoSuchKey: the document we followed was deleted.
                let gone = expected.is_some()
                    && (e.code() == Some("NoSuchKey")
                        || e.raw_response().is_some_and(|r| r.status().as_u16() == 404));
                if gone {
                    Err(conflict(state))
                } else {
                    Err(self.sdk_error("PutObject", &key, e))
                }
            }
        }
    }
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

/// `<prefix>/<plan>/` without a leading slash (and no empty segment for an empty prefix).
fn base_prefix(prefix: &str, plan: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("{plan}/")
    } else {
        format!("{prefix}/{plan}/")
    }
}

/// 412 PreconditionFailed, or 409 ConditionalRequestConflict (a concurrent conditional write on the same key).
pub(crate) fn is_precondition_failure<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    matches!(
        e.code(),
        Some("PreconditionFailed") | Some("ConditionalRequestConflict")
    ) || e
        .raw_response()
        .is_some_and(|r| matches!(r.status().as_u16(), 409 | 412))
}

/// `pid P on HOST since T (expires E[, expired])`.
fn describe_holder(held: &LockDoc, now: SystemTime) -> String {
    let text = |t: &str| {
        if t.is_empty() {
            "?".to_string()
        } else {
            t.to_string()
        }
    };
    let expired = humantime::parse_rfc3339(&held.expires).is_ok_and(|t| t <= now);
    let pid = if held.pid == 0 {
        "?".to_string()
    } else {
        held.pid.to_string()
    };
    format!(
        "pid {pid} on {} since {} (expires {}{})",
        text(&held.host),
        text(&held.since),
        text(&held.expires),
        if expired { ", expired" } else { "" }
    )
}

/// Whether a lock's holder ran on this host and its process no longer exists.
fn holder_is_dead_here(held: &LockDoc) -> bool {
    let same_host = held.host == crate::state::store::hostname();
    let pid = i32::try_from(held.pid).ok();
    match (same_host, pid) {
        (true, Some(pid)) if pid > 0 => {
            matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                Err(nix::errno::Errno::ESRCH)
            ) || is_zombie(pid)
        }
        _ => false,
    }
}

/// A zombie holds no lock: it has exited, only its parent has not reaped it yet.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<S3Store>();
        check::<S3Lock>();
    }

    #[test]
    fn keys_have_no_leading_slash() {
        assert_eq!(base_prefix("", "p"), "p/");
        assert_eq!(base_prefix("/", "p"), "p/");
        assert_eq!(base_prefix("pfx", "p"), "pfx/p/");
        assert_eq!(base_prefix("/a/b/", "p"), "a/b/p/");
    }

    #[test]
    fn holder_says_when_the_lock_expired() {
        let held = LockDoc::parse(
            br#"{"owner": "x", "pid": 42, "host": "h",
                 "since": "2024-01-01T00:00:00Z", "expires": "2024-01-01T01:00:00Z"}"#,
        )
        .expect("a lock document");
        let before = humantime::parse_rfc3339("2024-01-01T00:30:00Z").expect("time");
        let after = humantime::parse_rfc3339("2024-01-01T02:00:00Z").expect("time");
        assert_eq!(
            describe_holder(&held, before),
            "pid 42 on h since 2024-01-01T00:00:00Z (expires 2024-01-01T01:00:00Z)"
        );
        assert_eq!(
            describe_holder(&held, after),
            "pid 42 on h since 2024-01-01T00:00:00Z (expires 2024-01-01T01:00:00Z, expired)"
        );
    }
}
