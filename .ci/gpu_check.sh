#!/usr/bin/env bash
# The GPU check as a lent device runs it (README "GPU"): install the carried wheels, then measure.
# Here, first: make gpu-wheels (fills .whl/) and make demo's shard step (sharded_data/demo); carry both.
set -uo pipefail
cd "$(dirname "$0")/.."
ls .whl/*.whl >/dev/null 2>&1 || { echo "error: no wheels in .whl/: run 'make gpu-wheels' where pip works and carry .whl" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
exec python3 -m lightning_modules.gpu_check "$@"
