//! The `aws` provider: EC2 instances and EBS volumes for `instance` and `volume` steps.
//!
//! Idempotency rests on tags, never on the SDK's ClientToken (it changes with every process, and moto ignores
//! it): every resource carries `sortie:token=<token>` (a token derived from run, step and attempt, stored in the
//! state before the create call), and every create first looks that tag up and adopts what it finds.
//!
//! Capacity failover (instance types × availability zones × markets) and state polling are ours; throttling and
//! transient errors are retried by the SDK (see `aws.rs`). Capacity errors are exempted from the SDK's retries:
//! they fail over at once instead of hitting the same type and zone again with backoff.
//!
//! Waiting is our own polling with a configurable backoff ([`PollConfig`]): the SDK's waiters sleep at least
//! 15 s between polls, which would make every test slow.

use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    Filter, Instance, InstanceLifecycleType, InstanceStateName, ResourceType, Tag,
    TagSpecification, Volume, VolumeAttachmentState, VolumeState, VolumeType,
};
use aws_sdk_ssm::types::{InstanceInformationStringFilter, PingStatus};

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::plan::{InstanceSpec, Target, VolumeSpec};

/// `Resource::kind` of an EC2 instance.
pub const KIND_INSTANCE: &str = "ec2-instance";
/// `Resource::kind` of an EBS volume.
pub const KIND_VOLUME: &str = "ebs-volume";

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

/// One probe of a wait: done with a value, or not yet (with the state seen, for the timeout's message).
enum Probe<T> {
    Done(T),
    Wait(String),
}

