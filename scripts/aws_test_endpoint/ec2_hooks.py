"""EC2 hooks: volumes appear in sandboxes, power-off kills the instance's processes.

moto's behaviour is kept; these wrappers only add the local side effects:

* AttachVolume  -> ``<sandbox>/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<hex>`` link
  to a sparse ``<sandbox>/dev/nvme<N>n1`` of the volume's size (root volumes included: moto
  attaches one per instance at launch, like the nvme0n1 of a Nitro instance);
* AttachVolume at a device name the instance already uses -> InvalidParameterValue ("Attachment
  point /dev/sdf is already in use"), as AWS refuses it (AttachVolume, EC2 API Reference: the device
  "cannot be in use by another device"); moto silently replaced the instance's mapping, so the first
  volume stayed attached to a terminated instance for ever;
* DetachVolume  -> the link and device node go away (the volume's data stays). DetachVolume
  with only a VolumeId (valid in AWS) made moto answer 500; it now detaches from the
  instance the volume is attached to;
* DeleteVolume  -> the volume's backing file goes away;
* RunInstances with IamInstanceProfile and a count > 1 -> every instance gets the profile
  association (moto associated only the first one);
* RunInstances with a block device mapping that gives neither a size nor a snapshot (e.g. only
  ``Encrypted`` and ``VolumeType`` for the root device) -> the size comes from the AMI's own
  mapping, as AWS merges the two ("Block device mappings", EC2 User Guide: a mapping for a
  device the AMI maps overrides only what it sets); moto answered MissingParameter;
* StopInstances / TerminateInstances / RebootInstances -> every process of the instance's
  sandbox is SIGKILLed, including daemons that escaped with setsid (found through
  /proc/*/environ), and its running SSM invocations end as Failed;
* with a root volume deletion delay (``--root-volume-deletion-delay``, ``/_sortie/delays``), the
  DeleteOnTermination volumes of a terminated instance stay in DescribeVolumes as ``deleting`` for
  that long, then go, as AWS deletes them some time after the instance terminated (moto deleted them
  at once). DeleteVolume of a ``deleting`` volume changes nothing.
"""

from __future__ import annotations

import time
from typing import Any

from moto.ec2.exceptions import EC2ClientError, InvalidVolumeAttachmentError
from moto.ec2.models.elastic_block_store import EBSBackend, Volume
from moto.ec2.models.instances import Instance
from moto.ec2.responses.instances import InstanceResponse

from . import runtime
from .sandbox import log

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True

    orig_attach = EBSBackend.attach_volume
    orig_detach = EBSBackend.detach_volume
    orig_delete = EBSBackend.delete_volume

    def attach_volume(self: Any, volume_id: str, instance_id: str, device_path: str,
                      delete_on_termination: bool = False) -> Any:
        instance = self.get_instance(instance_id)  # type: ignore[attr-defined]
        if device_path in instance.block_device_mapping:
            raise EC2ClientError(
                "InvalidParameterValue",
                f"Invalid value '{device_path}' for unixDevice. Attachment point {device_path} is already in use",
            )
        attachment = orig_attach(self, volume_id, instance_id, device_path, delete_on_termination)
        if attachment is not None:
            try:
                volume = self.get_volume(volume_id)
                runtime.get().sandboxes.attach_volume(instance_id, volume_id, volume.size)
            except Exception as e:  # never break the AWS call over a local side effect
                log(f"attach {volume_id} to {instance_id}: sandbox link failed: {e}")
        return attachment

    def detach_volume(self: Any, volume_id: str, instance_id: str | None, device_path: str | None) -> Any:
        if not instance_id:
            volume = self.get_volume(volume_id)
            if volume.attachment is None:
                raise InvalidVolumeAttachmentError(volume_id, "")
            instance_id = volume.attachment.instance.id
        attachment = orig_detach(self, volume_id, instance_id, device_path)
        try:
            runtime.get().sandboxes.detach_volume(instance_id, volume_id)
        except Exception as e:
            log(f"detach {volume_id} from {instance_id}: sandbox cleanup failed: {e}")
        return attachment

    def delete_volume(self: Any, volume_id: str) -> Any:
        _purge_deleted(self)
        if volume_id in runtime.get().deleting:
            return self.volumes[volume_id]  # already going; it goes when its delay is up
        volume = orig_delete(self, volume_id)
        runtime.get().sandboxes.delete_volume(volume_id)
        return volume

    EBSBackend.attach_volume = attach_volume  # type: ignore[method-assign]
    EBSBackend.detach_volume = detach_volume  # type: ignore[method-assign]
    EBSBackend.delete_volume = delete_volume  # type: ignore[method-assign]
    _install_deletion_delay()

    for name in ("stop", "terminate", "reboot"):
        _wrap_power_off(name)

    orig_parse = InstanceResponse._parse_block_device_mapping

    def parse_block_device_mapping(self: Any) -> Any:
        for mapping in self._get_param("BlockDeviceMappings", []) or []:
            ebs = mapping.get("Ebs")
            if isinstance(ebs, dict) and not ebs.get("VolumeSize") and not ebs.get("SnapshotId"):
                ebs["VolumeSize"] = _ami_root_size(self)
        return orig_parse(self)

    InstanceResponse._parse_block_device_mapping = parse_block_device_mapping  # type: ignore[method-assign]

    orig_run = InstanceResponse.run_instances

    def run_instances(self: Any) -> Any:
        result = orig_run(self)
        name = self._get_param("IamInstanceProfile.Name")
        arn = self._get_param("IamInstanceProfile.Arn")
        if name or arn:
            for inst in getattr(result.result, "instances", [])[1:]:
                if not self.ec2_backend.iam_instance_profile_associations.get(inst.id):
                    self.ec2_backend.associate_iam_instance_profile(
                        instance_id=inst.id, iam_instance_profile_name=name, iam_instance_profile_arn=arn
                    )
        return result

    InstanceResponse.run_instances = run_instances  # type: ignore[method-assign]


