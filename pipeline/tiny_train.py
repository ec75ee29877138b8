#!/usr/bin/env python3
"""A tiny stdlib trainer with train.py's contract, for the local quickstart (no torch, finishes in seconds).

The "model" is a byte-level unigram language model: 256 logits (the "adapter"), trained with SGD + momentum on the
mean next-byte cross-entropy of the training texts. Same flags, same ``checkpoint-<step>/`` layout with a
trainer_state.json, same resume rule (the newest complete checkpoint, local or in --checkpoint-store), same
heartbeat lines and outputs as the QLoRA trainer.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checkpoints  # noqa: E402
from common import Store, log, write_outputs  # noqa: E402
from spot import SpotWatcher  # noqa: E402
from train_args import build_parser, heartbeat, planned_steps  # noqa: E402

VOCAB = 256
MOMENTUM = 0.9
ADAPTER = "adapter_model.json"


def load_texts(path: str, max_len: int) -> list[bytes]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line)["text"].encode("utf-8")[:max_len])
    if not out:
        raise SystemExit(f"error: {path} has no rows")
    return out


def softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    return [e / total for e in exps]


def loss_and_counts(texts: list[bytes]) -> tuple[list[int], int]:
    counts = [0] * VOCAB
    for t in texts:
        for b in t:
            counts[b] += 1
    return counts, sum(counts)


def cross_entropy(logits: list[float], texts: list[bytes]) -> float:
    counts, n = loss_and_counts(texts)
    probs = softmax(logits)
    return -sum(c * math.log(probs[i]) for i, c in enumerate(counts) if c) / max(n, 1)


def micro_batch(texts: list[bytes], index: int, batch: int, seed: int) -> list[bytes]:
    """Rows for micro-batch number ``index``: a seeded permutation per epoch, so a resumed run sees the same data."""
    n = len(texts)
    out = []
    for j in range(index * batch, index * batch + batch):
        epoch, pos = divmod(j, n)
        order = list(range(n))
        random.Random(seed * 1000003 + epoch).shuffle(order)
        out.append(texts[order[pos]])
    return out


def save(dirpath: Path, logits, velocity, state: dict, args) -> None:
    tmp = dirpath.with_name(dirpath.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / ADAPTER).write_text(json.dumps({"logits": logits}))
    (tmp / "adapter_config.json").write_text(json.dumps(adapter_config(args), indent=2))
    (tmp / "optimizer.json").write_text(json.dumps({"velocity": velocity, "momentum": MOMENTUM}))
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    shutil.rmtree(dirpath, ignore_errors=True)
    tmp.rename(dirpath)


def adapter_config(args) -> dict:
    return {"model_type": "tiny-unigram", "vocab": VOCAB, "r": args.lora_r, "lora_alpha": args.lora_alpha,
            "lora_dropout": args.lora_dropout, "target_modules": args.target_modules.split(",")}


def prune(output_dir: Path, keep: int) -> None:
    local = checkpoints.local_checkpoints(output_dir)
    for step in sorted(local)[:-keep] if keep > 0 else []:
        shutil.rmtree(local[step])


def main(argv=None) -> int:
    args = build_parser(__doc__).parse_args(argv)
    if args.dry_parse:
        print(json.dumps(vars(args), sort_keys=True))
        return 0
    out_dir = Path(args.output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    store = Store(args.checkpoint_store) if args.checkpoint_store else None
    texts = load_texts(args.train_file, args.max_seq_length)
    total = planned_steps(len(texts), args.batch_size, args.grad_accum, args.epochs, args.max_steps)
    trainable = VOCAB
    log(f"[train] pid {os.getpid()} sid {os.getsid(0)}")  # the trainer is its step's session leader (pid = sid)
    log(f"[train] tiny trainer: {len(texts)} rows, {total} steps (batch {args.batch_size} x accumulation "
        f"{args.grad_accum}), trainable params {trainable}")

    ckpt = checkpoints.latest(out_dir, store)
    resumed = checkpoints.step_of(ckpt)
    if ckpt:
        logits = json.loads((ckpt / ADAPTER).read_text())["logits"]
        velocity = json.loads((ckpt / "optimizer.json").read_text())["velocity"]
        state = json.loads((ckpt / "trainer_state.json").read_text())
        log(f"[train] resuming from {ckpt} (step {resumed})")
    else:
        logits, velocity = [0.0] * VOCAB, [0.0] * VOCAB
        state = {"global_step": 0, "log_history": []}
        log("[train] fresh start (no checkpoint found)")
    state.update(max_steps=total, train_batch_size=args.batch_size, run_id=args.run_id)

    watcher = SpotWatcher(args.imds_url, args.spot_poll_seconds).start()
    step = resumed
    started = time.time()
    interrupted = False
    loss = float("nan")
    # Tests slow the tiny trainer down so that it can be killed mid-train (the real one needs no help).
    pace = float(os.environ.get("TINY_TRAIN_STEP_SECONDS", "0") or 0)
    while step < total:
        time.sleep(pace)
        batch = []
        for k in range(args.grad_accum):
            batch += micro_batch(texts, step * args.grad_accum + k, args.batch_size, args.seed)
        counts, n = loss_and_counts(batch)
        probs = softmax(logits)
        loss = -sum(c * math.log(probs[i]) for i, c in enumerate(counts) if c) / max(n, 1)
        lr = args.learning_rate * (1 - step / total)  # linear decay, like HF's default scheduler
        for i in range(VOCAB):
            grad = probs[i] - counts[i] / max(n, 1)
            velocity[i] = MOMENTUM * velocity[i] + grad
            logits[i] -= lr * velocity[i]
        step += 1
        state["global_step"] = step
        state["epoch"] = step * args.grad_accum * args.batch_size / len(texts)
        if step % args.logging_steps == 0 or step == total:
            elapsed = max(time.time() - started, 1e-9)
            done = step - resumed
            state["log_history"].append({"step": step, "loss": round(loss, 6), "learning_rate": lr})
            log(heartbeat(step, total, loss, lr, done * args.grad_accum * args.batch_size / elapsed, elapsed / done))
        interrupted = watcher.interrupted
        if step % args.save_steps == 0 or step == total or interrupted:
            path = out_dir / f"checkpoint-{step}"
            save(path, logits, velocity, state, args)
            log(f"[train] saved {path.name}")
            checkpoints.sync(path, store, args.store_keep)
            prune(out_dir, args.save_total_limit)
        if interrupted:
            break
    watcher.stop()
    if interrupted:
        log(f"[train] stopped at step {step}/{total} by a spot interruption notice; the next attempt resumes")
        return 75

    adapter = out_dir / "adapter"
    final = checkpoints.local_checkpoints(out_dir).get(step) or checkpoints.latest(out_dir, store)
    shutil.rmtree(adapter, ignore_errors=True)
    adapter.mkdir()
    for name in (ADAPTER, "adapter_config.json", "trainer_state.json"):
        shutil.copyfile(final / name, adapter / name)
    (adapter / "training_config.json").write_text(json.dumps(
        {k: v for k, v in vars(args).items() if k not in ("dry_parse",)}, indent=2, sort_keys=True))
    log(f"[train] done: step {step}/{total}, final loss {loss:.4f}; adapter in {adapter}")
    write_outputs(final_step=step, resumed_from_step=resumed, trainable_params=trainable, adapter_dir=adapter,
                  output_dir=out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