impl AwsProvider {
    /// Clients from the target's SDK configuration (credentials chain, region, endpoint override).
    pub async fn new(target: &Target, poll: PollConfig) -> AwsProvider {
        let config = crate::aws::sdk_config(target).await;
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

    /// Creates (or adopts, by its token tag) an instance, and waits until it is running and Online in SSM.
    pub async fn create_instance(
        &self,
        spec: &InstanceSpec,
        tags: &Tags,
        on_event: &mut (dyn FnMut(ProvisionEvent) + Send),
    ) -> Result<InstanceOutputs> {
        let (instance_id, launched_market) = match self.instance_by_token(&tags.token).await? {
            Some(found) => {
                let id = found.instance_id().unwrap_or_default().to_string();
                tracing::info!(instance = %id, token = %tags.token, "adopting the instance tagged with this step's token");
                (id, None)
            }
            None => {
                let (id, market) = self.launch(spec, tags, on_event).await?;
                (id, Some(market))
            }
        };
        let instance = self.wait_running(&instance_id).await?;
        self.wait_online(&instance_id, spec).await?;
        let market = launched_market.unwrap_or(match instance.instance_lifecycle() {
            Some(InstanceLifecycleType::Spot) => "spot",
            _ => "on-demand",
        });
        Ok(InstanceOutputs {
            image_id: instance.image_id().unwrap_or_default().to_string(),
            launched_at: instance
                .launch_time()
                .and_then(|t| u64::try_from(t.secs()).ok())
                .unwrap_or_else(crate::ttl::now_epoch),
            instance_id,
            availability_zone: instance
                .placement()
                .and_then(|p| p.availability_zone())
                .unwrap_or_default()
                .to_string(),
            private_ip: instance
                .private_ip_address()
                .unwrap_or_default()
                .to_string(),
            instance_type: instance
                .instance_type()
                .map(|t| t.as_str().to_string())
                .unwrap_or_default(),
            market: market.to_string(),
        })
    }

    /// The instance tagged `sortie:token=<token>` that is not terminated or shutting down, if any.
    pub async fn find_instance_by_token(&self, token: &str) -> Result<Option<String>> {
        Ok(self
            .instance_by_token(token)
            .await?
            .and_then(|i| i.instance_id().map(str::to_string)))
    }

    /// Terminates an instance and waits until it is terminated. An instance that is already gone is fine.
    pub async fn terminate_instance(&self, instance_id: &str) -> Result<()> {
        match self.ec2.terminate_instances().instance_ids(instance_id).send().await {
            Ok(_) => {}
            Err(err) if is_not_found(err.code()) => return Ok(()),
            Err(err) => {
                return Err(aws_error(
                    &format!("could not terminate instance {instance_id}"),
                    &err,
                    "check the orchestrator's IAM permissions (ec2:TerminateInstances on sortie-tagged instances)",
                ))
            }
        }
        self.wait_for(
            &format!("instance {instance_id} to terminate"),
            self.poll.state_timeout,
            "it may still be shutting down: run the teardown again later, or check it in the EC2 console",
            || async {
                Ok(match self.describe_instance(instance_id).await? {
                    None => Probe::Done(()),
                    Some(i) => match state_name(&i) {
                        Some(InstanceStateName::Terminated) => Probe::Done(()),
                        other => Probe::Wait(state_str(other)),
                    },
                })
            },
        )
        .await
    }

    /// Creates (or adopts, by its token tag) an encrypted volume in `az`, attaches it to the instance and waits
    /// until it is in use.
    pub async fn create_volume(
        &self,
        spec: &VolumeSpec,
        instance_id: &str,
        az: &str,
        tags: &Tags,
    ) -> Result<VolumeOutputs> {
        let volume_id = match self.volume_by_token(&tags.token).await? {
            Some(found) => {
                let id = found.volume_id().unwrap_or_default().to_string();
                let found_az = found.availability_zone().unwrap_or_default();
                if found_az != az {
                    return Err(Error::runtime(format!(
                        "volume {id} (tagged with this step's token {}) is in {found_az}, but instance \
                         {instance_id} is in {az}",
                        tags.token
                    ))
                    .with_help(format!(
                        "delete or move the volume (snapshot it and restore the snapshot in {az}), then apply again"
                    )));
                }
                tracing::info!(volume = %id, token = %tags.token, "adopting the volume tagged with this step's token");
                id
            }
            None => self.new_volume(spec, az, tags).await?,
        };
        let volume = self.wait_volume_ready(&volume_id).await?;

        let mine = volume.attachments().iter().find(|a| {
            a.instance_id() == Some(instance_id)
                && matches!(
                    a.state(),
                    Some(VolumeAttachmentState::Attached | VolumeAttachmentState::Attaching)
                )
        });
        // Held until the attachment shows on the instance: two volume steps of one instance in this apply would
        // otherwise both see the same free device name.
        let _attaching = ATTACH.lock().await;
        let device = match mine {
            Some(attachment) => attachment.device().unwrap_or_default().to_string(),
            None => {
                if let Some(other) = volume.attachments().iter().find(|a| {
                    matches!(
                        a.state(),
                        Some(VolumeAttachmentState::Attached | VolumeAttachmentState::Attaching)
                    )
                }) {
                    let other = other.instance_id().unwrap_or("?").to_string();
                    // A volume that outlived its host (re-provisioned): EC2 detaches it as the old one terminates.
                    if !self.is_terminating(&other).await? {
                        return Err(Error::runtime(format!(
                            "volume {volume_id} is attached to instance {other}, not to {instance_id}"
                        ))
                        .with_help(
                            "detach it from there (or terminate that instance), then apply again",
                        ));
                    }
                    self.wait_volume_detached(&volume_id).await?;
                }
                self.attach_free(&volume_id, instance_id).await?
            }
        };

        self.wait_for(
            &format!("volume {volume_id} to be attached to {instance_id}"),
            self.poll.state_timeout,
            "check the volume and the instance in the EC2 console; apply again adopts the volume",
            || async {
                let Some(v) = self.describe_volume(&volume_id).await? else {
                    return Err(Error::runtime(format!(
                        "volume {volume_id} disappeared while it was being attached to {instance_id}"
                    )));
                };
                let attached = v.attachments().iter().any(|a| {
                    a.instance_id() == Some(instance_id) && a.state() == Some(&VolumeAttachmentState::Attached)
                });
                Ok(if v.state() == Some(&VolumeState::InUse) && attached {
                    Probe::Done(())
                } else {
                    Probe::Wait(format!("{}, {}", volume_state_str(&v), attachment_str(&v)))
                })
            },
        )
        .await?;
        Ok(VolumeOutputs { volume_id, device })
    }

    /// Detaches a volume (if attached), waits until it is available, deletes it and waits until it is gone.
    /// A volume that is already gone is fine.
    pub async fn delete_volume(&self, volume_id: &str) -> Result<()> {
        let Some(volume) = self.describe_volume(volume_id).await? else {
            return Ok(());
        };
        match volume.state() {
            Some(VolumeState::Deleted) => return Ok(()),
            Some(VolumeState::Deleting) => return self.wait_volume_gone(volume_id).await,
            _ => {}
        }
        for attachment in volume.attachments() {
            if !matches!(
                attachment.state(),
                Some(VolumeAttachmentState::Attached | VolumeAttachmentState::Attaching)
            ) {
                continue;
            }
            let instance = attachment.instance_id().unwrap_or_default();
            let device = attachment.device().unwrap_or_default();
            // Always with InstanceId and Device: a VolumeId alone is what moto (and some tooling) mishandles.
            let detached = self
                .ec2
                .detach_volume()
                .volume_id(volume_id)
                .instance_id(instance)
                .device(device)
                .send()
                .await;
            match detached {
                Ok(_) => {}
                // Already detaching or detached, or the volume is gone: the wait below settles it.
                Err(err)
                    if matches!(
                        err.code(),
                        Some("IncorrectState" | "InvalidAttachment.NotFound")
                    ) || is_not_found(err.code()) => {}
                Err(err) => {
                    return Err(aws_error(
                        &format!(
                        "could not detach volume {volume_id} from instance {instance} ({device})"
                    ),
                        &err,
                        "unmount it on the instance first if it is busy, or terminate the instance",
                    ))
                }
            }
        }
        let gone = self
            .wait_for(
                &format!("volume {volume_id} to be detached"),
                self.poll.state_timeout,
                "a volume that stays `detaching` is usually still mounted: unmount it on the instance, or \
                 terminate the instance, then run the teardown again",
                || async {
                    Ok(match self.describe_volume(volume_id).await? {
                        None => Probe::Done(true),
                        Some(v) => match v.state() {
                            Some(VolumeState::Available) => Probe::Done(false),
                            Some(VolumeState::Deleting | VolumeState::Deleted) => Probe::Done(true),
                            _ => Probe::Wait(format!("{}, {}", volume_state_str(&v), attachment_str(&v))),
                        },
                    })
                },
            )
            .await?;
        if !gone {
            match self.ec2.delete_volume().volume_id(volume_id).send().await {
                Ok(_) => {}
                Err(err) if is_not_found(err.code()) => return Ok(()),
                Err(err) => {
                    return Err(aws_error(
                        &format!("could not delete volume {volume_id}"),
                        &err,
                        "check the orchestrator's IAM permissions (ec2:DeleteVolume on sortie-tagged volumes)",
                    ))
                }
            }
        }
        self.wait_volume_gone(volume_id).await
    }

    /// Every instance and volume tagged `sortie:run=<run>` that is not terminated or deleted, as
    /// `(kind, id)` with kind [`KIND_INSTANCE`] or [`KIND_VOLUME`]. Instances come first. A live instance's root
    /// volume is listed too (it carries the instance step's tags): terminate instances before deleting volumes.
    pub async fn resources_of_run(&self, run: &str) -> Result<Vec<(String, String)>> {
        Ok(self
            .resources_tagged(TAG_RUN, run)
            .await?
            .into_iter()
            .map(|r| (r.kind, r.id))
            .collect())
    }

    /// Every live instance and existing volume whose tag `key` is `value`, with the run it is tagged with. A
    /// `deleting` volume is not listed: it goes by itself (a terminated instance's root volume stays `deleting`
    /// for a while), so it is neither a leak nor garbage.
    pub async fn resources_tagged(&self, key: &str, value: &str) -> Result<Vec<TaggedResource>> {
        let run_of = |tags: &[Tag]| {
            tags.iter()
                .find(|t| t.key() == Some(TAG_RUN))
                .and_then(|t| t.value())
                .unwrap_or_default()
                .to_string()
        };
        let mut found = Vec::new();
        let mut pages = self
            .ec2
            .describe_instances()
            .filters(filter(&format!("tag:{key}"), [value]))
            .filters(filter(
                "instance-state-name",
                ["pending", "running", "shutting-down", "stopping", "stopped"],
            ))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|err| {
                aws_error(
                    &format!("could not list the instances tagged {key}={value}"),
                    &err,
                    "check ec2:DescribeInstances",
                )
            })?;
            for reservation in page.reservations() {
                for instance in reservation.instances() {
                    if let Some(id) = instance.instance_id() {
                        found.push(TaggedResource {
                            kind: KIND_INSTANCE.to_string(),
                            id: id.to_string(),
                            run: run_of(instance.tags()),
                        });
                    }
                }
            }
        }
        let mut pages = self
            .ec2
            .describe_volumes()
            .filters(filter(&format!("tag:{key}"), [value]))
            .filters(filter(
                "status",
                ["creating", "available", "in-use", "error"],
            ))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|err| {
                aws_error(
                    &format!("could not list the volumes tagged {key}={value}"),
                    &err,
                    "check ec2:DescribeVolumes",
                )
            })?;
            for volume in page.volumes() {
                if let Some(id) = volume.volume_id() {
                    found.push(TaggedResource {
                        kind: KIND_VOLUME.to_string(),
                        id: id.to_string(),
                        run: run_of(volume.tags()),
                    });
                }
            }
        }
        Ok(found)
    }

    // ---- instances ----

    async fn instance_by_token(&self, token: &str) -> Result<Option<Instance>> {
        let out = self
            .ec2
            .describe_instances()
            .filters(filter(&format!("tag:{TAG_TOKEN}"), [token]))
            .filters(filter(
                "instance-state-name",
                ["pending", "running", "stopping", "stopped"],
            ))
            .send()
            .await
            .map_err(|err| {
                aws_error(
                    &format!("could not look up the instance tagged {TAG_TOKEN}={token}"),
                    &err,
                    "check ec2:DescribeInstances in the orchestrator's IAM policy",
                )
            })?;
        let mut found: Vec<Instance> = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances().iter().cloned())
            .collect();
        if found.len() > 1 {
            tracing::warn!(%token, count = found.len(), "several instances carry this token; adopting the oldest");
        }
        found.sort_by_key(|i| {
            (
                i.launch_time().map(|t| (t.secs(), t.subsec_nanos())),
                i.instance_id().map(str::to_string),
            )
        });
        Ok(found.into_iter().next())
    }

    /// DescribeInstances of one id; `None` if AWS does not know it (any more, or yet).
    async fn describe_instance(&self, instance_id: &str) -> Result<Option<Instance>> {
        match self
            .ec2
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find(|i| i.instance_id() == Some(instance_id))
                .cloned()),
            Err(err) if is_not_found(err.code()) => Ok(None),
            Err(err) => Err(aws_error(
                &format!("could not describe instance {instance_id}"),
                &err,
                "check ec2:DescribeInstances in the orchestrator's IAM policy",
            )),
        }
    }

    async fn wait_running(&self, instance_id: &str) -> Result<Instance> {
        self.wait_for(
            &format!("instance {instance_id} to be running"),
            self.poll.state_timeout,
            "check the instance in the EC2 console; apply again adopts it by its token tag",
            || async {
                let Some(instance) = self.describe_instance(instance_id).await? else {
                    // Right after RunInstances, AWS may not know the id yet (eventual consistency).
                    return Ok(Probe::Wait("not visible yet".into()));
                };
                match state_name(&instance) {
                    Some(InstanceStateName::Running) => Ok(Probe::Done(instance)),
                    Some(InstanceStateName::Pending) | None => Ok(Probe::Wait("pending".into())),
                    other => {
                        let reason = instance
                            .state_reason()
                            .and_then(|r| r.message())
                            .or(instance.state_transition_reason())
                            .unwrap_or("no reason given");
                        let help = match other {
                            // Only an adopted instance can be found stopped: apply would adopt it again.
                            Some(InstanceStateName::Stopped | InstanceStateName::Stopping) => format!(
                                "it carries this step's token, so apply adopts it again: start it \
                                 (`aws ec2 start-instances --instance-ids {instance_id}`) or terminate it, then \
                                 apply again"
                            ),
                            _ => "a spot instance may have been reclaimed at once, or the image, volumes or \
                                  profile may be unusable; apply again to launch a new one"
                                .to_string(),
                        };
                        Err(Error::runtime(format!(
                            "instance {instance_id} is {} instead of running: {reason}",
                            state_str(other)
                        ))
                        .with_help(help))
                    }
                }
            },
        )
        .await
    }

    async fn wait_online(&self, instance_id: &str, spec: &InstanceSpec) -> Result<()> {
        let profile = match &spec.profile {
            Some(p) => format!("the instance profile `{p}` lacks the AmazonSSMManagedInstanceCore policy"),
            None => "the step gives no instance profile (`profile:`), so the SSM agent has no credentials; give \
                     one whose role has the AmazonSSMManagedInstanceCore policy"
                .to_string(),
        };
        let help = format!(
            "instance {instance_id} is running but its SSM agent never reported Online. The usual causes:\n    \
             - {profile};\n    \
             - the instance has no route to the SSM endpoints (ssm, ssmmessages, ec2messages): give its subnet a \
             NAT gateway or a public IP with an internet gateway, or create VPC interface endpoints for them;\n    \
             - the image has no SSM agent (Amazon Linux, Ubuntu and the Deep Learning AMIs have one).\n  \
             = note: the instance was left running, tagged {TAG_TOKEN}; the teardown (or `plan destroy`) removes it, \
             and it terminates itself at the end of max_lifetime"
        );
        self.wait_for(
            &format!("instance {instance_id} to be Online in SSM"),
            self.poll.ssm_online_timeout,
            &help,
            || async {
                let filter = InstanceInformationStringFilter::builder()
                    .key("InstanceIds")
                    .values(instance_id)
                    .build()
                    .map_err(|e| {
                        Error::runtime(format!("DescribeInstanceInformation filter: {e}"))
                    })?;
                let out = match self
                    .ssm
                    .describe_instance_information()
                    .filters(filter)
                    .send()
                    .await
                {
                    Ok(out) => out,
                    // AWS may answer InvalidInstanceId for an instance whose agent has not registered yet.
                    Err(err) if err.code() == Some("InvalidInstanceId") => {
                        return Ok(Probe::Wait("not registered with SSM yet".into()))
                    }
                    Err(err) => return Err(aws_error(
                        &format!("could not ask SSM about instance {instance_id}"),
                        &err,
                        "check ssm:DescribeInstanceInformation in the orchestrator's IAM policy",
                    )),
                };
                let info = out
                    .instance_information_list()
                    .iter()
                    .find(|i| i.instance_id() == Some(instance_id));
                Ok(match info.and_then(|i| i.ping_status()) {
                    Some(PingStatus::Online) => Probe::Done(()),
                    Some(other) => Probe::Wait(format!("PingStatus {}", other.as_str())),
                    None => Probe::Wait("not registered with SSM yet".into()),
                })
            },
        )
        .await
    }

    // ---- volumes ----

    async fn new_volume(&self, spec: &VolumeSpec, az: &str, tags: &Tags) -> Result<String> {
        let size = gib_ceil(spec.size_bytes);
        let out = self
            .ec2
            .create_volume()
            .availability_zone(az)
            .size(size)
            .volume_type(VolumeType::from(spec.volume_type.as_str()))
            .set_iops(spec.iops.map(|v| v as i32))
            .set_throughput(spec.throughput.map(|v| v as i32))
            .encrypted(true)
            .tag_specifications(tags.spec(ResourceType::Volume))
            .send()
            .await
            .map_err(|err| {
                aws_error(
                    &format!(
                        "could not create the {size} GiB {} volume of step {} in {az}",
                        spec.volume_type, tags.step
                    ),
                    &err,
                    "check the size, type, iops and throughput (gp3: 3000-16000 iops, 125-1000 MiB/s), and the \
                     account's EBS quota",
                )
            })?;
        let id = out
            .volume_id()
            .ok_or_else(|| Error::runtime("CreateVolume answered without a volume id"))?;
        tracing::info!(volume = %id, %az, size_gib = size, "created volume");
        Ok(id.to_string())
    }

    async fn volume_by_token(&self, token: &str) -> Result<Option<Volume>> {
        let out = self
            .ec2
            .describe_volumes()
            .filters(filter(&format!("tag:{TAG_TOKEN}"), [token]))
            .filters(filter("status", ["creating", "available", "in-use"]))
            .send()
            .await
            .map_err(|err| {
                aws_error(
                    &format!("could not look up the volume tagged {TAG_TOKEN}={token}"),
                    &err,
                    "check ec2:DescribeVolumes in the orchestrator's IAM policy",
                )
            })?;
        let mut found = out.volumes().to_vec();
        if found.len() > 1 {
            tracing::warn!(%token, count = found.len(), "several volumes carry this token; adopting the oldest");
        }
        found.sort_by_key(|v| {
            (
                v.create_time().map(|t| (t.secs(), t.subsec_nanos())),
                v.volume_id().map(str::to_string),
            )
        });
        Ok(found.into_iter().next())
    }

    /// DescribeVolumes of one id; `None` if AWS does not know it.
    async fn describe_volume(&self, volume_id: &str) -> Result<Option<Volume>> {
        match self
            .ec2
            .describe_volumes()
            .volume_ids(volume_id)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .volumes()
                .iter()
                .find(|v| v.volume_id() == Some(volume_id))
                .cloned()),
            Err(err) if is_not_found(err.code()) => Ok(None),
            Err(err) => Err(aws_error(
                &format!("could not describe volume {volume_id}"),
                &err,
                "check ec2:DescribeVolumes in the orchestrator's IAM policy",
            )),
        }
    }

    /// Until the volume is available (or already in use: an adopted one).
    /// Whether an instance is gone or going (terminated, shutting down, or unknown to EC2).
    async fn is_terminating(&self, instance_id: &str) -> Result<bool> {
        Ok(match self.describe_instance(instance_id).await? {
            None => true,
            Some(i) => matches!(
                state_name(&i),
                Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
            ),
        })
    }

    /// Waits until a volume has no attachment left (its instance terminated).
    async fn wait_volume_detached(&self, volume_id: &str) -> Result<()> {
        self.wait_for(
            &format!("volume {volume_id} to be detached from its terminated instance"),
            self.poll.state_timeout,
            "check the volume in the EC2 console; apply again adopts it by its token tag",
            || async {
                let Some(v) = self.describe_volume(volume_id).await? else {
                    return Err(Error::runtime(format!("volume {volume_id} disappeared")));
                };
                Ok(if v.state() == Some(&VolumeState::Available) {
                    Probe::Done(())
                } else {
                    Probe::Wait(format!("{}, {}", volume_state_str(&v), attachment_str(&v)))
                })
            },
        )
        .await
    }

    async fn wait_volume_ready(&self, volume_id: &str) -> Result<Volume> {
        self.wait_for(
            &format!("volume {volume_id} to be available"),
            self.poll.state_timeout,
            "check the volume in the EC2 console; apply again adopts it by its token tag",
            || async {
                let Some(v) = self.describe_volume(volume_id).await? else {
                    return Ok(Probe::Wait("not visible yet".into()));
                };
                match v.state() {
                    Some(VolumeState::Available | VolumeState::InUse) => Ok(Probe::Done(v)),
                    Some(VolumeState::Creating) | None => Ok(Probe::Wait("creating".into())),
                    Some(other) => Err(Error::runtime(format!(
                        "volume {volume_id} is {} instead of available",
                        other.as_str()
                    ))
                    .with_help("an `error` volume cannot be used: delete it and apply again")),
                }
            },
        )
        .await
    }

    async fn wait_volume_gone(&self, volume_id: &str) -> Result<()> {
        self.wait_for(
            &format!("volume {volume_id} to be deleted"),
            self.poll.state_timeout,
            "check the volume in the EC2 console; the teardown can be run again",
            || async {
                Ok(match self.describe_volume(volume_id).await? {
                    None => Probe::Done(()),
                    Some(v) if v.state() == Some(&VolumeState::Deleted) => Probe::Done(()),
                    Some(v) => Probe::Wait(volume_state_str(&v)),
                })
            },
        )
        .await
    }

    /// Attaches the volume at the first free device name. Another apply may take that name between the look and
    /// the attach (AWS answers that the attachment point is already in use): then the next free one.
    async fn attach_free(&self, volume_id: &str, instance_id: &str) -> Result<String> {
        let mut taken: Vec<String> = Vec::new();
        loop {
            let device = self.free_device(instance_id, &taken).await?;
            let attached = self
                .ec2
                .attach_volume()
                .volume_id(volume_id)
                .instance_id(instance_id)
                .device(&device)
                .send()
                .await;
            match attached {
                Ok(_) => return Ok(device),
                Err(err)
                    if taken.len() < 3
                        && err.message().is_some_and(|m| m.contains("already in use")) =>
                {
                    taken.push(device)
                }
                Err(err) => {
                    return Err(aws_error(
                        &format!(
                        "could not attach volume {volume_id} to instance {instance_id} as {device}"
                    ),
                        &err,
                        "check that the instance is running and in the volume's availability zone",
                    ))
                }
            }
        }
    }

    /// The first of /dev/sdf../dev/sdp that the instance does not use (under any of its names), nor `taken`.
    async fn free_device(&self, instance_id: &str, taken: &[String]) -> Result<String> {
        let Some(instance) = self.describe_instance(instance_id).await? else {
            return Err(Error::runtime(format!(
                "instance {instance_id} does not exist, so no volume can be attached to it"
            ))
            .with_help("apply again: the instance step runs again first"));
        };
        let used: Vec<&str> = instance
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.device_name())
            .chain(instance.root_device_name())
            .chain(taken.iter().map(String::as_str))
            .collect();
        pick_device(&used).ok_or_else(|| {
            Error::runtime(format!(
                "instance {instance_id} has no free device name left in /dev/sdf../dev/sdp"
            ))
            .with_help("detach volumes it no longer needs")
        })
    }

    // ---- waiting ----

    /// Probes at once, then with backoff (`initial`, growing by half up to `max`) until done, an error, or `timeout`.
    async fn wait_for<T, F, Fut>(
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
    crate::aws_error::AwsError::from_sdk(what, err)
        .with_help(help)
        .into()
}

