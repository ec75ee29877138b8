//! EC2 instances: create (failover in launch.rs), adopt by token, wait until running and Online in SSM, terminate.

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{Instance, InstanceLifecycleType, InstanceStateName};
use aws_sdk_ssm::types::{InstanceInformationStringFilter, PingStatus};

use super::waits::Probe;
use super::*;
use crate::error::{Error, Result};
use crate::plan::InstanceSpec;

impl AwsProvider {
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

    // ---- instances ----

    pub(super) async fn instance_by_token(&self, token: &str) -> Result<Option<Instance>> {
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
    pub(super) async fn describe_instance(&self, instance_id: &str) -> Result<Option<Instance>> {
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

    pub(super) async fn wait_running(&self, instance_id: &str) -> Result<Instance> {
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

    pub(super) async fn wait_online(&self, instance_id: &str, spec: &InstanceSpec) -> Result<()> {
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
}

pub(super) fn state_name(instance: &Instance) -> Option<InstanceStateName> {
    instance.state().and_then(|s| s.name()).cloned()
}

pub(super) fn state_str(state: Option<InstanceStateName>) -> String {
    state
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|| "in no state".into())
}
