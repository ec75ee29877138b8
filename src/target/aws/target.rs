//! The `aws` target as a command uses it: one SDK configuration and one set of clients, built once per command
//! and shared by every step. It creates instances and volumes, gives the SSM host of an instance, and destroys
//! what a run owns.

use std::time::Duration;

use indexmap::IndexMap;

use crate::error::{Error, Result};
use crate::host::ssm::{SsmHost, SsmPoll};
use crate::plan::{InstanceSpec, Plan, StateLocation, VolumeSpec};
use crate::state::{Resource, ResourceKind};
use crate::target::aws::objects::output_location;
use crate::target::aws::{AwsProvider, PollConfig, ProvisionEvent, Tags};
use crate::target::Created;

/// The volume script (docs/HOST_PROTOCOL.md): find the NVMe device by volume id, mkfs only when empty, mount, fstab.
pub const VOLUME_SCRIPT: &str = include_str!("../../host/volume.sh");

/// How long a cancelled step on an SSM host gets between SIGTERM and SIGKILL.
pub const CANCEL_GRACE: Duration = Duration::from_secs(30);

/// `SORTIE_POLL_INTERVAL` (e.g. `200ms`) shortens every AWS poll: real AWS needs seconds, a test endpoint not.
pub fn poll_override() -> Option<Duration> {
    std::env::var("SORTIE_POLL_INTERVAL")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
}

pub fn provider_poll() -> PollConfig {
    match poll_override() {
        Some(d) => PollConfig {
            initial: d,
            max: d * 4,
            ..PollConfig::default()
        },
        None => PollConfig::default(),
    }
}

fn ssm_poll() -> SsmPoll {
    match poll_override() {
        Some(d) => SsmPoll {
            schedule: crate::backoff::Backoff::new(d, 1.5, d * 4),
            relaxed_max: d * 4,
            ..SsmPoll::default()
        },
        None => SsmPoll::default(),
    }
}

/// Cheap to clone: the clients share one connection pool and credentials cache.
#[derive(Clone, Debug)]
pub struct AwsTarget {
    pub provider: AwsProvider,
    pub s3: aws_sdk_s3::Client,
    state: StateLocation,
    plan: String,
}

impl AwsTarget {
    pub async fn new(plan: &Plan) -> AwsTarget {
        let config = crate::target::aws::config::sdk_config(&plan.target).await;
        AwsTarget {
            provider: AwsProvider::from_config(&config, provider_poll()),
            s3: crate::target::aws::config::s3_client(&config),
            state: plan.state.clone(),
            plan: plan.name.clone(),
        }
    }

    pub fn ec2(&self) -> &aws_sdk_ec2::Client {
        &self.provider.ec2
    }

    /// The SSM host of `instance_id`, its command output beside run `run`'s state (with S3 state).
    pub fn host(&self, run: &str, instance_id: &str) -> SsmHost {
        SsmHost {
            ssm: self.provider.ssm.clone(),
            s3: self.s3.clone(),
            instance_id: instance_id.to_string(),
            output: output_location(&self.state, &self.plan, run),
            poll: ssm_poll(),
        }
    }

    /// Why the instance is gone (terminated, stopped, impaired), if it is.
    pub async fn host_gone(&self, instance_id: &str) -> Option<String> {
        crate::run::step_watch::host_gone(self.ec2(), instance_id).await
    }

    /// Launches (or adopts, by its token) an instance. One that launched but never became usable (SSM never came
    /// online) is terminated: the next attempt has a new token and would never adopt it.
    pub async fn create_instance(
        &self,
        spec: &InstanceSpec,
        tags: &Tags,
        on_event: &mut (dyn FnMut(ProvisionEvent) + Send),
    ) -> Result<Created> {
        let out = match self.provider.create_instance(spec, tags, on_event).await {
            Ok(out) => out,
            Err(e) => {
                if let Ok(Some(id)) = self.provider.find_instance_by_token(&tags.token).await {
                    if let Err(t) = self.provider.terminate_instance(&id).await {
                        tracing::warn!("could not terminate {id} after a failed launch: {t}");
                    }
                }
                return Err(e);
            }
        };
        let mut outputs = IndexMap::from([
            ("instance_id".to_string(), out.instance_id.clone()),
            ("availability_zone".to_string(), out.availability_zone),
            ("private_ip".to_string(), out.private_ip),
            ("instance_type".to_string(), out.instance_type),
            ("market".to_string(), out.market),
            ("image_id".to_string(), out.image_id),
            (
                "connect".to_string(),
                format!("aws ssm start-session --target {}", out.instance_id),
            ),
        ]);
        if let Some(ttl) = spec.ttl {
            // The host armed its deadline just before launch: launch time + ttl is within seconds of it.
            let deadline = out.launched_at + ttl.as_secs();
            outputs.insert("expires_at".into(), crate::ttl::rfc3339(deadline));
        }
        let resources = vec![Resource::new(ResourceKind::Ec2Instance, out.instance_id)];
        Ok(Created { outputs, resources })
    }

