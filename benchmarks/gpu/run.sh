#!/usr/bin/env bash
# Run the GPU check (benchmarks/gpu/bench.py) on the GPU machine, installing whichever wheel folders
# (.whl1, .whl2, ... from pack.sh) came with this call into /tmp/site, which lasts while the machine stays warm.
# Usage: benchmarks/gpu/run.sh [--install-only] [--cpu]   (from the repository root)
#   --install-only  install this call's wheels and stop (the first of two calls: one folder per call)
#   --cpu           run the check on small sizes without a GPU (tests the script anywhere)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
shopt -s nullglob
wheels=(.whl[0-9]*/*.whl)
if ((${#wheels[@]})); then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
fi
if [ -d /tmp/site ]; then export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"; fi
if [ "${1:-}" = "--install-only" ]; then exit 0; fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
out=${OUT:-$(mktemp -d)}
exec "$PY" benchmarks/gpu/bench.py --out "$out/gpu_record.json" "$@"
