//! The plan file as written: a raw serde model, checked only for shape.
//!
//! Unknown keys are not rejected by serde here; `plan` collects them with serde_ignored so that one
//! `plan validate` reports all of them, with suggestions. `plan` turns this into the validated, typed model.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A sortie plan: a DAG of steps that provision, run and tear down a training run.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields, title = "sortie plan")]
pub struct PlanFile<S = RawStep> {
    /// The plan's name; runs and state are keyed by it.
    pub plan: String,
    /// What the plan is for (a template: may use `vars`).
    #[serde(default)]
    pub description: Option<String>,
    /// Variables with their defaults. Overridden by `--var-file`, `--var key=value` and `SORTIE_VAR_<key>`.
    #[serde(default)]
    pub vars: IndexMap<String, serde_json::Value>,
    /// Where the steps run: `{ provider: local }` (default) or `{ provider: aws, region: ... }`.
    #[serde(default)]
    pub target: Option<RawTarget>,
    /// Where run state is kept: a directory (default `.sortie/` beside the plan) or `s3://bucket/prefix`.
    #[serde(default)]
    pub state: Option<String>,
    /// Defaults for every step.
    #[serde(default)]
    pub defaults: Option<RawDefaults>,
    /// The steps, by id. Order only matters for display; edges come from `needs` and references.
    pub steps: IndexMap<String, S>,
    /// Names the run (a template: may use `vars` and `env`, e.g. `"{{ env.GITHUB_SHA }}"`). Applying the same
    /// key again continues that run, or reports it when it has finished: a retried CI job never trains twice.
    /// `--run-key` overrides it.
    #[serde(default)]
    pub run_key: Option<String>,
    /// What an apply that would start a new run does while another run of the plan is unfinished: `allow`
    /// (default: start it), `forbid` (start nothing, exit 0) or `replace` (cancel and tear down the other first).
    #[serde(default)]
    pub concurrency: Option<Concurrency>,
    /// Who hears about the run's end: a webhook (Slack-compatible JSON) and when.
    #[serde(default)]
    pub notify: Option<RawNotify>,
    /// The most the run may cost, in USD (AWS on-demand prices from `prices/aws.yaml`). `plan apply` refuses to
    /// start a new run whose estimate is higher, and tears the run down once its spend reaches it.
    #[serde(default)]
    pub budget: Option<f64>,
}

/// What to do about an unfinished run when an apply would start a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// Start the new run beside it.
    #[default]
    Allow,
    /// Start nothing: say so and exit 0.
    Forbid,
    /// Cancel the unfinished run's steps and tear it down, then start the new run.
    Replace,
}

/// A run event that can be notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOn {
    /// The run ended failed.
    Failure,
    /// A step was failed as stalled (its heartbeat or log stopped).
    Stall,
    /// The run ended succeeded.
    Success,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawNotify {
    /// An https URL that receives a JSON POST `{"text": ...}` (Slack incoming webhooks, Mattermost, Teams
    /// workflows). A template: usually `{{ vars.slack_webhook }}` from a secret-named variable.
    pub webhook: Option<String>,
    /// An SNS topic ARN to publish to (with the credentials of `plan apply`; needs `sns:Publish` on it), for
    /// email, SMS or any other subscription.
    pub sns: Option<String>,
    /// When to notify (default: `[failure, stall]`).
    pub on: Option<Vec<NotifyOn>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawTarget {
    /// `local` or `aws`.
    pub provider: Option<String>,
    /// AWS region (aws); default AWS_REGION.
    pub region: Option<String>,
    /// An endpoint URL override (aws), e.g. a local test endpoint.
    pub endpoint_url: Option<String>,
    /// Named AWS profile (aws).
    pub profile: Option<String>,
    /// Directory that holds the sandboxes of local hosts (local); default `.sortie/hosts` beside the plan.
    pub root: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawDefaults {
    /// Default step timeout, e.g. `1h`.
    pub timeout: Option<String>,
    /// Default number of retries after a failure.
    pub retries: Option<u32>,
    /// First retry delay (doubles each retry, with jitter), e.g. `10s`.
    pub backoff: Option<String>,
}

/// The kind of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KindName {
    Instance,
    Volume,
    Run,
    Teardown,
}

impl KindName {
    pub fn as_str(self) -> &'static str {
        match self {
            KindName::Instance => "instance",
            KindName::Volume => "volume",
            KindName::Run => "run",
            KindName::Teardown => "teardown",
        }
    }
}

/// When a step runs, given how its dependencies ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// Only when every dependency succeeded (the default).
    #[default]
    OnSuccess,
    /// Whatever happened before (teardown).
    Always,
    /// Only when something in the run failed.
    OnFailure,
}

/// How an instance is bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    #[default]
    OnDemand,
    Spot,
    SpotThenOnDemand,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawHeartbeat {
    /// A heartbeat older than this makes the step stalled, e.g. `15m`.
    pub stale_after: Option<String>,
    /// How often the host writes the heartbeat, e.g. `30s`.
    pub interval: Option<String>,
    /// Extended regex whose last match in the log is the step's progress (default `[0-9]+/[0-9]+`).
    pub progress: Option<String>,
    /// Extended regex: the last log line matching it is reported as the step's metrics (e.g. `loss`).
    pub metrics: Option<String>,
}

