"""Shared helpers for the host programs: step outputs, progress lines, and a tiny storage abstraction.

Stdlib only (boto3 is imported lazily, only when an ``s3://`` location is used), so the local quickstart runs with
any python3.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from collections.abc import Iterator

SECRET_WORDS = ("token", "secret", "password")


def write_outputs(**values: object) -> None:
    """Append ``key=value`` lines to ``$SORTIE_OUTPUT`` (when set) and echo them (docs/HOST_PROTOCOL.md)."""
    for key in values:
        if any(word in key.lower() for word in SECRET_WORDS):
            raise ValueError(f"refusing to write a secret-looking output {key!r}")
    lines = "".join(f"{key}={value}\n" for key, value in values.items())
    for key, value in values.items():
        if "\n" in str(value):
            raise ValueError(f"output {key} contains a newline")
    path = os.environ.get("SORTIE_OUTPUT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(lines)
    log("outputs: " + " ".join(f"{k}={v}" for k, v in values.items()))


def log(message: str) -> None:
    print(message, flush=True)


class Ticker:
    """Calls ``line()`` and prints its result at least every ``interval`` seconds from a daemon thread.

    Long work (downloads, listing) keeps the step's log growing, so the stall check (heartbeat.stale_after) never
    mistakes a slow step for a hung one (the seed's Issue 3).
    """

    def __init__(self, line, interval: float = 20.0):
        self._line = line
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            log(self._line())

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def fail(message: str, code: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def s3_client():
    """A boto3 S3 client; ``AWS_ENDPOINT_URL`` (test endpoint) is honoured by boto3 itself."""
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32)
    if os.environ.get("AWS_ENDPOINT_URL"):
        cfg = cfg.merge(Config(s3={"addressing_style": "path"}))
    return boto3.client("s3", config=cfg)


class Store:
    """A location holding objects: ``s3://bucket/prefix`` or a local directory laid out like a bucket.

    Keys are '/'-separated and relative to the location. One code path for S3 and the local quickstart.
    """

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        if url.startswith("s3://"):
            rest = url[len("s3://"):]
            self.bucket, _, prefix = rest.partition("/")
            self.prefix = prefix.strip("/")
            self.root = None
            self._client = s3_client()
        else:
            self.root = Path(url).expanduser().resolve()
            self.bucket = None
            self.prefix = ""
            self._client = None

    @property
    def is_s3(self) -> bool:
        return self.root is None

    def child(self, key: str) -> Store:
        key = key.strip("/")
        if self.is_s3:
            return Store(f"s3://{self.bucket}/{self._full(key)}")
        return Store(str(self.root / key))

    def uri(self, key: str = "") -> str:
        if self.is_s3:
            return f"s3://{self.bucket}/{self._full(key)}".rstrip("/")
        return str(self.root / key) if key else str(self.root)

    def _full(self, key: str) -> str:
        key = key.strip("/")
        return f"{self.prefix}/{key}".strip("/") if self.prefix else key

    def list(self, key_prefix: str = "") -> Iterator[tuple[str, int]]:
        """Yield (key relative to this location, size), sorted by key, for every object under key_prefix."""
        if self.is_s3:
            full = self._full(key_prefix)
            if full:
                full += "/"
            cut = len(self.prefix) + 1 if self.prefix else 0
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    yield obj["Key"][cut:], obj["Size"]
            return
        base = self.root / key_prefix if key_prefix else self.root
        if not base.is_dir():
            return
        found = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                path = Path(dirpath) / name
                found.append((path.relative_to(self.root).as_posix(), path.stat().st_size))
        yield from sorted(found)

    def exists(self, key: str) -> bool:
        if self.is_s3:
            from botocore.exceptions import ClientError

            try:
                self._client.head_object(Bucket=self.bucket, Key=self._full(key))
                return True
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return (self.root / key).is_file()

    def open_read(self, key: str):
        """A binary file-like object streaming the object."""
        if self.is_s3:
            return self._client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
        return open(self.root / key, "rb")

    def read_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def download(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        if self.is_s3:
            self._client.download_file(self.bucket, self._full(key), str(tmp))
        else:
            shutil.copyfile(self.root / key, tmp)
        os.replace(tmp, dest)

    def upload(self, src: Path, key: str) -> None:
        if self.is_s3:
            self._client.upload_file(str(src), self.bucket, self._full(key))
            return
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)

    def put_bytes(self, key: str, data: bytes) -> None:
        if self.is_s3:
            self._client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data)
            return
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, dest)

    def delete(self, key: str) -> None:
        if self.is_s3:
            self._client.delete_object(Bucket=self.bucket, Key=self._full(key))
        else:
            path = self.root / key
            path.unlink(missing_ok=True)
            # No empty "folders" left behind, as in a bucket.
            for parent in path.parents:
                if parent == self.root or self.root not in parent.parents:
                    break
                try:
                    parent.rmdir()
                except OSError:
                    break


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def now() -> float:
    return time.time()
