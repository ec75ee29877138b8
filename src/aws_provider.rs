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

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::config::interceptors::InterceptorContext;
use aws_sdk_ec2::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::operation::run_instances::RunInstancesError;
use aws_sdk_ec2::operation::RequestId;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    Instance, InstanceInterruptionBehavior, InstanceLifecycleType, InstanceMarketOptionsRequest,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceStateName, InstanceType,
    LocationType, MarketType, Placement, ResourceType, ShutdownBehavior, SpotInstanceType,
    SpotMarketOptions, Tag, TagSpecification, Volume, VolumeAttachmentState, VolumeState,
    VolumeType,
};
use aws_sdk_ssm::types::{InstanceInformationStringFilter, PingStatus};

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::plan::{InstanceSpec, Target, VolumeSpec};
use crate::plan_file::Market;

/// `Resource::kind` of an EC2 instance.
pub const KIND_INSTANCE: &str = "ec2-instance";
/// `Resource::kind` of an EBS volume.
pub const KIND_VOLUME: &str = "ebs-volume";

pub const TAG_PLAN: &str = "sortie:plan";
pub const TAG_RUN: &str = "sortie:run";
pub const TAG_STEP: &str = "sortie:step";
pub const TAG_TOKEN: &str = "sortie:token";

/// The root device name when the image does not say.
const DEFAULT_ROOT_DEVICE: &str = "/dev/sda1";
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

    fn spec(&self, resource: ResourceType) -> TagSpecification {
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
        /// `None` when AWS chose the zone (a subnet was given, or the offerings were unknown).
        availability_zone: Option<String>,
        market: String,
        code: String,
        message: String,
    },
}

/// Cheap to clone: the SDK clients share their connection pool.
#[derive(Clone, Debug)]
pub struct AwsProvider {
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
    poll: PollConfig,
}

/// One probe of a wait: done with a value, or not yet (with the state seen, for the timeout's message).
enum Probe<T> {
    Done(T),
    Wait(String),
}

/// One failed launch attempt, for the final error.
struct Attempt {
    instance_type: String,
    zone: Option<String>,
    market: &'static str,
    code: String,
    message: String,
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

