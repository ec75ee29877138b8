//! A save: a conditional PutObject that only follows the document this store last read or wrote.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;

use super::{is_precondition_failure, S3Store, Seen, STATE_FILE};
use crate::error::{Error, Result};
use crate::state::RunState;

impl S3Store {
    /// Writes state (serial + 1) if the stored document is still the one this store last read or wrote (or,
    /// for a run this store has not seen, the one stored now). Anything else is a conflict: `state` is left
    /// unchanged and nothing is overwritten.
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
}
