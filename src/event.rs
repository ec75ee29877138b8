//! Typed events from the runner; the reporter turns them into human lines or JSON lines.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run: String,
        plan: String,
        steps: usize,
        resumed: bool,
    },
    StepStarted {
        step: String,
        attempt: u32,
    },
    /// An instance launch failed for capacity or a limit; the next type / zone / market is tried.
    StepFailover {
        step: String,
        instance_type: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        availability_zone: Option<String>,
        market: String,
        code: String,
        message: String,
    },
    StepReattached {
        step: String,
        attempt: u32,
    },
    StepRetry {
        step: String,
        attempt: u32,
        delay_secs: f64,
        error: String,
    },
    StepProgress {
        step: String,
        progress: String,
    },
    StepOutput {
        step: String,
        key: String,
        value: String,
    },
    StepFinished {
        step: String,
        status: String,
        attempt: u32,
        duration_secs: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Notice {
        message: String,
    },
    RunFinished {
        run: String,
        status: String,
        exit_code: i32,
    },
}
