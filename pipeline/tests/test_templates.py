"""templates/*.sh.j2 rendered and run in order, the local quickstart's way: a host work dir with pipeline/ shipped
next to it, each step run with `sh` in that dir with its own $SORTIE_OUTPUT, outputs fed to the next steps.

The renderer here is a stand-in for sortie's (values substituted as they are: the test values need no quoting);
sortie's own renderer escapes every value for the shell context it lands in.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PIPELINE, REPO, read_outputs

TEMPLATES = REPO / "templates"
EXPR = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
ORDER = ["env", "fetch_model", "prep_data", "preflight", "train", "evaluate", "upload"]
SCRIPT = {"train": "train_qlora"}


def quickstart_vars(bucket: Path) -> dict:
    return {
        "requirements_lock": "requirements-local.lock",
        "model_id": "sortie/tiny-unigram", "model_revision": "tiny-0001", "model_name": "tiny-unigram",
        "model_mirror": "pipeline/sample_model", "hf_token_param": "",
        "source": "pipeline/sample_corpus",
        "policy_prefixes": "corpus_federal/,econ-theory/,financial-metrics/,financial-networks/,insurance/,"
                           "government_officials_roster/,usa/congressional-research/",
        "operatives_prefix": "operatives/", "operatives_limit": "5",
        "output_root": str(bucket), "dataset_prefix": "datasets/quickstart", "output_prefix": "runs",
        "trainer": "tiny_train.py", "epochs": "1", "train_steps": "40", "batch_size": "1", "grad_accum": "4",
        "learning_rate": "0.5", "max_seq_length": "512", "checkpoint_every": "10", "logging_steps": "5",
        "dataloader_workers": "0", "train_lock": "train", "lifetime_seconds": "0", "train_timeout_seconds": "300",
        "min_volume_free_gb": "0.1", "max_eval_rows": "0", "git_revision": "0123abc",
    }


COMMENT = re.compile(r"\{#.*?#\}\n?", re.S)
# The one statement the templates use: `{%- set x = vars.y or run.plan_dir ~ "/suffix" %}`.
SET = re.compile(r'\{%-?\s*set\s+(\w+)\s*=\s*vars\.(\w+)\s+or\s+run\.plan_dir\s*~\s*"([^"]*)"\s*-?%\}\n?')


def render(text: str, ctx: dict) -> str:
    local: dict = {}

    def assign(m):
        name, var, suffix = m.groups()
        local[name] = ctx["vars"].get(var) or f"{ctx['run'].get('plan_dir', '')}{suffix}"
        return ""

    def value(m):
        parts = m.group(1).split(".")
        node = local if parts[0] in local else ctx
        for part in parts:
            node = node[part]
        return str(node)

    text = SET.sub(assign, COMMENT.sub("", text))
    assert "{%" not in text and "{#" not in text, "a template statement this stand-in does not know"
    return EXPR.sub(value, text)


def trainer_flags(text: str, start: str) -> list[str]:
    block = text[text.index(start):]
    lines = []
    for line in block.splitlines()[1:]:
        lines.append(line.strip().rstrip("\\").strip())
        if not line.rstrip().endswith("\\"):
            break
    return lines


def test_int_preflight_dry_parses_the_exact_train_flags():
    train = (TEMPLATES / "train_qlora.sh.j2").read_text()
    pre = (TEMPLATES / "preflight.sh.j2").read_text()
    assert trainer_flags(train, 'exec "{{ steps.env.outputs.python }}" "pipeline/{{ vars.trainer }}"') == \
        trainer_flags(pre, "set -- \\")


def test_int_templates_never_hard_code_the_mount():
    for path in TEMPLATES.glob("*.sh.j2"):
        text = path.read_text()
        assert "/mnt/training" not in text, path
        assert text.splitlines()[0] == "# shellcheck shell=sh" and "set -eu" in text, path


def test_e2e_templates_run_the_quickstart_chain(tmp_path):
    work = tmp_path / "host/work"
    work.mkdir(parents=True)
    shutil.copytree(PIPELINE, work / "pipeline", ignore=shutil.ignore_patterns("__pycache__", "tests"))
    mount = tmp_path / "host/mnt/training"
    mount.mkdir(parents=True)
    bucket = tmp_path / "bucket"
    ctx = {"vars": quickstart_vars(bucket), "run": {"id": "20261201-033000-abcd"},
           "steps": {"volume": {"outputs": {"mount_path": str(mount)}}}}
    checker = shutil.which("shellcheck")
    for step in ORDER:
        script = render((TEMPLATES / f"{SCRIPT.get(step, step)}.sh.j2").read_text(), ctx)
        step_dir = tmp_path / f"host/steps/{step}"
        step_dir.mkdir(parents=True)
        (step_dir / "script").write_text(script)
        if checker:
            lint = subprocess.run([checker, "-s", "sh", str(step_dir / "script")], capture_output=True, text=True)
            assert lint.returncode == 0, f"{step}: {lint.stdout}"
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
               "SORTIE_OUTPUT": str(step_dir / "outputs"), "SORTIE_STEP_DIR": str(step_dir)}
        proc = subprocess.run(["sh", str(step_dir / "script")], cwd=work, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"{step} failed:\n{proc.stdout}\n{proc.stderr}"
        ctx["steps"][step] = {"outputs": read_outputs(step_dir / "outputs")}
    out = ctx["steps"]
    assert out["train"]["outputs"]["final_step"] == "40"
    assert out["train"]["outputs"]["resumed_from_step"] == "0"
    assert int(out["preflight"]["outputs"]["preflight_checks"]) >= 35
    manifest = json.loads((bucket / "runs/20261201-033000-abcd/manifest.json").read_text())
    assert manifest["git_revision"] == "0123abc"
    assert manifest["dataset_sha256"] == out["prep_data"]["outputs"]["dataset_sha256"]
    assert {f["path"] for f in manifest["files"]} >= {"adapter/adapter_model.json", "preflight.json",
                                                       "metrics.json", "tokenizer/tokenizer_config.json"}
    assert (bucket / "runs/20261201-033000-abcd/checkpoints/checkpoint-40/.complete").exists()
    assert float(out["evaluate"]["outputs"]["eval_loss"]) < 5.545


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_int_templates_pass_shellcheck_with_gpu_plan_values(tmp_path):
    values = quickstart_vars(Path("/nonexistent"))
    values.update(source="s3://policy-database", output_root="s3://asoba-llm-cache", trainer="train.py",
                  hf_token_param="/sortie/hf-token", model_mirror="s3://asoba-llm-cache/models/m/r")
    ctx = {"vars": values, "run": {"id": "r"}, "steps": {s: {"outputs": DummyOutputs()} for s in ORDER + ["volume"]}}
    for path in TEMPLATES.glob("*.sh.j2"):
        (tmp_path / path.stem).write_text(render(path.read_text(), ctx))
        lint = subprocess.run(["shellcheck", "-s", "sh", str(tmp_path / path.stem)], capture_output=True, text=True)
        assert lint.returncode == 0, f"{path.name}: {lint.stdout}"


class DummyOutputs(dict):
    def __missing__(self, key):
        return f"/mnt/x/{key}"


def test_e2e_train_template_under_the_host_wrapper_is_the_session_leader(tmp_path):
    """The rendered train template run by src/host/wrapper.sh (the real host protocol): the trainer exec'd by the
    template is the step's process (pid = sid = the wrapper's recorded pid), and the heartbeat's progress and
    metrics regexes (the values the plan should use) pick up its lines."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(PIPELINE, work / "pipeline", ignore=shutil.ignore_patterns("__pycache__", "tests"))
    prep = tmp_path / "prep"
    subprocess.run(["python3", str(PIPELINE / "prep_data.py"), "--source", str(PIPELINE / "sample_corpus"),
                    "--output", str(tmp_path / "bucket/datasets"), "--work-dir", str(prep)], check=True,
                   capture_output=True)
    mount = tmp_path / "mnt"
    mount.mkdir()
    ctx = {"vars": quickstart_vars(tmp_path / "bucket"), "run": {"id": "r1"},
           "steps": {"volume": {"outputs": {"mount_path": str(mount)}},
                     "env": {"outputs": {"python": "python3"}},
                     "fetch_model": {"outputs": {"model_dir": str(PIPELINE / "sample_model")}},
                     "prep_data": {"outputs": {"train_file": str(prep / "train.jsonl"),
                                               "val_file": str(prep / "val.jsonl")}}}}
    script = tmp_path / "train.sh"
    script.write_text(render((TEMPLATES / "train_qlora.sh.j2").read_text(), ctx))
    status = tmp_path / "steps/train"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "SORTIE_WORKDIR": str(work),
           "SORTIE_LOCK": "train", "SORTIE_PROGRESS": "step [0-9]+/[0-9]+", "SORTIE_METRICS": "loss=",
           "SORTIE_HEARTBEAT_INTERVAL": "0"}
    proc = subprocess.run(["sh", str(REPO / "src/host/wrapper.sh"), "run", str(status), "1", str(script)],
                          env=env, capture_output=True, text=True, timeout=120)
    log = (status / "output.log").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    m = re.search(r"\[train\] pid (\d+) sid (\d+)", log)
    assert m and m.group(1) == m.group(2) == (status / "pid").read_text().strip()
    beat = json.loads((status / "heartbeat.json").read_text())
    assert beat["progress"] == "step 40/40"
    assert beat["metrics"].startswith("step 40/40 loss=")
    assert read_outputs(status / "outputs")["final_step"] == "40"
