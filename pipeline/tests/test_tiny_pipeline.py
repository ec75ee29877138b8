"""The local quickstart's path end to end: prep_data -> tiny_train -> evaluate -> upload, as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import PIPELINE, read_outputs, run_program
from standins import ImdsServer


def env_with(outputs, **extra):
    env = os.environ.copy()
    env["SORTIE_OUTPUT"] = str(outputs)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def prep(tmp_path):
    out = tmp_path / "prep.outputs"
    run_program("prep_data", "--source", PIPELINE / "sample_corpus", "--output", tmp_path / "bucket/datasets",
                "--work-dir", tmp_path / "prep", "--operatives-limit", "6", env=env_with(out))
    return read_outputs(out)


def train_args(tmp_path, data, steps, *extra):
    return ["--model-dir", tmp_path / "nomodel", "--train-file", data["train_file"], "--val-file",
            data["val_file"], "--output-dir", tmp_path / "run", "--checkpoint-store",
            tmp_path / "bucket/runs/r1/checkpoints", "--run-id", "r1", "--max-steps", str(steps), "--save-steps",
            "10", "--logging-steps", "5", "--learning-rate", "0.5", "--spot-poll-seconds", "0", *extra]


def test_e2e_tiny_train_checkpoints_resume_evaluate_upload(tmp_path):
    data = prep(tmp_path)
    o1 = tmp_path / "t1.outputs"
    p1 = run_program("tiny_train", *train_args(tmp_path, data, 25), env=env_with(o1))
    out1 = read_outputs(o1)
    assert out1["resumed_from_step"] == "0" and out1["final_step"] == "25" and out1["trainable_params"] == "256"
    assert "step 5/25 loss=" in p1.stdout and "samples_per_s=" in p1.stdout and "eta=" in p1.stdout
    ckpts = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-10", "checkpoint-20", "checkpoint-25"]
    store = tmp_path / "bucket/runs/r1/checkpoints"
    for name in ckpts:
        assert (store / name / ".complete").exists() and (store / name / "trainer_state.json").exists()
    # --store-keep: older checkpoints leave the store once a newer one is complete there.
    args = train_args(tmp_path, data, 35, "--store-keep", "2")
    args[args.index("--output-dir") + 1] = tmp_path / "run-keep"
    args[args.index("--checkpoint-store") + 1] = tmp_path / "bucket/runs/keep/checkpoints"
    run_program("tiny_train", *args, env=env_with(tmp_path / "keep.outputs"))
    assert sorted(p.name for p in (tmp_path / "bucket/runs/keep/checkpoints").iterdir()) == [
        "checkpoint-30", "checkpoint-35"]

    # The local run dir is lost (a new instance): the next attempt resumes from the store's newest checkpoint.
    import shutil

    shutil.rmtree(tmp_path / "run")
    o2 = tmp_path / "t2.outputs"
    p2 = run_program("tiny_train", *train_args(tmp_path, data, 40), env=env_with(o2))
    out2 = read_outputs(o2)
    assert out2["resumed_from_step"] == "25" and out2["final_step"] == "40"
    assert "downloading checkpoint-25" in p2.stdout
    assert "step 30/40" in p2.stdout and "step 5/40" not in p2.stdout
    state = json.loads((tmp_path / "run/adapter/trainer_state.json").read_text())
    assert state["global_step"] == 40
    losses = [h["loss"] for h in state["log_history"]]
    assert losses[-1] < losses[0], "the tiny model learns"

    o3 = tmp_path / "e.outputs"
    run_program("evaluate", "--model-dir", tmp_path / "nomodel", "--adapter-dir", out2["adapter_dir"],
                "--val-file", data["val_file"], "--metrics", tmp_path / "metrics.json", env=env_with(o3))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert read_outputs(o3)["eval_loss"] == f"{metrics['eval_loss']:.6f}"
    assert 0 < metrics["eval_loss"] < 5.545, "better than uniform over bytes (ln 256)"
    assert len(metrics["samples"]) == 3

    (tmp_path / "preflight.json").write_text("[]")
    o4 = tmp_path / "u.outputs"
    run_program("upload", "--dest", tmp_path / "bucket/runs/r1", "--adapter-dir", out2["adapter_dir"],
                "--metrics", tmp_path / "metrics.json", "--preflight-report", tmp_path / "preflight.json",
                "--git-revision", "deadbeef", "--dataset-sha256", data["dataset_sha256"], env=env_with(o4))
    manifest = json.loads((tmp_path / "bucket/runs/r1/manifest.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert paths == {"adapter/adapter_model.json", "adapter/adapter_config.json", "trainer_state.json",
                     "training_config.json", "metrics.json", "preflight.json"}
    assert manifest["git_revision"] == "deadbeef" and manifest["dataset_sha256"] == data["dataset_sha256"]
    assert manifest["hyperparameters"]["lora_r"] == 64
    assert not any("optimizer" in p for p in paths)


def test_e2e_tiny_train_stops_on_a_spot_notice_then_resumes(tmp_path):
    data = prep(tmp_path)
    notice = {"action": "terminate", "time": "2026-12-01T05:00:00Z"}
    with ImdsServer(notice=notice) as imds:
        o1 = tmp_path / "t1.outputs"
        args = train_args(tmp_path, data, 20000)[:-2] + ["--spot-poll-seconds", "0.05", "--imds-url", imds.url,
                                                         "--save-steps", "100000", "--logging-steps", "1000"]
        p1 = run_program("tiny_train", *args, env=env_with(o1), check=False)
        assert p1.returncode == 75, p1.stdout + p1.stderr
        assert imds.polls >= 1
    assert "interruption notice" in p1.stdout
    saved = [p for p in (tmp_path / "run").glob("checkpoint-*")]
    assert len(saved) == 1
    stopped_at = int(saved[0].name.split("-")[1])
    assert 0 < stopped_at < 20000
    assert (tmp_path / "bucket/runs/r1/checkpoints" / saved[0].name / ".complete").exists()
    assert not o1.exists(), "no outputs from an interrupted attempt"

    with ImdsServer(notice=None) as imds:
        o2 = tmp_path / "t2.outputs"
        args[args.index("--imds-url") + 1] = imds.url
        run_program("tiny_train", *args, env=env_with(o2))
    out2 = read_outputs(o2)
    assert out2["resumed_from_step"] == str(stopped_at) and out2["final_step"] == "20000"


def test_e2e_tiny_train_dry_parse_prints_the_flags():
    proc = subprocess.run([sys.executable, str(PIPELINE / "tiny_train.py"), "--model-dir", "m", "--train-file",
                           "t", "--val-file", "v", "--output-dir", "o", "--dry-parse"],
                          capture_output=True, text=True, check=True)
    parsed = json.loads(proc.stdout)
    assert parsed["lora_r"] == 64 and parsed["lora_alpha"] == 16 and parsed["lora_dropout"] == 0.05
    assert parsed["target_modules"] == "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def test_planned_steps_match_the_seed():
    sys.path.insert(0, str(PIPELINE))
    from train_args import planned_steps

    assert planned_steps(41294, 1, 4, 3) == 30969
    assert planned_steps(41294, 1, 4, 3, max_steps=100) == 100
    assert planned_steps(3, 1, 4, 1) == 1


def test_int_tiny_train_checkpoints_and_upload_to_s3(tmp_path, s3, fresh_bucket):
    """The store is S3 (moto): checkpoints are synced there, resumed from there, and the run is uploaded there."""
    data = prep(tmp_path)
    store = f"s3://{fresh_bucket}/mistral-finetuned/r1"
    args = train_args(tmp_path, data, 20)
    args[args.index("--checkpoint-store") + 1] = f"{store}/checkpoints"
    run_program("tiny_train", *args, env=env_with(tmp_path / "t1.outputs"))
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=fresh_bucket)["Contents"]}
    assert "mistral-finetuned/r1/checkpoints/checkpoint-20/.complete" in keys
    assert "mistral-finetuned/r1/checkpoints/checkpoint-10/optimizer.json" in keys

    import shutil

    shutil.rmtree(tmp_path / "run")
    args[args.index("--max-steps") + 1] = "30"
    p2 = run_program("tiny_train", *args, env=env_with(tmp_path / "t2.outputs"))
    out = read_outputs(tmp_path / "t2.outputs")
    assert out["resumed_from_step"] == "20" and "downloading checkpoint-20" in p2.stdout

    run_program("evaluate", "--model-dir", "none", "--adapter-dir", out["adapter_dir"], "--val-file",
                data["val_file"], "--metrics", tmp_path / "metrics.json", env=env_with(tmp_path / "e.outputs"))
    (tmp_path / "preflight.json").write_text("[]")
    run_program("upload", "--dest", store, "--adapter-dir", out["adapter_dir"], "--metrics", tmp_path / "metrics.json",
                "--preflight-report", tmp_path / "preflight.json", "--git-revision", "abc", "--dataset-sha256",
                data["dataset_sha256"], env=env_with(tmp_path / "u.outputs"))
    manifest = json.loads(s3.get_object(Bucket=fresh_bucket, Key="mistral-finetuned/r1/manifest.json")["Body"].read())
    for entry in manifest["files"]:
        body = s3.get_object(Bucket=fresh_bucket, Key=f"mistral-finetuned/r1/{entry['path']}")["Body"].read()
        assert len(body) == entry["size"]
        import hashlib

        assert hashlib.sha256(body).hexdigest() == entry["sha256"]
    outside = [k for k in (o["Key"] for o in s3.list_objects_v2(Bucket=fresh_bucket)["Contents"])
               if "optimizer" in k and "/checkpoints/" not in k]
    assert outside == []


def test_e2e_upload_refuses_optimizer_state_outside_checkpoints(tmp_path):
    data = prep(tmp_path)
    run_program("tiny_train", *train_args(tmp_path, data, 10), env=env_with(tmp_path / "t.outputs"))
    adapter = tmp_path / "run/adapter"
    (adapter / "optimizer.pt").write_bytes(b"state")
    (tmp_path / "m.json").write_text("{}")
    proc = run_program("upload", "--dest", tmp_path / "dest", "--adapter-dir", adapter, "--metrics",
                       tmp_path / "m.json", "--preflight-report", tmp_path / "m.json", "--git-revision", "x",
                       "--dataset-sha256", "y", env=env_with(tmp_path / "u.outputs"), check=False)
    assert proc.returncode == 1 and "optimizer" in proc.stderr
    assert not (tmp_path / "dest").exists() and not (tmp_path / "u.outputs").exists()
