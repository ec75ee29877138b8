"""A SendCommand request, with one invocation per instance it targets."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from moto.core.utils import utcnow

from .agent import TERMINAL, _exec_timeout
from .invocation import Invocation


class SortieCommand:
    """A SendCommand request: replaces moto's Command (which targets every instance)."""

    def __init__(self, *, account_id: str, region: str, instance_ids: list[str],
                 resolved: list[str], request: dict[str, Any]):
        self.command_id = str(uuid.uuid4())
        self.account_id = account_id
        self.region = region
        self.instance_ids = instance_ids
        self.requested_date_time = utcnow()
        self.comment = request.get("Comment") or ""
        self.document_name = request["DocumentName"]
        self.document_version = request.get("DocumentVersion") or "$DEFAULT"
        self.timeout_seconds = int(request.get("TimeoutSeconds") or 3600)
        self.max_concurrency = request.get("MaxConcurrency") or "50"
        self.max_errors = request.get("MaxErrors") or "0"
        self.targets = request.get("Targets") or []
        self.parameters: dict[str, list[str]] = request.get("Parameters") or {}
        self.output_s3_bucket_name = request.get("OutputS3BucketName") or ""
        self.output_s3_key_prefix = request.get("OutputS3KeyPrefix") or ""
        self.output_s3_region = request.get("OutputS3Region") or ""
        self.service_role_arn = request.get("ServiceRoleArn") or ""
        self.notification_config = request.get("NotificationConfig") or {
            "NotificationArn": "",
            "NotificationEvents": [],
            "NotificationType": "",
        }
        self.cloudwatch_output_config = request.get("CloudWatchOutputConfig") or {
            "CloudWatchLogGroupName": "",
            "CloudWatchOutputEnabled": False,
        }
        self.commands: list[str] = list(self.parameters.get("commands") or [])
        self.execution_timeout = _exec_timeout(self.parameters)
        # one invocation per resolved target (InstanceIds plus whatever Targets selected)
        self.invocations: list[Invocation] = [Invocation(self, iid) for iid in resolved]

    def _aggregate(self) -> tuple[str, str]:
        statuses = [inv.status for inv in self.invocations]
        if not statuses:
            return "Success", "Success"
        if all(s == "Pending" for s in statuses):
            return "Pending", "Pending"
        if any(s not in TERMINAL for s in statuses):
            if any(s == "Cancelling" for s in statuses) and all(
                s in TERMINAL or s == "Cancelling" for s in statuses
            ):
                return "Cancelling", "Cancelling"
            return "InProgress", "InProgress"
        if all(s == "Success" for s in statuses):
            return "Success", "Success"
        for s, details in (("Failed", "Failed"), ("TimedOut", "ExecutionTimedOut"), ("Cancelled", "Cancelled")):
            if s in statuses:
                return s, details
        return "Failed", "Failed"  # pragma: no cover

    def response_object(self, *, as_sent: bool = False) -> dict[str, Any]:
        if as_sent:
            status, details = "Pending", "Pending"
            completed = errors = 0
        else:
            status, details = self._aggregate()
            completed = sum(1 for inv in self.invocations if inv.terminal)
            errors = sum(1 for inv in self.invocations if inv.status in ("Failed", "TimedOut"))
        return {
            "CommandId": self.command_id,
            "DocumentName": self.document_name,
            "DocumentVersion": self.document_version,
            "Comment": self.comment,
            "ExpiresAfter": self.requested_date_time + datetime.timedelta(seconds=self.timeout_seconds),
            "Parameters": self.parameters,
            "InstanceIds": self.instance_ids,
            "Targets": self.targets,
            "RequestedDateTime": self.requested_date_time,
            "Status": status,
            "StatusDetails": details,
            "OutputS3Region": self.output_s3_region or self.region,
            "OutputS3BucketName": self.output_s3_bucket_name,
            "OutputS3KeyPrefix": self.output_s3_key_prefix,
            "MaxConcurrency": self.max_concurrency,
            "MaxErrors": self.max_errors,
            "TargetCount": len(self.invocations),
            "CompletedCount": completed,
            "ErrorCount": errors,
            "DeliveryTimedOutCount": 0,
            "ServiceRole": self.service_role_arn,
            "NotificationConfig": self.notification_config,
            "CloudWatchOutputConfig": self.cloudwatch_output_config,
            "TimeoutSeconds": self.timeout_seconds,
        }
