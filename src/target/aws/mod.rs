//! The `aws` provider: EC2 instances and EBS volumes for `instance` and `volume` steps.
//!
//! Idempotency rests on tags, never on the SDK's ClientToken (it changes with every process, and moto ignores
//! it): every resource carries `sortie:token=<token>` (a token derived from run, step and attempt, stored in the
//! state before the create call), and every create first looks that tag up and adopts what it finds.
//!
//! Capacity failover (instance types × availability zones × markets) and state polling are ours; throttling and
//! transient errors are retried by the SDK (see `config.rs`). Capacity errors are exempted from the SDK's retries:
//! they fail over at once instead of hitting the same type and zone again with backoff.
//!
//! Waiting is our own polling with a configurable backoff ([`PollConfig`]): the SDK's waiters sleep at least
//! 15 s between polls, which would make every test slow.
//!
//! Here: the provider, its clients and the tags. `config` (SDK configuration and retries), `launch` (capacity
//! failover over types × zones/subnets × markets), `ec2` (instances), `ebs` (volumes), `waits` (polling),
//! `tags` (what a run or a tag owns), `user_data` (the lifetime guard), `error` (the SDK error converter).

pub(crate) mod config;
mod ebs;
mod ec2;
pub(crate) mod error;
pub(crate) mod launch;
pub(crate) mod objects;
mod tags;
pub(crate) mod target;
mod user_data;
mod waits;

pub use ebs::{gib_ceil, pick_device};
pub(crate) use tags::filter;
pub(crate) use user_data::base64;
pub use user_data::lifetime_user_data;

use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};

use crate::backoff::Backoff;
use crate::error::Error;
use crate::plan::Target;

/// `Resource::kind` of an EC2 instance.
pub const KIND_INSTANCE: &str = crate::state::ResourceKind::Ec2Instance.as_str();
/// `Resource::kind` of an EBS volume.
pub const KIND_VOLUME: &str = crate::state::ResourceKind::EbsVolume.as_str();

pub const TAG_PLAN: &str = "sortie:plan";
pub const TAG_RUN: &str = "sortie:run";
pub const TAG_STEP: &str = "sortie:step";
pub const TAG_TOKEN: &str = "sortie:token";

/// The root device name when the image does not say.
pub(crate) const DEFAULT_ROOT_DEVICE: &str = "/dev/sda1";
/// Device names for data volumes, as AWS recommends for EBS on Linux (`/dev/sd[f-p]`).
const DATA_DEVICE_LETTERS: std::ops::RangeInclusive<char> = 'f'..='p';
const GIB: u64 = 1 << 30;

/// How state changes are waited for: the first poll at once, then `initial`, doubling up to `max` between polls.
#[derive(Debug, Clone)]
pub struct PollConfig {
    pub initial: Duration,
    pub max: Duration,
    /// Bound of the wait for SSM registration (PingStatus Online) after the instance is running.
    pub ssm_online_timeout: Duration,
    /// Bound of every other wait (running, terminated, available, in-use, deleted).
    pub state_timeout: Duration,
}

impl Default for PollConfig {
    fn default() -> PollConfig {
        PollConfig {
            // Fast at first: on real AWS most waits end within a minute, and each second late is a paid
            // second of an idle instance (issue 10 §12); a minute of waiting costs about 10 calls.
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
            ssm_online_timeout: Duration::from_secs(600),
            state_timeout: Duration::from_secs(600),
        }
    }
}

