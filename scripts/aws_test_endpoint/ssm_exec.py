"""SSM Run Command that really runs: moto's SSM backend extended in-process.

What the SSM agent (amazon-ssm-agent, runscript plugin) does on an instance is reproduced for
``AWS-RunShellScript``:

* the ``commands`` are joined with newlines into ``_script.sh`` in the agent's orchestration
  directory (inside the instance's sandbox) and started as ``sh -c <script>`` in a new
  process group (the agent's ShellCommand/ShellArgs in pluginutil; ``sh`` is dash on Debian and
  Ubuntu, so a bashism fails here as it does on an Ubuntu instance), with stdout/stderr going to
  FILES (the invocation ends when the shell exits, even
  if a daemon it started keeps the files open);
* executionTimeout (seconds, default 3600; the agent replaces values outside 5..172800 with
  3600) and CancelCommand SIGKILL the process group, exactly like the agent's killProcess;
* status mapping (agent's pluginutil.GetStatus):
    exit 0                      -> Success / Success,            ResponseCode 0
    exit N (N != 0, != 137)     -> Failed / Failed,              ResponseCode N
    killed on executionTimeout  -> TimedOut / ExecutionTimedOut, ResponseCode 137
    exit 137 without a cancel   -> TimedOut / ExecutionTimedOut, ResponseCode 137 (agent quirk)
    killed by CancelCommand     -> Cancelled / Cancelled,        ResponseCode 137
    cancelled before it started -> Cancelled / Cancelled,        ResponseCode -1
    instance stopped/terminated -> Failed / Failed,              ResponseCode 137
    killed by a foreign signal  -> Failed / Failed,              ResponseCode -1
  A Failed invocation gets the agent's "failed to run commands: exit status N" line appended
  to its stderr;
* StandardOutputContent / StandardErrorContent are the first 24,000 / 8,000 bytes; longer
  output is cut to that size ending in "--output truncated--" (agent's StringPrefix);
* with OutputS3BucketName the full stdout / stderr (only the non-empty ones) are written to
  ``<prefix>/<CommandId>/<InstanceId>/awsrunShellScript/0.awsrunShellScript/{stdout,stderr}``.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

from moto.core.exceptions import ServiceException
from moto.core.responses import ActionResult
from moto.core.utils import utcnow
from moto.ec2.models import ec2_backends
from moto.ssm.models import SimpleSystemManagerBackend
from moto.ssm.responses import SimpleSystemManagerResponse

from . import runtime
from .sandbox import ENV_HOST_ROOT, log

DOCUMENT = "AWS-RunShellScript"
PLUGIN_NAME = "aws:runShellScript"
PLUGIN_DIR = "awsrunShellScript"
STEP_DIR = "0.awsrunShellScript"
MAX_STDOUT = 24000
MAX_STDERR = 8000
TRUNCATED_SUFFIX = "--output truncated--"
MAX_PLUGIN_OUTPUT = 2500
DEFAULT_EXEC_TIMEOUT = 3600
MIN_EXEC_TIMEOUT = 5
MAX_EXEC_TIMEOUT = 172800
STOPPED_EXIT_CODE = 137  # agent's CommandStoppedPreemptivelyExitCode (128 + SIGKILL)
# AWS-RunShellScript's executionTimeout allowedPattern (validated by the SSM service)
EXEC_TIMEOUT_PATTERN = re.compile(
    r"^(([1-9][0-9]{0,4})|(1[0-6][0-9]{4})|(17[0-1][0-9]{3})|(172[0-7][0-9]{2})|(172800))$"
)
# "The content of the document must not exceed 64KB. This quota also includes the content specified for input
# parameters at runtime." (SSM API reference, CreateDocument, Content); SendCommand's error for it is
# MaxDocumentSizeExceeded. The document's own content is AWS-RunShellScript's, reconstructed here (schema 1.2);
# how AWS measures the parameters is not documented: their compact JSON, in UTF-8, is what is counted here.
DOCUMENT_LIMIT = 64 * 1024
RUN_SHELL_SCRIPT_CONTENT = json.dumps(
    {
        "schemaVersion": "1.2",
        "description": "Run a shell script or specify the commands to run.",
        "parameters": {
            "commands": {
                "type": "StringList",
                "description": "(Required) Specify a shell script or a command to run.",
                "minItems": 1,
                "displayType": "textarea",
            },
            "workingDirectory": {
                "type": "String",
                "default": "",
                "description": "(Optional) The path to the working directory on your instance.",
                "maxChars": 4096,
            },
            "executionTimeout": {
                "type": "String",
                "default": "3600",
                "description": "(Optional) The time in seconds for a command to complete before it is considered "
                "to have failed. Default is 3600 (1 hour). Maximum is 172800 (48 hours).",
                "allowedPattern": EXEC_TIMEOUT_PATTERN.pattern.strip("^$"),
            },
        },
        "runtimeConfig": {
            "aws:runShellScript": {
                "properties": [
                    {
                        "id": "0.aws:runShellScript",
                        "runCommand": "{{ commands }}",
                        "workingDirectory": "{{ workingDirectory }}",
                        "timeoutSeconds": "{{ executionTimeout }}",
                    }
                ]
            }
        },
    },
    indent=2,
)
AGENT_VERSION = "3.3.1142.0"
TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled"}
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# ------------------------------------------------------------------ errors (JSON wire shape)


class SSMError(ServiceException):
    def __init__(self, code: str, message: str):
        super().__init__(code, message)


def _invalid_instance(ids: list[str], account_id: str) -> SSMError:
    listed = ", ".join(ids)
    return SSMError(
        "InvalidInstanceId",
        f"Instances [[{listed}]] not in a valid state for account {account_id}",
    )


def _no_invocation() -> SSMError:
    return SSMError(
        "InvocationDoesNotExist",
        "The command ID and managed node ID you specified didn't match any invocations.",
    )


def _invalid_command_id() -> SSMError:
    return SSMError("InvalidCommandId", "The specified command ID isn't valid.")


# ------------------------------------------------------------------ formatting helpers


def _iso(dt: datetime.datetime | None) -> str:
    if dt is None:
        return ""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _duration(seconds: float) -> str:
    """ISO 8601 duration as SSM prints ExecutionElapsedTime, e.g. PT0.153S, PT1M2.5S."""
    ms = int(round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s = rem / 1000
    out = "PT"
    if h:
        out += f"{h}H"
    if m:
        out += f"{m}M"
    if s or not (h or m):
        out += f"{s:.3f}".rstrip("0").rstrip(".") + "S"
    return out


def _prefix(data: bytes, limit: int) -> str:
    """Agent's pluginutil.StringPrefix over bytes: cut at `limit` ending in the suffix."""
    if len(data) < limit:
        return data.decode("utf-8", "replace")
    cut = data[: limit - len(TRUNCATED_SUFFIX)]
    return cut.decode("utf-8", "replace") + TRUNCATED_SUFFIX