def _ami_root_size(response: Any) -> int:
    """The size (GiB) of the requested AMI's root snapshot; 8 when moto does not know it."""
    try:
        image = response.ec2_backend.describe_images(ami_ids=[response._get_param("ImageId")])[0]
        return int(image.ebs_snapshot.volume.size)
    except Exception:
        return 8


def _purge_deleted(backend: Any) -> None:
    """Removes the `deleting` volumes whose delay is up: they are gone for every later call."""
    for volume_id in runtime.get().deleted_volumes(backend.volumes):
        backend.volumes.pop(volume_id, None)
        runtime.get().sandboxes.delete_volume(volume_id)


def _install_deletion_delay() -> None:
    orig_status = Volume.status
    orig_describe = EBSBackend.describe_volumes
    orig_get = EBSBackend.get_volume
    orig_teardown = Instance.teardown_defaults

    def status(self: Any) -> str:
        return "deleting" if self.id in runtime.get().deleting else orig_status.fget(self)

    def describe_volumes(self: Any, *args: Any, **kwargs: Any) -> Any:
        _purge_deleted(self)
        return orig_describe(self, *args, **kwargs)

    def get_volume(self: Any, volume_id: str) -> Any:
        _purge_deleted(self)
        return orig_get(self, volume_id)

    def teardown_defaults(self: Any) -> None:
        # moto's teardown (detach every volume, delete the DeleteOnTermination ones), the deletion delayed
        rt = runtime.get()
        delay = rt.delays["root_volume_deletion"]
        if delay <= 0:
            return orig_teardown(self)
        for device_path, mapping in list(self.block_device_mapping.items()):
            self.ec2_backend.detach_volume(mapping.volume_id, self.id, device_path)
            if mapping.delete_on_termination:
                with rt.lock:
                    rt.deleting[mapping.volume_id] = time.monotonic() + delay
        return None

    Volume.status = property(status)  # type: ignore[assignment,method-assign]
    EBSBackend.describe_volumes = describe_volumes  # type: ignore[method-assign]
    EBSBackend.get_volume = get_volume  # type: ignore[method-assign]
    Instance.teardown_defaults = teardown_defaults  # type: ignore[method-assign]


def _wrap_power_off(name: str) -> None:
    orig = getattr(Instance, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            runtime.get().power_off(self.id)
        except Exception as e:
            log(f"{name} {self.id}: killing sandbox processes failed: {e}")
        return orig(self, *args, **kwargs)

    wrapper.__name__ = name
    setattr(Instance, name, wrapper)
