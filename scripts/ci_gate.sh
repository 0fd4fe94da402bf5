#!/usr/bin/env bash
# Gate a change in CI: train the quick start with this checkout's code (a couple of seeds, one
# epoch, a local worker on the CPU) and compare it with a baseline: by default the same runs made
# from the main branch's code (checked out in a temporary git worktree, run here too), or a
# baseline sweep stored earlier (BASELINE=EXPERIMENT/sweep:ID in the same base path).
#
#   bash scripts/ci_gate.sh                                      # baseline: main's code, about a minute
#   BASELINE=ci-baseline/sweep:3f2b9c1e0a4d bash scripts/ci_gate.sh   # baseline: stored runs
#
# Exit status: 0 when the candidate is ok (or only warned about), 1 when it is worse than the
# tolerance, 2 on bad input or setup. The JSON verdict is written to $CI_RUNS/verdict-<run>.json.
#
# Settings (environment): CI_RUNS (base path, default ./ci_runs), BASELINE (a selector; unset:
# run BASELINE_REF's code), BASELINE_REF (default main, else origin/main), SEEDS (0,1), EPOCHS (1),
# TOLERANCE (0.02), WARN (0.01), PYTHON (default .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
RUNS=${CI_RUNS:-$REPO/ci_runs}
RUN=${CI_RUN_ID:-$(date +%Y%m%d-%H%M%S)-$$}
SEEDS=${SEEDS:-0,1}
EPOCHS=${EPOCHS:-1}
mkdir -p "$RUNS"
RUNS=$(cd "$RUNS" && pwd)

# run_sweep EXPERIMENT CODE_DIR: queue the quick start with CODE_DIR's code and configs, drain it
# with one local worker that imports CODE_DIR's code, and print EXPERIMENT/sweep:ID.
run_sweep() {
    local experiment=$1 code=$2 out sweep
    out=$(cd "$code" && PYTHONPATH="$code" "$PYTHON" -m dr_exp --base-path "$RUNS" --experiment "$experiment" \
        job sweep --config exp_configs/quickstart.yaml --params "seed=$SEEDS" \
        --overrides "trainer.max_epochs=$EPOCHS" --tags "ci-$RUN" --force)
    sweep=$(sed -n 's/^sweep \([0-9a-f]*\):.*/\1/p' <<<"$out")
    [[ -n "$sweep" ]] || { echo "ci_gate: could not queue the $experiment sweep" >&2; exit 2; }
    (cd "$code" && PYTHONPATH="$code" "$PYTHON" -m dr_exp --base-path "$RUNS" --experiment "$experiment" \
        system worker --idle-timeout 0 >&2)
    echo "$experiment/sweep:$sweep"
}

if [[ -z "${BASELINE:-}" ]]; then
    REF=${BASELINE_REF:-main}
    git rev-parse --verify -q "$REF^{commit}" >/dev/null || REF=origin/${REF#origin/}
    git rev-parse --verify -q "$REF^{commit}" >/dev/null \
        || { echo "ci_gate: no git ref ${BASELINE_REF:-main} to take the baseline from; set BASELINE_REF or BASELINE" >&2; exit 2; }
    TREE=$(mktemp -d "${TMPDIR:-/tmp}/ci_gate_baseline.XXXXXX")
    trap 'git -C "$REPO" worktree remove --force "$TREE" 2>/dev/null || rm -rf "$TREE"' EXIT
    git worktree add -q --detach "$TREE" "$REF"
    echo "ci_gate: baseline from $REF ($(git rev-parse --short "$REF"))" >&2
    BASELINE=$(run_sweep ci-baseline "$TREE")
    echo "ci_gate: baseline runs: $BASELINE (reuse them with BASELINE=$BASELINE)" >&2
fi
echo "ci_gate: candidate from this checkout ($(git rev-parse --short HEAD 2>/dev/null || echo 'no git'))" >&2
CANDIDATE=$(run_sweep ci-candidate "$REPO")

set +e
PYTHONPATH="$REPO" "$PYTHON" -m dr_exp --base-path "$RUNS" compare --baseline "$BASELINE" --candidate "$CANDIDATE" \
    --metric val/acc:max --metric val/loss:min --tolerance "${TOLERANCE:-0.02}" --warn "${WARN:-0.01}" \
    --output "$RUNS/verdict-$RUN.json"
status=$?
set -e
echo "ci_gate: verdict in $RUNS/verdict-$RUN.json (exit status $status)" >&2
exit $status