pub(crate) fn filter<'a>(name: &str, values: impl IntoIterator<Item = &'a str>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(str::to_string).collect()))
        .build()
}

fn state_name(instance: &Instance) -> Option<InstanceStateName> {
    instance.state().and_then(|s| s.name()).cloned()
}

fn state_str(state: Option<InstanceStateName>) -> String {
    state
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|| "in no state".into())
}

fn volume_state_str(volume: &Volume) -> String {
    volume
        .state()
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|| "in no state".into())
}

fn attachment_str(volume: &Volume) -> String {
    let parts: Vec<String> = volume
        .attachments()
        .iter()
        .map(|a| {
            format!(
                "{} on {}",
                a.state().map(|s| s.as_str()).unwrap_or("?"),
                a.instance_id().unwrap_or("?")
            )
        })
        .collect();
    if parts.is_empty() {
        "not attached".into()
    } else {
        parts.join(", ")
    }
}

/// Bytes to GiB, rounded up (at least 1).
pub fn gib_ceil(bytes: u64) -> i32 {
    i32::try_from(bytes.div_ceil(GIB).max(1)).unwrap_or(i32::MAX)
}

/// The letter a device name stands for: `/dev/sdf`, `/dev/xvdf`, `sdf1` → `f`. `None` for other names.
fn device_letter(name: &str) -> Option<char> {
    let name = name.strip_prefix("/dev/").unwrap_or(name);
    let rest = name
        .strip_prefix("xvd")
        .or_else(|| name.strip_prefix("sd"))?;
    rest.chars().next().filter(char::is_ascii_lowercase)
}

