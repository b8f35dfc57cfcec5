#!/usr/bin/env bash
# Install into ./.venv (once per pyproject.toml change) and run Redis + a worker + the API.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh api,worker,embedded
exec .venv/bin/python -m app.embedded "$@"
