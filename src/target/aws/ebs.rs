//! EBS volumes: create encrypted (or adopt by token) in the instance's zone, attach at a free device, wait, delete.

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    InstanceStateName, ResourceType, Volume, VolumeAttachmentState, VolumeState, VolumeType,
};

use super::ec2::state_name;
use super::waits::Probe;
use super::*;
use crate::error::{Error, Result};
use crate::plan::VolumeSpec;

impl AwsProvider {
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
            Some(found) => adopted(&found, instance_id, az, &tags.token)?,
            None => self.new_volume(spec, az, tags).await?,
        };
        let volume = self.wait_volume_ready(&volume_id).await?;
        // Held until the attachment shows on the instance: two volume steps of one instance in this apply would
        // otherwise both see the same free device name.
        let _attaching = ATTACH.lock().await;
        let device = self.attach_to(&volume, &volume_id, instance_id).await?;
        self.wait_volume_attached(&volume_id, instance_id).await?;
        Ok(VolumeOutputs { volume_id, device })
    }

    /// The device `volume` is attached at on the instance: its attachment there, or a new one at a free device
    /// (once it has left an instance that is going away).
    async fn attach_to(
        &self,
        volume: &Volume,
        volume_id: &str,
        instance_id: &str,
    ) -> Result<String> {
        let mine = volume.attachments().iter().find(|a| {
            a.instance_id() == Some(instance_id)
                && matches!(
                    a.state(),
                    Some(VolumeAttachmentState::Attached | VolumeAttachmentState::Attaching)
                )
        });
        if let Some(attachment) = mine {
            return Ok(attachment.device().unwrap_or_default().to_string());
        }
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
                .with_help("detach it from there (or terminate that instance), then apply again"));
            }
            self.wait_volume_detached(volume_id).await?;
        }
        self.attach_free(volume_id, instance_id).await
    }

    /// Waits until the volume is in use and attached to the instance.
    async fn wait_volume_attached(&self, volume_id: &str, instance_id: &str) -> Result<()> {
        self.wait_for(
            &format!("volume {volume_id} to be attached to {instance_id}"),
            self.poll.state_timeout,
            "check the volume and the instance in the EC2 console; apply again adopts the volume",
            || async {
                let Some(v) = self.describe_volume(volume_id).await? else {
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
        .await
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

    // ---- volumes ----

    pub(super) async fn new_volume(
        &self,
        spec: &VolumeSpec,
        az: &str,
        tags: &Tags,
    ) -> Result<String> {
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

    pub(super) async fn volume_by_token(&self, token: &str) -> Result<Option<Volume>> {
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
    pub(super) async fn describe_volume(&self, volume_id: &str) -> Result<Option<Volume>> {
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

    /// Whether an instance is gone or going (terminated, shutting down, or unknown to EC2).
    pub(super) async fn is_terminating(&self, instance_id: &str) -> Result<bool> {
        Ok(match self.describe_instance(instance_id).await? {
            None => true,
            Some(i) => matches!(
                state_name(&i),
                Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
            ),
        })
    }

    /// Waits until a volume has no attachment left (its instance terminated).
    pub(super) async fn wait_volume_detached(&self, volume_id: &str) -> Result<()> {
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

    /// Until the volume is available (or already in use: an adopted one).
    pub(super) async fn wait_volume_ready(&self, volume_id: &str) -> Result<Volume> {
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

    pub(super) async fn wait_volume_gone(&self, volume_id: &str) -> Result<()> {
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
    pub(super) async fn attach_free(&self, volume_id: &str, instance_id: &str) -> Result<String> {
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
    pub(super) async fn free_device(&self, instance_id: &str, taken: &[String]) -> Result<String> {
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
}

/// The id of the volume found by this step's token, which must be in the instance's zone `az`.
fn adopted(found: &Volume, instance_id: &str, az: &str, token: &str) -> Result<String> {
    let id = found.volume_id().unwrap_or_default().to_string();
    let found_az = found.availability_zone().unwrap_or_default();
    if found_az != az {
        return Err(Error::runtime(format!(
            "volume {id} (tagged with this step's token {token}) is in {found_az}, but instance \
             {instance_id} is in {az}"
        ))
        .with_help(format!(
            "delete or move the volume (snapshot it and restore the snapshot in {az}), then apply again"
        )));
    }
    tracing::info!(volume = %id, token = %token, "adopting the volume tagged with this step's token");
    Ok(id)
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
