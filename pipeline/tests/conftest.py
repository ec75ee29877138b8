"""Fixtures: the moto-based AWS test endpoint (scripts/aws-test-endpoint), run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parents[1]
REPO = PIPELINE.parent
TRAIN_VENV = Path(os.environ.get("SORTIE_TRAIN_VENV", Path.home() / ".cache/sortie/train-venv"))
TEST_VENV = Path(os.environ.get("SORTIE_VENV", Path.home() / ".cache/sortie/venv"))
TRAIN_PY = TRAIN_VENV / "bin/python"

needs_train_venv = pytest.mark.skipif(
    not TRAIN_PY.exists(), reason=f"no training venv at {TRAIN_VENV} (scripts/setup-pipeline-env creates it)"
)


def run_program(name: str, *args: str, env: dict | None = None, python: str | None = None, check: bool = True,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """Run pipeline/<name>.py as a subprocess, the way a step template does."""
    cmd = [python or sys.executable, str(PIPELINE / f"{name}.py"), *map(str, args)]
    proc = subprocess.run(cmd, env=env or os.environ.copy(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def read_outputs(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = value
    return out


@pytest.fixture(scope="session")
def aws_endpoint(tmp_path_factory):
    """Start scripts/aws-test-endpoint --port 0 and yield its URL; AWS env vars point boto3 at it."""
    if not (TEST_VENV / "bin/python").exists():
        pytest.skip(f"no test endpoint venv at {TEST_VENV} (scripts/setup-test-env)")
    sandbox = tmp_path_factory.mktemp("sandbox")
    env = os.environ.copy()
    env["SORTIE_VENV"] = str(TEST_VENV)
    log = open(sandbox / "endpoint.log", "w")
    proc = subprocess.Popen([str(REPO / "scripts/aws-test-endpoint"), "--port", "0", "--sandbox", str(sandbox)],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"endpoint did not start: {line!r}; see {sandbox / 'endpoint.log'}")
    url = line.split()[-1]
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    os.environ.update(aws_env(url))
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION")


def aws_env(url: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


@pytest.fixture
def s3(aws_endpoint):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(s3={"addressing_style": "path"}))


@pytest.fixture
def fresh_bucket(s3, request):
    """A new, empty bucket per test (names are unique per test function)."""
    name = "t-" + request.node.name.lower().replace("_", "-")[:50].strip("-")
    name = "".join(c for c in name if c.isalnum() or c == "-")
    s3.create_bucket(Bucket=name)
    return name
