#!/usr/bin/env python3
"""Upload a finished run to ``s3://<bucket>/<output_prefix>/<run>/`` (or a local directory standing for it).

Layout: adapter/ (adapter weights and config, tokenizer when the trainer saved it), tokenizer/ (from
--tokenizer-dir, tokenizer files only), training_config.json, trainer_state.json, metrics.json, preflight.json,
and manifest.json last: every file with its size and sha256, the git revision, the data set's hash and the
hyperparameters. Optimizer, scheduler and RNG state never leave checkpoints/ (they are refused here).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Store, Ticker, fail, log, sha256_file, write_outputs  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja")
TRAINING_STATE = ("optimizer", "scheduler", "rng_state", "scaler")


def is_training_state(name: str) -> bool:
    return name.startswith(TRAINING_STATE)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", required=True, help="s3://bucket/<output_prefix>/<run> or a local directory")
    p.add_argument("--adapter-dir", required=True, help="train's adapter_dir")
    p.add_argument("--tokenizer-dir", default="", help="model dir whose tokenizer files go to tokenizer/")
    p.add_argument("--metrics", required=True, help="evaluate's metrics.json")
    p.add_argument("--preflight-report", required=True, help="preflight's JSON report")
    p.add_argument("--git-revision", required=True)
    p.add_argument("--dataset-sha256", required=True)
    p.add_argument("--dataset-uri", default="")
    p.add_argument("--run-id", default="")
    args = p.parse_args(argv)

    adapter = Path(args.adapter_dir)
    files: dict[str, Path] = {}
    for path in sorted(adapter.rglob("*")):
        if not path.is_file():
            continue
        if is_training_state(path.name):
            fail(f"{path} is optimizer/scheduler state; it belongs in checkpoints/ only")
        rel = path.relative_to(adapter).as_posix()
        if rel in ("trainer_state.json", "training_config.json"):
            files[rel] = path
        else:
            files[f"adapter/{rel}"] = path
    for needed in ("trainer_state.json", "training_config.json"):
        if needed not in files:
            fail(f"{adapter} has no {needed}")
    if not any(k.startswith("adapter/adapter_") for k in files):
        fail(f"{adapter} has no adapter weights/config")
    if args.tokenizer_dir:
        found = [n for n in TOKENIZER_FILES if (Path(args.tokenizer_dir) / n).is_file()]
        if not found:
            fail(f"no tokenizer files in {args.tokenizer_dir}")
        for name in found:
            files[f"tokenizer/{name}"] = Path(args.tokenizer_dir) / name
    files["metrics.json"] = Path(args.metrics)
    files["preflight.json"] = Path(args.preflight_report)
    for key, path in files.items():
        if not path.is_file():
            fail(f"missing {path} (for {key})")

    hyper = json.loads(files["training_config.json"].read_text())
    manifest = {
        "run_id": args.run_id,
        "git_revision": args.git_revision,
        "dataset_sha256": args.dataset_sha256,
        "dataset_uri": args.dataset_uri,
        "hyperparameters": hyper,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": [],
    }
    dest = Store(args.dest)
    total = len(files)
    done = [0]
    with Ticker(lambda: f"[upload] {done[0]}/{total} files to {dest.uri()}", 20):
        for key, path in sorted(files.items()):
            manifest["files"].append({"path": key, "size": path.stat().st_size, "sha256": sha256_file(path)})
            dest.upload(path, key)
            done[0] += 1
    log(f"[upload] {total}/{total} files to {dest.uri()}")
    body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    dest.put_bytes("manifest.json", body)
    log(f"[upload] manifest.json lists {total} files")
    write_outputs(artifact_uri=dest.uri(), manifest_sha256=hashlib.sha256(body).hexdigest(), files=total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