    /// Creates (or adopts) a volume, attaches it to `host` and mounts it at `mount` there.
    pub async fn create_volume(
        &self,
        spec: &VolumeSpec,
        host: &SsmHost,
        az: &str,
        tags: &Tags,
        mount: &str,
    ) -> Result<Created> {
        let vol = self
            .provider
            .create_volume(spec, &host.instance_id, az, tags)
            .await?;
        let resources = vec![Resource {
            keep: spec.keep,
            host: Some(host.instance_id.clone()),
            mount: Some(mount.to_string()),
            ..Resource::new(ResourceKind::EbsVolume, vol.volume_id.clone())
        }];
        let script = volume_script(&["mount", &vol.volume_id, &vol.device, mount]);
        let inv = host.run(&script, Duration::from_secs(600)).await?;
        if !inv.succeeded() {
            return Err(Error::runtime(format!(
                "cannot mount volume {} at {mount}: {}",
                vol.volume_id,
                inv.describe()
            )));
        }
        let mut outputs: IndexMap<String, String> = inv
            .stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| matches!(*k, "volume_id" | "device" | "mount_path"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        outputs.entry("volume_id".into()).or_insert(vol.volume_id);
        Ok(Created { outputs, resources })
    }

    /// Destroys AWS resources: unmounts volumes (best effort, so no write is lost), then terminates every
    /// instance, then deletes the volumes. Instances go first and always, whatever fails with a volume: a volume
    /// stuck in `detaching` must never keep a GPU running until its max_lifetime. A terminated instance releases
    /// its volumes, so they are deleted after. Every resource is tried; the first error is returned after all.
    pub async fn destroy(&self, resources: &[(String, Vec<Resource>)]) -> Result<Vec<String>> {
        let mut instances: Vec<(&str, &str)> = Vec::new();
        let mut volumes: Vec<(&str, &Resource)> = Vec::new();
        for (step, rs) in resources {
            for r in rs.iter().filter(|r| !r.destroyed && !r.keep) {
                match r.kind {
                    ResourceKind::Ec2Instance => instances.push((step, &r.id)),
                    ResourceKind::EbsVolume => volumes.push((step, r)),
                    other => {
                        return Err(Error::runtime(format!(
                            "cannot destroy a `{other}` resource on the aws target"
                        )))
                    }
                }
            }
        }
        for (_, r) in &volumes {
            if let (Some(instance), Some(mount)) = (&r.host, &r.mount) {
                self.unmount(instance, mount).await;
            }
        }
        let mut failed: Vec<&str> = Vec::new();
        let mut first_error = None;
        for (step, id) in &instances {
            if let Err(e) = self.provider.terminate_instance(id).await {
                failed.push(step);
                first_error.get_or_insert(e);
            }
        }
        for (step, r) in &volumes {
            if let Err(e) = self.provider.delete_volume(&r.id).await {
                failed.push(step);
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(resources
                .iter()
                .map(|(step, _)| step.clone())
                .filter(|step| !failed.contains(&step.as_str()))
                .collect()),
        }
    }

    /// After a teardown: what of run `run` still exists in AWS that it should have destroyed (`keep` volumes
    /// stay). An error naming them, if any.
    pub async fn check_gone(&self, run: &str, destroyed: &[(String, Vec<Resource>)]) -> Result<()> {
        let left: Vec<(String, String)> = self
            .provider
            .resources_of_run(run)
            .await?
            .into_iter()
            .filter(|(_, id)| {
                !destroyed
                    .iter()
                    .flat_map(|(_, r)| r)
                    .any(|r| r.keep && r.id == *id)
            })
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        Err(Error::runtime(format!(
            "teardown finished but these resources of run {run} still exist: {}",
            left.iter()
                .map(|(k, id)| format!("{k} {id}"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// Unmounts a volume before it is detached, so no write is lost. Best effort: the instance may be gone.
    async fn unmount(&self, instance: &str, mount: &str) {
        let host = SsmHost {
            output: None,
            ..self.host("", instance)
        };
        let script = volume_script(&["unmount", mount]);
        match tokio::time::timeout(
            Duration::from_secs(180),
            host.run(&script, Duration::from_secs(120)),
        )
        .await
        {
            Ok(Ok(inv)) if inv.succeeded() => {}
            Ok(Ok(inv)) => tracing::warn!("unmounting {mount} on {instance}: {}", inv.describe()),
            Ok(Err(e)) => tracing::warn!("unmounting {mount} on {instance}: {e}"),
            Err(_) => {
                tracing::warn!("unmounting {mount} on {instance} took too long; detaching anyway")
            }
        }
    }
}

/// The volume script, written to the host and run with `args` (each shell-quoted).
fn volume_script(args: &[&str]) -> String {
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            shlex::try_quote(a)
                .map(|q| q.into_owned())
                .unwrap_or_default()
        })
        .collect();
    format!(
        "cat > /tmp/sortie-volume.sh <<'SORTIE_VOLUME_EOF'\n{VOLUME_SCRIPT}SORTIE_VOLUME_EOF\nsh /tmp/sortie-volume.sh {}\n",
        args.join(" ")
    )
}
