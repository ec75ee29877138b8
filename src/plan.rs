//! The validated plan: typed steps with parsed durations and sizes, and the DAG between them.

use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use serde_json::Value as Json;

use crate::dag::Dag;
use crate::plan_file::{Concurrency, KindName, Market, NotifyOn, When};

#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub description: Option<String>,
    /// The plan file, as given.
    pub file: PathBuf,
    /// The directory relative paths in the plan are resolved against.
    pub dir: PathBuf,
    pub vars: IndexMap<String, Json>,
    pub target: Target,
    pub state: StateLocation,
    pub steps: Vec<Step>,
    pub dag: Dag,
    /// How runs are named, started beside each other, and reported: see `operation.rs`.
    pub operation: Operation,
}

/// The plan-level keys about operating runs (`run_key`, `concurrency`, `notify`, `budget`).
#[derive(Debug, Clone, Default)]
pub struct Operation {
    /// `run_key:` as written (a template over `vars` and `env`, rendered when an apply picks its run, so that
    /// `plan validate` does not need the CI's environment).
    pub run_key: Option<String>,
    pub concurrency: Concurrency,
    pub notify: Option<Notify>,
    /// `budget:` in USD (checked positive and finite).
    pub budget: Option<f64>,
}

/// Where and when the run's end is announced.
#[derive(Debug, Clone)]
pub struct Notify {
    pub webhook: Option<String>,
    /// An SNS topic ARN.
    pub sns: Option<String>,
    pub on: Vec<NotifyOn>,
}

impl Plan {
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// The plan's directory as an absolute path (`dir` is empty for a plan in the current directory).
    pub fn absolute_dir(&self) -> PathBuf {
        let cwd = std::env::current_dir().unwrap_or_default();
        if self.dir.as_os_str().is_empty() {
            cwd
        } else {
            cwd.join(&self.dir)
        }
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Local {
        /// Directory holding host sandboxes.
        root: PathBuf,
    },
    Aws {
        region: Option<String>,
        endpoint_url: Option<String>,
        profile: Option<String>,
    },
}

impl Target {
    pub fn provider(&self) -> &'static str {
        match self {
            Target::Local { .. } => "local",
            Target::Aws { .. } => "aws",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateLocation {
    Dir(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl std::fmt::Display for StateLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateLocation::Dir(dir) => write!(f, "{}", dir.display()),
            StateLocation::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub description: Option<String>,
    /// Every step this one depends on (from `needs`, `on`, `attach_to` and template references), deduplicated.
    pub needs: Vec<String>,
    pub when: When,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub backoff: Duration,
    /// Environment for the script; values are templates rendered at run time.
    pub env: IndexMap<String, String>,
    pub kind: StepKind,
    /// What the step would do, canonicalised; its digest decides whether a succeeded step reruns.
    pub definition: Json,
}

impl Step {
    pub fn kind_name(&self) -> KindName {
        match self.kind {
            StepKind::Instance(_) => KindName::Instance,
            StepKind::Volume(_) => KindName::Volume,
            StepKind::Run(_) => KindName::Run,
            StepKind::Teardown(_) => KindName::Teardown,
        }
    }
}

#[derive(Debug, Clone)]
pub enum StepKind {
    Instance(InstanceSpec),
    Volume(VolumeSpec),
    Run(RunSpec),
    Teardown(TeardownSpec),
}

#[derive(Debug, Clone, Default)]
pub struct InstanceSpec {
    pub instance_types: Vec<String>,
    pub image: Option<String>,
    pub profile: Option<String>,
    pub market: Market,
    pub max_lifetime: Option<Duration>,
    /// `ttl`: the deadline `plan extend` can move (`max_lifetime` is a fixed cap).
    pub ttl: Option<Duration>,
    /// Subnets to launch in, in order (each in its own zone); empty: the default VPC.
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub availability_zones: Vec<String>,
    pub root_size_bytes: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct VolumeSpec {
    pub attach_to: String,
    pub size_bytes: u64,
    pub volume_type: String,
    pub iops: Option<u32>,
    pub throughput: Option<u32>,
    pub mount: String,
    pub keep: bool,
}

#[derive(Debug, Clone)]
pub struct RunSpec {
    pub on: String,
    pub script: Script,
    pub detach: bool,
    pub lock: Option<String>,
    pub heartbeat: HeartbeatSpec,
    /// `files:`, checked at compile time, and their content digest (part of the step's digest).
    pub files: Vec<crate::run::step_files::Shipment>,
    pub files_digest: Option<String>,
}

/// A run step's script: a template file or inline text. Both are rendered at run time.
#[derive(Debug, Clone)]
pub struct Script {
    /// The template name (a path relative to the plan, or `steps.<id>#run` for inline scripts).
    pub name: String,
    /// The file it came from, if any.
    pub path: Option<PathBuf>,
    pub source: String,
}

#[derive(Debug, Clone, Default)]
pub struct HeartbeatSpec {
    pub stale_after: Option<Duration>,
    pub interval: Option<Duration>,
    pub progress: Option<String>,
    pub metrics: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TeardownSpec {
    /// Resource steps (instance, volume) this teardown destroys.
    pub destroys: Vec<String>,
}
