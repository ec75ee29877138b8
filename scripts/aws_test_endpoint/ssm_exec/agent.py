"""What the SSM agent (amazon-ssm-agent, runscript plugin) does that the API shows: its directories, its
executionTimeout rule, its exit code after a kill, and how it cuts output."""

from __future__ import annotations

import signal

from ..sandbox import log

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
AGENT_VERSION = "3.3.1142.0"
TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled"}
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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
