//! A failed attempt followed by another: whether it may be (retries left, the run neither stopping nor over its
//! budget), and when (exponential backoff with full jitter).

use std::time::Duration;

use super::Walker;
use crate::event::Event;
use crate::state::StepStatus;

/// The longest wait between two attempts, whatever the step's `backoff` and attempt.
const MAX_DELAY: Duration = Duration::from_secs(600);

impl Walker<'_> {
    /// Whether step `i`'s attempt that just ended may be followed by another: retries left, and the run neither
    /// stopping nor over its budget.
    pub(super) fn may_retry(&self, i: usize) -> bool {
        self.state.step(self.id(i)).attempt <= self.plan.steps[i].retries
            && self.stopping == 0
            && self.over_budget.is_none()
    }

    /// Sends step `i` back to pending with `error`, to start again once its delay has passed; returns the
    /// `step_retry` event.
    pub(super) fn schedule_retry(
        &mut self,
        i: usize,
        attempt: u32,
        error: String,
        help: Option<String>,
    ) -> Event {
        let step = &self.plan.steps[i];
        // Exponential backoff with full jitter: base * 2^(attempt-1), scaled by a random factor in [0.5, 1).
        let delay = crate::backoff::Backoff::new(step.backoff, 2.0, MAX_DELAY)
            .jittered(attempt.saturating_sub(1))
            .as_secs_f64();
        let st = self.state.step_mut(&step.id);
        st.status = StepStatus::Pending;
        st.error = Some(error.clone());
        st.help = help;
        self.retry_at.insert(
            i,
            tokio::time::Instant::now() + Duration::from_secs_f64(delay),
        );
        Event::StepRetry {
            step: step.id.clone(),
            attempt: attempt + 1,
            delay_secs: delay,
            error,
        }
    }
}
