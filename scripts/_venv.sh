# Sourced by serve.sh and test.sh: make ./.venv and install the project with extras "$1".
extras="$1"
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
stamp=".venv/.tivis-$(cat pyproject.toml | sha1sum | cut -c1-12)-${extras//,/-}"
if [ ! -f "$stamp" ]; then
  echo "installing tivis[$extras] into .venv ..." >&2
  .venv/bin/python -m pip install --quiet --editable ".[$extras]"
  touch "$stamp"
fi
