#!/usr/bin/env bash
# Checks for the pipeline's host programs: ruff, py_compile, then pytest. Exits nonzero on any failure.
#
#   pipeline/run_tests.sh [pytest args...]
#
# Venvs: the training venv ${SORTIE_TRAIN_VENV:-$HOME/.cache/sortie/train-venv} (scripts/setup-pipeline-env:
# torch, transformers, peft, pytest, ruff) runs ruff and pytest; without it, pytest runs from the test endpoint's
# venv ${SORTIE_VENV} and the torch tests skip. The moto endpoint always runs from ${SORTIE_VENV}.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
train_venv="${SORTIE_TRAIN_VENV:-$HOME/.cache/sortie/train-venv}"
export SORTIE_VENV="${SORTIE_VENV:-$(cd "$here/.." && pwd)/.venv}"
export SORTIE_TRAIN_VENV="$train_venv"

if [[ -x "$train_venv/bin/ruff" ]]; then
    ruff="$train_venv/bin/ruff"
elif command -v ruff >/dev/null 2>&1; then
    ruff="$(command -v ruff)"
else
    echo "run_tests: no ruff (run scripts/setup-pipeline-env)" >&2
    exit 1
fi
if [[ -x "$train_venv/bin/python" ]]; then
    py="$train_venv/bin/python"
elif [[ -x "$SORTIE_VENV/bin/python" ]]; then
    py="$SORTIE_VENV/bin/python"
    echo "run_tests: no training venv at $train_venv: the torch tests will skip" >&2
else
    echo "run_tests: no venv with pytest (run scripts/setup-test-env or scripts/setup-pipeline-env)" >&2
    exit 1
fi

cd "$here"
echo "run_tests: ruff ($("$ruff" --version))"
"$ruff" check --config "$here/ruff.toml" .
echo "run_tests: py_compile"
# Compile into a throwaway dir so no __pycache__ lands in the tree; python3 too: the host programs run under it.
PYTHONPYCACHEPREFIX="$(mktemp -d)" python3 -m py_compile ./*.py tests/*.py
echo "run_tests: pytest ($py)"
exec "$py" -m pytest -q -p no:cacheprovider tests "$@"
