#!/usr/bin/env python3
"""The training venv on the GPU host: built on the volume from the pinned lock, keyed by the lock's hash.

    env.py ensure --venv-root /mnt/training/venvs --lock pipeline/requirements.lock
    env.py check --python VENV/bin/python --lock LOCK

``ensure`` makes ``<venv-root>/<sha256(lock + python version)[:16]>``; a venv with a matching stamp is reused
without running pip (a second run is a no-op), then the installed versions are checked against the lock. Outputs
``python``, ``venv``, ``lock_sha256``. Stdlib only: it runs under the host's python3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Ticker, fail, log, write_outputs  # noqa: E402

STAMP = ".sortie-lock.sha256"
LIST_SCRIPT = ("import json, importlib.metadata as m; "
               "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)", line)
        if not m:
            raise ValueError(f"{path}: not an exact pin: {raw!r}")
        pins[normalize(m.group(1))] = m.group(3)
    return pins


def installed(python: str) -> dict[str, str]:
    out = subprocess.run([python, "-c", LIST_SCRIPT], capture_output=True, text=True, check=True).stdout
    return {normalize(k): v for k, v in json.loads(out).items()}


def mismatches(python: str, lock: Path) -> list[str]:
    have = installed(python)
    problems = []
    for name, version in sorted(read_lock(lock).items()):
        got = have.get(name)
        if got != version:
            problems.append(f"{name}: lock {version}, installed {got or 'missing'}")
    return problems


def key(lock: Path, python: str) -> str:
    version = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True,
                             check=True).stdout
    return hashlib.sha256(lock.read_bytes() + version.encode()).hexdigest()


def ensure(args) -> int:
    lock = Path(args.lock).resolve()
    want = key(lock, args.python)
    venv = Path(args.venv_root).resolve() / want[:16]
    py = venv / "bin/python"
    stamp = venv / STAMP
    if py.exists() and stamp.is_file() and stamp.read_text().strip() == want:
        log(f"[env] {venv} is up to date with {lock.name}; nothing to install")
    else:
        pins = read_lock(lock)
        if not py.exists():
            log(f"[env] creating {venv}")
            cmd = [args.python, "-m", "venv", str(venv)] + ([] if pins else ["--without-pip"])
            if subprocess.run(cmd).returncode != 0:
                fail(f"'{' '.join(cmd)}' failed (on Debian/Ubuntu the venv module needs python3-venv)")
        started = time.time()
        if pins:
            with Ticker(lambda: f"[env] pip install -r {lock.name}: {int(time.time() - started)} s", 20):
                subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "--no-cache-dir",
                                "-q", "-r", str(lock)], check=True)
            log(f"[env] installed {len(pins)} packages in {int(time.time() - started)} s")
        else:
            log(f"[env] {lock.name} pins nothing: a stdlib-only venv")
    problems = mismatches(str(py), lock)
    if problems:
        fail("installed versions differ from the lock: " + "; ".join(problems))
    stamp.write_text(want + "\n")
    log(f"[env] {len(read_lock(lock))} packages match {lock.name}")
    write_outputs(python=py, venv=venv, lock_sha256=hashlib.sha256(lock.read_bytes()).hexdigest())
    return 0


def check(args) -> int:
    problems = mismatches(args.python, Path(args.lock))
    for p in problems:
        print(f"[env] mismatch {p}", file=sys.stderr)
    if problems:
        return 1
    log(f"[env] {args.python} matches {args.lock}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("ensure", help="create or reuse the venv for this lock")
    e.add_argument("--venv-root", required=True, help="directory on the volume holding one venv per lock hash")
    e.add_argument("--lock", required=True)
    e.add_argument("--python", default=sys.executable, help="interpreter to build the venv with")
    c = sub.add_parser("check", help="installed versions equal the lock")
    c.add_argument("--python", required=True)
    c.add_argument("--lock", required=True)
    args = p.parse_args(argv)
    return ensure(args) if args.cmd == "ensure" else check(args)


if __name__ == "__main__":
    sys.exit(main())
