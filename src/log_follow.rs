//! `plan logs -f` on AWS while the step runs: the host replaces `steps/<step>/log-tail` beside the run's state
//! with its log's last 64 KiB after a header `sortie-log-tail end=<bytes>` (docs/HOST_PROTOCOL.md); this prints
//! what it has not printed yet. When the step ends, the rest comes from the full log (`after`).

use aws_sdk_s3::Client;

use crate::plan::{Plan, StateLocation};

const HEADER: &str = "sortie-log-tail end=";

pub struct LogTail {
    s3: Client,
    bucket: String,
    key: String,
}

impl LogTail {
    /// None without S3 state (the host then has nowhere to put the tail).
    pub async fn new(plan: &Plan, run: &str, step: &str) -> Option<LogTail> {
        let StateLocation::S3 { bucket, .. } = &plan.state else {
            return None;
        };
        let key = crate::target::aws::objects::log_tail_key(&plan.state, &plan.name, run, step)?;
        let s3 = crate::target::aws::config::s3_client(
            &crate::target::aws::config::sdk_config(&plan.target).await,
        );
        Some(LogTail {
            s3,
            bucket: bucket.clone(),
            key,
        })
    }

    /// The log's text past `printed` that the tail holds, and moves `printed` on; empty when there is none yet
    /// (not uploaded, unreadable, or nothing new).
    pub async fn new_text(&mut self, printed: &mut u64) -> String {
        let got = match self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await
        {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!(
                    "no log tail at s3://{}/{} yet: {}",
                    self.bucket,
                    self.key,
                    crate::target::aws::error::AwsError::from_sdk("", &e).cause()
                );
                return String::new();
            }
        };
        let Ok(body) = got.body.collect().await else {
            return String::new();
        };
        new_text(&body.into_bytes(), printed)
    }
}

/// The new part of one tail object (see the module doc); a gap (more was written than the tail holds since the
/// last look) is said, not hidden.
pub fn new_text(object: &[u8], printed: &mut u64) -> String {
    let Some(nl) = object.iter().position(|&b| b == b'\n') else {
        return String::new();
    };
    let Some(end) = std::str::from_utf8(&object[..nl])
        .ok()
        .and_then(|h| h.strip_prefix(HEADER))
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return String::new();
    };
    let bytes = &object[nl + 1..];
    let start = end.saturating_sub(bytes.len() as u64);
    if end <= *printed {
        return String::new();
    }
    let mut out = String::new();
    let from = if *printed < start {
        if *printed > 0 || start > 0 {
            out.push_str(&format!(
                "[... {} bytes not shown; `plan logs` prints them once the step has ended ...]\n",
                start - *printed
            ));
        }
        0
    } else {
        (*printed - start) as usize
    };
    out.push_str(&String::from_utf8_lossy(&bytes[from..]));
    *printed = end;
    out
}

/// The full log past the first `printed` bytes (all of it if the offset falls inside a character).
pub fn after(log: &str, printed: u64) -> &str {
    let n = usize::try_from(printed).unwrap_or(usize::MAX);
    if n >= log.len() {
        return "";
    }
    log.get(n..).unwrap_or(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_each_byte_once_and_says_what_it_skipped() {
        let mut printed = 0;
        assert_eq!(
            new_text(b"sortie-log-tail end=6\nhello\n", &mut printed),
            "hello\n"
        );
        assert_eq!(printed, 6);
        assert_eq!(
            new_text(b"sortie-log-tail end=6\nhello\n", &mut printed),
            ""
        );
        assert_eq!(
            new_text(b"sortie-log-tail end=12\nhello\nworld\n", &mut printed),
            "world\n"
        );
        // 100 bytes later, only the last 4 are in the tail.
        assert_eq!(
            new_text(b"sortie-log-tail end=112\nabc\n", &mut printed),
            "[... 96 bytes not shown; `plan logs` prints them once the step has ended ...]\nabc\n"
        );
        assert_eq!(printed, 112);
        assert_eq!(new_text(b"garbage", &mut printed), "");
        assert_eq!(new_text(b"other header\nx", &mut printed), "");
    }

    #[test]
    fn after_skips_what_was_printed() {
        assert_eq!(after("hello\nworld\n", 6), "world\n");
        assert_eq!(after("hello\n", 6), "");
        assert_eq!(after("hello\n", 60), "");
        assert_eq!(after("héllo", 2), "héllo");
    }
}
