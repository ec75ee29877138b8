//! Waiting for EC2 states: our own polling with backoff ([`PollConfig`]); the SDK's waiters sleep at least 15 s
//! between polls, which would make every test slow.

use std::time::Duration;

use super::*;
use crate::error::{Error, Result};

/// One probe of a wait: done with a value, or not yet (with the state seen, for the timeout's message).
pub(super) enum Probe<T> {
    Done(T),
    Wait(String),
}

impl AwsProvider {
    // ---- waiting ----

    /// Probes at once, then with backoff (`initial`, growing by half up to `max`) until done, an error, or `timeout`.
    pub(super) async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        help: &str,
        mut probe: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Probe<T>>>,
    {
        let start = Instant::now();
        let mut delays = Backoff::new(self.poll.initial, 1.5, self.poll.max).delays();
        let mut polls = 0u32;
        loop {
            polls += 1;
            let last = match probe().await? {
                Probe::Done(value) => return Ok(value),
                Probe::Wait(state) => state,
            };
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                return Err(Error::runtime(format!(
                    "timed out after {} ({polls} polls) waiting for {what}; last seen: {last}",
                    humantime::format_duration(Duration::from_millis(elapsed.as_millis() as u64))
                ))
                .with_help(help));
            }
            let delay = delays.next().unwrap_or(self.poll.max);
            tracing::debug!(%what, state = %last, ?delay, "waiting");
            tokio::time::sleep(delay.min(timeout - elapsed)).await;
        }
    }
}
