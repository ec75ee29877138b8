//! Launching an instance: RunInstances across markets × instance types × placements until one has capacity.
//!
//! A placement is an availability zone, or one of the step's `subnets` (a subnet lies in one zone and decides it).
//! Capacity errors fail over to the next placement or type at once: they are kept out of the SDK's retries, since
//! the same type and zone after a backoff almost never has capacity, and the next one might.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::config::interceptors::InterceptorContext;
use aws_sdk_ec2::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::operation::run_instances::RunInstancesError;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, HttpTokensState, IamInstanceProfileSpecification,
    InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceType, LocationType, MarketType, Placement,
    ResourceType, ShutdownBehavior, SpotInstanceType, SpotMarketOptions, VolumeType,
};

use crate::error::{Error, Result};
use crate::plan::InstanceSpec;
use crate::plan_file::Market;
use crate::target::aws::{
    aws_error, base64, filter, gib_ceil, lifetime_user_data, AwsProvider, ProvisionEvent, Tags,
    DEFAULT_ROOT_DEVICE,
};

/// Where one launch goes: a zone (AWS's choice when `None`), and the subnet that decides it, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Slot {
    zone: Option<String>,
    subnet: Option<String>,
}

/// What every RunInstances request of one launch shares; the type, slot and market vary between attempts.
#[derive(Clone, Copy)]
struct Request<'a> {
    spec: &'a InstanceSpec,
    tags: &'a Tags,
    image: &'a str,
    root_device: &'a str,
    user_data: Option<&'a str>,
}

/// One failed launch attempt, for the final error.
struct Attempt {
    instance_type: String,
    slot: Slot,
    market: &'static str,
    code: String,
    message: String,
}

/// How one slot went.
enum Tried {
    Launched(String),
    NoCapacity(Attempt, Scope),
}

/// The markets a step's `market` tries, in order.
fn markets(market: Market) -> &'static [&'static str] {
    match market {
        Market::Spot => &["spot"],
        Market::OnDemand => &["on-demand"],
        Market::SpotThenOnDemand => &["spot", "on-demand"],
    }
}

/// The instance's user data, base64: the `max_lifetime` guard and the `ttl` deadline, armed from now.
fn user_data(spec: &InstanceSpec) -> Option<String> {
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
    script.map(|s| base64(s.as_bytes()))
}

/// The error when every type, zone and market was tried.
fn no_capacity(step: &str, attempts: &[Attempt]) -> Error {
    Error::runtime(format!(
        "no capacity for instance step {step}: every instance type, availability zone and market was tried:\n{}",
        attempts
            .iter()
            .map(|a| format!(
                "    - {}: {}: {}",
                describe_slot(&a.instance_type, &a.slot, a.market),
                a.code,
                a.message
            ))
            .collect::<Vec<_>>()
            .join("\n")
    ))
    .with_help(
        "add instance types (or availability zones, or subnets in other zones) to the step, use `market: \
         spot-then-on-demand`, ask AWS for a higher quota if a limit was hit, or apply again later",
    )
}

