#!/usr/bin/env bash
# Set up the environment, lint, and run the whole test suite (what CI runs). Extra arguments go to
# pytest, e.g. `bash scripts/test.sh -m "not slow"`.
#
# As root, it also installs (if needed) and starts a private single-node SLURM for the tests
# marked `slurm`, and stops it afterwards; otherwise those tests skip with the reason. Set
# DR_EXP_NO_SLURM=1 to skip them on purpose. Under CI (CI=true) SLURM must come up. Likewise,
# as root it installs chromium for the dashboard's browser tests (DR_EXP_NO_BROWSER=1: don't).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh

export SLURM_CONF=${SLURM_CONF:-${DR_EXP_SLURM_DIR:-/tmp/dr_exp_slurm}/slurm.conf}
if [ "$(id -u)" = 0 ] && [ -z "${DR_EXP_NO_SLURM:-}" ]; then
  if out=$(bash scripts/slurm_local.sh start); then
    echo "$out"
    case "$out" in
      "already running"*) ;;
      *) trap 'bash scripts/slurm_local.sh stop >/dev/null 2>&1 || true' EXIT ;;
    esac
  elif [ "${CI:-}" = "true" ]; then
    echo "could not start SLURM for the slurm tests" >&2
    exit 1
  fi
fi

# The dashboard's browser tests drive the system's chromium (playwright downloads nothing). As root,
# install it if missing; elsewhere those tests skip and say why. DR_EXP_NO_BROWSER=1 skips this.
if [ "$(id -u)" = 0 ] && [ -z "${DR_EXP_NO_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium for the browser tests" >&2
  if ! { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
    if [ "${CI:-}" = "true" ]; then
      echo "could not install chromium for the browser tests" >&2
      exit 1
    fi
    echo "could not install chromium; the browser tests will skip" >&2
  fi
fi

echo "ruff check ." >&2
.venv/bin/ruff check .

set +e
.venv/bin/python -m pytest -q -ra "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
exit "$code"