    /// `plan doctor`: the launch request apply would send (same image, profile, tags, root volume, market), with
    /// `DryRun`, so IAM judges exactly what apply will ask. `Ok` is never expected: AWS answers DryRunOperation
    /// when it would be allowed, UnauthorizedOperation when not.
    pub async fn dry_run_launch(
        &self,
        spec: &InstanceSpec,
        tags: &Tags,
        image: &str,
        instance_type: &str,
        market: &str,
    ) -> std::result::Result<(), aws_sdk_ec2::error::SdkError<RunInstancesError>> {
        let root_device = self.root_device_name(image).await;
        self.run_request(
            spec,
            tags,
            image,
            &root_device,
            None,
            instance_type,
            None,
            market,
        )
        .dry_run(true)
        .send()
        .await
        .map(|_| ())
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
                    return Err(Error::Runtime(format!(
                        "volume {id} (tagged with this step's token {}) is in {found_az}, but instance \
                         {instance_id} is in {az}\n  = help: delete or move the volume (snapshot it and restore \
                         the snapshot in {az}), then apply again",
                        tags.token
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
                    return Err(Error::Runtime(format!(
                        "volume {volume_id} is attached to instance {}, not to {instance_id}\n  = help: detach it \
                         from there (or terminate that instance), then apply again",
                        other.instance_id().unwrap_or("?")
                    )));
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
                    return Err(Error::Runtime(format!(
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

    /// RunInstances across markets × types × zones until one launches. Returns the id and the market.
    async fn launch(
        &self,
        spec: &InstanceSpec,
        tags: &Tags,
        on_event: &mut (dyn FnMut(ProvisionEvent) + Send),
    ) -> Result<(String, &'static str)> {
        if spec.instance_types.is_empty() {
            return Err(Error::Runtime(format!(
                "instance step {} has no instance_types\n  = help: list at least one, e.g. `instance_types: [g5.2xlarge]`",
                tags.step
            )));
        }
        let image = self
            .resolve_image(spec.image.as_deref(), &tags.step)
            .await?;
        let root_device = self.root_device_name(&image).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut script = spec
            .max_lifetime
            .map(|lifetime| lifetime_user_data(lifetime, now));
        if let Some(ttl) = spec.ttl {
            let text = script.get_or_insert_with(|| "#!/bin/sh\n".to_string());
            text.push_str(&crate::ttl::user_data(ttl, now + ttl.as_secs()));
        }
        let user_data = script.map(|s| base64(s.as_bytes()));
        let markets: &[&'static str] = match spec.market {
            Market::Spot => &["spot"],
            Market::OnDemand => &["on-demand"],
            Market::SpotThenOnDemand => &["spot", "on-demand"],
        };

        let mut zones_of_type: HashMap<&str, Vec<Option<String>>> = HashMap::new();
        let mut attempts: Vec<Attempt> = Vec::new();
        for &market in markets {
            for instance_type in &spec.instance_types {
                if !zones_of_type.contains_key(instance_type.as_str()) {
                    let zones = self.zones_for(spec, instance_type).await;
                    zones_of_type.insert(instance_type.as_str(), zones);
                }
                let zones = zones_of_type
                    .get(instance_type.as_str())
                    .cloned()
                    .unwrap_or_default();
                for zone in zones {
                    let request = self.run_request(
                        spec,
                        tags,
                        &image,
                        &root_device,
                        user_data.as_deref(),
                        instance_type,
                        zone.as_deref(),
                        market,
                    );
                    let result = request
                        .customize()
                        .config_override(
                            aws_sdk_ec2::config::Config::builder()
                                .retry_classifier(NoRetryOnFailover),
                        )
                        .send()
                        .await;
                    let err = match result {
                        Ok(out) => {
                            let id = out
                                .instances()
                                .first()
                                .and_then(|i| i.instance_id())
                                .ok_or_else(|| {
                                    Error::Runtime(
                                        "RunInstances answered without an instance".into(),
                                    )
                                })?;
                            tracing::info!(instance = %id, %instance_type, zone = ?zone, market, "launched");
                            return Ok((id.to_string(), market));
                        }
                        Err(err) => err,
                    };
                    let code = err.code().unwrap_or_default().to_string();
                    let where_ = describe_slot(instance_type, zone.as_deref(), market);
                    let Some(scope) = failover_scope(&code, market) else {
                        let mut help = String::from(
                            "this is not a capacity error, so no other type or zone was tried; fix the cause and apply again",
                        );
                        if code == "InvalidParameterValue" && spec.profile.is_some() {
                            help.push_str(
                                " (an instance profile created moments ago can take a few seconds to be usable)",
                            );
                        }
                        if !attempts.is_empty() {
                            help.push_str(&format!(
                                "\n  = note: tried before: {}",
                                attempts_summary(&attempts)
                            ));
                        }
                        return Err(aws_error(
                            &format!("could not launch {where_}"),
                            &err,
                            &help,
                        ));
                    };
                    let message = err.message().unwrap_or_default().to_string();
                    tracing::warn!(%instance_type, zone = ?zone, market, %code, %message, "no capacity; failing over");
                    on_event(ProvisionEvent::Failover {
                        instance_type: instance_type.clone(),
                        availability_zone: zone.clone(),
                        market: market.to_string(),
                        code: code.clone(),
                        message: message.clone(),
                    });
                    attempts.push(Attempt {
                        instance_type: instance_type.clone(),
                        zone: zone.clone(),
                        market,
                        code,
                        message,
                    });
                    if scope == Scope::Type {
                        // A limit on the type (or the market), not on a zone: other zones would fail the same way.
                        break;
                    }
                }
            }
        }
        Err(Error::Runtime(format!(
            "no capacity for instance step {}: every instance type, availability zone and market was tried:\n{}\n  \
             = help: add instance types (or availability zones) to the step, use `market: spot-then-on-demand`, \
             ask AWS for a higher quota if a limit was hit, or apply again later",
            tags.step,
            attempts
                .iter()
                .map(|a| format!(
                    "    - {}: {}: {}",
                    describe_slot(&a.instance_type, a.zone.as_deref(), a.market),
                    a.code,
                    a.message
                ))
                .collect::<Vec<_>>()
                .join("\n")
        )))
    }

    #[allow(clippy::too_many_arguments)]
    fn run_request(
        &self,
        spec: &InstanceSpec,
        tags: &Tags,
        image: &str,
        root_device: &str,
        user_data: Option<&str>,
        instance_type: &str,
        zone: Option<&str>,
        market: &str,
    ) -> aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder {
        let root = EbsBlockDevice::builder()
            .encrypted(true)
            .volume_type(VolumeType::Gp3)
            .delete_on_termination(true)
            .set_volume_size(spec.root_size_bytes.map(gib_ceil));
        let mut request = self
            .ec2
            .run_instances()
            .image_id(image)
            .instance_type(InstanceType::from(instance_type))
            .min_count(1)
            .max_count(1)
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .build(),
            )
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(root_device)
                    .ebs(root.build())
                    .build(),
            )
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .tag_specifications(tags.spec(ResourceType::Instance))
            .tag_specifications(tags.spec(ResourceType::Volume))
            .set_user_data(user_data.map(str::to_string))
            .set_subnet_id(spec.subnet.clone());
        if let Some(profile) = &spec.profile {
            request = request.iam_instance_profile(
                IamInstanceProfileSpecification::builder()
                    .name(profile)
                    .build(),
            );
        }
        for group in &spec.security_groups {
            request = request.security_group_ids(group);
        }
        if let Some(zone) = zone {
            request = request.placement(Placement::builder().availability_zone(zone).build());
        }
        if market == "spot" {
            request = request.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(
                        SpotMarketOptions::builder()
                            .spot_instance_type(SpotInstanceType::OneTime)
                            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                            .build(),
                    )
                    .build(),
            );
        }
        request
    }

    /// An AMI id as is; `ssm:/path` through GetParameter.
    async fn resolve_image(&self, image: Option<&str>, step: &str) -> Result<String> {
        let Some(image) = image else {
            return Err(Error::Runtime(format!(
                "instance step {step} has no image\n  = help: give an AMI id or `ssm:/path` of a public parameter, \
                 e.g. `ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64`"
            )));
        };
        let Some(name) = image.strip_prefix("ssm:") else {
            return Ok(image.to_string());
        };
        let out = self.ssm.get_parameter().name(name).send().await.map_err(|err| {
            aws_error(
                &format!("could not resolve the image of instance step {step} from SSM parameter {name}"),
                &err,
                "check the parameter's name and region (public AMI parameters live under /aws/service/), and \
                 ssm:GetParameter in the orchestrator's IAM policy",
            )
        })?;
        out.parameter()
            .and_then(|p| p.value())
            .map(str::to_string)
            .ok_or_else(|| Error::Runtime(format!("SSM parameter {name} has no value")))
    }

    /// The image's root device name (where the encrypted gp3 root goes), else `/dev/sda1`.
    async fn root_device_name(&self, image: &str) -> String {
        match self.ec2.describe_images().image_ids(image).send().await {
            Ok(out) => out
                .images()
                .first()
                .and_then(|i| i.root_device_name())
                .unwrap_or(DEFAULT_ROOT_DEVICE)
                .to_string(),
            Err(err) => {
                // Not fatal: RunInstances reports a bad image itself, with its own message.
                tracing::warn!(%image, error = %DisplayErrorContext(&err), "DescribeImages failed; assuming root device {DEFAULT_ROOT_DEVICE}");
                DEFAULT_ROOT_DEVICE.to_string()
            }
        }
    }

    /// The zones to try for a type: the step's, else the region's zones that offer it, else AWS's choice
    /// (`None`). With a subnet, the subnet decides the zone.
    async fn zones_for(&self, spec: &InstanceSpec, instance_type: &str) -> Vec<Option<String>> {
        if spec.subnet.is_some() {
            return vec![None];
        }
        if !spec.availability_zones.is_empty() {
            return spec.availability_zones.iter().cloned().map(Some).collect();
        }
        let mut zones = Vec::new();
        let mut pages = self
            .ec2
            .describe_instance_type_offerings()
            .location_type(LocationType::AvailabilityZone)
            .filters(filter("instance-type", [instance_type]))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            match page {
                Ok(page) => zones.extend(
                    page.instance_type_offerings()
                        .iter()
                        .filter_map(|o| o.location().map(str::to_string)),
                ),
                Err(err) => {
                    tracing::warn!(%instance_type, error = %DisplayErrorContext(&err), "DescribeInstanceTypeOfferings failed; letting AWS choose the zone");
                    return vec![None];
                }
            }
        }
        if zones.is_empty() {
            return vec![None];
        }
        zones.sort();
        zones.dedup();
        zones.into_iter().map(Some).collect()
    }

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
                        Err(Error::Runtime(format!(
                            "instance {instance_id} is {} instead of running: {reason}\n  = help: {help}",
                            state_str(other)
                        )))
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
                        Error::Runtime(format!("DescribeInstanceInformation filter: {e}"))
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
            .ok_or_else(|| Error::Runtime("CreateVolume answered without a volume id".into()))?;
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
                    Some(other) => Err(Error::Runtime(format!(
                        "volume {volume_id} is {} instead of available\n  = help: an `error` volume cannot be \
                         used: delete it and apply again",
                        other.as_str()
                    ))),
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
            return Err(Error::Runtime(format!(
                "instance {instance_id} does not exist, so no volume can be attached to it\n  = help: apply again: \
                 the instance step runs again first"
            )));
        };
        let used: Vec<&str> = instance
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.device_name())
            .chain(instance.root_device_name())
            .chain(taken.iter().map(String::as_str))
            .collect();
        pick_device(&used).ok_or_else(|| {
            Error::Runtime(format!(
                "instance {instance_id} has no free device name left in /dev/sdf../dev/sdp\n  = help: detach \
                 volumes it no longer needs"
            ))
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
                return Err(Error::Runtime(format!(
                    "timed out after {} ({polls} polls) waiting for {what}; last seen: {last}\n  = help: {help}",
                    humantime::format_duration(Duration::from_millis(elapsed.as_millis() as u64))
                )));
            }
            let delay = delays.next().unwrap_or(self.poll.max);
            tracing::debug!(%what, state = %last, ?delay, "waiting");
            tokio::time::sleep(delay.min(timeout - elapsed)).await;
        }
    }
}

