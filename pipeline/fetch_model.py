#!/usr/bin/env python3
"""Fetch the base model onto the volume at a pinned revision: from an S3 mirror when it is complete, else from the
Hugging Face Hub (then fill the mirror).

Only what training needs: model-0000X-of-0000N.safetensors shards, model.safetensors.index.json, config.json,
generation_config.json and the tokenizer files; never consolidated.safetensors (a second copy of the weights in
Mistral's own format). Downloads resume from a ``.part`` file (HTTP Range / S3 ranged GET), sizes are checked,
sha256 too where the hub gives it (LFS metadata), and a complete model is skipped.

The hub token is read here, on the instance, from an SSM Parameter Store SecureString (--hf-token-param), or from
$HF_TOKEN when no parameter is named. It is never printed or written to the outputs.
Hub API used (as huggingface_hub does): GET {hub}/api/models/{id}/revision/{rev}?blobs=true lists "siblings"
(rfilename, size, lfs.sha256); GET {hub}/{id}/resolve/{rev}/{file} downloads, following redirects.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Store, fail, log, sha256_file, write_outputs  # noqa: E402

SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
EXTRA = {"model.safetensors.index.json", "config.json", "generation_config.json", "tokenizer.json",
         "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json"}
MANIFEST = "sortie-manifest.json"
VERIFIED = ".sortie-verified.json"
CHUNK = 1 << 20


def wanted(name: str) -> bool:
    return bool(SHARD.match(name)) or name in EXTRA


class NoAuthOnOtherHost(urllib.request.HTTPRedirectHandler):
    """Follow redirects (the hub sends LFS files to a CDN) but never send the token to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


OPENER = urllib.request.build_opener(NoAuthOnOtherHost)


def read_token(param: str) -> str:
    if param:
        import boto3

        value = boto3.client("ssm").get_parameter(Name=param, WithDecryption=True)["Parameter"]["Value"]
        log(f"[fetch] read the hub token from SSM parameter {param} ({len(value)} characters)")
        return value
    return os.environ.get("HF_TOKEN", "")


class Hub:
    def __init__(self, base: str, model_id: str, revision: str, token: str):
        self.base, self.model_id, self.revision, self.token = base.rstrip("/"), model_id, revision, token

    def _request(self, url: str, headers: dict | None = None):
        h = dict(headers or {})
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return OPENER.open(urllib.request.Request(url, headers=h), timeout=60)

    def files(self) -> list[dict]:
        url = (f"{self.base}/api/models/{self.model_id}/revision/{urllib.parse.quote(self.revision, safe='')}"
               "?blobs=true")
        with self._request(url) as resp:
            info = json.loads(resp.read())
        out = []
        for sib in info.get("siblings", []):
            lfs = sib.get("lfs") or {}
            out.append({"name": sib["rfilename"], "size": sib.get("size", lfs.get("size")),
                        "sha256": lfs.get("sha256")})
        return out

    def open(self, name: str, start: int):
        url = f"{self.base}/{self.model_id}/resolve/{urllib.parse.quote(self.revision, safe='')}/{name}"
        resp = self._request(url, {"Range": f"bytes={start}-"} if start else None)
        if start and resp.status != 206:  # the server ignored the range: start over
            resp.close()
            raise RangeIgnored()
        return resp


class RangeIgnored(Exception):
    pass


class MirrorSource:
    def __init__(self, store: Store):
        self.store = store

    def open(self, name: str, start: int):
        if self.store.is_s3:
            kwargs = {"Range": f"bytes={start}-"} if start else {}
            return self.store._client.get_object(Bucket=self.store.bucket, Key=self.store._full(name),
                                                 **kwargs)["Body"]
        f = self.store.open_read(name)
        f.seek(start)
        return f


