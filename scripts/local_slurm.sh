#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for `grpo launch slurm` and its tests.
#
#   sudo bash scripts/local_slurm.sh          # install when missing, configure, start; idempotent
#   bash scripts/local_slurm.sh --status      # exit 0 when the cluster answers, 1 otherwise
#
# Installs Debian's slurm-wlm and munge with apt when they are missing, writes
# /etc/slurm/slurm.conf for one node holding every CPU `slurmd -C` finds (no accounting
# database, no cgroups: proctrack/linuxproc), and starts munged, slurmctld and slurmd as plain
# daemons (no systemd needed, so it also works in containers). A second call finds the cluster
# answering and changes nothing. A slurm.conf this script did not write is never overwritten.
set -euo pipefail

MARK="# written by grpo scripts/local_slurm.sh"
CONF=/etc/slurm/slurm.conf
LOGDIR=/var/log/slurm
PARTITION=${GRPO_SLURM_PARTITION:-debug}

say() { echo "local_slurm: $*"; }

answering() {
    # the controller answers and our node is up (idle, mixed or allocated)
    command -v sinfo >/dev/null 2>&1 || return 1
    local state
    state=$(timeout 10 sinfo -h -N -o '%T' 2>/dev/null | head -n1) || return 1
    [[ "$state" =~ ^(idle|mixed|allocated|completing)\*?$ ]]
}

if [[ "${1:-}" == "--status" ]]; then
    if answering; then sinfo; exit 0; fi
    exit 1
fi

if answering; then
    say "already running"
    sinfo
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    say "needs root to install and start Slurm (run it with sudo)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# --- munge: the authentication every Slurm daemon and client uses ---------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    rm -f /run/munge/munge.socket.2 /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# --- slurm.conf: one node, every CPU, one default partition ---------------------------------
host=$(hostname -s)
# e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
node_line=$(slurmd -C | head -n1 | sed "s/^NodeName=[^ ]*/NodeName=$host/")
if [[ -f "$CONF" ]] && ! grep -qF "$MARK" "$CONF"; then
    say "$CONF exists and was not written by this script; leaving it alone" >&2
else
    mkdir -p /etc/slurm
    cat >"$CONF" <<EOF
$MARK
ClusterName=grpo-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
# no cgroups: works in containers; linuxproc still finds every process a job started
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
# finished jobs stay visible to scontrol for 10 minutes (the launcher reads their exit codes)
MinJobAge=600
KillWait=30
SlurmctldTimeout=30
SlurmdTimeout=60
$node_line State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
fi
mkdir -p /var/spool/slurmctld /var/spool/slurmd "$LOGDIR"

# --- daemons ---------------------------------------------------------------------------------
if ! timeout 5 scontrol ping 2>/dev/null | grep -q "is UP"; then
    say "starting slurmctld"
    pkill_pid() { [[ -f "$1" ]] && kill "$(cat "$1")" 2>/dev/null || true; }
    pkill_pid /run/slurmctld.pid
    slurmctld
fi
if ! [[ -f /run/slurmd.pid ]] || ! kill -0 "$(cat /run/slurmd.pid)" 2>/dev/null; then
    say "starting slurmd"
    slurmd
fi

for _ in $(seq 60); do
    if answering; then
        say "running: partition $PARTITION on $host"
        sinfo
        exit 0
    fi
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n1 || true)
    if [[ "$state" =~ ^(down|drained|draining|drain) ]]; then
        scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    fi
    sleep 0.5
done
say "Slurm did not come up; see $LOGDIR/slurmctld.log and $LOGDIR/slurmd.log" >&2
sinfo >&2 || true
exit 1