/// Which failed launches fail over, and how far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// This zone has no capacity (or does not support the type): try the next zone.
    Zone,
    /// A limit on the type or the market: skip the type's other zones.
    Type,
}

/// The failover codes of RunInstances (`None`: not a capacity error, so give up).
fn failover_scope(code: &str, market: &str) -> Option<Scope> {
    match code {
        // A subnet with no free address is a zone's problem too: another zone has another subnet.
        "InsufficientInstanceCapacity" | "Unsupported" | "InsufficientFreeAddressesInSubnet" => {
            Some(Scope::Zone)
        }
        // VcpuLimitExceeded is what AWS answers for on-demand vCPU quotas today; the quota is per family.
        "InstanceLimitExceeded" | "VcpuLimitExceeded" => Some(Scope::Type),
        "SpotMaxPriceTooLow" if market == "spot" => Some(Scope::Zone),
        "MaxSpotInstanceCountExceeded" if market == "spot" => Some(Scope::Type),
        _ => None,
    }
}

/// Keeps the SDK from retrying the errors that fail over: another attempt on the same type and zone, after
/// backoff, almost never finds capacity; the next type or zone might.
#[derive(Debug)]
struct NoRetryOnFailover;

impl ClassifyRetry for NoRetryOnFailover {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let code = match ctx.output_or_error() {
            Some(Err(err)) => err
                .as_operation_error()
                .and_then(|e| e.downcast_ref::<RunInstancesError>())
                .and_then(|e| e.code()),
            _ => None,
        };
        match code {
            Some(code) if failover_scope(code, "spot").is_some() => RetryAction::RetryForbidden,
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "sortie: capacity errors fail over instead of retrying"
    }
}

