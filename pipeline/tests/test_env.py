"""env.py: a venv on the "volume" from a pinned lock, keyed by the lock's hash; a second run is a no-op."""

from __future__ import annotations

import os

from conftest import read_outputs, run_program


def test_int_env_builds_once_then_reuses_and_checks_versions(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# a tiny lock for the test\nsix==1.17.0\n")
    env = os.environ.copy()
    env["SORTIE_OUTPUT"] = str(tmp_path / "o1")
    first = run_program("env", "ensure", "--venv-root", tmp_path / "venvs", "--lock", lock, env=env)
    out = read_outputs(tmp_path / "o1")
    assert "creating" in first.stdout and os.path.exists(out["python"])
    assert out["venv"].startswith(str(tmp_path / "venvs"))
    env["SORTIE_OUTPUT"] = str(tmp_path / "o2")
    second = run_program("env", "ensure", "--venv-root", tmp_path / "venvs", "--lock", lock, env=env)
    assert "nothing to install" in second.stdout
    assert read_outputs(tmp_path / "o2") == out
    run_program("env", "check", "--python", out["python"], "--lock", lock)
    wrong = tmp_path / "wrong.lock"
    wrong.write_text("six==1.16.0\nnot-installed-package==1.0\n")
    proc = run_program("env", "check", "--python", out["python"], "--lock", wrong, check=False)
    assert proc.returncode == 1
    assert "six: lock 1.16.0, installed 1.17.0" in proc.stderr
    assert "not-installed-package: lock 1.0, installed missing" in proc.stderr
