"""Instances as SSM sees them: which are managed (Online, ConnectionLost), and what a SendCommand targets."""

from __future__ import annotations

from typing import Any

from moto.core.utils import utcnow
from moto.ec2.models import ec2_backends

from .. import runtime
from .errors import SSMError, _invalid_instance


def _instance_has_profile(ec2: Any, instance: Any) -> bool:
    return bool(getattr(instance, "iam_instance_profile", None)) or bool(
        ec2.iam_instance_profile_associations.get(instance.id)
    )


def managed_instances(account_id: str, region: str) -> list[tuple[Any, str]]:
    """(instance, PingStatus) for every instance SSM knows: running -> Online,
    stopped/stopping -> ConnectionLost; pending/terminated instances are not listed, nor, with an SSM
    registration delay, one launched less than that long ago (its agent has not registered yet)."""
    rt = runtime.get()
    ec2 = ec2_backends[account_id][region]
    now = utcnow()
    out = []
    for inst in ec2.all_instances():
        if rt.require_instance_profile and not _instance_has_profile(ec2, inst):
            continue
        if (now - inst.launch_time).total_seconds() < rt.delays["ssm_registration"]:
            continue
        state = inst.state
        if state == "running":
            out.append((inst, "Online"))
        elif state in ("stopped", "stopping"):
            out.append((inst, "ConnectionLost"))
    return out


def _resolve_targets(account_id: str, region: str, instance_ids: list[str], targets: list[dict[str, Any]]) -> list[str]:
    online = {inst.id: inst for inst, ping in managed_instances(account_id, region) if ping == "Online"}
    wanted: list[str] = []
    for iid in instance_ids:
        if iid not in wanted:
            wanted.append(iid)
    for target in targets:
        key = target.get("Key", "")
        values = target.get("Values") or []
        if key == "InstanceIds":
            for iid in values:
                if iid not in wanted:
                    wanted.append(iid)
        elif key.startswith("tag:") or key == "tag-key":
            for inst in online.values():
                tags = {t["key"]: t["value"] for t in inst.get_tags()} if hasattr(inst, "get_tags") else {}
                if key == "tag-key":
                    hit = any(v in tags for v in values)
                else:
                    hit = tags.get(key[4:]) in values
                if hit and inst.id not in wanted:
                    wanted.append(inst.id)
        else:
            raise SSMError("InvalidTarget", f"Target key {key!r} is not supported by the sortie test endpoint")
    bad = [iid for iid in wanted if iid not in online]
    if bad:
        raise _invalid_instance(bad, account_id)
    return wanted