def _plugin_output(stdout: str, stderr: str, capacity: int = MAX_PLUGIN_OUTPUT) -> str:
    """Agent's iohandler.TruncateOutput: the CommandPlugins[].Output of ListCommandInvocations."""
    trunc_out, trunc_err = "\n---Output truncated---", "\n---Error truncated----"
    title = "\n----------ERROR-------\n" if stderr else ""
    space = capacity - len(title)
    if len(stdout) + len(stderr) < space:
        return stdout + title + stderr
    if len(stdout) > space // 2 and len(stderr) > space // 2:
        size = space - len(trunc_err) - len(trunc_out)
        return stdout[: size // 2] + trunc_out + title + stderr[: size // 2] + trunc_err
    if len(stdout) < space // 2:
        size = space - len(trunc_err)
        return stdout + title + stderr[: size - len(stdout)] + trunc_err
    size = space - len(trunc_out)
    return stdout[: size - len(stderr)] + trunc_out + title + stderr


def _exec_timeout(params: dict[str, list[str]]) -> int:
    """Agent's ValidateExecutionTimeout."""
    raw = (params.get("executionTimeout") or [str(DEFAULT_EXEC_TIMEOUT)])[0]
    try:
        n = int(raw)
    except ValueError:
        try:
            n = int(float(raw))
        except ValueError:
            n = DEFAULT_EXEC_TIMEOUT
    if n < MIN_EXEC_TIMEOUT or n > MAX_EXEC_TIMEOUT:
        log(f"executionTimeout {raw!r} outside {MIN_EXEC_TIMEOUT}..{MAX_EXEC_TIMEOUT}: "
            f"the SSM agent uses {DEFAULT_EXEC_TIMEOUT} instead (so does this endpoint)")
        n = DEFAULT_EXEC_TIMEOUT
    return n


def _signal_name(sig: int) -> str:
    try:
        return (signal.strsignal(sig) or f"signal {sig}").lower()
    except ValueError:
        return f"signal {sig}"


def _s3_join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


# ------------------------------------------------------------------ the model


class Invocation:
    """One command on one instance: the agent's job, run as a local process."""

    def __init__(self, command: SortieCommand, instance_id: str):
        rt = runtime.get()
        self.command = command
        self.instance_id = instance_id
        self.generation = rt.generation
        self.status = "Pending"
        self.status_details = "Pending"
        self.response_code = -1
        self.start: datetime.datetime | None = None
        self.end: datetime.datetime | None = None
        self.stdout_content = ""
        self.stderr_content = ""
        self.plugin_output = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_reason: str | None = None  # cancel | timeout | shutdown
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.sandbox = rt.sandboxes.path(instance_id)
        self.orchestration_dir = (
            self.sandbox / "var/lib/amazon/ssm" / instance_id / "document/orchestration"
            / command.command_id / PLUGIN_DIR / STEP_DIR
        )
        if command.output_s3_bucket_name:
            self.s3_key_prefix = _s3_join(
                command.output_s3_key_prefix, command.command_id, instance_id, PLUGIN_DIR
            )
            region = command.output_s3_region or command.region
            base = f"https://s3.{region}.amazonaws.com/{command.output_s3_bucket_name}"
            self.stdout_url = f"{base}/{self.s3_key_prefix}/{STEP_DIR}/stdout"
            self.stderr_url = f"{base}/{self.s3_key_prefix}/{STEP_DIR}/stderr"
        else:
            self.s3_key_prefix = ""
            self.stdout_url = ""
            self.stderr_url = ""

    # ---------------------------------------------------------- lifecycle

    def launch(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"ssm-{self.command.command_id[:8]}-{self.instance_id}", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def request_stop(self, reason: str) -> None:
        """cancel (CancelCommand), timeout, or shutdown (instance powered off / server reset)."""
        with self._lock:
            if self.terminal:
                return
            if self.stop_reason is None:
                self.stop_reason = reason
            if self.status == "Pending":
                # never started: nothing to kill
                self._finish_locked(None, b"", b"")
                return
            if reason == "cancel":
                self.status = "Cancelling"
                self.status_details = "Cancelling"
            proc = self.proc
        if proc is not None:
            _killpg(proc.pid)

    def _run(self) -> None:
        """Waits for one of the instance's command workers (Pending meanwhile), then runs the command."""
        slots = runtime.get().worker_slots(self.instance_id)
        while not slots.acquire(timeout=0.1):
            if self.status != "Pending":  # cancelled or powered off while it waited
                return
        try:
            self._execute()
        finally:
            slots.release()

    def _execute(self) -> None:
        rt = runtime.get()
        cmd = self.command
        with self._lock:
            if self.status != "Pending":
                return
            self.status = "InProgress"
            self.status_details = "InProgress"
            self.start = utcnow()
        try:
            rt.sandboxes.ensure(self.instance_id)
            self.orchestration_dir.mkdir(parents=True, exist_ok=True)
            script = self.orchestration_dir / "_script.sh"
            script.write_text("\n".join(cmd.commands) + "\n")
            script.chmod(0o755)
            stdout_path = self.orchestration_dir / "stdout"
            stderr_path = self.orchestration_dir / "stderr"
            cwd, cwd_error = self._working_dir()
            env = self._environment()
            timeout = cmd.execution_timeout
        except Exception as e:  # pragma: no cover - disk trouble
            with self._lock:
                self._finish_locked(1, b"", f"failed to run commands: {e}".encode(), failed=True)
            return

        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            if cwd_error:
                err.write(cwd_error.encode())
                proc = None
            else:
                try:
                    proc = subprocess.Popen(
                        ["sh", "-c", shlex.quote(str(script))],
                        cwd=cwd,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                        close_fds=True,
                        **_new_process_group(),
                    )
                except OSError as e:
                    err.write(f"failed to run commands: {e}".encode())
                    proc = None
        if proc is None:
            with self._lock:
                self._finish_locked(1, _head(stdout_path, MAX_STDOUT), _head(stderr_path, MAX_STDERR), failed=True)
            self._upload(stdout_path, stderr_path)
            return

        with self._lock:
            self.proc = proc
            stop_now = self.stop_reason is not None
        if stop_now:
            _killpg(proc.pid)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with self._lock:
                if self.stop_reason is None:
                    self.stop_reason = "timeout"
            _killpg(proc.pid)
            proc.wait()
        rc = proc.returncode
        with self._lock:
            reason = self.stop_reason
            if reason is not None and rc < 0:
                exit_code = STOPPED_EXIT_CODE  # the agent reports 137 after its SIGKILL
            else:
                exit_code = rc if rc >= 0 else -1  # Go: ExitStatus() of a signalled process
            failure_note = None
            if reason is None or rc >= 0:
                if rc > 0 and rc != STOPPED_EXIT_CODE:
                    failure_note = f"failed to run commands: exit status {rc}"
                elif rc < 0:
                    failure_note = f"failed to run commands: signal: {_signal_name(-rc)}"
            if failure_note:  # the agent's MarkAsFailed appends to stderr (and its S3 copy)
                with open(stderr_path, "ab") as f:
                    sep = b"\n" if f.tell() else b""
                    f.write(sep + failure_note.encode())
            self._finish_locked(exit_code, _head(stdout_path, MAX_STDOUT), _head(stderr_path, MAX_STDERR))
        self._upload(stdout_path, stderr_path)

    def _finish_locked(self, exit_code: int | None, stdout: bytes, stderr: bytes, failed: bool = False) -> None:
        reason = self.stop_reason
        if exit_code is None:  # never started
            self.response_code = -1
            if reason == "cancel":
                self.status, self.status_details = "Cancelled", "Cancelled"
            else:
                self.status, self.status_details = "Failed", "Failed"
        else:
            self.response_code = exit_code
            if failed:
                status = "Failed"
            elif exit_code == 0:
                status = "Success"
            elif exit_code == STOPPED_EXIT_CODE:
                if reason == "shutdown":
                    status = "Failed"
                elif reason == "cancel":
                    status = "Cancelled"
                else:
                    status = "TimedOut"
            else:
                status = "Failed"
            self.status = status
            self.status_details = {"TimedOut": "ExecutionTimedOut"}.get(status, status)
        self.end = utcnow()
        self.stdout_content = _prefix(stdout, MAX_STDOUT)
        self.stderr_content = _prefix(stderr, MAX_STDERR)
        self.plugin_output = _plugin_output(
            stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")
        )

    # ---------------------------------------------------------- helpers

    def _working_dir(self) -> tuple[str, str | None]:
        wd = (self.command.parameters.get("workingDirectory") or [""])[0]
        if not wd:
            return str(self.sandbox), None
        if os.path.isabs(wd):
            path = self.sandbox / wd.lstrip("/")
            if not path.is_dir():
                return "", f"failed to run commands: chdir {wd}: no such file or directory"
            return str(path), None
        path = self.sandbox / wd
        # the agent falls back to its default working directory when a relative one is missing
        return (str(path) if path.is_dir() else str(self.sandbox)), None

    def _environment(self) -> dict[str, str]:
        rt = runtime.get()
        region = self.command.region
        env = {
            "PATH": SAFE_PATH,
            "HOME": str(self.sandbox / "root"),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.sandbox / "tmp"),
            ENV_HOST_ROOT: str(self.sandbox),
            "AWS_ENDPOINT_URL": rt.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": region,
            "AWS_REGION": region,
            "AWS_SSM_INSTANCE_ID": self.instance_id,
            "AWS_SSM_REGION_NAME": region,
            # The instance metadata service of this instance (IMDSv2 token + spot/instance-action), served by the
            # endpoint: on EC2 it is http://169.254.169.254.
            "SORTIE_IMDS_URL": f"{rt.url}/_sortie/imds/{self.instance_id}",
        }
        env.update(rt.extra_env)
        env[ENV_HOST_ROOT] = str(self.sandbox)  # the seam cannot be overridden
        return env

    def _upload(self, stdout_path: Path, stderr_path: Path) -> None:
        cmd = self.command
        if not cmd.output_s3_bucket_name or self.generation != runtime.get().generation:
            return
        from moto.s3.models import s3_backends
        from moto.utilities.utils import get_partition

        backend = s3_backends[cmd.account_id][get_partition(cmd.region)]
        for name, path in (("stdout", stdout_path), ("stderr", stderr_path)):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if not data:
                continue  # the agent uploads only non-empty output files
            key = f"{self.s3_key_prefix}/{STEP_DIR}/{name}"
            try:
                backend.put_object(cmd.output_s3_bucket_name, key, data)
            except Exception as e:
                log(f"could not write s3://{cmd.output_s3_bucket_name}/{key}: {e}")

    # ---------------------------------------------------------- API views

    def _elapsed(self) -> str:
        if self.start is None or self.end is None:
            return ""
        return _duration((self.end - self.start).total_seconds())

    def get_response(self) -> dict[str, Any]:
        cmd = self.command
        done = self.terminal
        return {
            "CommandId": cmd.command_id,
            "InstanceId": self.instance_id,
            "Comment": cmd.comment,
            "DocumentName": cmd.document_name,
            "DocumentVersion": cmd.document_version,
            "PluginName": PLUGIN_NAME,
            "ResponseCode": self.response_code,
            "ExecutionStartDateTime": _iso(self.start),
            "ExecutionElapsedTime": self._elapsed(),
            "ExecutionEndDateTime": _iso(self.end) if done else "",
            "Status": self.status,
            "StatusDetails": self.status_details,
            "StandardOutputContent": self.stdout_content if done else "",
            "StandardOutputUrl": self.stdout_url,
            "StandardErrorContent": self.stderr_content if done else "",
            "StandardErrorUrl": self.stderr_url,
            "CloudWatchOutputConfig": cmd.cloudwatch_output_config,
        }

    def list_response(self, details: bool) -> dict[str, Any]:
        cmd = self.command
        out: dict[str, Any] = {
            "CommandId": cmd.command_id,
            "InstanceId": self.instance_id,
            "InstanceName": "",
            "Comment": cmd.comment,
            "DocumentName": cmd.document_name,
            "DocumentVersion": cmd.document_version,
            "RequestedDateTime": cmd.requested_date_time,
            "Status": self.status,
            "StatusDetails": self.status_details,
            "TraceOutput": "",
            "StandardOutputUrl": self.stdout_url,
            "StandardErrorUrl": self.stderr_url,
            "CommandPlugins": [],
            "ServiceRole": cmd.service_role_arn,
            "NotificationConfig": cmd.notification_config,
            "CloudWatchOutputConfig": cmd.cloudwatch_output_config,
        }
        if details:
            plugin: dict[str, Any] = {
                "Name": PLUGIN_NAME,
                "Status": self.status if self.status != "Cancelling" else "InProgress",
                "StatusDetails": self.status_details,
                "ResponseCode": self.response_code,
                "Output": self.plugin_output if self.terminal else "",
                "StandardOutputUrl": self.stdout_url,
                "StandardErrorUrl": self.stderr_url,
                "OutputS3Region": cmd.output_s3_region or cmd.region,
                "OutputS3BucketName": cmd.output_s3_bucket_name,
                "OutputS3KeyPrefix": self.s3_key_prefix,
            }
            if self.start is not None:
                plugin["ResponseStartDateTime"] = self.start
            if self.end is not None:
                plugin["ResponseFinishDateTime"] = self.end
            out["CommandPlugins"] = [plugin]
        return out


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


def _head(path: Path, limit: int) -> bytes:
    """The first `limit` bytes of an output file (all that the API ever shows of it)."""
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return b""


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _new_process_group() -> dict[str, Any]:
    import sys

    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"preexec_fn": os.setpgrp}  # pragma: no cover


