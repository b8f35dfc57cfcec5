#!/usr/bin/env bash
# Install into ./.venv (with the dev tools and the browser extra) and run the whole test suite;
# extra args go to pytest. The browser tests (tests/browser) drive Debian's Chromium
# (/usr/bin/chromium, or $TIVIS_CHROMIUM); without it they are skipped, and this says so.
# TIVIS_REQUIRE_BROWSER=1 (set by .ci/run) makes a missing Chromium a failure instead.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh api,worker,embedded,dev,browser
chromium="${TIVIS_CHROMIUM:-/usr/bin/chromium}"
notice=""
if [ ! -x "$chromium" ]; then
  notice="NOTE: no Chromium at $chromium: the browser tests (tests/browser) are SKIPPED."
  notice+=" Install it (apt-get install chromium) or set TIVIS_CHROMIUM to run them."
  if [ "${TIVIS_REQUIRE_BROWSER:-}" = "1" ]; then
    echo "TIVIS_REQUIRE_BROWSER=1 but there is no Chromium at $chromium" >&2
    exit 1
  fi
  echo "$notice" >&2
else
  echo "browser tests: headless Chromium at $chromium" >&2
fi
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if [ -n "$notice" ]; then echo "$notice" >&2; fi
exit "$rc"
