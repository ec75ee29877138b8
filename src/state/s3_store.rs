//! The S3 state store: `<prefix>/<plan>/<run>/state.json`, written with conditional PutObject (If-Match on the
//! ETag this store last read or wrote, If-None-Match: * for a new run), guarded by `<prefix>/<plan>/<run>/lock.json`,
//! an object created with If-None-Match: * that names its owner and an expiry.
//!
//! S3 makes the condition check and the write one atomic step, so two writers that started from the same
//! document cannot both succeed: the loser gets `Error::Conflict` and nothing is overwritten. Retries of
//! throttling and 5xx errors are the SDK's (see `aws.rs`); nothing here retries a failed write.

mod lock;
mod lock_holder;
mod save;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;

pub use lock::S3Lock;

use crate::error::{Error, Result};
use crate::state::RunState;

const STATE_FILE: &str = "state.json";

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
}
