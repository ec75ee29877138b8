"""The trainer's flags, shared by train.py (QLoRA, HF Trainer) and tiny_train.py (stdlib), so a plan can switch
between them without changing its flag list, and preflight can dry-parse the exact list the plan passes."""

from __future__ import annotations

import argparse

TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model-dir", required=True, help="base model directory (fetch_model's model_dir)")
    p.add_argument("--train-file", required=True, help="train.jsonl (prep_data's train_file)")
    p.add_argument("--val-file", required=True, help="val.jsonl (prep_data's val_file)")
    p.add_argument("--output-dir", required=True, help="local run dir on the volume: checkpoint-<step>/, adapter/")
    p.add_argument("--checkpoint-store", default="",
                   help="s3://bucket/<output_prefix>/<run>/checkpoints or a local dir; each checkpoint is synced "
                        "there as it appears and resumed from there")
    p.add_argument("--run-id", default="run")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, default=-1, help="> 0 overrides --epochs")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--save-steps", type=int, default=500, help="checkpoint every N optimizer steps")
    p.add_argument("--save-total-limit", type=int, default=3, help="local checkpoints kept")
    p.add_argument("--store-keep", type=int, default=3, help="checkpoints kept in --checkpoint-store (0 = all)")
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--dataloader-workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--lora-r", type=int, default=64)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--target-modules", default=TARGETS)
    p.add_argument("--no-quantize", action="store_true", help="no 4-bit NF4 (CPU tests)")
    p.add_argument("--imds-url", default=None, help="instance metadata base URL (default $SORTIE_IMDS_URL or "
                                                    "http://169.254.169.254)")
    p.add_argument("--spot-poll-seconds", type=float, default=5.0, help="0 turns spot polling off")
    p.add_argument("--dry-parse", action="store_true", help="parse the flags, print them as JSON, exit 0")
    return p


def planned_steps(rows: int, batch: int, accum: int, epochs: float, max_steps: int = -1) -> int:
    """Optimizer steps, as HF's Trainer counts them: floor(batches per epoch / accum) per epoch.

    41,294 rows, batch 1, accumulation 4, 3 epochs -> 10,323 * 3 = 30,969 (the seed's number).
    """
    if max_steps > 0:
        return max_steps
    batches = -(-rows // batch)
    per_epoch = max(batches // accum, 1)
    return int(-(-per_epoch * epochs // 1))


def eta(seconds_per_step: float, remaining: int) -> str:
    total = max(0, int(seconds_per_step * remaining))
    hours, rest = divmod(total, 3600)
    return f"{hours}h{rest // 60:02d}m"


def heartbeat(step: int, total: int, loss: float, lr: float, samples_per_s: float, seconds_per_step: float) -> str:
    """The line the plan's heartbeat regexes read: progress "[0-9]+/[0-9]+", metrics "loss="."""
    return (f"step {step}/{total} loss={loss:.4f} lr={lr:.6g} samples_per_s={samples_per_s:.2f} "
            f"eta={eta(seconds_per_step, total - step)}")
