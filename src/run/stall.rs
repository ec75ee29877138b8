//! Stall detection: a running step whose log has not grown for `stale_after` is stalled (the seed pipeline's
//! TIMED_OUT problem, seen from the other side: something hung, but its process is alive). The heartbeat the
//! host wrapper writes carries the log size; the retry policy then decides what happens to the step.

use std::time::{Duration, Instant};

/// The part of a heartbeat that matters here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub log_bytes: u64,
    /// When the host wrote it (epoch seconds): if this stops moving, the channel that carries heartbeats may
    /// be broken, which says nothing about the step.
    pub ts: Option<u64>,
}

impl Beat {
    /// What a heartbeat says, if it says how long the log is.
    pub fn of(h: &crate::heartbeat::Heartbeat) -> Option<Beat> {
        Some(Beat {
            log_bytes: h.log_bytes?,
            ts: h.ts.map(|t| t as u64),
        })
    }

    pub fn parse(json: &str) -> Option<Beat> {
        Beat::of(&crate::heartbeat::Heartbeat::parse(json.as_bytes())?)
    }
}

#[derive(Debug)]
pub struct StallWatch {
    stale_after: Duration,
    last: Option<u64>,
    since: Instant,
}

impl StallWatch {
    pub fn new(stale_after: Duration) -> StallWatch {
        StallWatch {
            stale_after,
            last: None,
            since: Instant::now(),
        }
    }

    /// Records what the host reports now; returns why the step is stalled, if it is.
    pub fn observe(&mut self, beat: Option<Beat>, now: Instant) -> Option<String> {
        let bytes = beat.map(|b| b.log_bytes);
        if bytes.is_some() && bytes != self.last {
            self.last = bytes;
            self.since = now;
            return None;
        }
        let quiet = now.duration_since(self.since);
        (quiet >= self.stale_after).then(|| {
            format!(
                "stalled: no new output for {} (heartbeat.stale_after is {})",
                humantime::format_duration(Duration::from_secs(quiet.as_secs())),
                humantime::format_duration(self.stale_after)
            )
        })
    }
}

/// Whether a step's error is a stall verdict (from `StallWatch` or the AWS step watch).
pub fn is_stall(error: &str) -> bool {
    error.starts_with("stalled: ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growing_log_is_not_stalled_and_a_quiet_one_is() {
        let start = Instant::now();
        let mut w = StallWatch::new(Duration::from_secs(10));
        assert_eq!(
            w.observe(
                Some(Beat {
                    log_bytes: 1,
                    ts: None
                }),
                start
            ),
            None
        );
        assert_eq!(
            w.observe(
                Some(Beat {
                    log_bytes: 2,
                    ts: None
                }),
                start + Duration::from_secs(9)
            ),
            None
        );
        assert_eq!(
            w.observe(
                Some(Beat {
                    log_bytes: 2,
                    ts: None
                }),
                start + Duration::from_secs(18)
            ),
            None
        );
        let stalled = w.observe(
            Some(Beat {
                log_bytes: 2,
                ts: None,
            }),
            start + Duration::from_secs(19),
        );
        assert!(stalled.is_some_and(|s| s.starts_with("stalled: no new output for 10s")));
    }

    #[test]
    fn no_heartbeat_at_all_counts_as_quiet() {
        let start = Instant::now();
        let mut w = StallWatch::new(Duration::from_secs(5));
        assert!(w.observe(None, start + Duration::from_secs(6)).is_some());
    }

    #[test]
    fn parses_the_wrapper_heartbeat() {
        let beat = Beat::parse(
            r#"{"attempt":1,"ts":1,"pid":2,"progress":"1/2","metrics":"","log_bytes":42}"#,
        );
        assert_eq!(
            beat,
            Some(Beat {
                log_bytes: 42,
                ts: Some(1)
            })
        );
    }
}
