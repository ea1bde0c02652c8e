#!/bin/bash
# One device `run`: wheels from .whl/ (scripts/gpu_wheels.txt) into /tmp/site, iortopt from src/.
if ls .whl/*.whl >/dev/null 2>&1; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1; export PYTHONPATH=/tmp/site; fi
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 exec python3 scripts/gpu_check.py --device gpu --out "${OUT:-gpu-check-out}" "$@"
