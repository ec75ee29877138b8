#!/usr/bin/env python3
"""QLoRA fine-tune of Mistral-7B (the seed's configuration) with HF's Trainer, resumable and interruptible.

- 4-bit NF4 with double quantization, bf16 compute (BitsAndBytesConfig); --no-quantize for CPU tests.
- LoRA r=64, alpha=16, dropout=0.05 on q,k,v,o,gate,up,down: 167,772,160 trainable parameters on Mistral-7B's
  shapes (hidden 4096, intermediate 14336, 32 layers, 8 KV heads); the count is logged, checked against the
  formula for any shape, and asserted for the 7B shapes.
- Batch 1 x accumulation 4, max_seq_length 512, lr 2e-4, 3 epochs (41,294 rows -> 30,969 steps), 4 workers.
- checkpoint-<step>/ every --save-steps, each synced to --checkpoint-store as it appears (on_save); every attempt
  resumes from the newest complete checkpoint, local or in the store (downloaded first).
- A heartbeat line per logging step: "step 120/30969 loss=1.2340 lr=0.0002 samples_per_s=3.10 eta=14h02m".
- A spot interruption notice (IMDSv2, polled in a thread) makes the Trainer save and stop: exit 75, so the
  step's retry resumes on the next instance.
Outputs: final_step, resumed_from_step, trainable_params, adapter_dir, output_dir.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checkpoints  # noqa: E402
from common import Store, Ticker, log, write_outputs  # noqa: E402
from spot import SpotWatcher  # noqa: E402
from train_args import build_parser, heartbeat, planned_steps  # noqa: E402

MISTRAL_7B_LORA_PARAMS = 167_772_160


def module_shapes(cfg) -> dict[str, tuple[int, int]]:
    """(in, out) features of each LoRA target in one Mistral decoder layer."""
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or hidden // heads
    kv = cfg.get("num_key_value_heads") or heads
    return {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
            "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
            "down_proj": (inter, hidden)}


def expected_lora_params(cfg: dict, r: int, targets: list[str]) -> int:
    """LoRA adds A (r x in) and B (out x r) per target per layer: r * (in + out)."""
    shapes = module_shapes(cfg)
    return cfg["num_hidden_layers"] * sum(r * sum(shapes[t]) for t in targets)


def is_mistral_7b(cfg: dict) -> bool:
    return (cfg.get("hidden_size"), cfg.get("intermediate_size"), cfg.get("num_hidden_layers"),
            cfg.get("num_key_value_heads")) == (4096, 14336, 32, 8)


class Rows:
    """The training rows, tokenized lazily (in the dataloader workers): a map-style dataset for the Trainer."""

    def __init__(self, path: str, tokenizer, max_len: int):
        with open(path, encoding="utf-8") as f:
            self.texts = [json.loads(line)["text"] for line in f if line.strip()]
        self.tokenizer, self.max_len = tokenizer, max_len

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return self.tokenizer(self.texts[i], truncation=True, max_length=self.max_len)


def count_rows(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def main(argv=None) -> int:
    args = build_parser(__doc__).parse_args(argv)
    if args.dry_parse:
        print(json.dumps(vars(args), sort_keys=True))
        return 0

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the dataloader workers fork after tokenizer use
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainerCallback, TrainingArguments)

    log(f"[train] pid {os.getpid()} sid {os.getsid(0)}")  # the trainer is its step's session leader (pid = sid)
    out_dir = Path(args.output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    store = Store(args.checkpoint_store) if args.checkpoint_store else None
    targets = [t.strip() for t in args.target_modules.split(",") if t.strip()]
    cfg = json.loads((Path(args.model_dir) / "config.json").read_text())
    rows = count_rows(args.train_file)
    total = planned_steps(rows, args.batch_size, args.grad_accum, args.epochs, args.max_steps)
    quantize = not args.no_quantize
    cuda = torch.cuda.is_available()
    if quantize and not cuda:
        raise SystemExit("error: 4-bit quantization needs CUDA (use --no-quantize on CPU)")
    log(f"[train] {rows} rows, {total} optimizer steps (batch {args.batch_size} x accumulation {args.grad_accum}, "
        f"{args.epochs:g} epochs), max_seq_length {args.max_seq_length}, lr {args.learning_rate:g}")

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = {}
    if quantize:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": 0}
    started_load = time.time()
    with Ticker(lambda: f"[train] loading the model: {time.time() - started_load:.0f} s", 20):
        model = AutoModelForCausalLM.from_pretrained(args.model_dir,
                                                     dtype=torch.bfloat16 if cuda else torch.float32, **kwargs)
    log(f"[train] model loaded in {time.time() - started_load:.0f} s")
    if quantize:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    everything = sum(p.numel() for p in model.parameters())
    log(f"[train] LoRA r={args.lora_r} alpha={args.lora_alpha} dropout={args.lora_dropout} on {','.join(targets)}: "
        f"trainable params {trainable:,} of {everything:,}")
    want = expected_lora_params(cfg, args.lora_r, targets)
    if trainable != want:
        raise SystemExit(f"error: {trainable} trainable parameters, the LoRA formula gives {want}")
    if is_mistral_7b(cfg) and args.lora_r == 64 and len(targets) == 7:
        assert trainable == MISTRAL_7B_LORA_PARAMS, trainable

    watcher = SpotWatcher(args.imds_url, args.spot_poll_seconds).start()
    ckpt = checkpoints.latest(out_dir, store)
    resumed = checkpoints.step_of(ckpt)
    log(f"[train] resuming from {ckpt} (step {resumed})" if ckpt else "[train] fresh start (no checkpoint found)")
    clock = {"start": time.time()}

    class Heartbeat(TrainerCallback):
        def on_train_begin(self, targs, state, control, **kw):
            clock["start"], clock["step0"] = time.time(), state.global_step

        def on_log(self, targs, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:
                return
            elapsed = max(time.time() - clock["start"], 1e-9)
            done = max(state.global_step - clock.get("step0", 0), 1)
            log(heartbeat(state.global_step, state.max_steps, float(logs["loss"]),
                          float(logs.get("learning_rate", 0.0)),
                          done * args.grad_accum * args.batch_size / elapsed, elapsed / done))

        def on_step_end(self, targs, state, control, **kw):
            if watcher.interrupted:
                control.should_save = True
                control.should_training_stop = True

        def on_save(self, targs, state, control, **kw):
            path = out_dir / f"checkpoint-{state.global_step}"
            log(f"[train] saved {path.name}")
            checkpoints.sync(path, store, args.store_keep)

    bf16 = cuda and torch.cuda.is_bf16_supported()
    targs = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.learning_rate, max_steps=total,
        num_train_epochs=args.epochs, logging_steps=args.logging_steps, save_strategy="steps",
        save_steps=args.save_steps, save_total_limit=args.save_total_limit,
        dataloader_num_workers=args.dataloader_workers, seed=args.seed, bf16=bf16, report_to="none",
        disable_tqdm=True, optim="paged_adamw_8bit" if quantize else "adamw_torch",
        gradient_checkpointing=quantize, gradient_checkpointing_kwargs={"use_reentrant": False},
        remove_unused_columns=False, use_cpu=not cuda,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=Rows(args.train_file, tokenizer, args.max_seq_length),
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=[Heartbeat()])
    trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    watcher.stop()
    step = trainer.state.global_step
    if watcher.interrupted and step < total:
        log(f"[train] stopped at step {step}/{total} by a spot interruption notice; the next attempt resumes")
        return 75

    adapter = out_dir / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    trainer.save_model(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    trainer.state.save_to_json(str(adapter / "trainer_state.json"))
    config = {k: v for k, v in vars(args).items() if k != "dry_parse"}
    config.update(planned_steps=total, train_rows=rows, trainable_params=trainable, quantization=(
        "nf4 double-quant bf16-compute" if quantize else "none"))
    (adapter / "training_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    log(f"[train] done: step {step}/{total}; adapter in {adapter}")
    write_outputs(final_step=step, resumed_from_step=resumed, trainable_params=trainable, adapter_dir=adapter,
                  output_dir=out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
