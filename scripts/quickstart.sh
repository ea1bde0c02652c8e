#!/usr/bin/env bash
# Set up iortopt in ./.venv (if needed) and run the built-in example plan.
# Usage: bash scripts/quickstart.sh [iortopt run arguments, e.g. a config file or --out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
# a child process, not exec: the run's interpreter_s is then its own start-up, not the setup's
.venv/bin/iortopt run "$@"
