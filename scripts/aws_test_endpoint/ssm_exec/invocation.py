"""One command on one instance: the agent's job, run as a local process in the instance's sandbox."""

from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moto.core.utils import utcnow

from .. import runtime
from ..sandbox import ENV_HOST_ROOT, log
from .agent import (
    MAX_STDERR,
    MAX_STDOUT,
    PLUGIN_DIR,
    SAFE_PATH,
    STEP_DIR,
    STOPPED_EXIT_CODE,
    TERMINAL,
    _plugin_output,
    _prefix,
    _signal_name,
)
from .document import PLUGIN_NAME
from .process import _head, _killpg, _new_process_group
from .wire import _duration, _iso

if TYPE_CHECKING:
    from .command import SortieCommand


def _s3_join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


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
        with self._lock:
            if self.status != "Pending":
                return
            self.status = "InProgress"
            self.status_details = "InProgress"
            self.start = utcnow()
        stdout_path = self.orchestration_dir / "stdout"
        stderr_path = self.orchestration_dir / "stderr"
        try:
            script, cwd, cwd_error, env = self._prepare(rt)
        except Exception as e:  # pragma: no cover - disk trouble
            with self._lock:
                self._finish_locked(1, b"", f"failed to run commands: {e}".encode(), failed=True)
            return

        proc = self._start(script, cwd, cwd_error, env, stdout_path, stderr_path)
        if proc is None:
            with self._lock:
                self._finish_locked(1, _head(stdout_path, MAX_STDOUT), _head(stderr_path, MAX_STDERR), failed=True)
            self._upload(stdout_path, stderr_path)
            return

        self._wait(proc, self.command.execution_timeout)
        self._finish_exited(proc.returncode, stdout_path, stderr_path)
        self._upload(stdout_path, stderr_path)

    def _prepare(self, rt: runtime.Runtime) -> tuple[Path, str, str | None, dict[str, str]]:
        """Writes ``_script.sh`` into the orchestration directory; answers it, the working directory (or why it
        is missing) and the environment."""
        rt.sandboxes.ensure(self.instance_id)
        self.orchestration_dir.mkdir(parents=True, exist_ok=True)
        script = self.orchestration_dir / "_script.sh"
        script.write_text("\n".join(self.command.commands) + "\n")
        script.chmod(0o755)
        cwd, cwd_error = self._working_dir()
        env = self._environment()
        return script, cwd, cwd_error, env

    def _start(
        self,
        script: Path,
        cwd: str,
        cwd_error: str | None,
        env: dict[str, str],
        stdout_path: Path,
        stderr_path: Path,
    ) -> subprocess.Popen[bytes] | None:
        """Starts the script in its own process group, output to the files; None (and why, in stderr) if not."""
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            if cwd_error:
                err.write(cwd_error.encode())
                return None
            try:
                return subprocess.Popen(
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
                return None

    def _wait(self, proc: subprocess.Popen[bytes], timeout: int) -> None:
        """Waits for the shell; a stop asked for meanwhile, or the executionTimeout, kills its process group."""
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

    def _finish_exited(self, rc: int, stdout_path: Path, stderr_path: Path) -> None:
        """Ends the invocation after its shell exited with ``rc`` (negative: killed by that signal)."""
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
