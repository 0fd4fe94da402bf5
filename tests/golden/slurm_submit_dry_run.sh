#!/usr/bin/env bash
#SBATCH --job-name=dr_exp-exp
#SBATCH --gres=none
#SBATCH --cpus-per-task=1
#SBATCH --time=00:10:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --output=<BASE>/exp/logs/slurm-%j.out
set -euo pipefail
echo "$(date -Is) dr_exp allocation ${SLURM_JOB_ID} on $(hostname), gpus ${CUDA_VISIBLE_DEVICES:-none}"
# exec: the launcher itself receives SLURM's signals (no bash trap in between).
exec <PYTHON> -m dr_exp --base-path <BASE> --experiment exp system launcher --idle-timeout 1 --workers 2
