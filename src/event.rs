//! Typed events from the runner; the reporter turns them into human lines or JSON lines (`EventLine`), whose
//! JSON Schema (`schema`) is docs/events.schema.json.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A run id as sortie generates it (`state::is_run_id`).
const RUN_ID: &str = r"^[0-9]{8}-[0-9]{6}-[0-9]{3}-[0-9a-f]{2}$";
/// RFC 3339, UTC, milliseconds: what `humantime::format_rfc3339_millis` writes.
const TIMESTAMP: &str = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$";

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The first line of an apply: the run it advances.
    RunStarted {
        #[schemars(regex(pattern = RUN_ID))]
        run: String,
        /// The plan's name.
        plan: String,
        /// How many steps the plan has.
        steps: usize,
        /// Whether an unfinished run is continued.
        resumed: bool,
    },
    /// An attempt of a step starts.
    StepStarted { step: String, attempt: u32 },
    /// An instance launch failed for capacity or a limit; the next type / zone / market is tried.
    StepFailover {
        step: String,
        instance_type: String,
        /// When known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        availability_zone: Option<String>,
        /// The subnet tried, when the step names `subnets`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        subnet: Option<String>,
        market: String,
        /// The provider's error code.
        code: String,
        message: String,
    },
    /// An earlier apply's attempt still runs on its host and is watched again.
    StepReattached { step: String, attempt: u32 },
    /// A host went away under a step: its instance step runs again (a new instance, in the same zone when a
    /// volume of it is re-attached), and so do the steps that ran on it.
    HostReplaced {
        /// The instance step.
        step: String,
        /// The instance that went away (terminated now, if it was not yet).
        instance_id: String,
        reason: String,
        /// The steps that run again on the new host, besides the one that was running.
        rerun: Vec<String>,
    },
    /// An attempt failed and the step runs again after `delay_secs`.
    StepRetry {
        step: String,
        /// The attempt about to start.
        attempt: u32,
        delay_secs: f64,
        error: String,
    },
    /// The heartbeat's progress changed.
    StepProgress {
        step: String,
        /// As the script reported it, e.g. `120/30969`.
        progress: String,
    },
    /// The step wrote `key=value` to `$SORTIE_OUTPUT`; a secret-named key's value is `<redacted>`.
    StepOutput {
        step: String,
        key: String,
        value: String,
    },
    /// A step is over.
    StepFinished {
        step: String,
        /// `succeeded`, `failed`, `skipped`, `cancelled`, ...
        status: String,
        attempt: u32,
        duration_secs: f64,
        /// Why it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        error: Option<String>,
        /// What to do about it, when sortie knows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "String")]
        help: Option<String>,
    },
    /// Anything else worth a line (a warning, a detached step left running).
    Notice { message: String },
    /// The last line of an apply.
    RunFinished {
        #[schemars(regex(pattern = RUN_ID))]
        run: String,
        status: String,
        /// The process's exit code.
        exit_code: i32,
    },
}

/// One line of `--output json`: an event and the fields every event has.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(title = "sortie event", deny_unknown_fields)]
pub struct EventLine<'a> {
    #[serde(flatten)]
    pub event: &'a Event,
    /// The run the event is about. `run_started` and `run_finished` carry it among their own fields; it is absent
    /// only from an event emitted before the apply has picked its run (e.g. a `notice`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", regex(pattern = RUN_ID))]
    pub run: Option<&'a str>,
    /// When the event was emitted: RFC 3339, UTC, milliseconds (`2026-12-01T06:31:21.123Z`); never decreasing
    /// within an apply.
    #[schemars(regex(pattern = TIMESTAMP))]
    pub ts: String,
}

/// The JSON Schema of one `--output json` line (docs/events.schema.json).
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(EventLine<'static>)).unwrap_or_default()
}
