#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with everything the main job
# and the test suite need. Needs only python3 (>= 3.10) with venv; safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.dr_exp_setup"
want=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
if ! "$PYTHON" -m venv --help >/dev/null 2>&1; then
  echo "python3 venv is missing; install it with: apt-get install -y python3-venv" >&2
  exit 2
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
echo "setting up $VENV (first time: a few minutes; torch is large)" >&2
# torchvision needs the torch release it was built against: pin the pair.
"$VENV/bin/python" -m pip install -qq --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install -qq --disable-pip-version-check -e ".[test]"
echo "$want" > "$stamp"