/// The first of /dev/sdf../dev/sdp whose letter none of `used` takes.
pub fn pick_device(used: &[&str]) -> Option<String> {
    let taken: Vec<char> = used.iter().filter_map(|d| device_letter(d)).collect();
    DATA_DEVICE_LETTERS
        .into_iter()
        .find(|c| !taken.contains(c))
        .map(|c| format!("/dev/sd{c}"))
}

/// The user data that enforces `max_lifetime` on the host: a per-boot script that arms a shutdown at an absolute
/// deadline (launch time + lifetime), so a reboot does not restart the clock. With
/// InstanceInitiatedShutdownBehavior=terminate, the shutdown terminates the instance, even if sortie never runs
/// again. A systemd timer (`systemd-run --on-active`) where there is systemd, else a detached `sleep`.
pub fn lifetime_user_data(max_lifetime: Duration, now_epoch_secs: u64) -> String {
    let deadline = now_epoch_secs + max_lifetime.as_secs();
    let human = humantime::format_duration(max_lifetime);
    format!(
        r#"#!/bin/sh
# sortie: max_lifetime {human}. This instance shuts down (and so terminates itself) at {deadline} (epoch seconds),
# even if sortie never runs again. The script is re-run at every boot by cloud-init, so a reboot keeps the deadline.
mkdir -p /var/lib/cloud/scripts/per-boot
cat > /var/lib/cloud/scripts/per-boot/sortie-max-lifetime.sh <<'SORTIE_EOF'
#!/bin/sh
deadline={deadline}
left=$((deadline - $(date +%s)))
if [ "$left" -le 0 ]; then
    shutdown -h now
    exit 0
fi
if command -v systemd-run >/dev/null 2>&1 &&
    systemd-run --unit=sortie-max-lifetime --on-active="${{left}}s" --timer-property=AccuracySec=1s \
        /bin/sh -c 'shutdown -h now'; then
    exit 0
fi
nohup sh -c "sleep $left; shutdown -h now" >/dev/null 2>&1 </dev/null &
SORTIE_EOF
chmod 0755 /var/lib/cloud/scripts/per-boot/sortie-max-lifetime.sh
/var/lib/cloud/scripts/per-boot/sortie-max-lifetime.sh
"#
    )
}

