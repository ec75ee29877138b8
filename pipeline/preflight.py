#!/usr/bin/env python3
"""Pre-flight checks before a long training run. Writes a JSON report [{check, ok, required, detail}] and exits 1
when a required check fails (warnings never fail the step).

--local (or no nvidia-smi on PATH) turns GPU, torch and lock checks into warnings: the laptop quickstart.
Secrets are never printed: the token check reports only that the parameter was readable and its length.
"""

from __future__ import annotations

import argparse
import email.utils
import fcntl
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Store, Ticker, log, write_outputs  # noqa: E402
from train_args import planned_steps  # noqa: E402

GPU_PROBE = r"""
import json, torch
out = {"cuda": torch.cuda.is_available(), "torch": torch.__version__}
if out["cuda"]:
    out["bf16"] = torch.cuda.is_bf16_supported()
    out["name"] = torch.cuda.get_device_name(0)
    out["mem_gb"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    try:
        import bitsandbytes as bnb
        w = torch.randn(64, 64, dtype=torch.bfloat16, device="cuda")
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(w.cpu(), requires_grad=False, quant_type="nf4")
        layer = layer.cuda()
        x = torch.randn(2, 64, dtype=torch.bfloat16, device="cuda")
        err = (layer(x) - x @ w.t()).abs().mean().item() / x.abs().mean().item()
        out["bnb"] = f"nf4 matmul ok, relative error {err:.3f}" if err < 0.5 else f"relative error {err:.3f}"
        out["bnb_ok"] = err < 0.5
    except Exception as e:
        out["bnb"] = f"{type(e).__name__}: {e}"
        out["bnb_ok"] = False
print(json.dumps(out))
"""
TOKENIZER_PROBE = ("import sys; from transformers import AutoTokenizer; t = AutoTokenizer.from_pretrained(sys.argv[1]);"
                   " print(len(t), len(t('The Federal Reserve')['input_ids']))")


class Report:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, check: str, ok: bool, required: bool, detail: str = "") -> bool:
        self.rows.append({"check": check, "ok": bool(ok), "required": required, "detail": str(detail)})
        mark = "ok  " if ok else ("FAIL" if required else "warn")
        log(f"[preflight] {mark} {check}: {detail}")
        return bool(ok)

    def run(self, check: str, required: bool, fn) -> bool:
        """fn() -> (ok, detail); an exception is a failed check, with its message."""
        try:
            ok, detail = fn()
        except Exception as err:  # a check that cannot run has failed; say why
            ok, detail = False, f"{type(err).__name__}: {err}"
        return self.add(check, ok, required, detail)

    def skip(self, check: str, why: str) -> None:
        self.add(check, False, False, f"skipped: {why}")


def gb(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        out[key] = int(rest.split()[0]) * 1024
    return out


def jsonl_texts(path: Path) -> tuple[list[str], list[str]]:
    texts, bad = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                obj = json.loads(line)
                text = obj.get("text") if isinstance(obj, dict) else None
                if isinstance(text, str) and text.strip():
                    texts.append(text)
                    continue
            except ValueError:
                pass
            bad.append(f"line {n}")
    return texts, bad


def safetensors_keys(path: Path) -> set[str]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k for k in header if k != "__metadata__"}