# ------------------------------------------------------------------ instances as SSM sees them


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


# ------------------------------------------------------------------ responses (API handlers)

ALLOWED_PARAMS = {"commands", "workingDirectory", "executionTimeout"}


def _validate_parameters(params: Any) -> dict[str, list[str]]:
    if not isinstance(params, dict):
        raise SSMError("InvalidParameters", "Parameters must be a map of parameter name to values")
    for name, values in params.items():
        if name not in ALLOWED_PARAMS:
            raise SSMError("InvalidParameters", f"Parameter {name!r} is not defined in the document {DOCUMENT}")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SSMError("InvalidParameters", f"Parameter {name!r} must be a list of strings")
    if not params.get("commands"):
        raise SSMError("InvalidParameters", "Parameter 'commands' is required")
    for single in ("workingDirectory", "executionTimeout"):
        if len(params.get(single) or []) > 1:
            raise SSMError("InvalidParameters", f"Parameter {single!r} takes one value")
    size = len(RUN_SHELL_SCRIPT_CONTENT) + len(
        json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode()
    )
    if size > DOCUMENT_LIMIT:
        raise SSMError("MaxDocumentSizeExceeded", "The size limit of a document is 64 KB.")
    et = (params.get("executionTimeout") or [None])[0]
    if et is not None and not EXEC_TIMEOUT_PATTERN.match(et):
        raise SSMError(
            "InvalidParameters",
            f"Parameter \"executionTimeout\" \"{et}\" failed to satisfy constraint: must be 1..172800",
        )
    return params


