#!/usr/bin/env bash
# Start, stop or inspect a private single-node SLURM cluster (slurmctld + slurmd + munged) on this
# machine, with two fake GPUs, for trying dr_exp's SLURM support and for its tests. Needs root
# (or sudo-less root in a container) and Debian/Ubuntu packages; `start` installs them if missing.
#
#   bash scripts/slurm_local.sh start     # then: export SLURM_CONF=<printed path>
#   bash scripts/slurm_local.sh status
#   bash scripts/slurm_local.sh stop
#
# Everything lives in $DR_EXP_SLURM_DIR (default /tmp/dr_exp_slurm): config, state, logs, sockets.
set -euo pipefail
D=${DR_EXP_SLURM_DIR:-/tmp/dr_exp_slurm}
CONF="$D/slurm.conf"
HOST=$(hostname -s)

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
      && command -v sbatch >/dev/null; then
    return
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "SLURM is not installed; as root run: apt-get install -y slurmctld slurmd slurm-client munge" >&2
    exit 2
  fi
  # Keep apt from trying to start system daemons (there is no init system here).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
  fi
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
  mkdir -p "$D"/{state,spool,munge,dev}
  chmod 0755 "$D" "$D/munge"
  if [ ! -s "$D/munge/munge.key" ]; then
    dd if=/dev/urandom of="$D/munge/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$D/munge/munge.key"
  fi
  # Fake GPUs: slurmd wants device files; symlinks to /dev/null pass its checks.
  ln -sf /dev/null "$D/dev/nvidia0"
  ln -sf /dev/null "$D/dev/nvidia1"
  local node
  node=$(slurmd -C | head -n 1 | sed -e 's/ UpTime=.*//')
  cat > "$CONF" <<CONF
ClusterName=drexp
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/munge/munge.socket.2,cred_expire=10
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerParameters=bf_interval=2,sched_interval=5
JobRequeue=1
ReturnToService=2
MinJobAge=3600
KillWait=10
MailProg=/bin/true
GresTypes=gpu
$node Gres=gpu:2 NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  echo "NodeName=$HOST Name=gpu File=$D/dev/nvidia[0-1]" > "$D/gres.conf"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  install_packages
  if alive "$D/slurmctld.pid" && alive "$D/slurmd.pid"; then
    echo "already running; export SLURM_CONF=$CONF"
    return
  fi
  write_config
  alive "$D/munged.pid" || munged --force --socket="$D/munge/munge.socket.2" --key-file="$D/munge/munge.key" \
    --pid-file="$D/munged.pid" --log-file="$D/munged.log" --seed-file="$D/munge/munge.seed"
  export SLURM_CONF="$CONF"
  slurmctld -i -f "$CONF"
  slurmd -f "$CONF"
  for _ in $(seq 1 100); do
    if sinfo -h -o %t 2>/dev/null | grep -Eq '^(idle|mix|alloc)'; then
      echo "SLURM is up: export SLURM_CONF=$CONF"
      return
    fi
    sleep 0.2
  done
  echo "SLURM did not become ready; see $D/slurmctld.log and $D/slurmd.log" >&2
  exit 1
}

stop_pid() {
  local f=$1
  alive "$f" || { rm -f "$f"; return; }
  local pid
  pid=$(cat "$f")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$f"
}

stop() {
  if [ -f "$CONF" ] && alive "$D/slurmctld.pid"; then
    SLURM_CONF="$CONF" scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
  fi
  stop_pid "$D/slurmd.pid"
  stop_pid "$D/slurmctld.pid"
  stop_pid "$D/munged.pid"
  echo "SLURM stopped"
}

status() {
  if alive "$D/slurmctld.pid" && alive "$D/slurmd.pid"; then
    SLURM_CONF="$CONF" sinfo
    SLURM_CONF="$CONF" squeue
  else
    echo "not running"
    exit 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
