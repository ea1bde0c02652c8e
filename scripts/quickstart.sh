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
# An editable install leaves src/ without bytecode, and with PYTHONDONTWRITEBYTECODE set (common
# in containers) every run would compile iortopt's modules anew: 0.06-0.23 s of imports measured.
.venv/bin/python -m compileall -q src >/dev/null
# a child process, not exec: the run's interpreter_s is then its own start-up, not the setup's
.venv/bin/iortopt run "$@"
