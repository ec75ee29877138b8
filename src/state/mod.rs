//! Run state: one document per run, checkpointed after every transition (see DESIGN.md, "State and re-entry").

pub mod dir_store;
pub(crate) mod handle;
pub mod journal;
pub(crate) mod lock_probe;
pub(crate) mod s3_lock_lease;
pub mod s3_store;
pub mod store;

use std::time::{SystemTime, UNIX_EPOCH};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

pub use handle::Handle;

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

/// What a resource is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceKind {
    /// A local host: a sandbox directory.
    LocalSandbox,
    /// A local volume: a directory linked into its host's sandbox.
    LocalVolume,
    Ec2Instance,
    EbsVolume,
}

impl ResourceKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            ResourceKind::LocalSandbox => "local-sandbox",
            ResourceKind::LocalVolume => "local-volume",
            ResourceKind::Ec2Instance => "ec2-instance",
            ResourceKind::EbsVolume => "ebs-volume",
        }
    }

    pub fn parse(text: &str) -> Option<ResourceKind> {
        [
            ResourceKind::LocalSandbox,
            ResourceKind::LocalVolume,
            ResourceKind::Ec2Instance,
            ResourceKind::EbsVolume,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resource a step created and owns until teardown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredResource")]
pub struct Resource {
    pub kind: ResourceKind,
    pub id: String,
    /// The plan keeps it past teardown (a volume with `keep: true`): teardown leaves it, `plan gc` names it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep: bool,
    #[serde(default)]
    pub destroyed: bool,
    /// When it was destroyed (epoch seconds): the end of what it cost. None in older documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroyed_at: Option<f64>,
    /// A volume: the instance it is mounted on, so teardown can unmount it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A volume: its mount point on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
}

impl Resource {
    pub fn new(kind: ResourceKind, id: impl Into<String>) -> Resource {
        Resource {
            kind,
            id: id.into(),
            keep: false,
            destroyed: false,
            destroyed_at: None,
            host: None,
            mount: None,
        }
    }
}

/// A resource as documents store it. Older documents spell a kept volume as the kind `ebs-volume-kept`.
#[derive(Deserialize)]
struct StoredResource {
    kind: String,
    id: String,
    #[serde(default)]
    keep: bool,
    #[serde(default)]
    destroyed: bool,
    #[serde(default)]
    destroyed_at: Option<f64>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    mount: Option<String>,
}

impl TryFrom<StoredResource> for Resource {
    type Error = String;

    fn try_from(r: StoredResource) -> Result<Resource, String> {
        let (name, kept) = match r.kind.strip_suffix("-kept") {
            Some(name) => (name, true),
            None => (r.kind.as_str(), false),
        };
        let kind = ResourceKind::parse(name).ok_or_else(|| {
            format!(
                "unknown resource kind `{}` (known: local-sandbox, local-volume, ec2-instance, ebs-volume)",
                r.kind
            )
        })?;
        Ok(Resource {
            kind,
            id: r.id,
            keep: r.keep || kept,
            destroyed: r.destroyed,
            destroyed_at: r.destroyed_at,
            host: r.host,
            mount: r.mount,
        })
    }
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
    /// Where the step's work can be found again (`handle.rs`).
    #[serde(default, deserialize_with = "handle::read")]
    pub handle: Handle,
    /// Idempotency token for the current attempt, stored before any create call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What to do about `error`, when sortie knows (kept apart from the message, as in `Error::help`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
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
            handle: Handle::None,
            token: None,
            error: None,
            help: None,
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
    /// The file name of the plan the run was started from: two plan files with the same `plan:` name share a
    /// state directory, and one must never continue (and tear down) the other's run. None in older documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_file: Option<String>,
    /// The key that names the run (`--run-key`, `run_key:`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_key: Option<String>,
    /// The steps changed since the last save (never stored): what a journal record holds.
    #[serde(skip)]
    pub changed: Changed,
}

/// Ids of the steps `step_mut` handed out since the last save. It takes no part in equality: two states with
/// the same content are equal whatever was saved when.
#[derive(Debug, Clone, Default)]
pub struct Changed(pub indexmap::IndexSet<String>);

impl PartialEq for Changed {
    fn eq(&self, _: &Changed) -> bool {
        true
    }
}

impl RunState {
    pub fn step(&self, id: &str) -> &StepState {
        static PENDING: std::sync::OnceLock<StepState> = std::sync::OnceLock::new();
        self.steps
            .get(id)
            .unwrap_or_else(|| PENDING.get_or_init(StepState::pending))
    }

    pub fn step_mut(&mut self, id: &str) -> &mut StepState {
        if !self.changed.0.contains(id) {
            self.changed.0.insert(id.to_string());
        }
        self.steps
            .entry(id.to_string())
            .or_insert_with(StepState::pending)
    }

    /// The outputs of every succeeded step, by id: what later steps' templates see (secret-named ones are
    /// stored only as `<redacted>`).
    pub fn succeeded_outputs(&self) -> IndexMap<String, IndexMap<String, String>> {
        self.steps
            .iter()
            .filter(|(_, s)| s.status == StepStatus::Succeeded)
            .map(|(k, s)| (k.clone(), s.outputs.clone()))
            .collect()
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
    // Re-entry takes a digest of every step: one `format!` per byte was a tenth of its time at 10,000 steps.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(hash.len() * 2);
    for b in hash {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
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

/// The run id format `new_run_id` generates, as shown in errors: UTC date, time, milliseconds, a random byte.
pub const RUN_ID_PATTERN: &str = "YYYYMMDD-HHMMSS-mmm-xx (digits, then two lowercase hex digits)";

/// Whether `id` has the generated format. Run ids become path segments and S3 keys, so nothing else (`..`, `/`)
/// may pass, whether it comes from a flag, a store listing or a state document.
pub fn is_run_id(id: &str) -> bool {
    let b = id.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let hex = |c: &u8| c.is_ascii_digit() || (b'a'..=b'f').contains(c);
    b.len() == 22
        && digits(0..8)
        && b[8] == b'-'
        && digits(9..15)
        && b[15] == b'-'
        && digits(16..19)
        && b[19] == b'-'
        && b[20..].iter().all(hex)
}

/// Highest attempt number a state document may carry: far above any `retries`, far below overflow.
pub const MAX_ATTEMPT: u32 = 1_000_000;
/// Timestamps are seconds since the epoch; anything outside [0, year 5138) is not a time sortie wrote.
const MAX_TIME: f64 = 1e11;

/// Checks a state document read from a store (untrusted: S3, a CI artifact) against the run it was read as.
/// The reason names the offending key.
pub fn check_document(state: &RunState, plan: &str, run: &str) -> Result<(), String> {
    if state.version != STATE_VERSION {
        return Err(format!(
            "`version` is {}, this sortie reads version {STATE_VERSION}",
            state.version
        ));
    }
    if state.plan != plan {
        return Err(format!(
            "`plan` is `{}`, but it is stored as a run of plan `{plan}`",
            state.plan
        ));
    }
    if state.run_id != run {
        return Err(format!(
            "`run_id` is `{}`, but it is stored as run `{run}`",
            state.run_id
        ));
    }
    if state.serial > i64::MAX as u64 {
        return Err(format!("`serial` is {}, out of range", state.serial));
    }
    check_time(|| "started_at".into(), Some(state.started_at))?;
    check_time(|| "finished_at".into(), state.finished_at)?;
    for (id, st) in &state.steps {
        if st.attempt > MAX_ATTEMPT {
            return Err(format!(
                "`steps.{id}.attempt` is {}, out of range (at most {MAX_ATTEMPT})",
                st.attempt
            ));
        }
        // The key is only spelled out for a bad time: formatting two per step cost more than the checks.
        check_time(|| format!("steps.{id}.started_at"), st.started_at)?;
        check_time(|| format!("steps.{id}.finished_at"), st.finished_at)?;
    }
    Ok(())
}

fn check_time(key: impl FnOnce() -> String, t: Option<f64>) -> Result<(), String> {
    match t {
        Some(t) if !(0.0..MAX_TIME).contains(&t) => Err(format!(
            "`{}` is {t}, not a time (seconds since 1970)",
            key()
        )),
        _ => Ok(()),
    }
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

    #[test]
    fn floats_load_exactly_as_written() {
        // A state file is read and rewritten at every checkpoint: a parse off by one ULP would drift timestamps
        // and float vars on each cycle (serde_json's default parser can be; `float_roundtrip` is exact).
        for text in [
            "11796097920.8899963",
            "11796097920.889996",
            "1796097920.8899963",
        ] {
            let parsed: f64 = serde_json::from_str(text).expect("a float");
            let exact: f64 = text.parse().expect("a float");
            assert_eq!(parsed.to_bits(), exact.to_bits(), "{text}");
        }
    }

    #[test]
    fn run_ids_have_the_generated_format() {
        assert!(is_run_id("20261201-032506-123-0f"));
        for bad in [
            "",
            "../../../precious",
            "20261201-032506-123-0F",
            "20261201-032506-123-0f/..",
            "2026120a-032506-123-0f",
            "20261201_032506-123-0f",
        ] {
            assert!(!is_run_id(bad), "{bad:?}");
        }
    }

    /// A kept volume is `keep: true`; documents from before it spelled the kind `ebs-volume-kept`, and still read.
    #[test]
    fn resources_read_the_old_kept_kind_and_refuse_unknown_kinds() {
        let old: Resource =
            serde_json::from_str(r#"{"kind":"ebs-volume-kept","id":"vol-1","destroyed":false}"#)
                .expect("old");
        assert_eq!((old.kind, old.keep), (ResourceKind::EbsVolume, true));
        let new = serde_json::to_value(&old).expect("encode");
        assert_eq!(new["kind"], "ebs-volume");
        assert_eq!(new["keep"], true);
        let again: Resource = serde_json::from_value(new).expect("new");
        assert_eq!(again, old);
        let plain =
            serde_json::to_value(Resource::new(ResourceKind::Ec2Instance, "i-1")).expect("encode");
        assert!(plain.get("keep").is_none(), "{plain}");
        let err = serde_json::from_str::<Resource>(r#"{"kind":"gpu-cluster","id":"x"}"#)
            .expect_err("unknown");
        assert!(
            err.to_string()
                .contains("unknown resource kind `gpu-cluster`"),
            "{err}"
        );
    }
}
