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

The modules: ``document`` (AWS-RunShellScript and its parameters), ``agent`` (the agent's rules),
``invocation`` (one command on one instance, run), ``command`` (a SendCommand request), ``instances``
(what SSM manages and targets), ``handlers`` and ``instance_information`` (the API calls).
"""

from __future__ import annotations

from .command import SortieCommand
from .errors import SSMError
from .handlers import install
from .instances import managed_instances
from .invocation import Invocation

__all__ = ["Invocation", "SSMError", "SortieCommand", "install", "managed_instances"]
