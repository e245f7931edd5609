#!/usr/bin/env bash
# Set-up: a virtual environment with the pinned stack (CPU build of torch, onnxruntime for CPU),
# the project installed editable, and the default data and the embedded base fetched from the DVC remote
# committed in the repo.
# Usage: bash scripts/setup.sh [cpu|gpu]     (default cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-cpu}"
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
if [[ ! -x .venv/bin/python ]]; then
  "$python_bin" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
torch_pin=()
# The CPU build of torch; a plain `torch` requirement would pull a multi-GB CUDA build.
if [[ "$extra" == "cpu" ]]; then torch_pin=("torch==2.13.0"); fi
# One resolve for everything; no byte-compiling of every installed file (Python compiles what it imports,
# once); setuptools prints a page of notices about editable installs (UserWarning subclasses) otherwise.
PYTHONWARNINGS=ignore::UserWarning python -m pip install --quiet --no-compile "${torch_pin[@]}" -e ".[${extra},dev]"
python -m pip check
export DVC_NO_ANALYTICS=1
dvc pull --quiet data.dvc base.dvc
dvc status --quiet data.dvc base.dvc || { echo "dvc status is not clean after pull" >&2; exit 1; }
echo "set-up done: activate with '. .venv/bin/activate'"
