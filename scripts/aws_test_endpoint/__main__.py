"""Entry point: ``python -m aws_test_endpoint --port PORT [--sandbox DIR] [--host 127.0.0.1]``.

Prints exactly one line on stdout, ``listening on http://HOST:PORT``, once the server accepts
connections; everything else goes to stderr. Runs until SIGTERM/SIGINT, then kills every
process started for any sandbox.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="aws-test-endpoint",
        description="moto server with SSM Run Command that really runs commands in per-instance sandboxes",
    )
    p.add_argument("--port", type=int, required=True, help="TCP port (0: pick a free one; the ready line tells which)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--sandbox", help="root of the per-instance sandboxes (default: a new temp dir)")
    p.add_argument("--seed-profile", metavar="NAME",
                   help="create IAM role + instance profile NAME at start (and after /moto-api/reset)")
    p.add_argument("--require-instance-profile", action="store_true",
                   help="SSM sees only instances launched with an IAM instance profile (as in AWS)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment variable for commands run through SSM (repeatable)")
    p.add_argument("--ssm-registration-delay", type=float, default=0.0, metavar="SECONDS",
                   help="a new instance registers with SSM (is listed, takes commands) SECONDS after launch")
    p.add_argument("--root-volume-deletion-delay", type=float, default=0.0, metavar="SECONDS",
                   help="a terminated instance's DeleteOnTermination volumes stay `deleting` for SECONDS")
    p.add_argument("--verbose", action="store_true", help="log every HTTP request to stderr")
    args = p.parse_args(argv)
    for item in args.env:
        if "=" not in item:
            p.error(f"--env wants KEY=VALUE, got {item!r}")
    for name in ("ssm_registration_delay", "root_volume_deletion_delay"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} wants seconds >= 0")
    return args


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.verbose else logging.WARNING)

    from moto import __version__ as moto_version

    from . import ec2_hooks, quotas, runtime, ssm_exec
    from .sandbox import log
    from .server import build_server, seed_profile

    if args.sandbox:
        root = Path(args.sandbox).resolve()
    else:
        root = Path(tempfile.mkdtemp(prefix="sortie-sandbox-")).resolve()
    rt = runtime.init(root)
    rt.extra_env = dict(item.split("=", 1) for item in args.env)
    rt.require_instance_profile = args.require_instance_profile
    rt.seed_profile = args.seed_profile
    rt.delay_defaults = rt.set_delays({
        "ssm_registration": args.ssm_registration_delay,
        "root_volume_deletion": args.root_volume_deletion_delay,
    })

    ssm_exec.install()
    ec2_hooks.install()
    quotas.install()

    info: dict[str, object] = {}
    server = build_server(args.host, args.port, info)
    port = server.server_port
    url_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    rt.url = f"http://{_bracket(url_host)}:{port}"
    os.environ["MOTO_PORT"] = str(port)  # moto builds some self-referencing URLs from it
    info.update({
        "url": rt.url,
        "sandbox_root": str(root),
        "moto_version": moto_version,
        "pid": os.getpid(),
    })
    seed_profile(args.seed_profile)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    atexit.register(rt.shutdown)

    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    log(f"moto {moto_version}; sandbox root {root}")
    print(f"listening on http://{_bracket(args.host)}:{port}", flush=True)
    # that was the only line for stdout: anything printed later (moto prints some notices)
    # goes to stderr, and a reader that closed our stdout cannot break the server
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    while not stop.wait(0.5):
        if not thread.is_alive():
            log("server thread died")
            break
    log("shutting down")
    rt.shutdown()
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