/// Standard base64 with padding (user data must be base64 on the wire).
pub(crate) fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"#!/bin/sh\necho hi\n"), "IyEvYmluL3NoCmVjaG8gaGkK");
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn sizes_round_up_to_whole_gib() {
        assert_eq!(gib_ceil(0), 1);
        assert_eq!(gib_ceil(1), 1);
        assert_eq!(gib_ceil(GIB), 1);
        assert_eq!(gib_ceil(GIB + 1), 2);
        assert_eq!(gib_ceil(300 * GIB), 300);
        assert_eq!(gib_ceil(u64::MAX), i32::MAX);
    }

    #[test]
    fn device_names_skip_every_spelling_in_use() {
        assert_eq!(pick_device(&[]).as_deref(), Some("/dev/sdf"));
        assert_eq!(
            pick_device(&["/dev/xvda", "/dev/sda1"]).as_deref(),
            Some("/dev/sdf")
        );
        assert_eq!(
            pick_device(&["/dev/sdf", "/dev/xvdg", "sdh"]).as_deref(),
            Some("/dev/sdi")
        );
        let all: Vec<String> = ('f'..='p').map(|c| format!("/dev/sd{c}")).collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        assert_eq!(pick_device(&all), None);
        assert_eq!(device_letter("/dev/nvme1n1"), None);
    }

    #[test]
    fn user_data_arms_a_shutdown_at_an_absolute_deadline() {
        let script = lifetime_user_data(Duration::from_secs(24 * 3600), 1_700_000_000);
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("deadline=1700086400\n"), "{script}");
        assert!(
            script.contains("systemd-run --unit=sortie-max-lifetime --on-active=\"${left}s\""),
            "{script}"
        );
        assert!(
            script.contains("nohup sh -c \"sleep $left; shutdown -h now\""),
            "{script}"
        );
        assert!(
            script.contains("/var/lib/cloud/scripts/per-boot/"),
            "{script}"
        );
        assert!(script.contains("max_lifetime 1day"), "{script}");
    }

    /// The script runs in a POSIX shell: `sh -n` parses it, and the per-boot part, run with a deadline in the
    /// past and `shutdown` stubbed, calls `shutdown -h now`.
    #[test]
    fn user_data_is_valid_shell() {
        let script = lifetime_user_data(Duration::from_secs(3600), 1_700_000_000);
        let status = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .status()
            .expect("run sh");
        assert!(status.success(), "sh -n rejected:\n{script}");
        let per_boot = script
            .split("<<'SORTIE_EOF'\n")
            .nth(1)
            .and_then(|rest| rest.split("SORTIE_EOF\n").next())
            .expect("per-boot script inside the user data");
        let dir = tempfile::tempdir().expect("tempdir");
        let stub = dir.path().join("shutdown");
        std::fs::write(
            &stub,
            format!("#!/bin/sh\necho \"$@\" > {}/called\n", dir.path().display()),
        )
        .expect("write stub");
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&stub)
            .status()
            .expect("chmod");
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let status = std::process::Command::new("sh")
            .args(["-c", per_boot])
            .env("PATH", path)
            .status()
            .expect("run per-boot script");
        assert!(status.success());
        let called =
            std::fs::read_to_string(dir.path().join("called")).expect("shutdown was called");
        assert_eq!(called.trim(), "-h now");
    }
}
