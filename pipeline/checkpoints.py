"""Checkpoints shared by train.py and tiny_train.py: ``checkpoint-<step>/`` dirs, local and in a store.

A checkpoint in the store (``s3://.../<run>/checkpoints/`` or a local directory standing for it) is complete when
its ``.complete`` marker exists; the marker is written after every other file, so a sync cut short by an
interruption is never resumed from. Locally a checkpoint is complete when its trainer_state.json exists (HF's
Trainer writes it after the weights and optimizer state).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from common import Store, Ticker, log

CKPT = re.compile(r"^checkpoint-(\d+)$")
MARKER = ".complete"


def local_checkpoints(output_dir: Path) -> dict[int, Path]:
    found = {}
    if output_dir.is_dir():
        for child in output_dir.iterdir():
            m = CKPT.match(child.name)
            if m and child.is_dir() and (child / "trainer_state.json").is_file():
                found[int(m.group(1))] = child
    return found


def store_checkpoints(store: Store | None) -> dict[int, list[tuple[str, int]]]:
    """step -> [(key, size)] for every complete checkpoint in the store."""
    if store is None:
        return {}
    files: dict[int, list[tuple[str, int]]] = {}
    complete = set()
    for key, size in store.list(""):
        head, _, rest = key.partition("/")
        m = CKPT.match(head)
        if not m or not rest:
            continue
        step = int(m.group(1))
        if rest == MARKER:
            complete.add(step)
        else:
            files.setdefault(step, []).append((key, size))
    return {step: files.get(step, []) for step in complete}


def latest(output_dir: Path, store: Store | None) -> Path | None:
    """The newest complete checkpoint, local or in the store; a store-only one is downloaded first."""
    local = local_checkpoints(output_dir)
    remote = store_checkpoints(store)
    best_local = max(local, default=-1)
    best_remote = max(remote, default=-1)
    if best_remote > best_local:
        dest = output_dir / f"checkpoint-{best_remote}"
        log(f"[ckpt] downloading checkpoint-{best_remote} from {store.uri()} ({len(remote[best_remote])} files)")
        started = time.time()
        tmp = output_dir / f".download-checkpoint-{best_remote}"  # renamed into place once every file is here
        shutil.rmtree(tmp, ignore_errors=True)
        with Ticker(lambda: f"[ckpt] downloading checkpoint-{best_remote}: {time.time() - started:.0f} s", 20):
            for key, _size in remote[best_remote]:
                store.download(key, tmp / key.split("/", 1)[1])
        if not (tmp / "trainer_state.json").is_file():
            raise RuntimeError(f"checkpoint-{best_remote} in {store.uri()} has no trainer_state.json")
        shutil.rmtree(dest, ignore_errors=True)  # an incomplete local copy (no trainer_state.json)
        os.replace(tmp, dest)
        return dest
    if best_local >= 0:
        return local[best_local]
    return None


def sync(ckpt: Path, store: Store | None, keep: int = 0) -> None:
    """Upload one checkpoint dir to the store, marker last. Files already there with the same size are kept.
    With keep > 0, only the newest ``keep`` complete checkpoints stay in the store (markers are removed first)."""
    if store is None:
        return
    have = {key: size for key, size in store.list(ckpt.name)}
    count = 0
    started = time.time()
    with Ticker(lambda: f"[ckpt] syncing {ckpt.name}: {count} files, {time.time() - started:.0f} s", 20):
        for path in sorted(p for p in ckpt.rglob("*") if p.is_file()):
            key = path.relative_to(ckpt.parent).as_posix()
            if have.get(key) == path.stat().st_size:
                continue
            store.upload(path, key)
            count += 1
    store.put_bytes(f"{ckpt.name}/{MARKER}", b"")
    log(f"[ckpt] synced {ckpt.name} to {store.uri()} ({count} files uploaded)")
    if keep > 0:
        complete = store_checkpoints(store)
        for step in sorted(complete)[:-keep]:
            store.delete(f"checkpoint-{step}/{MARKER}")
            for key, _size in complete[step]:
                store.delete(key)
            log(f"[ckpt] removed checkpoint-{step} from {store.uri()} (keeping the newest {keep})")


def step_of(ckpt: Path | None) -> int:
    return int(CKPT.match(ckpt.name).group(1)) if ckpt else 0
