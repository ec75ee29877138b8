#!/usr/bin/env python3
"""Evaluate a trained adapter on the validation set: mean token loss, perplexity, and a few fixed generations.

Works on both trainers' results: an adapter dir with ``adapter_model.json`` is the tiny trainer's (stdlib path);
otherwise it is a PEFT LoRA adapter loaded on the base model (torch path; 4-bit NF4 unless --no-quantize).
Writes metrics.json and the outputs ``eval_loss``, ``perplexity``, ``metrics_file``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Ticker, log, write_outputs  # noqa: E402

PROMPTS = (
    "The Federal Reserve's mandate is",
    "Systemic risk in financial networks",
    "An insurance policy covers",
)


def read_rows(path: str, limit: int) -> list[str]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line)["text"])
                if limit and len(rows) >= limit:
                    break
    if not rows:
        raise SystemExit(f"error: {path} has no rows")
    return rows


def tiny_eval(args, rows: list[str]) -> dict:
    import random

    import tiny_train

    logits = json.loads((Path(args.adapter_dir) / tiny_train.ADAPTER).read_text())["logits"]
    texts = [r.encode("utf-8")[: args.max_seq_length] for r in rows]
    loss = tiny_train.cross_entropy(logits, texts)
    probs = tiny_train.softmax(logits)
    rng = random.Random(0)
    samples = []
    for prompt in PROMPTS:
        out = bytes(rng.choices(range(256), weights=probs, k=args.max_new_tokens))
        samples.append({"prompt": prompt, "completion": out.decode("utf-8", errors="replace")})
    return {"eval_loss": loss, "eval_rows": len(rows), "eval_tokens": sum(len(t) for t in texts),
            "samples": samples, "kind": "tiny"}


def torch_eval(args, rows: list[str]) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = Path(args.adapter_dir)
    tok_dir = adapter if (adapter / "tokenizer_config.json").is_file() else Path(args.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    kwargs = {}
    if not args.no_quantize:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": 0}
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    started = time.time()
    with Ticker(lambda: f"[eval] loading the model: {time.time() - started:.0f} s", 20):
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype, **kwargs)
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    last = time.time()
    with torch.no_grad():
        for i, text in enumerate(rows, 1):
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=args.max_seq_length).to(device)
            n = int(enc["input_ids"].shape[1]) - 1
            if n < 1:
                continue
            out = model(**enc, labels=enc["input_ids"])
            total_loss += float(out.loss) * n
            total_tokens += n
            if time.time() - last > 20 or i == len(rows):
                log(f"[eval] {i}/{len(rows)} rows, loss so far {total_loss / max(total_tokens, 1):.4f}")
                last = time.time()
        samples = []
        for prompt in PROMPTS:
            enc = tokenizer(prompt, return_tensors="pt").to(device)
            gen = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            completion = tokenizer.decode(gen[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)
            samples.append({"prompt": prompt, "completion": completion})
    return {"eval_loss": total_loss / max(total_tokens, 1), "eval_rows": len(rows), "eval_tokens": total_tokens,
            "samples": samples, "kind": "lora"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--adapter-dir", required=True)
    p.add_argument("--val-file", required=True)
    p.add_argument("--metrics", required=True, help="path of metrics.json to write")
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--max-eval-rows", type=int, default=0, help="0 = every row")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--no-quantize", action="store_true")
    args = p.parse_args(argv)

    rows = read_rows(args.val_file, args.max_eval_rows)
    log(f"[eval] {len(rows)} validation rows, adapter {args.adapter_dir}")
    tiny = (Path(args.adapter_dir) / "adapter_model.json").is_file()
    metrics = tiny_eval(args, rows) if tiny else torch_eval(args, rows)
    metrics["perplexity"] = math.exp(min(metrics["eval_loss"], 700))
    Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
    Path(args.metrics).write_text(json.dumps(metrics, indent=2) + "\n")
    for s in metrics["samples"]:
        log(f"[eval] sample {s['prompt']!r} -> {s['completion'][:80]!r}")
    write_outputs(eval_loss=f"{metrics['eval_loss']:.6f}", perplexity=f"{metrics['perplexity']:.4f}",
                  metrics_file=Path(args.metrics).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
