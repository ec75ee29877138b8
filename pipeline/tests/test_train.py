"""The real QLoRA trainer (train.py) on CPU: a tiny random Mistral, quantization off, then evaluate and upload."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import PIPELINE, TRAIN_PY, needs_train_venv, read_outputs, run_program

sys.path.insert(0, str(PIPELINE))
from train import MISTRAL_7B_LORA_PARAMS, expected_lora_params  # noqa: E402
from train_args import TARGETS  # noqa: E402

MISTRAL_7B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "head_dim": 128}


def test_lora_arithmetic_on_mistral_7b_shapes():
    assert expected_lora_params(MISTRAL_7B, 64, TARGETS.split(",")) == MISTRAL_7B_LORA_PARAMS == 167_772_160
    # Per layer: r * (q 8192 + k 5120 + v 5120 + o 8192 + 3 * 18432) = 64 * 81920.
    assert expected_lora_params(MISTRAL_7B, 64, ["q_proj"]) == 32 * 64 * 8192


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    if not TRAIN_PY.exists():
        pytest.skip("no training venv")
    tmp = tmp_path_factory.mktemp("train")
    out = tmp / "prep.outputs"
    env = os.environ.copy()
    env["SORTIE_OUTPUT"] = str(out)
    run_program("prep_data", "--source", PIPELINE / "sample_corpus", "--output", tmp / "bucket/datasets",
                "--work-dir", tmp / "prep", "--operatives-limit", "10", env=env)
    data = read_outputs(out)
    subprocess.run([str(TRAIN_PY), str(PIPELINE / "tests/make_tiny_model.py"), str(tmp / "model"),
                    data["train_file"], data["val_file"]], check=True, capture_output=True, timeout=300)
    return tmp, data


def train(tmp, data, steps, name, *extra, run="run", run_id="r1", check=True):
    out = tmp / f"{name}.outputs"
    env = os.environ.copy()
    env["SORTIE_OUTPUT"] = str(out)
    proc = run_program("train", "--model-dir", tmp / "model", "--train-file", data["train_file"], "--val-file",
                       data["val_file"], "--output-dir", tmp / run, "--checkpoint-store",
                       tmp / f"bucket/runs/{run_id}/checkpoints", "--run-id", run_id, "--max-steps", str(steps),
                       "--save-steps", "3", "--logging-steps", "1", "--dataloader-workers", "0",
                       "--learning-rate", "1e-3", "--max-seq-length", "64", "--no-quantize",
                       "--spot-poll-seconds", "0", *extra, env=env, python=str(TRAIN_PY), timeout=600, check=check)
    return proc, (read_outputs(out) if out.exists() else {})


@needs_train_venv
def test_e2e_train_saves_and_stops_on_a_spot_notice(tiny_setup):
    from standins import ImdsServer

    tmp, data = tiny_setup
    with ImdsServer(notice={"action": "terminate", "time": "2026-12-01T05:00:00Z"}) as imds:
        proc, out = train(tmp, data, 500, "spot", "--spot-poll-seconds", "0.05", "--imds-url", imds.url,
                          "--save-steps", "1000", "--dataloader-workers", "1", run="spot", run_id="spot",
                          check=False)
    assert proc.returncode == 75, proc.stdout + proc.stderr
    assert out == {}, "an interrupted attempt publishes no outputs"
    saved = [p.name for p in (tmp / "spot").glob("checkpoint-*")]
    assert len(saved) == 1 and 0 < int(saved[0].split("-")[1]) < 500
    assert (tmp / "bucket/runs/spot/checkpoints" / saved[0] / ".complete").exists()
    assert "interruption notice" in proc.stdout


@needs_train_venv
def test_e2e_train_on_cpu_checkpoints_resume_evaluate_upload(tiny_setup):
    tmp, data = tiny_setup
    cfg = json.loads((tmp / "model/config.json").read_text())
    want = expected_lora_params(cfg, 64, TARGETS.split(","))
    assert want == 2 * 64 * (2 * (64 + 64) + 2 * (64 + 32) + 3 * (64 + 128))  # q,o 64->64; k,v 64->32; mlp

    p1, o1 = train(tmp, data, 4, "t1")
    assert o1["trainable_params"] == str(want)
    assert o1["resumed_from_step"] == "0" and o1["final_step"] == "4"
    assert f"trainable params {want:,}" in p1.stdout
    assert "alpha=16 dropout=0.05 on " + TARGETS in p1.stdout
    beats = [ln for ln in p1.stdout.splitlines() if ln.startswith("step ")]
    assert beats[0].startswith("step 1/4 loss=") and "samples_per_s=" in beats[0] and "eta=" in beats[0]
    assert {p.name for p in (tmp / "run").glob("checkpoint-*")} == {"checkpoint-3", "checkpoint-4"}
    store = tmp / "bucket/runs/r1/checkpoints"
    assert (store / "checkpoint-3/.complete").exists()
    assert (store / "checkpoint-4/adapter_model.safetensors").exists()
    assert (store / "checkpoint-4/optimizer.pt").exists()
    adapter_cfg = json.loads((tmp / "run/adapter/adapter_config.json").read_text())
    assert set(adapter_cfg["target_modules"]) == set(TARGETS.split(","))
    assert adapter_cfg["r"] == 64 and adapter_cfg["lora_alpha"] == 16 and adapter_cfg["lora_dropout"] == 0.05

    # A new instance: only the store has the checkpoints. The step counter continues from 4.
    shutil.rmtree(tmp / "run")
    p2, o2 = train(tmp, data, 7, "t2")
    assert o2["resumed_from_step"] == "4" and o2["final_step"] == "7"
    assert "downloading checkpoint-4" in p2.stdout
    beats = [ln for ln in p2.stdout.splitlines() if ln.startswith("step ")]
    assert beats[0].startswith("step 5/7 ") and beats[-1].startswith("step 7/7 ")
    state = json.loads((tmp / "run/adapter/trainer_state.json").read_text())
    assert state["global_step"] == 7

    env = os.environ.copy()
    env["SORTIE_OUTPUT"] = str(tmp / "e.outputs")
    run_program("evaluate", "--model-dir", tmp / "model", "--adapter-dir", o2["adapter_dir"], "--val-file",
                data["val_file"], "--metrics", tmp / "metrics.json", "--max-new-tokens", "4", "--no-quantize",
                "--max-seq-length", "64", env=env, python=str(TRAIN_PY), timeout=600)
    metrics = json.loads((tmp / "metrics.json").read_text())
    assert metrics["kind"] == "lora" and metrics["eval_tokens"] > 0 and metrics["eval_loss"] > 0
    assert read_outputs(tmp / "e.outputs")["eval_loss"] == f"{metrics['eval_loss']:.6f}"

    (tmp / "preflight.json").write_text("[]")
    env["SORTIE_OUTPUT"] = str(tmp / "u.outputs")
    run_program("upload", "--dest", tmp / "bucket/runs/r1", "--adapter-dir", o2["adapter_dir"], "--tokenizer-dir",
                tmp / "model", "--metrics", tmp / "metrics.json", "--preflight-report", tmp / "preflight.json",
                "--git-revision", "abc123", "--dataset-sha256", data["dataset_sha256"], env=env)
    manifest = json.loads((tmp / "bucket/runs/r1/manifest.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "tokenizer/tokenizer.json",
            "trainer_state.json", "training_config.json", "metrics.json", "preflight.json"} <= paths
    assert not any("optimizer" in p or "scheduler" in p or "rng_state" in p for p in paths)
    assert manifest["hyperparameters"]["trainable_params"] == int(o2["trainable_params"])
