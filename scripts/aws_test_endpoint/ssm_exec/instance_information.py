"""DescribeInstanceInformation: the managed instances, filtered (both filter syntaxes) and paged."""

from __future__ import annotations

from typing import Any

from moto.core.responses import ActionResult
from moto.core.utils import utcnow
from moto.ssm.responses import SimpleSystemManagerResponse

from .agent import AGENT_VERSION
from .errors import SSMError
from .instances import managed_instances
from .paging import _page


def _filters(self: SimpleSystemManagerResponse) -> dict[str, list[str]]:
    legacy = self._get_param("InstanceInformationFilterList") or []
    modern = self._get_param("Filters") or []
    if legacy and modern:
        raise SSMError(
            "ValidationException",
            "InstanceInformationFilterList and Filters cannot be used together",
        )
    out: dict[str, list[str]] = {}
    for f in legacy:
        out.setdefault(f.get("key", ""), []).extend(f.get("valueSet") or [])
    for f in modern:
        out.setdefault(f.get("Key", ""), []).extend(f.get("Values") or [])
    return out


def describe_instance_information(self: SimpleSystemManagerResponse) -> ActionResult:
    filters = _filters(self)
    now = utcnow()
    infos = []
    for inst, ping in managed_instances(self.current_account, self.region):
        tags = {t["key"]: t["value"] for t in inst.get_tags()} if hasattr(inst, "get_tags") else {}
        info = {
            "InstanceId": inst.id,
            "PingStatus": ping,
            "LastPingDateTime": now,
            "AgentVersion": AGENT_VERSION,
            "IsLatestVersion": True,
            "PlatformType": "Linux",
            "PlatformName": "Amazon Linux",
            "PlatformVersion": "2023",
            "ResourceType": "EC2Instance",
            "IPAddress": inst.private_ip or "",
            "ComputerName": inst.private_dns_name if inst.private_ip else "",
            "SourceId": inst.id,
            "SourceType": "AWS::EC2::Instance",
        }
        keep = True
        for key, values in filters.items():
            if key == "InstanceIds":
                keep = inst.id in values
            elif key == "PingStatus":
                keep = ping in values
            elif key == "PlatformTypes":
                keep = "Linux" in values
            elif key == "ResourceType":
                keep = "EC2Instance" in values
            elif key == "AgentVersion":
                keep = AGENT_VERSION in values
            elif key.startswith("tag:"):
                keep = tags.get(key[4:]) in values
            elif key == "tag-key":
                keep = any(v in tags for v in values)
            else:
                raise SSMError("InvalidInstanceInformationFilterValue", f"Filter key {key!r} is not supported")
            if not keep:
                break
        if keep:
            infos.append(info)
    page, token = _page(infos, self._get_param("MaxResults"), self._get_param("NextToken"), 10, 5, 50)
    result: dict[str, Any] = {"InstanceInformationList": page}
    if token:
        result["NextToken"] = token
    return ActionResult(result)
