"""Per-instance sandboxes: the fake "host" of each moto EC2 instance.

An instance's sandbox is ``<root>/<instance-id>/``. Everything a command sent through SSM
does runs with ``SORTIE_HOST_ROOT=<sandbox>`` in its environment; that variable is how the
product's host scripts find their files, and how this module finds (and kills) every process
that belongs to an instance, including daemons that left the command's process group.

EBS volumes attached to an instance appear inside its sandbox the way they do on a Nitro
instance::

    <sandbox>/dev/nvme<N>n1                                              (sparse file, volume size)
    <sandbox>/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<hex>  -> ../../nvme<N>n1

The data of a volume lives in ``<root>/_volumes/<volume-id>.img`` and ``dev/nvme<N>n1`` is a
hard link to it, so what one instance wrote to a volume is there when the volume is attached
to another instance later (as with a real EBS volume).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from pathlib import Path

ENV_HOST_ROOT = "SORTIE_HOST_ROOT"
BY_ID_PREFIX = "nvme-Amazon_Elastic_Block_Store_"
VOLUMES_DIR = "_volumes"


def log(msg: str) -> None:
    try:
        print(f"aws-test-endpoint: {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed by whoever started us: keep serving
        pass


def by_id_name(volume_id: str) -> str:
    """``vol-0abc`` -> ``nvme-Amazon_Elastic_Block_Store_vol0abc`` (what udev creates on Nitro)."""
    return BY_ID_PREFIX + volume_id.replace("-", "")


def _read_environ(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:  # gone, or not ours to read
        return []


def _all_pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


class Sandboxes:
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- directories

    def path(self, instance_id: str) -> Path:
        if not instance_id or "/" in instance_id or instance_id.startswith("."):
            raise ValueError(f"bad instance id {instance_id!r}")
        return self.root / instance_id

    def ensure(self, instance_id: str) -> Path:
        """Create (once) and return the sandbox of an instance."""
        p = self.path(instance_id)
        for sub in ("root", "tmp", "dev/disk/by-id"):
            (p / sub).mkdir(parents=True, exist_ok=True)
        return p

    def wipe(self) -> None:
        """Remove every sandbox and volume file (used by /moto-api/reset, after killing)."""
        with self._lock:
            for child in self.root.iterdir():
                if child.name.startswith("i-") or child.name == VOLUMES_DIR:
                    shutil.rmtree(child, ignore_errors=True)

    # ---------------------------------------------------------------- processes

    def _matching_pids(self, wanted: list[bytes] | None, prefix: bytes | None) -> list[int]:
        me = os.getpid()
        found = []
        for pid in _all_pids():
            if pid == me:
                continue
            for entry in _read_environ(pid):
                if (wanted is not None and entry in wanted) or (
                    prefix is not None and entry.startswith(prefix)
                ):
                    found.append(pid)
                    break
        return found

    def _kill_matching(self, wanted: list[bytes] | None, prefix: bytes | None) -> int:
        """SIGKILL every process whose environment matches; rescan until none is left,
        so that children forked while we were killing are caught too."""
        killed: set[int] = set()
        for _ in range(50):
            pids = [p for p in self._matching_pids(wanted, prefix) if not _is_zombie(p)]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except (ProcessLookupError, PermissionError):
                    pass
        return len(killed)

    def kill_instance(self, instance_id: str) -> int:
        """Power-off: kill every process started for this instance, daemons included."""
        p = str(self.path(instance_id)).encode()
        wanted = [f"{ENV_HOST_ROOT}=".encode() + p, f"{ENV_HOST_ROOT}=".encode() + p + b"/"]
        n = self._kill_matching(wanted, None)
        if n:
            log(f"killed {n} process(es) of {instance_id}")
        return n

    def kill_all(self) -> int:
        """Kill every process started for any sandbox under this root."""
        prefix = f"{ENV_HOST_ROOT}={self.root}/".encode()
        n = self._kill_matching(None, prefix)
        if n:
            log(f"killed {n} sandbox process(es)")
        return n

    # ---------------------------------------------------------------- volumes

    def _volume_file(self, volume_id: str) -> Path:
        return self.root / VOLUMES_DIR / f"{volume_id}.img"

    def attach_volume(self, instance_id: str, volume_id: str, size_gib: int) -> Path:
        """Make the volume appear in the instance's sandbox; return the by-id link path."""
        with self._lock:
            sb = self.ensure(instance_id)
            dev = sb / "dev"
            by_id = dev / "disk" / "by-id"
            link = by_id / by_id_name(volume_id)
            backing = self._volume_file(volume_id)
            backing.parent.mkdir(parents=True, exist_ok=True)
            size = int(size_gib or 1) * 1024**3
            if not backing.exists():
                with open(backing, "wb"):
                    pass
            if backing.stat().st_size < size:
                os.truncate(backing, size)  # sparse: costs no disk
            if link.is_symlink():
                return link
            n = 0
            while (dev / f"nvme{n}n1").exists() or (dev / f"nvme{n}n1").is_symlink():
                n += 1
            node = dev / f"nvme{n}n1"
            try:
                os.link(backing, node)
            except OSError:
                node.symlink_to(backing)
            link.symlink_to(f"../../nvme{n}n1")
            return link

    def detach_volume(self, instance_id: str, volume_id: str) -> None:
        with self._lock:
            sb = self.path(instance_id)
            link = sb / "dev" / "disk" / "by-id" / by_id_name(volume_id)
            if not link.is_symlink():
                return
            node = sb / "dev" / Path(os.readlink(link)).name
            link.unlink()
            # the device node disappears with the attachment; the data stays in _volumes/
            try:
                node.unlink()
            except OSError:
                pass

    def delete_volume(self, volume_id: str) -> None:
        with self._lock:
            try:
                self._volume_file(volume_id).unlink()
            except OSError:
                pass


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2 : data.rindex(b")") + 3] == b"Z"
    except (OSError, ValueError):
        return True