def _document_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise SSMError("ValidationException", "DocumentName is required")
    short = name.rsplit("document/", 1)[-1] if name.startswith("arn:") else name
    if short != DOCUMENT:
        raise SSMError(
            "InvalidDocument",
            f"Document {name} is not supported by the sortie test endpoint (only {DOCUMENT} runs)",
        )
    return name


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


def _page(
    items: list[Any], max_results: Any, next_token: Any, default: int, lo: int, hi: int
) -> tuple[list[Any], str | None]:
    n = default if max_results is None else int(max_results)
    if not lo <= n <= hi:
        raise SSMError("ValidationException", f"MaxResults must be between {lo} and {hi}")
    try:
        start = int(next_token) if next_token else 0
    except ValueError:
        raise SSMError("InvalidNextToken", "The specified token isn't valid.") from None
    page = items[start : start + n]
    return page, (str(start + n) if start + n < len(items) else None)


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


def install() -> None:
    """Replace moto's SSM command handlers with the ones above."""
    R = SimpleSystemManagerResponse
    R.send_command = send_command  # type: ignore[method-assign]
    R.list_commands = list_commands  # type: ignore[method-assign]
    R.get_command_invocation = get_command_invocation  # type: ignore[method-assign]
    R.list_command_invocations = list_command_invocations  # type: ignore[attr-defined]
    R.cancel_command = cancel_command  # type: ignore[attr-defined]
    R.describe_instance_information = describe_instance_information  # type: ignore[attr-defined]
