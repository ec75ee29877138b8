"""preflight in local mode: the report, required failures and warnings; S3 and SSM probes against moto."""

from __future__ import annotations

import fcntl
import json
import os
import shlex

from conftest import PIPELINE, read_outputs, run_program


def prep(tmp_path, output):
    out = tmp_path / "prep.outputs"
    env = os.environ.copy()
    env["SORTIE_OUTPUT"] = str(out)
    run_program("prep_data", "--source", PIPELINE / "sample_corpus", "--output", output, "--work-dir",
                tmp_path / "prep", env=env)
    return read_outputs(out)


def preflight(tmp_path, data, output_store, *extra, counts=None, check=True, name="pf", trainer_extra=()):
    env = os.environ.copy()
    env["SORTIE_OUTPUT"] = str(tmp_path / f"{name}.outputs")
    trainer_args = shlex.join(["--model-dir", "unused", "--train-file", data["train_file"], "--val-file",
                               data["val_file"], "--output-dir", str(tmp_path / "run"), "--max-steps", "20",
                               "--save-steps", "5", "--learning-rate", "0.5", *trainer_extra])
    train_count, val_count = counts or (data["train_count"], data["val_count"])
    proc = run_program(
        "preflight", "--report", tmp_path / f"{name}.json", "--local", "--volume", tmp_path,
        "--train-file", data["train_file"], "--val-file", data["val_file"], "--train-count", train_count,
        "--val-count", val_count, "--dataset-uri", data["dataset_uri"], "--dataset-sha256",
        data["dataset_sha256"], "--output-store", output_store, "--trainer", PIPELINE / "tiny_train.py",
        "--trainer-args", trainer_args, "--train-lock-file", tmp_path / "locks/train.lock",
        "--lifetime-seconds", "3600", "--train-timeout-seconds", "600", "--min-volume-free-gb", "0.1",
        "--min-root-free-gb", "0.1", "--min-ram-gb", "0.5", *extra, env=env, check=check)
    report = json.loads((tmp_path / f"{name}.json").read_text())
    return proc, report, {row["check"]: row for row in report}


def test_e2e_preflight_local_passes_with_warnings(tmp_path):
    data = prep(tmp_path, str(tmp_path / "bucket/datasets"))
    model = tmp_path / "model"
    run_program("fetch_model", "--model-id", "sortie/tiny-unigram", "--revision", "tiny-0001", "--model-dir", model,
                "--mirror", PIPELINE / "sample_model")
    proc, report, by = preflight(tmp_path, data, str(tmp_path / "bucket/runs/r1"), "--model-dir", model)
    assert proc.returncode == 0
    assert len(report) >= 35 and len(by) == len(report), "names are unique"
    assert all(set(row) == {"check", "ok", "required", "detail"} for row in report)
    assert not any(row["required"] and not row["ok"] for row in report)
    warnings = [row for row in report if not row["ok"]]
    assert warnings and all(not row["required"] for row in warnings)
    assert by["gpu_memory"]["detail"].startswith("skipped") and not by["gpu_memory"]["required"]
    for name in ("train_count_matches", "val_count_matches", "no_train_val_overlap", "train_rows_valid",
                 "dataset_readable", "output_writable", "training_lock_free", "trainer_accepts_flags",
                 "clock_sane", "volume_writable", "model_config", "model_index", "model_shards_complete",
                 "model_tensors_indexed"):
        assert by[name]["ok"], by[name]
    out = read_outputs(tmp_path / "pf.outputs")
    assert out["preflight_checks"] == str(len(report)) and out["preflight_warnings"] == str(len(warnings))
    assert not list((tmp_path / "bucket/runs/r1").glob(".preflight-probe-*")), "the probe object is deleted"
    assert by["lifetime_exceeds_train_timeout"]["ok"], "3600 s left > 600 s timeout"


def test_e2e_preflight_fails_on_an_incomplete_model(tmp_path):
    data = prep(tmp_path, str(tmp_path / "bucket/datasets"))
    model = tmp_path / "model"
    run_program("fetch_model", "--model-id", "sortie/tiny-unigram", "--revision", "tiny-0001", "--model-dir", model,
                "--mirror", PIPELINE / "sample_model")
    shard = model / "model-00001-of-00001.safetensors"
    shard.rename(shard.with_name(shard.name + ".part"))
    proc, report, by = preflight(tmp_path, data, str(tmp_path / "o"), "--model-dir", model, check=False)
    assert proc.returncode == 1
    assert not by["model_shards_complete"]["ok"] and "partial" in by["model_shards_complete"]["detail"]


