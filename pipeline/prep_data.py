#!/usr/bin/env python3
"""Build the training set from the policy and operatives sources, by the seed pipeline's rules.

- Policy prefixes first, in the order given; operatives LAST, capped at --operatives-limit files (the cap stops
  the listing; it never fails the step).
- Files under a ``processed/`` or ``failed/`` path segment (at any depth, the prefix's top level included) are
  skipped, except under the prefixes named by --keep-processed-in (financial-metrics). Keys containing an
  --exclude path (behavioral-economics/news) are skipped.
- Records come from JSONL, JSON (one document, pretty-printed or not, or an array of documents) and plain text.
  A record is kept when it is an object whose ``text`` is a non-empty string (plain text: the file's content);
  every other record is counted in rejected_count, never dropped silently.
- Exact duplicate texts are removed (first occurrence wins), then a seeded shuffle splits val = floor(f * n).
- A policy prefix that yields no rows fails the step (the seed's Issue 2: "complete with 0 entries").
- The dataset goes to <output>/<sha256[:16]>/{train,val}.jsonl with dataset.json (counts and hashes).

Source and output are ``s3://bucket/prefix`` or a local directory laid out like the bucket.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Store, Ticker, fail, log, sha256_file, write_outputs  # noqa: E402

POLICY_PREFIXES = (
    "corpus_federal/,econ-theory/,financial-metrics/,financial-networks/,insurance/,"
    "government_officials_roster/,usa/congressional-research/"
)
SKIP_SEGMENTS = {"processed", "failed"}
JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="s3://bucket[/prefix] or a local directory laid out like it")
    p.add_argument("--policy-prefixes", default=POLICY_PREFIXES, help="comma-separated, processed in this order")
    p.add_argument("--operatives-prefix", default="operatives/", help="loaded last")
    p.add_argument("--operatives-limit", type=int, default=50000, help="files taken from the operatives prefix")
    p.add_argument("--keep-processed-in", default="financial-metrics/",
                   help="comma-separated prefixes where processed/ and failed/ are kept")
    p.add_argument("--exclude", default="behavioral-economics/news", help="comma-separated path fragments")
    p.add_argument("--output", required=True, help="s3://bucket/prefix or a local directory for the dataset")
    p.add_argument("--work-dir", required=True, help="local directory for the dataset files (on the volume)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--val-fraction", default="0.2", help="val = floor(fraction * rows)")
    p.add_argument("--workers", type=int, default=16, help="parallel downloads")
    p.add_argument("--progress-interval", type=float, default=20.0, help="seconds between progress lines")
    return p.parse_args(argv)


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def norm_prefix(prefix: str) -> str:
    return prefix.strip("/") + "/"


def skip_reason(key: str, group: str, keep_processed: bool, excludes: list[str]) -> str | None:
    """Why a key (relative to the source) is skipped, or None. ``group`` is the normalized prefix."""
    segments = key.split("/")
    for frag in excludes:
        parts = frag.strip("/").split("/")
        for i in range(len(segments) - len(parts) + 1):
            if segments[i:i + len(parts)] == parts:
                return f"excluded ({frag})"
    if not keep_processed:
        dirs = key[len(group):].split("/")[:-1]
        for seg in dirs:
            if seg in SKIP_SEGMENTS:
                return f"{seg}/ folder"
    if key.endswith("/"):
        return "folder marker"
    return None


def parse_records(key: str, data: bytes) -> tuple[list[str], int]:
    """(texts, rejected) for one file."""
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], 1
    lower = key.lower()
    if lower.endswith(JSONL_SUFFIXES):
        return parse_jsonl(content)
    if lower.endswith(JSON_SUFFIXES):
        try:
            doc = json.loads(content)
        except ValueError:
            return parse_jsonl(content)  # a .json file that is really JSON Lines
        docs = doc if isinstance(doc, list) else [doc]
        texts, rejected = [], 0
        for item in docs:
            text = record_text(item)
            if text is None:
                rejected += 1
            else:
                texts.append(text)
        return texts, rejected
    text = content if content.strip() else None
    return ([text], 0) if text else ([], 1)


def parse_jsonl(content: str) -> tuple[list[str], int]:
    texts, rejected = [], 0
    for line in content.splitlines():
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            rejected += 1
            continue
        text = record_text(item)
        if text is None:
            rejected += 1
        else:
            texts.append(text)
    return texts, rejected


def record_text(item) -> str | None:
    if isinstance(item, dict):
        text = item.get("text")
        if isinstance(text, str) and text.strip():
            return text
    return None


class Progress:
    def __init__(self):
        self.lock = threading.Lock()
        self.done = 0
        self.total = 0
        self.bytes = 0
        self.phase = "listing"

    def add(self, size: int) -> None:
        with self.lock:
            self.done += 1
            self.bytes += size

    def line(self) -> str:
        with self.lock:
            return f"[prep] {self.phase}: {self.done}/{self.total} files, {self.bytes / 1e6:.1f} MB"


def list_group(store: Store, group: str, limit: int | None, keep_processed: bool, excludes: list[str],
               progress: Progress) -> tuple[list[tuple[str, int]], dict]:
    keys, skipped = [], {}
    for key, size in store.list(group):
        reason = skip_reason(key, group, keep_processed, excludes)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        if limit is not None and len(keys) >= limit:
            skipped["over operatives limit"] = skipped.get("over operatives limit", 0) + 1
            break  # the cap stops the listing; never an error
        keys.append((key, size))
        with progress.lock:
            progress.total += 1
    return keys, skipped


def main(argv=None) -> int:
    args = parse_args(argv)
    src = Store(args.source)
    out = Store(args.output)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    policy = [norm_prefix(p) for p in split_list(args.policy_prefixes)]
    keep = {norm_prefix(p) for p in split_list(args.keep_processed_in)}
    excludes = split_list(args.exclude)
    operatives = norm_prefix(args.operatives_prefix)
    groups = [(g, None) for g in policy] + [(operatives, max(0, args.operatives_limit))]
    if len({g for g, _ in groups}) != len(groups):
        fail("a prefix is named twice")

    progress = Progress()
    per_group: dict[str, dict] = {}
    files: list[tuple[str, str, int]] = []
    with Ticker(progress.line, args.progress_interval):
        log(f"[prep] source {src.uri()}; groups in order: {', '.join(g for g, _ in groups)}")
        for group, limit in groups:
            keys, skipped = list_group(src, group, limit, group in keep, excludes, progress)
            per_group[group] = {"files": len(keys), "skipped": skipped, "rows": 0, "rejected": 0, "duplicates": 0,
                                "kept": 0}
            log(f"[prep] {group}: {len(keys)} files listed, skipped {skipped or 'none'}")
            files.extend((group, key, size) for key, size in keys)
        empty = [g for g in policy if per_group[g]["files"] == 0]
        if empty:
            fail(f"policy prefix(es) with no files: {', '.join(empty)} (refusing a data set without them)")

        progress.phase = "downloading"
        log(f"[prep] downloading {len(files)} files with {args.workers} workers")

        def fetch(item):
            _group, key, _size = item
            with src.open_read(key) as body:
                data = body.read()
            result = parse_records(key, data)
            progress.add(len(data))
            return result

        with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
            results = list(pool.map(fetch, files))  # map keeps the input order: the result is deterministic
        log(progress.line())

    rows: list[str] = []
    seen: set[str] = set()
    rejected = duplicates = 0
    for (group, _key, _size), (texts, bad) in zip(files, results, strict=True):
        stats = per_group[group]
        stats["rows"] += len(texts)
        stats["rejected"] += bad
        rejected += bad
        for text in texts:
            if text in seen:
                stats["duplicates"] += 1
                duplicates += 1
                continue
            seen.add(text)
            rows.append(text)
            stats["kept"] += 1
    for group, stats in per_group.items():
        log(f"[prep] group {group} files={stats['files']} rows={stats['rows']} kept={stats['kept']} "
            f"duplicates={stats['duplicates']} rejected={stats['rejected']}")
    empty = [g for g in policy if per_group[g]["rows"] == 0]
    if empty:
        fail(f"policy prefix(es) that yielded 0 rows: {', '.join(empty)} (the seed's Issue 2)")

    n = len(rows)
    n_val = int(Fraction(args.val_fraction) * n)  # floor: 0.2 * 51,617 -> 10,323
    random.Random(args.seed).shuffle(rows)
    train, val = rows[: n - n_val], rows[n - n_val:]
    train_path, val_path = work / "train.jsonl", work / "val.jsonl"
    for path, part in ((train_path, train), (val_path, val)):
        with open(path, "w", encoding="utf-8") as f:
            for text in part:
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    digest = hashlib.sha256()
    for path in (train_path, val_path):
        digest.update(path.name.encode() + b"\n")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    dataset_sha = digest.hexdigest()
    version = dataset_sha[:16]
    manifest = {
        "dataset_sha256": dataset_sha,
        "train_count": len(train),
        "val_count": len(val),
        "rejected_count": rejected,
        "duplicate_count": duplicates,
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "source": src.uri(),
        "groups": per_group,
        "files": {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in (train_path, val_path)},
    }
    (work / "dataset.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    dest = out.child(version)
    for name in ("train.jsonl", "val.jsonl", "dataset.json"):
        dest.upload(work / name, name)
    log(f"[prep] wrote {len(train)} train + {len(val)} val rows to {dest.uri()}")
    write_outputs(
        train_count=len(train),
        val_count=len(val),
        rejected_count=rejected,
        duplicate_count=duplicates,
        dataset_uri=dest.uri(),
        dataset_sha256=dataset_sha,
        train_file=train_path,
        val_file=val_path,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