fn describe_slot(instance_type: &str, zone: Option<&str>, market: &str) -> String {
    format!(
        "{instance_type} in {} ({market})",
        zone.unwrap_or("a zone of AWS's choice")
    )
}

fn attempts_summary(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .map(|a| {
            format!(
                "{}: {}",
                describe_slot(&a.instance_type, a.zone.as_deref(), a.market),
                a.code
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn is_not_found(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "InvalidInstanceID.NotFound" | "InvalidVolume.NotFound" | "InvalidInstanceID.Malformed"
        )
    )
}

/// An SDK error as `what: CODE: message (request id …)`: EC2 errors are unmodeled, and DisplayErrorContext
/// would print the whole raw response for them. Errors without a code (no answer: network, timeout,
/// credentials) keep DisplayErrorContext's chain of causes.
fn aws_error<E>(what: &str, err: &aws_sdk_ec2::error::SdkError<E>, help: &str) -> Error
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    let cause = match (err.as_service_error(), err.code()) {
        (Some(_), Some(code)) => {
            let mut text = format!("{code}: {}", err.message().unwrap_or("(no message)"));
            if let Some(id) = err.request_id() {
                text.push_str(&format!(" (request id {id})"));
            }
            text
        }
        _ => DisplayErrorContext(err).to_string(),
    };
    Error::Runtime(format!("{what}: {cause}\n  = help: {help}"))
}

fn filter<'a>(name: &str, values: impl IntoIterator<Item = &'a str>) -> Filter {
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
fn base64(data: &[u8]) -> String {
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
    fn failover_codes_depend_on_the_market() {
        assert_eq!(
            failover_scope("InsufficientInstanceCapacity", "on-demand"),
            Some(Scope::Zone)
        );
        assert_eq!(
            failover_scope("InsufficientInstanceCapacity", "spot"),
            Some(Scope::Zone)
        );
        assert_eq!(
            failover_scope("Unsupported", "on-demand"),
            Some(Scope::Zone)
        );
        assert_eq!(
            failover_scope("InsufficientFreeAddressesInSubnet", "on-demand"),
            Some(Scope::Zone)
        );
        assert_eq!(
            failover_scope("InstanceLimitExceeded", "on-demand"),
            Some(Scope::Type)
        );
        assert_eq!(
            failover_scope("MaxSpotInstanceCountExceeded", "spot"),
            Some(Scope::Type)
        );
        assert_eq!(
            failover_scope("MaxSpotInstanceCountExceeded", "on-demand"),
            None
        );
        assert_eq!(
            failover_scope("SpotMaxPriceTooLow", "spot"),
            Some(Scope::Zone)
        );
        assert_eq!(failover_scope("InvalidParameterValue", "on-demand"), None);
        assert_eq!(failover_scope("UnauthorizedOperation", "spot"), None);
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
