#!/usr/bin/env bash
# Install into ./.venv (with the dev tools) and run the whole test suite; extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh api,worker,embedded,dev
exec .venv/bin/python -m pytest "$@"