/// Serializes volume attaches in this process (see `create_volume`).
static ATTACH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What every resource is tagged with: `Name`, `sortie:plan`, `sortie:run`, `sortie:step`, `sortie:token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tags {
    pub plan: String,
    pub run: String,
    pub step: String,
    pub token: String,
}

impl Tags {
    /// The `Name` tag: `<plan>/<run>/<step>`, what the console shows.
    pub fn name(&self) -> String {
        format!("{}/{}/{}", self.plan, self.run, self.step)
    }

    fn to_ec2(&self) -> Vec<Tag> {
        [
            ("Name", self.name()),
            (TAG_PLAN, self.plan.clone()),
            (TAG_RUN, self.run.clone()),
            (TAG_STEP, self.step.clone()),
            (TAG_TOKEN, self.token.clone()),
        ]
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
    }

    pub(crate) fn spec(&self, resource: ResourceType) -> TagSpecification {
        TagSpecification::builder()
            .resource_type(resource)
            .set_tags(Some(self.to_ec2()))
            .build()
    }
}

/// A resource found by its tags, and the run it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedResource {
    pub kind: String,
    pub id: String,
    pub run: String,
}

/// The `instance` step's outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceOutputs {
    pub instance_id: String,
    pub availability_zone: String,
    pub private_ip: String,
    pub instance_type: String,
    /// `spot` or `on-demand`.
    pub market: String,
    /// The AMI it runs: what an `ssm:` image parameter resolved to, recorded so a run can be repeated.
    pub image_id: String,
    /// When EC2 launched it (epoch seconds): the base of its `ttl` deadline.
    pub launched_at: u64,
}

/// The `volume` step's AWS outputs (the mount path is the executor's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeOutputs {
    pub volume_id: String,
    /// The name the volume was attached under (`/dev/sdf`); on Nitro instances the kernel calls it
    /// `/dev/nvmeXn1`, found by the volume id in its serial.
    pub device: String,
}

/// Something worth recording in the run's events while an instance is provisioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisionEvent {
    /// A launch attempt failed for lack of capacity (or a limit); the next type / zone / market is tried.
    Failover {
        instance_type: String,
        /// `None` when AWS chose the zone (the offerings, or the subnet's zone, were unknown).
        availability_zone: Option<String>,
        /// The subnet tried, when the step names `subnets`.
        subnet: Option<String>,
        market: String,
        code: String,
        message: String,
    },
}

/// Cheap to clone: the SDK clients share their connection pool.
#[derive(Clone, Debug)]
pub struct AwsProvider {
    pub(crate) ec2: aws_sdk_ec2::Client,
    pub(crate) ssm: aws_sdk_ssm::Client,
    poll: PollConfig,
}

impl AwsProvider {
    /// Clients from the target's SDK configuration (credentials chain, region, endpoint override).
    pub async fn new(target: &Target, poll: PollConfig) -> AwsProvider {
        let config = crate::target::aws::config::sdk_config(target).await;
        AwsProvider::from_config(&config, poll)
    }

    /// Clients from an SDK configuration loaded elsewhere (tests: the test endpoint's).
    pub fn from_config(config: &aws_config::SdkConfig, poll: PollConfig) -> AwsProvider {
        AwsProvider {
            ec2: aws_sdk_ec2::Client::new(config),
            ssm: aws_sdk_ssm::Client::new(config),
            poll,
        }
    }
}
fn is_not_found(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "InvalidInstanceID.NotFound" | "InvalidVolume.NotFound" | "InvalidInstanceID.Malformed"
        )
    )
}

/// An SDK error as `what: CODE: message (request id …)` with `help` (aws_error.rs).
pub(crate) fn aws_error<E>(what: &str, err: &aws_sdk_ec2::error::SdkError<E>, help: &str) -> Error
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    crate::target::aws::error::AwsError::from_sdk(what, err)
        .with_help(help)
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{InstanceSpec, VolumeSpec};

    /// The step layer spawns these on tokio: their futures must be Send.
    #[allow(dead_code)]
    fn futures_are_send(
        p: &AwsProvider,
        spec: &InstanceSpec,
        volume: &VolumeSpec,
        tags: &Tags,
        on_event: &mut (dyn FnMut(ProvisionEvent) + Send),
    ) {
        fn send<T: Send>(_: T) {}
        send(p.create_instance(spec, tags, on_event));
        send(p.create_volume(volume, "i-1", "us-east-1a", tags));
        send(p.delete_volume("vol-1"));
        send(p.terminate_instance("i-1"));
        send(p.find_instance_by_token("t"));
        send(p.resources_of_run("r"));
    }
}