def scheduled_shutdown() -> float | None:
    """Seconds until a scheduled shutdown (systemd's /run/systemd/shutdown/scheduled USEC=...), if any."""
    path = Path(os.environ.get("SORTIE_HOST_ROOT", "") + "/run/systemd/shutdown/scheduled")
    if path.is_file():
        m = re.search(r"USEC=(\d+)", path.read_text())
        if m:
            return int(m.group(1)) / 1e6 - time.time()
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", required=True, help="where to write the JSON report")
    p.add_argument("--local", action="store_true", help="no GPU host: GPU/torch/lock checks become warnings")
    p.add_argument("--volume", required=True, help="the data volume's mount path")
    p.add_argument("--model-dir", default="")
    p.add_argument("--train-file", required=True)
    p.add_argument("--val-file", required=True)
    p.add_argument("--train-count", type=int, required=True, help="prep_data's train_count")
    p.add_argument("--val-count", type=int, required=True, help="prep_data's val_count")
    p.add_argument("--dataset-uri", required=True, help="prep_data's dataset_uri")
    p.add_argument("--dataset-sha256", required=True)
    p.add_argument("--output-store", required=True, help="s3://bucket/<output_prefix>/<run> or a local dir")
    p.add_argument("--python", default=sys.executable, help="the training venv's python")
    p.add_argument("--lock", default="", help="requirements lock the venv must match")
    p.add_argument("--trainer", required=True, help="train.py or tiny_train.py")
    p.add_argument("--trainer-args", default="", help="the trainer's flags as one shell-quoted string (or pass "
                                                      "them after --)")
    p.add_argument("--hf-token-param", default="", help="SSM SecureString name (only its readability is checked)")
    p.add_argument("--train-lock-file", required=True, help="the training lock's file (flock -n must succeed)")
    p.add_argument("--lifetime-seconds", type=float, default=0, help="instance lifetime left (0: read the "
                                                                      "shutdown timer)")
    p.add_argument("--train-timeout-seconds", type=float, required=True)
    p.add_argument("--min-gpu-gb", type=float, default=22)
    p.add_argument("--min-driver", type=int, default=580, help="CUDA 13 wheels need driver >= 580")
    p.add_argument("--min-volume-free-gb", type=float, default=50)
    p.add_argument("--min-root-free-gb", type=float, default=10)
    p.add_argument("--min-ram-gb", type=float, default=16)
    argv = list(sys.argv[1:] if argv is None else argv)
    after = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:after])
    trainer_args = shlex.split(args.trainer_args) + argv[after + 1:]

    local = args.local or shutil.which("nvidia-smi") is None
    gpu_host = not local
    r = Report()
    ticker = Ticker(lambda: f"[preflight] {len(r.rows)} checks done, still working", 20).__enter__()
    if local:
        log("[preflight] local mode: GPU checks are skipped (warnings)")

    # Host.
    r.add("python_version", sys.version_info >= (3, 10), True, sys.version.split()[0])
    r.add("platform_linux", sys.platform.startswith("linux"), False, sys.platform)
    r.add("cpu_count", (os.cpu_count() or 1) >= 4, False, f"{os.cpu_count()} cpus (4 dataloader workers + trainer)")
    mem = meminfo() if Path("/proc/meminfo").exists() else {}
    r.add("ram_total", mem.get("MemTotal", 0) >= args.min_ram_gb * 2**30, True, gb(mem.get("MemTotal", 0)))
    r.add("ram_available", mem.get("MemAvailable", 0) >= 8 * 2**30, False, gb(mem.get("MemAvailable", 0)))
    r.add("swap_not_in_use", mem.get("SwapTotal", 0) - mem.get("SwapFree", 0) < 2**30, False,
          gb(mem.get("SwapTotal", 0) - mem.get("SwapFree", 0)) + " of swap used")
    root_free = shutil.disk_usage("/").free
    r.add("root_disk_free", root_free >= args.min_root_free_gb * 2**30, True, gb(root_free))
    shm = shutil.disk_usage("/dev/shm").free if Path("/dev/shm").exists() else 0
    r.add("dev_shm_free", shm >= 2**30, False, gb(shm) + " (dataloader workers pass batches through it)")
    volume = Path(args.volume)
    r.add("volume_present", volume.is_dir(), True, str(volume))
    vol_free = shutil.disk_usage(volume).free if volume.is_dir() else 0
    r.add("volume_free", vol_free >= args.min_volume_free_gb * 2**30, True, gb(vol_free))

    def write_probe():
        probe = volume / f".preflight-{uuid.uuid4().hex}"
        with open(probe, "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
        return True, "wrote, fsynced and removed a 4 KiB file"

    r.run("volume_writable", True, write_probe)
    r.add("tmp_writable", os.access(os.environ.get("TMPDIR", "/tmp"), os.W_OK), True,
          os.environ.get("TMPDIR", "/tmp"))
    import resource

    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    r.add("open_files_limit", nofile >= 1024, False, f"RLIMIT_NOFILE {nofile}")
    alloc = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    r.add("pytorch_cuda_alloc_conf", "expandable_segments:True" in alloc, False, alloc or "unset")

    # GPU.
    gpu_checks = ("nvidia_smi", "gpu_driver_version", "gpu_memory", "gpu_idle", "torch_cuda", "gpu_bf16",
                  "bitsandbytes_4bit_matmul")
    if local:
        for name in gpu_checks:
            r.skip(name, "local mode (no GPU)")
    else:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,memory.used",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=60)
        first = smi.stdout.strip().splitlines()[0].split(", ") if smi.returncode == 0 and smi.stdout.strip() else []
        r.add("nvidia_smi", len(first) == 4, True, smi.stdout.strip() or smi.stderr.strip())
        driver = first[2] if first else ""
        r.add("gpu_driver_version", driver and int(driver.split(".")[0]) >= args.min_driver, True,
              f"{driver or 'unknown'} (need >= {args.min_driver})")
        mem_gb = float(first[1]) / 1024 if first else 0
        r.add("gpu_memory", mem_gb >= args.min_gpu_gb, True, f"{mem_gb:.1f} GiB (need >= {args.min_gpu_gb})")
        r.add("gpu_idle", first and float(first[3]) < 1024, False, f"{first[3] if first else '?'} MiB in use")
        probe = subprocess.run([args.python, "-c", GPU_PROBE], capture_output=True, text=True, timeout=600)
        info = json.loads(probe.stdout.strip().splitlines()[-1]) if probe.returncode == 0 else {}
        r.add("torch_cuda", info.get("cuda", False), True, info.get("name") or probe.stderr.strip()[-300:])
        r.add("gpu_bf16", info.get("bf16", False), True, f"torch {info.get('torch')}")
        r.add("bitsandbytes_4bit_matmul", info.get("bnb_ok", False), True, info.get("bnb", "not run"))

    # Environment.
    if args.lock:
        def lock_check():
            import env

            problems = env.mismatches(args.python, Path(args.lock))
            return not problems, "; ".join(problems[:5]) or f"{len(env.read_lock(Path(args.lock)))} pins match"

        r.run("packages_match_lock", gpu_host, lock_check)
    else:
        r.skip("packages_match_lock", "no --lock")
    tiny = Path(args.trainer).name == "tiny_train.py"
    for module in ("torch", "transformers", "peft"):
        if tiny:
            r.skip(f"import_{module}", "the tiny trainer needs no torch")
            continue

        def imp(module=module):
            proc = subprocess.run([args.python, "-c", f"import {module}; print({module}.__version__)"],
                                  capture_output=True, text=True, timeout=300)
            return proc.returncode == 0, (proc.stdout.strip() or proc.stderr.strip()[-200:])

        r.run(f"import_{module}", gpu_host, imp)

    # Model.
    model = Path(args.model_dir) if args.model_dir else None
    if model is None:
        for name in ("model_config", "model_index", "model_shards_complete", "model_tensors_indexed",
                     "no_consolidated_weights", "tokenizer_loads"):
            r.skip(name, "no --model-dir (tiny trainer)")
    else:
        cfg_path = model / "config.json"
        r.run("model_config", True, lambda: (json.loads(cfg_path.read_text()).get("model_type") is not None,
                                             json.loads(cfg_path.read_text()).get("model_type")))
        index_path = model / "model.safetensors.index.json"
        r.add("model_index", index_path.is_file(), True, str(index_path))
        weight_map = json.loads(index_path.read_text())["weight_map"] if index_path.is_file() else {}
        shards = sorted(set(weight_map.values()))

        def shards_complete():
            missing = [s for s in shards if not (model / s).is_file() or (model / s).stat().st_size < 8]
            partial = sorted(p.name for p in model.glob("*.part"))
            return bool(shards) and not missing and not partial, (
                f"{len(shards)} shards" + (f"; missing {missing}" if missing else "")
                + (f"; partial {partial}" if partial else ""))

        r.run("model_shards_complete", True, shards_complete)

        def tensors_indexed():
            have = set()
            for s in shards:
                have |= safetensors_keys(model / s)
            missing = set(weight_map) - have
            return not missing, f"{len(weight_map)} tensors in the index" + (
                f"; {len(missing)} missing, e.g. {sorted(missing)[:3]}" if missing else "")

        r.run("model_tensors_indexed", True, tensors_indexed)
        r.add("no_consolidated_weights", not (model / "consolidated.safetensors").exists(), False,
              "consolidated.safetensors would double the disk use")

        def tok():
            proc = subprocess.run([args.python, "-c", TOKENIZER_PROBE, str(model)], capture_output=True, text=True,
                                  timeout=300)
            return proc.returncode == 0, (f"vocab, tokens: {proc.stdout.strip()}" if proc.returncode == 0
                                          else proc.stderr.strip()[-300:])

        r.run("tokenizer_loads", gpu_host, tok)

    # Data set.
    train_path, val_path = Path(args.train_file), Path(args.val_file)
    r.add("train_file", train_path.is_file(), True, str(train_path))
    r.add("val_file", val_path.is_file(), True, str(val_path))
    train_texts, train_bad = jsonl_texts(train_path) if train_path.is_file() else ([], ["missing"])
    val_texts, val_bad = jsonl_texts(val_path) if val_path.is_file() else ([], ["missing"])
    r.add("train_count_matches", len(train_texts) + len(train_bad) == args.train_count, True,
          f"{len(train_texts) + len(train_bad)} lines, prep_data said {args.train_count}")
    r.add("val_count_matches", len(val_texts) + len(val_bad) == args.val_count, True,
          f"{len(val_texts) + len(val_bad)} lines, prep_data said {args.val_count}")
    r.add("train_rows_valid", not train_bad and bool(train_texts), True,
          f"{len(train_bad)} invalid" + (f": {train_bad[:3]}" if train_bad else ""))
    r.add("val_rows_valid", not val_bad and bool(val_texts), True,
          f"{len(val_bad)} invalid" + (f": {val_bad[:3]}" if val_bad else ""))
    overlap = set(train_texts) & set(val_texts)
    r.add("no_train_val_overlap", not overlap, True, f"{len(overlap)} texts in both")
    n = args.train_count + args.val_count
    r.add("val_split_fraction", args.val_count == n // 5, False, f"val {args.val_count} of {n}")

    def dataset_read():
        store = Store(args.dataset_uri)
        meta = json.loads(store.read_bytes("dataset.json"))
        ok = meta["dataset_sha256"] == args.dataset_sha256 and meta["train_count"] == args.train_count
        return ok, f"{store.uri('dataset.json')}: sha256 {meta['dataset_sha256'][:16]}..., {meta['train_count']} train"

    r.run("dataset_readable", True, dataset_read)
    out_store = Store(args.output_store)
    date_header = {}

    def output_probe():
        key = f".preflight-probe-{uuid.uuid4().hex}"
        out_store.put_bytes(key, b"probe")
        if out_store.is_s3:
            head = out_store._client.head_object(Bucket=out_store.bucket, Key=out_store._full(key))
            date_header["date"] = head["ResponseMetadata"]["HTTPHeaders"].get("date")
        out_store.delete(key)
        return not out_store.exists(key), f"put and deleted {out_store.uri(key)}"

    r.run("output_writable", True, output_probe)

    def clock():
        now = time.time()
        if date_header.get("date"):
            skew = now - email.utils.parsedate_to_datetime(date_header["date"]).timestamp()
            return abs(skew) < 300, f"{skew:+.0f} s vs S3's Date header"
        return now > 1_704_067_200, time.strftime("%Y-%m-%dT%H:%M:%SZ (no S3 Date: checked a lower bound)",
                                                  time.gmtime(now))

    r.run("clock_sane", True, clock)

    if args.hf_token_param:
        def token():
            import boto3

            value = boto3.client("ssm").get_parameter(Name=args.hf_token_param, WithDecryption=True)["Parameter"][
                "Value"]
            return bool(value.strip()), f"{args.hf_token_param} readable ({len(value)} characters)"

        r.run("hf_token_readable", True, token)
    else:
        r.skip("hf_token_readable", "no --hf-token-param")

    # Training.
    def lock_free():
        path = Path(args.train_lock_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False, f"{path} is held (a trainer is running)"
            fcntl.flock(f, fcntl.LOCK_UN)
        return True, f"{path} is free"

    r.run("training_lock_free", True, lock_free)

    def no_trainer():
        found = []
        for stat in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                cmd = stat.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if re.search(r"(^|/)(tiny_)?train\.py ", cmd) and "--dry-parse" not in cmd:
                found.append(stat.parent.name)
        return not found, f"trainer pids: {found}" if found else "no trainer process"

    r.run("no_trainer_running", False, no_trainer)

    def trainer_flags():
        proc = subprocess.run([args.python if "tiny_train" not in args.trainer else sys.executable, args.trainer,
                               *trainer_args, "--dry-parse"], capture_output=True, text=True, timeout=300)
        return proc.returncode == 0, (f"{len(trainer_args)} arguments accepted" if proc.returncode == 0
                                      else proc.stderr.strip()[-300:])

    r.run("trainer_accepts_flags", True, trainer_flags)

    def steps():
        parsed = json.loads(subprocess.run([sys.executable, args.trainer, *trainer_args, "--dry-parse"],
                                           capture_output=True, text=True, check=True).stdout)
        total = planned_steps(args.train_count, parsed["batch_size"], parsed["grad_accum"], parsed["epochs"],
                              parsed["max_steps"])
        return total > 0 and parsed["save_steps"] <= total, f"{total} steps, a checkpoint every {parsed['save_steps']}"

    r.run("trainer_step_plan", False, steps)

    def lifetime():
        left = args.lifetime_seconds or scheduled_shutdown()
        if not left:
            return False, "unknown (no --lifetime-seconds and no scheduled shutdown)"
        return left > args.train_timeout_seconds, f"{left:.0f} s left, train timeout {args.train_timeout_seconds:.0f} s"

    r.run("lifetime_exceeds_train_timeout", gpu_host, lifetime)

    ticker.__exit__(None, None, None)
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(r.rows, indent=2) + "\n")
    failed = [row["check"] for row in r.rows if row["required"] and not row["ok"]]
    warnings = [row["check"] for row in r.rows if not row["required"] and not row["ok"]]
    log(f"[preflight] {len(r.rows)} checks: {len(failed)} failed, {len(warnings)} warnings; report {report}")
    if failed:
        print(f"error: required checks failed: {', '.join(failed)}", file=sys.stderr, flush=True)
        return 1
    write_outputs(preflight_report=report.resolve(), preflight_checks=len(r.rows), preflight_warnings=len(warnings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
