#!/usr/bin/env bash
# Set-up: a virtual environment with the locked stack, the project installed editable, and the default data and
# the embedded base fetched from the DVC remote committed in the repo.
# Usage: bash scripts/setup.sh [cpu|gpu]     (default cpu)
#   cpu: requirements/cpu.lock (the CPU build of torch, onnxruntime)
#   gpu: requirements/gpu.lock (the CUDA build of torch, onnxruntime-gpu)
# Every package comes from the lock, pinned with its sha256 hashes (pip --require-hashes); the lock must have been
# compiled from today's pyproject.toml (scripts/lock.py check), else set-up stops before installing anything.
set -euo pipefail
cd "$(dirname "$0")/.."
flavor="${1:-cpu}"
case "$flavor" in
  cpu|gpu) ;;
  *) echo "usage: bash scripts/setup.sh [cpu|gpu]   (the torch build: cpu, the default, or gpu)" >&2; exit 2 ;;
esac
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
"$python_bin" scripts/lock.py check "$flavor"
if [[ ! -x .venv/bin/python ]]; then
  "$python_bin" -m venv .venv
fi
. .venv/bin/activate
# The locked stack as it is (no resolve, no byte-compiling of every installed file: Python compiles what it
# imports, once), then this project without dependencies, built with the locked setuptools. setuptools prints a
# page of notices about editable installs (UserWarning subclasses) otherwise.
python -m pip install -qq --require-hashes --no-deps -r requirements/pip.lock  # the locked installer first
python -m pip install -qq --no-compile --require-hashes --no-deps -r "requirements/${flavor}.lock"
extraneous="$(python scripts/lock.py extraneous "$flavor")"  # e.g. the other flavor's onnxruntime: never both
if [[ -n "$extraneous" ]]; then python -m pip uninstall --quiet -y $extraneous; fi
PYTHONWARNINGS=ignore::UserWarning python -m pip install --quiet --no-compile --no-deps --no-build-isolation -e .
python -m pip check
export DVC_NO_ANALYTICS=1
dvc pull --quiet data.dvc base.dvc
dvc status --quiet data.dvc base.dvc || { echo "dvc status is not clean after pull" >&2; exit 1; }
echo "set-up done ($flavor): activate with '. .venv/bin/activate'"
