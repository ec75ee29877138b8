"""The local process behind an invocation: its own process group, killed as the agent kills it."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any


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
