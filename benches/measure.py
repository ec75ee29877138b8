#!/usr/bin/env python3
"""Runs one command and prints `wall_s cpu_s peak_rss_kib` for it and everything it started.

The measuring process makes itself a child subreaper (Linux prctl PR_SET_CHILD_SUBREAPER), so processes that
detach from the command (sortie's step supervisors call setsid and outlive their launcher; Snakemake's jobs) are
re-parented here; they are waited for and their CPU counted. Peak RSS is the largest single process of the tree
(getrusage RUSAGE_CHILDREN, ru_maxrss): for `plan apply` that is plan itself.

    benches/measure.py [--prep 'SHELL'] [--cwd DIR] -- CMD [ARG...]
"""

import argparse
import ctypes
import os
import resource
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def reap_all(deadline):
    """Waits for every remaining descendant (re-parented orphans) until none is left or the deadline passes."""
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.01)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prep", default="", help="shell run before the command, not measured")
    ap.add_argument("--cwd", default=".")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command")
    if args.prep:
        subprocess.run(args.prep, shell=True, cwd=args.cwd, check=True)
        reap_all(time.monotonic() + 5)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("measure.py: prctl(PR_SET_CHILD_SUBREAPER) failed")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    code = subprocess.run(cmd, cwd=args.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    wall = time.monotonic() - start
    reap_all(time.monotonic() + 30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"{wall:.3f} {cpu:.3f} {after.ru_maxrss}")
    if code != 0:
        print(f"measure.py: {' '.join(cmd)} exited {code}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