/// One step. Fields are flat so that a misplaced field gets a message naming the kind it belongs to.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawStep {
    /// `instance`, `volume`, `run` or `teardown`.
    pub kind: Option<KindName>,
    /// What the step does, for people.
    pub description: Option<String>,
    /// Steps that must succeed first.
    #[serde(default)]
    pub needs: Vec<String>,
    /// `on_success` (default), `always` or `on_failure`. Teardown defaults to `always`.
    pub when: Option<When>,
    /// Maximum run time, e.g. `90s`, `20h`.
    pub timeout: Option<String>,
    /// Retries after a failure, with exponential backoff and jitter.
    pub retries: Option<u32>,
    /// First retry delay, e.g. `10s`.
    pub backoff: Option<String>,
    /// Environment for the step's script (values are templates).
    #[serde(default)]
    pub env: IndexMap<String, String>,
    /// run: the instance step whose host runs the script (default: the only instance step).
    pub on: Option<String>,
    /// run: a script template, relative to the plan file.
    pub script: Option<String>,
    /// run: an inline shell script (a template; values are shell-quoted).
    pub run: Option<String>,
    /// run: survive the orchestrator; re-attached on the next apply.
    pub detach: Option<bool>,
    /// run: a host-wide lock name; at most one holder per host.
    pub lock: Option<String>,
    /// run: heartbeat and progress settings.
    pub heartbeat: Option<RawHeartbeat>,
    /// run: files to ship to the host before the script starts, `SOURCE: DESTINATION`. A source is a file or a
    /// directory relative to the plan file; a relative destination is relative to the step's working directory,
    /// an absolute one is a path on the host (inside the sandbox on the local target).
    pub files: Option<IndexMap<String, String>>,
    /// instance: instance types in failover order.
    pub instance_types: Option<Vec<String>>,
    /// instance: an AMI id or `ssm:/path/to/parameter`.
    pub image: Option<String>,
    /// instance: IAM instance profile name (needs AmazonSSMManagedInstanceCore).
    pub profile: Option<String>,
    /// instance: `on-demand` (default), `spot`, or `spot-then-on-demand`.
    pub market: Option<Market>,
    /// instance: the host terminates itself after this, e.g. `24h`.
    pub max_lifetime: Option<String>,
    /// instance: a dev environment's time to live, e.g. `8h`: the host shuts itself down (and so terminates) this
    /// long after launch, unless `plan extend` moves the deadline.
    pub ttl: Option<String>,
    /// instance: subnet id (default: the default VPC). Shorthand for a `subnets` of one.
    pub subnet: Option<String>,
    /// instance: subnet ids, one per availability zone, tried in order when a zone has no capacity.
    pub subnets: Option<Vec<String>>,
    /// instance: security group ids.
    pub security_groups: Option<Vec<String>>,
    /// instance: availability zones to try, in order.
    pub availability_zones: Option<Vec<String>>,
    /// instance: root volume size, e.g. `100GiB`.
    pub root_size: Option<String>,
    /// volume: the instance step to attach to.
    pub attach_to: Option<String>,
    /// volume: size, e.g. `300GiB`.
    pub size: Option<String>,
    /// volume: EBS type (default gp3).
    #[serde(rename = "type")]
    pub volume_type: Option<String>,
    /// volume: provisioned IOPS.
    pub iops: Option<u32>,
    /// volume: throughput in MiB/s.
    pub throughput: Option<u32>,
    /// volume: mount point on the host.
    pub mount: Option<String>,
    /// volume: keep the volume at teardown so a later run can reattach it.
    pub keep: Option<bool>,
    /// teardown: the resource steps to destroy (default: all of them).
    pub destroys: Option<Vec<String>>,
}

/// Every field name of a step, for "did you mean" and per-kind checks.
pub const STEP_FIELDS: &[&str] = &[
    "kind",
    "description",
    "needs",
    "when",
    "timeout",
    "retries",
    "backoff",
    "env",
    "on",
    "script",
    "run",
    "detach",
    "lock",
    "heartbeat",
    "files",
    "instance_types",
    "image",
    "profile",
    "market",
    "max_lifetime",
    "ttl",
    "subnet",
    "subnets",
    "security_groups",
    "availability_zones",
    "root_size",
    "attach_to",
    "size",
    "type",
    "iops",
    "throughput",
    "mount",
    "keep",
    "destroys",
];

pub const TOP_FIELDS: &[&str] = &[
    "plan",
    "description",
    "vars",
    "target",
    "state",
    "defaults",
    "steps",
    "run_key",
    "concurrency",
    "notify",
    "budget",
];
pub const NOTIFY_FIELDS: &[&str] = &["webhook", "sns", "on"];
pub const TARGET_FIELDS: &[&str] = &["provider", "region", "endpoint_url", "profile", "root"];
pub const DEFAULTS_FIELDS: &[&str] = &["timeout", "retries", "backoff"];
pub const HEARTBEAT_FIELDS: &[&str] = &["stale_after", "interval", "progress", "metrics"];

/// The fields a step of `kind` may have beyond the common ones.
pub fn kind_fields(kind: KindName) -> &'static [&'static str] {
    match kind {
        KindName::Instance => &[
            "instance_types",
            "image",
            "profile",
            "market",
            "max_lifetime",
            "ttl",
            "subnet",
            "subnets",
            "security_groups",
            "availability_zones",
            "root_size",
        ],
        KindName::Volume => &[
            "attach_to",
            "size",
            "type",
            "iops",
            "throughput",
            "mount",
            "keep",
        ],
        KindName::Run => &[
            "on",
            "script",
            "run",
            "detach",
            "lock",
            "heartbeat",
            "files",
        ],
        KindName::Teardown => &["destroys"],
    }
}

pub const COMMON_FIELDS: &[&str] = &[
    "kind",
    "description",
    "needs",
    "when",
    "timeout",
    "retries",
    "backoff",
    "env",
];

/// The JSON Schema of the plan format.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(PlanFile<RawStep>)).unwrap_or_default()
}
