#!/usr/bin/env bash
# The main job end to end on embedded defaults (local files, synthetic data, no SLURM, no S3):
# submit a 4-point sweep, drain it with two local workers, print the results table, and write an
# HTML report and a plot of the validation accuracy next to it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
export DR_EXP_BASE_PATH=${DR_EXP_BASE_PATH:-$PWD/demo_runs}
export DR_EXP_EXPERIMENT=${DR_EXP_EXPERIMENT:-quickstart}
dr_exp job sweep --config exp_configs/quickstart.yaml --params "optimizer.lr=0.1,0.01 seed=0,1" --force
dr_exp job list
# On a terminal the launcher shows a live line: pending / running / done / failed, jobs/min, time to drain.
dr_exp system launcher --workers 2 --idle-timeout 2
dr_exp results --metrics val/acc,val/loss,epochs --sort val/acc --reverse
dr_exp report --out "$DR_EXP_BASE_PATH/$DR_EXP_EXPERIMENT-report.html"
dr_exp plot val/acc --out "$DR_EXP_BASE_PATH/$DR_EXP_EXPERIMENT-val_acc.png"
echo "run directories: $DR_EXP_BASE_PATH/$DR_EXP_EXPERIMENT/storage/"
echo "live view: dr_exp dashboard (then open the URL it prints)"
