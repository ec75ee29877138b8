"""Process-wide state of the endpoint, shared by the moto patches and the WSGI middleware."""

from __future__ import annotations

import threading
import time
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .faults import CallCounter, FaultRegistry, RequestLog
from .sandbox import Sandboxes

if TYPE_CHECKING:
    from .ssm_exec import Invocation


NO_DELAYS = {"ssm_registration": 0.0, "root_volume_deletion": 0.0}


@dataclass
class Runtime:
    sandboxes: Sandboxes
    url: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    require_instance_profile: bool = False
    seed_profile: str | None = None
    faults: FaultRegistry = field(default_factory=FaultRegistry)
    calls: CallCounter = field(default_factory=CallCounter)
    faulted: CallCounter = field(default_factory=CallCounter)
    requests: RequestLog = field(default_factory=RequestLog)
    # every invocation ever sent (until reset), by (command id, instance id)
    invocations: dict[tuple[str, str], Invocation] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    # bumped by /moto-api/reset: invocations of an older generation no longer touch moto state
    generation: int = 0
    # the SSM agent's command workers per instance (amazon-ssm-agent appconfig: Mds.CommandWorkersLimit, default
    # 5): a sixth command waits, Pending, until one of the five ends
    workers: dict[str, threading.BoundedSemaphore] = field(default_factory=dict)
    command_workers: int = 5
    # spot interruption notices by instance: what the instance's metadata serves at spot/instance-action
    spot_notices: dict[str, str] = field(default_factory=dict)
    # when temporary credentials expire, by session token (epoch seconds): presigned URLs die with them
    sessions: dict[str, float] = field(default_factory=dict)
    # Delays a test asks for (seconds), as AWS takes them: a new instance's SSM agent registers some time after
    # boot; a DeleteOnTermination volume stays `deleting` after its instance terminated. `delay_defaults` are
    # the launcher's, restored by /moto-api/reset.
    delays: dict[str, float] = field(default_factory=lambda: dict(NO_DELAYS))
    delay_defaults: dict[str, float] = field(default_factory=lambda: dict(NO_DELAYS))
    # volumes shown `deleting` until they go, by id: when they go (time.monotonic())
    deleting: dict[str, float] = field(default_factory=dict)

    def set_delays(self, spec: object) -> dict[str, float]:
        """Sets some of the delays (`{"ssm_registration": 8}`); answers all of them."""
        if not isinstance(spec, dict) or not spec:
            raise ValueError(f"give an object with some of {sorted(NO_DELAYS)}")
        for key, value in spec.items():
            if key not in NO_DELAYS:
                raise ValueError(f"unknown delay {key!r} (known: {sorted(NO_DELAYS)})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{key}: a number of seconds >= 0, got {value!r}")
        with self.lock:
            self.delays.update({k: float(v) for k, v in spec.items()})
            return dict(self.delays)

    def deleted_volumes(self, among: Container[str]) -> list[str]:
        """The `deleting` volumes of `among` (a region's) whose time is up; forgotten here, the caller removes
        them."""
        now = time.monotonic()
        with self.lock:
            done = [v for v, at in self.deleting.items() if at <= now and v in among]
            for v in done:
                del self.deleting[v]
            return done

    def worker_slots(self, instance_id: str) -> threading.BoundedSemaphore:
        with self.lock:
            if instance_id not in self.workers:
                self.workers[instance_id] = threading.BoundedSemaphore(self.command_workers)
            return self.workers[instance_id]

    def invocations_of(self, instance_id: str) -> list[Invocation]:
        with self.lock:
            return [inv for (_, iid), inv in self.invocations.items() if iid == instance_id]

    def power_off(self, instance_id: str) -> None:
        """The instance stops/terminates/reboots: every process of it dies."""
        for inv in self.invocations_of(instance_id):
            inv.request_stop("shutdown")
        self.sandboxes.kill_instance(instance_id)

    def reset(self) -> None:
        """/moto-api/reset: kill everything, forget invocations, faults and counters."""
        with self.lock:
            self.generation += 1
            invs = list(self.invocations.values())
            self.invocations.clear()
            self.workers.clear()
        for inv in invs:
            inv.request_stop("shutdown")
        self.sandboxes.kill_all()
        for inv in invs:
            inv.join(5)
        self.sandboxes.kill_all()
        self.sandboxes.wipe()
        self.faults.clear()
        self.spot_notices.clear()
        self.sessions.clear()
        self.deleting.clear()
        self.delays = dict(self.delay_defaults)
        self.calls.reset()
        self.faulted.reset()
        self.requests.reset()

    def shutdown(self) -> None:
        with self.lock:
            invs = list(self.invocations.values())
        for inv in invs:
            inv.request_stop("shutdown")
        self.sandboxes.kill_all()


_RUNTIME: Runtime | None = None


def init(sandbox_root: Path) -> Runtime:
    global _RUNTIME
    _RUNTIME = Runtime(sandboxes=Sandboxes(sandbox_root))
    return _RUNTIME


def get() -> Runtime:
    if _RUNTIME is None:
        raise RuntimeError("aws_test_endpoint runtime not initialised")
    return _RUNTIME