impl AwsProvider {
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
        let shared = Request {
            spec,
            tags,
            image,
            root_device: &root_device,
            user_data: None,
        };
        self.run_request(
            &shared,
            instance_type,
            // The first subnet, as apply's first attempt: IAM may judge subnets apart.
            &Slot {
                zone: None,
                subnet: spec.subnets.first().cloned(),
            },
            market,
        )
        .dry_run(true)
        .send()
        .await
        .map(|_| ())
    }

    /// RunInstances across markets × types × zones until one launches. Returns the id and the market.
    pub(crate) async fn launch(
        &self,
        spec: &InstanceSpec,
        tags: &Tags,
        on_event: &mut (dyn FnMut(ProvisionEvent) + Send),
    ) -> Result<(String, &'static str)> {
        if spec.instance_types.is_empty() {
            return Err(Error::runtime(format!(
                "instance step {} has no instance_types",
                tags.step
            ))
            .with_help("list at least one, e.g. `instance_types: [g5.2xlarge]`"));
        }
        let image = self
            .resolve_image(spec.image.as_deref(), &tags.step)
            .await?;
        let root_device = self.root_device_name(&image).await;
        let user_data = user_data(spec);
        let shared = Request {
            spec,
            tags,
            image: &image,
            root_device: &root_device,
            user_data: user_data.as_deref(),
        };
        let subnets = self.subnet_slots(spec).await;
        let mut slots_of_type: HashMap<&str, Vec<Slot>> = HashMap::new();
        let mut attempts: Vec<Attempt> = Vec::new();
        for &market in markets(spec.market) {
            for instance_type in &spec.instance_types {
                if !slots_of_type.contains_key(instance_type.as_str()) {
                    let slots = match &subnets {
                        Some(slots) => slots.clone(),
                        None => self.zones_for(spec, instance_type).await,
                    };
                    slots_of_type.insert(instance_type.as_str(), slots);
                }
                let slots = slots_of_type
                    .get(instance_type.as_str())
                    .cloned()
                    .unwrap_or_default();
                for slot in slots {
                    let (attempt, scope) = match self
                        .try_slot(&shared, instance_type, slot, market, &attempts)
                        .await?
                    {
                        Tried::Launched(id) => return Ok((id, market)),
                        Tried::NoCapacity(attempt, scope) => (attempt, scope),
                    };
                    on_event(ProvisionEvent::Failover {
                        instance_type: attempt.instance_type.clone(),
                        availability_zone: attempt.slot.zone.clone(),
                        subnet: attempt.slot.subnet.clone(),
                        market: market.to_string(),
                        code: attempt.code.clone(),
                        message: attempt.message.clone(),
                    });
                    attempts.push(attempt);
                    if scope == Scope::Type {
                        // A limit on the type (or the market), not on a zone: other zones would fail the same way.
                        break;
                    }
                }
            }
        }
        Err(no_capacity(&tags.step, &attempts))
    }

    /// One RunInstances in one slot. A capacity error is a failover (with its scope); any other error ends the
    /// launch, naming what was tried before.
    async fn try_slot(
        &self,
        shared: &Request<'_>,
        instance_type: &str,
        slot: Slot,
        market: &'static str,
        before: &[Attempt],
    ) -> Result<Tried> {
        let result = self
            .run_request(shared, instance_type, &slot, market)
            .customize()
            .config_override(
                aws_sdk_ec2::config::Config::builder().retry_classifier(NoRetryOnFailover),
            )
            .send()
            .await;
        let err = match result {
            Ok(out) => {
                let id = out
                    .instances()
                    .first()
                    .and_then(|i| i.instance_id())
                    .ok_or_else(|| Error::runtime("RunInstances answered without an instance"))?;
                tracing::info!(instance = %id, %instance_type, ?slot, market, "launched");
                return Ok(Tried::Launched(id.to_string()));
            }
            Err(err) => err,
        };
        let code = err.code().unwrap_or_default().to_string();
        let Some(scope) = failover_scope(&code, market) else {
            let mut help = String::from(
                "this is not a capacity error, so no other type or zone was tried; fix the cause and apply again",
            );
            if code == "InvalidParameterValue" && shared.spec.profile.is_some() {
                help.push_str(
                    " (an instance profile created moments ago can take a few seconds to be usable)",
                );
            }
            if !before.is_empty() {
                help.push_str(&format!(
                    "\n  = note: tried before: {}",
                    attempts_summary(before)
                ));
            }
            let where_ = describe_slot(instance_type, &slot, market);
            return Err(aws_error(
                &format!("could not launch {where_}"),
                &err,
                &help,
            ));
        };
        let message = err.message().unwrap_or_default().to_string();
        tracing::warn!(%instance_type, ?slot, market, %code, %message, "no capacity; failing over");
        let attempt = Attempt {
            instance_type: instance_type.to_string(),
            slot,
            market,
            code,
            message,
        };
        Ok(Tried::NoCapacity(attempt, scope))
    }

    fn run_request(
        &self,
        shared: &Request<'_>,
        instance_type: &str,
        slot: &Slot,
        market: &str,
    ) -> aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder {
        let Request {
            spec,
            tags,
            image,
            root_device,
            user_data,
        } = *shared;
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
            .set_subnet_id(slot.subnet.clone());
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
        // A subnet decides the zone: a Placement beside it could only disagree.
        if let (Some(zone), None) = (&slot.zone, &slot.subnet) {
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
            return Err(
                Error::runtime(format!("instance step {step} has no image")).with_help(
                    "give an AMI id or `ssm:/path` of a public parameter, \
                 e.g. `ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64`",
                ),
            );
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
            .ok_or_else(|| Error::runtime(format!("SSM parameter {name} has no value")))
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

    /// The step's subnets in order, each with its zone (for events and messages), or `None` without subnets.
    /// A subnet whose zone cannot be read is still tried: RunInstances says what is wrong with it.
    async fn subnet_slots(&self, spec: &InstanceSpec) -> Option<Vec<Slot>> {
        if spec.subnets.is_empty() {
            return None;
        }
        let zones: HashMap<String, String> = match self
            .ec2
            .describe_subnets()
            .set_subnet_ids(Some(spec.subnets.clone()))
            .send()
            .await
        {
            Ok(out) => out
                .subnets()
                .iter()
                .filter_map(|s| {
                    Some((
                        s.subnet_id()?.to_string(),
                        s.availability_zone()?.to_string(),
                    ))
                })
                .collect(),
            Err(err) => {
                tracing::warn!(subnets = ?spec.subnets, error = %DisplayErrorContext(&err), "DescribeSubnets failed; launching without knowing the subnets' zones");
                HashMap::new()
            }
        };
        // `availability_zones` beside `subnets` only comes from a host re-provisioned beside its volume (the plan
        // cannot say both): the subnets of that zone.
        let pinned = |slot: &Slot| {
            spec.availability_zones.is_empty()
                || slot
                    .zone
                    .as_ref()
                    .is_some_and(|z| spec.availability_zones.contains(z))
        };
        Some(
            spec.subnets
                .iter()
                .map(|id| Slot {
                    zone: zones.get(id).cloned(),
                    subnet: Some(id.clone()),
                })
                .filter(pinned)
                .collect(),
        )
    }

    /// The zones to try for a type: the step's, else the region's zones that offer it, else AWS's choice.
    async fn zones_for(&self, spec: &InstanceSpec, instance_type: &str) -> Vec<Slot> {
        let zone = |z: Option<String>| Slot {
            zone: z,
            subnet: None,
        };
        if !spec.availability_zones.is_empty() {
            return spec
                .availability_zones
                .iter()
                .cloned()
                .map(|z| zone(Some(z)))
                .collect();
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
                    return vec![zone(None)];
                }
            }
        }
        if zones.is_empty() {
            return vec![zone(None)];
        }
        zones.sort();
        zones.dedup();
        zones.into_iter().map(|z| zone(Some(z))).collect()
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

fn describe_slot(instance_type: &str, slot: &Slot, market: &str) -> String {
    let place = match (&slot.subnet, &slot.zone) {
        (Some(subnet), Some(zone)) => format!("{zone} (subnet {subnet})"),
        (Some(subnet), None) => format!("subnet {subnet}"),
        (None, Some(zone)) => zone.clone(),
        (None, None) => "a zone of AWS's choice".to_string(),
    };
    format!("{instance_type} in {place} ({market})")
}

fn attempts_summary(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .map(|a| {
            format!(
                "{}: {}",
                describe_slot(&a.instance_type, &a.slot, a.market),
                a.code
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
