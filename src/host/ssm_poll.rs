//! How the wait on an SSM command paces its GetCommandInvocation calls (issue 10 §11, §12): fast at first, then
//! rarely, and at once when the step's watcher says to look (docs/DECISIONS.md, "Pacing the calls").

use std::time::Duration;

use crate::backoff::Backoff;

/// How often to ask SSM about a command: fast at first (most commands end within seconds, and on a GPU every
/// second late is paid for), then backing off to `schedule.max`, or to `relaxed_max` while the step's uploaded
/// heartbeat is fresh (it says when the step ends: see [`Pace`]).
#[derive(Debug, Clone, Copy)]
pub struct SsmPoll {
    pub schedule: Backoff,
    pub relaxed_max: Duration,
    /// How long a just-sent command may be unknown (InvocationDoesNotExist) before that is an error.
    pub unknown_grace: Duration,
}

impl Default for SsmPoll {
    fn default() -> SsmPoll {
        SsmPoll {
            schedule: Backoff::new(Duration::from_millis(500), 1.5, Duration::from_secs(90)),
            relaxed_max: Duration::from_secs(300),
            unknown_grace: Duration::from_secs(60),
        }
    }
}

/// What the step's watcher has learnt that changes how a wait polls (issue 10 §11, §12).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pace {
    /// The uploaded heartbeat is fresh: the step is alive, and its last heartbeat will say when it ends, so SSM is
    /// asked only every `relaxed_max`.
    pub relaxed: bool,
    /// Bumped to ask SSM now, then fast again: the heartbeat says the step ended, or its ETA is near.
    pub wake: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When each poll of a wait happens, given when (if ever) the heartbeat turns fresh.
    fn poll_times(poll: &SsmPoll, span: Duration, fresh_from: Option<Duration>) -> Vec<Duration> {
        let mut delays = poll.schedule.delays();
        let mut at = Duration::ZERO;
        let mut times = vec![at];
        while at <= span {
            if fresh_from.is_some_and(|f| at >= f) {
                delays.set_max(poll.relaxed_max);
            }
            at += delays.next().expect("the schedule never ends");
            times.push(at);
        }
        times.pop();
        times
    }

    #[test]
    fn a_ten_minute_step_is_polled_at_most_sixteen_times() {
        let poll = SsmPoll::default();
        // The first heartbeat read (2 min in) finds it fresh.
        let fresh = poll_times(
            &poll,
            Duration::from_secs(600),
            Some(Duration::from_secs(120)),
        );
        assert_eq!(fresh.len(), 16, "{fresh:?}");
        // With no heartbeat to say the step is alive it costs two more.
        let blind = poll_times(&poll, Duration::from_secs(600), None);
        assert_eq!(blind.len(), 18, "{blind:?}");
    }

    #[test]
    fn steady_state_polls_an_hour() {
        let poll = SsmPoll::default();
        let hour = Duration::from_secs(3600);
        // Once the schedule has reached its cap: 12 an hour while the heartbeat is fresh, 40 without it.
        assert_eq!(hour.as_secs() / poll.relaxed_max.as_secs(), 12);
        assert_eq!(hour.as_secs() / poll.schedule.max.as_secs(), 40);
    }

    #[test]
    fn a_step_is_seen_late_by_at_most_half_its_length() {
        let poll = SsmPoll::default();
        let times = poll_times(&poll, Duration::from_secs(300), None);
        for ms in (100..=120_000).step_by(100) {
            let end = Duration::from_millis(ms);
            let seen = times
                .iter()
                .find(|t| **t >= end)
                .expect("a poll after the end");
            let bound = end / 2 + poll.schedule.initial;
            assert!(*seen - end <= bound, "a {ms} ms step is seen at {seen:?}");
        }
    }
}