def test_e2e_preflight_fails_on_required_failures(tmp_path):
    data = prep(tmp_path, str(tmp_path / "bucket/datasets"))
    # Counts that disagree with the files, a train/val overlap, a held training lock.
    with open(data["val_file"], "a") as f:
        f.write(open(data["train_file"]).readline())
    (tmp_path / "locks").mkdir()
    with open(tmp_path / "locks/train.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc, report, by = preflight(tmp_path, data, str(tmp_path / "bucket/runs/r1"),
                                     counts=(int(data["train_count"]) + 1, data["val_count"]), check=False)
    assert proc.returncode == 1
    failed = {row["check"] for row in report if row["required"] and not row["ok"]}
    assert failed == {"train_count_matches", "val_count_matches", "no_train_val_overlap", "training_lock_free",
                      "dataset_readable"}
    assert "required checks failed" in proc.stderr
    assert not (tmp_path / "pf.outputs").exists()


def test_e2e_preflight_rejects_a_flag_the_trainer_does_not_know(tmp_path):
    data = prep(tmp_path, str(tmp_path / "bucket/datasets"))
    proc, report, by = preflight(tmp_path, data, str(tmp_path / "o"), check=False, trainer_extra=["--no-such-flag"])
    assert proc.returncode == 1
    assert not by["trainer_accepts_flags"]["ok"] and "--no-such-flag" in by["trainer_accepts_flags"]["detail"]


def test_e2e_preflight_short_lifetime_is_a_warning_in_local_mode(tmp_path):
    data = prep(tmp_path, str(tmp_path / "bucket/datasets"))
    proc, report, by = preflight(tmp_path, data, str(tmp_path / "o"), "--lifetime-seconds", "100")
    row = by["lifetime_exceeds_train_timeout"]
    assert not row["ok"] and not row["required"] and "100 s left" in row["detail"]


def test_int_preflight_probes_s3_and_reads_the_ssm_token(tmp_path, s3, fresh_bucket):
    import boto3

    boto3.client("ssm").put_parameter(Name="/sortie/pf/token", Value="hf_pf_secret", Type="SecureString",
                                      Overwrite=True)
    data = prep(tmp_path, f"s3://{fresh_bucket}/datasets")
    proc, report, by = preflight(tmp_path, data, f"s3://{fresh_bucket}/runs/r1", "--hf-token-param",
                                 "/sortie/pf/token")
    assert by["hf_token_readable"]["ok"] and "12 characters" in by["hf_token_readable"]["detail"]
    assert "hf_pf_secret" not in proc.stdout + proc.stderr + (tmp_path / "pf.json").read_text()
    assert by["output_writable"]["ok"] and by["dataset_readable"]["ok"]
    assert "S3's Date header" in by["clock_sane"]["detail"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=fresh_bucket, Prefix="runs/").get("Contents", [])]
    assert keys == []


def test_e2e_preflight_gpu_mode_reads_nvidia_smi_and_fails_without_cuda(tmp_path):
    """GPU mode on a CPU machine: a stand-in nvidia-smi prints what the real one prints for
    `--query-gpu=name,memory.total,driver_version,memory.used --format=csv,noheader,nounits` (one line per GPU,
    fields joined by ", ", MiB without units); torch then finds no CUDA, a required failure."""
    data = prep(tmp_path, str(tmp_path / "bucket/datasets"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA A10G, 23028, 535.183.01, 0'\n")
    smi.chmod(0o755)
    env = os.environ.copy()
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    args = ["--report", tmp_path / "gpu.json", "--volume", tmp_path, "--train-file", data["train_file"],
            "--val-file", data["val_file"], "--train-count", data["train_count"], "--val-count", data["val_count"],
            "--dataset-uri", data["dataset_uri"], "--dataset-sha256", data["dataset_sha256"], "--output-store",
            tmp_path / "o", "--trainer", PIPELINE / "tiny_train.py", "--train-lock-file", tmp_path / "l.lock",
            "--lifetime-seconds", "100", "--train-timeout-seconds", "600", "--min-volume-free-gb", "0.1",
            "--min-root-free-gb", "0.1", "--min-ram-gb", "0.5", "--", "--model-dir", "m", "--train-file",
            data["train_file"], "--val-file", data["val_file"], "--output-dir", tmp_path / "run"]
    proc = run_program("preflight", *args, env=env, check=False)
    by = {row["check"]: row for row in json.loads((tmp_path / "gpu.json").read_text())}
    assert proc.returncode == 1
    assert by["nvidia_smi"]["ok"] and by["gpu_memory"]["ok"] and "22.5 GiB" in by["gpu_memory"]["detail"]
    assert not by["gpu_driver_version"]["ok"] and by["gpu_driver_version"]["required"], "535 < 580 (CUDA 13)"
    assert not by["torch_cuda"]["ok"] and by["torch_cuda"]["required"]
    assert not by["lifetime_exceeds_train_timeout"]["ok"] and by["lifetime_exceeds_train_timeout"]["required"]
    assert by["trainer_accepts_flags"]["ok"], "flags after -- are the trainer's"
