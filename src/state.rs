//! Run state: one document per run, checkpointed after every transition (see DESIGN.md, "State and re-entry").

use std::time::{SystemTime, UNIX_EPOCH};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepStatus {
    /// Whether the step will not change again in this run.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded
                | StepStatus::Failed
                | StepStatus::Skipped
                | StepStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    /// Interrupted (Ctrl-C) or left with detached steps: continue with `plan apply`.
    Interrupted,
    Destroyed,
}

impl RunStatus {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Destroyed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Destroyed => "destroyed",
        }
    }
}

/// A resource a step created and owns until teardown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// `local-sandbox`, `local-volume`, `ec2-instance`, `ebs-volume`.
    pub kind: String,
    pub id: String,
    #[serde(default)]
    pub destroyed: bool,
    /// A volume: the instance it is mounted on, so teardown can unmount it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A volume: its mount point on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub status: StepStatus,
    /// 0 before the first attempt; the attempt being run or last run otherwise.
    pub attempt: u32,
    /// Digest of what the step would run, to tell a changed step on re-entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<f64>,
    #[serde(default)]
    pub outputs: IndexMap<String, String>,
    #[serde(default)]
    pub resources: Vec<Resource>,
    /// Where the step's work can be found again: status directory, command id, pid.
    #[serde(default)]
    pub handle: IndexMap<String, String>,
    /// Idempotency token for the current attempt, stored before any create call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Latest progress reported by the host (heartbeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
}

impl StepState {
    pub fn pending() -> StepState {
        StepState {
            status: StepStatus::Pending,
            attempt: 0,
            digest: None,
            started_at: None,
            finished_at: None,
            outputs: IndexMap::new(),
            resources: Vec::new(),
            handle: IndexMap::new(),
            token: None,
            error: None,
            progress: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub version: u32,
    /// Fixed when the run is created; a state document from another lineage is never written over.
    pub lineage: String,
    /// +1 on every write.
    pub serial: u64,
    pub plan: String,
    pub run_id: String,
    pub plan_digest: String,
    pub target: String,
    pub status: RunStatus,
    pub started_at: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<f64>,
    /// Resolved variables, with secret-looking values redacted.
    pub vars: IndexMap<String, Json>,
    pub steps: IndexMap<String, StepState>,
}

impl RunState {
    pub fn step(&self, id: &str) -> &StepState {
        static PENDING: std::sync::OnceLock<StepState> = std::sync::OnceLock::new();
        self.steps
            .get(id)
            .unwrap_or_else(|| PENDING.get_or_init(StepState::pending))
    }

    pub fn step_mut(&mut self, id: &str) -> &mut StepState {
        self.steps
            .entry(id.to_string())
            .or_insert_with(StepState::pending)
    }
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Hex SHA-256 of a JSON value (serde_json's map is sorted, so this is canonical).
pub fn digest(value: &Json) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let hash = Sha256::digest(&bytes);
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Names whose values never go into state, logs or events.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "token",
        "secret",
        "password",
        "passwd",
        "api_key",
        "apikey",
        "credential",
        "private_key",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// Variables as they may be stored: secret-looking names are redacted.
pub fn redacted_vars(vars: &IndexMap<String, Json>) -> IndexMap<String, Json> {
    vars.iter()
        .map(|(k, v)| {
            let v = if is_secret_name(k) {
                Json::String("<redacted>".into())
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let vars: IndexMap<String, Json> = [
            ("hf_token".to_string(), Json::from("hf_abc")),
            ("region".to_string(), Json::from("x")),
        ]
        .into_iter()
        .collect();
        let r = redacted_vars(&vars);
        assert_eq!(r["hf_token"], "<redacted>");
        assert_eq!(r["region"], "x");
    }

    #[test]
    fn digest_is_stable_across_key_order() {
        let a: Json = serde_json::from_str(r#"{"a":1,"b":2}"#).expect("json");
        let b: Json = serde_json::from_str(r#"{"b":2,"a":1}"#).expect("json");
        assert_eq!(digest(&a), digest(&b));
    }
}
