#!/usr/bin/env bash
# sbatch script: one allocation of long-lived dr_exp workers draining an experiment's queue.
#
#   source .venv/bin/activate          # sbatch passes your environment on, python3 included
#   sbatch scripts/slurm_launcher.sh --experiment cifar10 --workers-per-gpu 2 --max-hours 47
#   sbatch --gres=gpu:4 --time=24:00:00 --array=0-7 scripts/slurm_launcher.sh --experiment cifar10
#   sbatch --gres=none scripts/slurm_launcher.sh --experiment smoke --workers 4     # CPU only
#
# Options: --experiment E (or DR_EXP_EXPERIMENT), --base-path P (or DR_EXP_BASE_PATH),
# --workers-per-gpu N, --workers N (CPU-only allocations), --max-hours H; anything else goes to
# `dr_exp system launcher` (e.g. --requeue-allocation, --idle-timeout 600, -- --preload torch).
# The script's output moves to <base>/<experiment>/logs/slurm-<jobid>.out once it starts.
# SLURM sends USR1 300 s before the time limit; the launcher hands every running job back to the
# queue with a checkpoint and the allocation ends cleanly (any allocation resumes those jobs).
#
#SBATCH --job-name=dr_exp
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --output=dr_exp-%j.out
set -euo pipefail

base=${DR_EXP_BASE_PATH:-./dr_exp_runs}
experiment=${DR_EXP_EXPERIMENT:-default}
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --experiment) experiment=$2; shift 2 ;;
    --base-path) base=$2; shift 2 ;;
    --workers-per-gpu|--workers|--max-hours|--idle-timeout) args+=("$1" "$2"); shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done

logs="$base/$experiment/logs"
mkdir -p "$logs"
job="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"
job="${job:-${SLURM_JOB_ID:-local}}"
echo "dr_exp allocation $job on $(hostname): output continues in $logs/slurm-$job.out"
exec >>"$logs/slurm-$job.out" 2>&1
echo "$(date -Is) allocation $job on $(hostname), restart ${SLURM_RESTART_COUNT:-0}, gpus ${CUDA_VISIBLE_DEVICES:-none}"

# exec: the launcher itself receives SLURM's signals (no bash trap in between).
exec "${DR_EXP_PYTHON:-python3}" -m dr_exp --base-path "$base" --experiment "$experiment" \
  system launcher "${args[@]}"
