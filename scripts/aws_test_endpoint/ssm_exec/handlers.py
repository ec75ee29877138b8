"""The Run Command API handlers that replace moto's: SendCommand, ListCommands, GetCommandInvocation,
ListCommandInvocations, CancelCommand (and DescribeInstanceInformation, from its own module)."""

from __future__ import annotations

from typing import Any

from moto.core.responses import ActionResult
from moto.ssm.models import SimpleSystemManagerBackend
from moto.ssm.responses import SimpleSystemManagerResponse

from .. import runtime
from .command import SortieCommand
from .document import PLUGIN_NAME, _document_name, _validate_parameters
from .errors import SSMError, _invalid_command_id, _no_invocation
from .instance_information import describe_instance_information
from .instances import _resolve_targets
from .invocation import Invocation
from .paging import _page


def send_command(self: SimpleSystemManagerResponse) -> ActionResult:
    rt = runtime.get()
    request = {
        k: self._get_param(k)
        for k in (
            "DocumentName", "DocumentVersion", "Comment", "TimeoutSeconds", "MaxConcurrency",
            "MaxErrors", "Targets", "Parameters", "OutputS3BucketName", "OutputS3KeyPrefix",
            "OutputS3Region", "ServiceRoleArn", "NotificationConfig", "CloudWatchOutputConfig",
        )
    }
    _document_name(request["DocumentName"])
    request["Parameters"] = _validate_parameters(request["Parameters"] or {})
    instance_ids = self._get_param("InstanceIds") or []
    targets = request["Targets"] or []
    if not instance_ids and not targets:
        raise SSMError("ValidationException", "Either InstanceIds or Targets must be specified")
    account_id, region = self.current_account, self.region
    resolved = _resolve_targets(account_id, region, instance_ids, targets)
    command = SortieCommand(
        account_id=account_id, region=region, instance_ids=list(instance_ids), resolved=resolved, request=request
    )
    backend: SimpleSystemManagerBackend = self.ssm_backend
    with rt.lock:
        backend._commands.append(command)  # type: ignore[arg-type]
        for inv in command.invocations:
            rt.invocations[(command.command_id, inv.instance_id)] = inv
    for inv in command.invocations:
        inv.launch()
    return ActionResult({"Command": command.response_object(as_sent=True)})


def _commands(self: SimpleSystemManagerResponse) -> list[SortieCommand]:
    return [c for c in self.ssm_backend._commands if isinstance(c, SortieCommand)]


def list_commands(self: SimpleSystemManagerResponse) -> ActionResult:
    command_id = self._get_param("CommandId")
    instance_id = self._get_param("InstanceId")
    commands = list(reversed(_commands(self)))
    if command_id:
        commands = [c for c in commands if c.command_id == command_id]
        if not commands:
            raise _invalid_command_id()
    if instance_id:
        commands = [c for c in commands if any(i.instance_id == instance_id for i in c.invocations)]
    return ActionResult({"Commands": [c.response_object() for c in commands]})


def _find_invocation(self: SimpleSystemManagerResponse, command_id: Any, instance_id: Any) -> Invocation:
    for c in _commands(self):
        if c.command_id == command_id:
            for inv in c.invocations:
                if inv.instance_id == instance_id:
                    return inv
    raise _no_invocation()


def get_command_invocation(self: SimpleSystemManagerResponse) -> ActionResult:
    inv = _find_invocation(self, self._get_param("CommandId"), self._get_param("InstanceId"))
    plugin = self._get_param("PluginName")
    if plugin and plugin != PLUGIN_NAME:
        raise _no_invocation()
    return ActionResult(inv.get_response())


def list_command_invocations(self: SimpleSystemManagerResponse) -> ActionResult:
    command_id = self._get_param("CommandId")
    instance_id = self._get_param("InstanceId")
    details = bool(self._get_param("Details", False))
    invs = []
    for c in reversed(_commands(self)):
        if command_id and c.command_id != command_id:
            continue
        for inv in c.invocations:
            if instance_id and inv.instance_id != instance_id:
                continue
            invs.append(inv)
    page, token = _page(invs, self._get_param("MaxResults"), self._get_param("NextToken"), 50, 1, 50)
    result: dict[str, Any] = {"CommandInvocations": [inv.list_response(details) for inv in page]}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def cancel_command(self: SimpleSystemManagerResponse) -> ActionResult:
    command_id = self._get_param("CommandId")
    instance_ids = self._get_param("InstanceIds") or []
    for c in _commands(self):
        if c.command_id == command_id:
            for inv in c.invocations:
                if not instance_ids or inv.instance_id in instance_ids:
                    inv.request_stop("cancel")
            return ActionResult({})
    raise _invalid_command_id()


def install() -> None:
    """Replace moto's SSM command handlers with the ones above."""
    R = SimpleSystemManagerResponse
    R.send_command = send_command  # type: ignore[method-assign]
    R.list_commands = list_commands  # type: ignore[method-assign]
    R.get_command_invocation = get_command_invocation  # type: ignore[method-assign]
    R.list_command_invocations = list_command_invocations  # type: ignore[attr-defined]
    R.cancel_command = cancel_command  # type: ignore[attr-defined]
    R.describe_instance_information = describe_instance_information  # type: ignore[attr-defined]