def download(source, item: dict, dest: Path, interval: float) -> None:
    part = dest.with_name(dest.name + ".part")
    size = item["size"]
    for attempt in range(1, 6):
        start = part.stat().st_size if part.exists() else 0
        if size is not None and start > size:
            part.unlink()
            start = 0
        if size is not None and start == size:
            break
        if start:
            log(f"[fetch] {item['name']}: resuming at byte {start} (attempt {attempt})")
        try:
            body = source.open(item["name"], start)
        except RangeIgnored:
            part.unlink()
            continue
        last = time.time()
        done = start
        try:
            with body, open(part, "ab") as out:
                while True:
                    block = body.read(CHUNK)
                    if not block:
                        break
                    out.write(block)
                    done += len(block)
                    if time.time() - last >= interval:
                        log(f"[fetch] {item['name']}: {done // 1_000_000}/{(size or 0) // 1_000_000} MB")
                        last = time.time()
        except (OSError, http.client.HTTPException) as err:
            log(f"[fetch] {item['name']}: interrupted at byte {done} ({type(err).__name__}); retrying")
            time.sleep(min(2 ** attempt, 30) * 0.1)
            continue
        if size is None or part.stat().st_size == size:
            break
    got = part.stat().st_size if part.exists() else -1
    if size is not None and got != size:
        fail(f"{item['name']}: {got} bytes after 5 attempts, want {size}")
    if item.get("sha256"):
        digest = sha256_file(part)
        if digest != item["sha256"]:
            part.unlink()
            fail(f"{item['name']}: sha256 {digest} != {item['sha256']} (the partial file is removed)")
    os.replace(part, dest)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-id", required=True, help="e.g. mistralai/Mistral-7B-v0.3")
    p.add_argument("--revision", required=True, help="pinned commit sha (or tag) on the hub")
    p.add_argument("--model-dir", required=True, help="destination on the volume")
    p.add_argument("--mirror", default="", help="s3://bucket/prefix (or a local dir) holding a copy of the files")
    p.add_argument("--hf-token-param", default="", help="SSM SecureString parameter NAME holding the hub token")
    p.add_argument("--hub-url", default=os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    p.add_argument("--progress-interval", type=float, default=20.0)
    args = p.parse_args(argv)

    model_dir = Path(args.model_dir).resolve()
    model_dir.mkdir(parents=True, exist_ok=True)
    mirror = Store(args.mirror) if args.mirror else None
    if mirror is not None and mirror.exists(MANIFEST):
        listing = json.loads(mirror.read_bytes(MANIFEST))
        if listing.get("revision") != args.revision:
            fail(f"mirror {mirror.uri()} holds revision {listing.get('revision')}, not {args.revision}")
        items, source, origin = listing["files"], MirrorSource(mirror), "mirror"
    else:
        hub = Hub(args.hub_url, args.model_id, args.revision, read_token(args.hf_token_param))
        items = [f for f in hub.files() if wanted(f["name"])]
        source, origin = hub, "hub"
    names = {f["name"] for f in items}
    if "config.json" not in names or not any(SHARD.match(n) for n in names):
        fail(f"{args.model_id}@{args.revision} has no config.json or model-*-of-*.safetensors shards")
    log(f"[fetch] {len(items)} files from the {origin} ({sum(f['size'] or 0 for f in items) / 1e9:.2f} GB): "
        + ", ".join(sorted(names)))

    verified_path = model_dir / VERIFIED
    verified = json.loads(verified_path.read_text()) if verified_path.is_file() else {}
    fetched = skipped = 0
    for i, item in enumerate(sorted(items, key=lambda f: f["name"]), 1):
        dest = model_dir / item["name"]
        seen = verified.get(item["name"]) or {}
        if (dest.is_file() and dest.stat().st_size == item["size"] and seen.get("revision") == args.revision
                and seen.get("size") == item["size"] and item.get("sha256") in (None, seen.get("sha256"))):
            skipped += 1
            continue
        dest.unlink(missing_ok=True)
        download(source, item, dest, args.progress_interval)
        verified[item["name"]] = {"revision": args.revision, "size": item["size"],
                                  "sha256": item.get("sha256") or sha256_file(dest)}
        verified_path.write_text(json.dumps(verified, indent=1))
        fetched += 1
        log(f"[fetch] {i}/{len(items)} files: {item['name']} ok")

    index = json.loads((model_dir / "model.safetensors.index.json").read_text()) \
        if "model.safetensors.index.json" in names else None
    if index is not None:
        missing = set(index["weight_map"].values()) - names
        if missing:
            fail(f"the index names shards that were not fetched: {sorted(missing)}")

    if origin == "hub" and mirror is not None:
        for i, item in enumerate(items, 1):
            mirror.upload(model_dir / item["name"], item["name"])
            log(f"[fetch] mirrored {i}/{len(items)} files to {mirror.uri()}")
        listing = {"model_id": args.model_id, "revision": args.revision,
                   "files": [{"name": f["name"], "size": f["size"], "sha256": verified[f["name"]]["sha256"]}
                             for f in items]}
        mirror.put_bytes(MANIFEST, json.dumps(listing, indent=1).encode())
    log(f"[fetch] done: {fetched} fetched, {skipped} already complete, in {model_dir}")
    write_outputs(model_dir=model_dir, model_source=origin, model_files=len(items), model_revision=args.revision,
                  model_bytes=sum(f["size"] or 0 for f in items))
    return 0


if __name__ == "__main__":
    sys.exit(main())
