#!/usr/bin/env bash
# A real two-node SLURM on this machine (slurmctld + slurmd n1 and n2 on 127.0.0.1, munge), and
# launch/slurm.sbatch run on it as a CPU DDP job over both nodes:
#   1. a time limit (--time=2 --signal=B:TERM@60) hits mid-epoch: the ranks save, the job requeues
#      itself, reruns with SLURM_RESTART_COUNT=1, resumes from its checkpoint and (after as many
#      requeues as the limit forces) completes; one log holds every run;
#   2. a preemption (`scontrol requeue`) mid-epoch: saved, rerun, resumed, completed.
# Both jobs run at once on the two nodes (each takes one core of each), so they also check that
# two jobs on one node use different rendezvous ports.
#
# Needs root (it starts the daemons, writes /etc/slurm and adds n1 n2 to /etc/hosts); installs
# slurm-wlm and munge with apt-get when they are missing. Everything it started is stopped by PID
# and /etc restored on exit, whatever happens. Takes ~4-6 min on 2 cores (the time-limit job runs
# twice: signalled 30-60 s into its first run, as SLURM checks limits every ~30 s; a requeued job
# restarts ~11 s later).
#   tests/cluster/slurm_local.sh            (KEEP=1 keeps the work dir)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
[[ $(id -u) == 0 ]] || { echo "slurm_local: needs root" >&2; exit 1; }
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null \
    || { echo "slurm_local: FAILED to install slurm-wlm and munge with apt-get" >&2; exit 1; }
fi
if [[ -s /run/slurmctld.pid ]] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; then
  echo "slurm_local: a slurmctld is already running here; not touching it" >&2; exit 1
fi

work=$(mktemp -d /tmp/slurm-local.XXXXXX)
host=$(hostname -s)
pids=()
jobs_started=()
cp /etc/hosts "$work/hosts.bak"
for f in slurm.conf gres.conf; do [[ -e /etc/slurm/$f ]] && cp "/etc/slurm/$f" "$work/$f.bak"; done

cleanup() {
  set +e
  for job in "${jobs_started[@]}"; do scancel "$job" 2>/dev/null; done
  for _ in $(seq 1 60); do  # no slurmstepd may outlive slurmd, slurmctld and munged
    grep -qx slurmstepd /proc/[0-9]*/comm 2>/dev/null || break
    sleep 1
  done
  for pidfile in "$work"/slurmd-n1.pid "$work"/slurmd-n2.pid "$work"/slurmctld.pid /run/munge/munged.pid; do
    [[ -s $pidfile ]] && pids+=("$(cat "$pidfile")")
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null
  done
  cp "$work/hosts.bak" /etc/hosts
  for f in slurm.conf gres.conf; do
    if [[ -e $work/$f.bak ]]; then cp "$work/$f.bak" "/etc/slurm/$f"; else rm -f "/etc/slurm/$f"; fi
  done
  [[ ${KEEP:-0} == 1 ]] && echo "slurm_local: work dir kept: $work" || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP  # the EXIT trap tears down on these too

echo "127.0.0.1 n1 n2" >> /etc/hosts  # node names must resolve: they are the rendezvous endpoints
mkdir -p /etc/slurm /run/munge /var/log/munge /var/lib/munge "$work"/{state,log,spool/n1,spool/n2}
chown munge:munge /run/munge /var/log/munge /var/lib/munge
[[ -s /etc/munge/munge.key ]] || { mungekey --create; chown munge:munge /etc/munge/munge.key; }
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool/%n
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd-%n.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd-%n.log
ReturnToService=2
GresTypes=gpu
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=5,bf_interval=5
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=17001 CPUs=2 RealMemory=4000 Gres=gpu:2 State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=17002 CPUs=2 RealMemory=4000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
EOF
echo "NodeName=n[1-2] Name=gpu File=/dev/tty[0-1]" > /etc/slurm/gres.conf
su -s /bin/sh munge -c /usr/sbin/munged
slurmctld -i
slurmd -N n1
slurmd -N n2

wait_until() {  # wait_until SECONDS WHAT COMMAND...: poll, fail with WHAT at the deadline
  local deadline=$(( SECONDS + $1 )) what=$2; shift 2
  until "$@"; do
    (( SECONDS < deadline )) || { echo "slurm_local: timed out waiting for $what" >&2; return 1; }
    sleep 1
  done
}
nodes_idle() { [[ $(sinfo -h -o %T | sort -u | tr -d '\n') == idle ]]; }
wait_until 60 "both nodes idle" nodes_idle
echo "slurm_local: cluster up: $(sinfo -h -N -o '%N %T %c' | tr '\n' ' ')"

# data and a tiny CPU config
cd "$repo"
python - "$work" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests/helpers")
from dist_utils import write_config
from msa_dist.data.shards import build_shards
from msa_dist.data.synthetic import write_synthetic_dataset
work = Path(sys.argv[1])
raw = write_synthetic_dataset(work / "raw", n_labelled=120, n_test=10, image_px=32)
build_shards(raw, work / "shards", val_fraction=0.2, seed=0, shard_size=40)
write_config(work / "c.yaml", work / "shards", "backend.name=ddp", "train.batch_size=4",
             "checkpoint.every_steps=5", "checkpoint.keep_last=2")
EOF

# the time-limit job trains far longer than its first run lasts before the signal (30-60 s in; 15-25
# steps/s here, 3,600 steps), so the signal always comes mid-training; once it has requeued itself,
# the script extends its limit so that the rerun finishes
limit_epochs=${LIMIT_EPOCHS:-300}
preempt_epochs=30
submit() {  # submit NAME EPOCHS SBATCH_OPTIONS...: prints the job id
  local name=$1 epochs=$2; shift 2
  RUN_DIR=$work/runs/$name NPROC_PER_NODE=1 OMP_NUM_THREADS=1 sbatch --parsable -D "$repo" --job-name "$name" \
    --nodes 2 --gpus-per-node=0 --output "$work/$name.log" "$@" launch/slurm.sbatch "$work/c.yaml" backend.device=cpu "train.epochs=$epochs"
}
limit=$(submit timelimit "$limit_epochs" --time=2 --signal=B:TERM@60)
jobs_started+=("$limit")
preempt=$(submit preempt "$preempt_epochs" --time=10)
jobs_started+=("$preempt")
echo "slurm_local: submitted job $limit (time limit) and job $preempt (to preempt)"

state() { scontrol show job "$1" -o | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
has() { [[ -f $1 ]] && grep -q "$2" "$1"; }
# preempt once the job trains and has a checkpoint, mid-epoch
wait_until 240 "job $preempt to save a checkpoint" test -f "$work/runs/preempt/checkpoints/latest"
scontrol requeue "$preempt"
echo "slurm_local: requeued job $preempt (preemption) at $(date -u +%FT%TZ)"
ended() { local s; s=$(state "$1"); [[ $s == COMPLETED || $s == FAILED || $s == CANCELLED || $s == TIMEOUT ]]; }
both_ended() { ended "$limit" && ended "$preempt"; }
wait_until 300 "job $limit to requeue itself after its time-limit signal" has "$work/timelimit.log" requeueing
scontrol update JobId="$limit" TimeLimit=20
echo "slurm_local: job $limit requeued itself; its time limit is now 20 min so that the rerun finishes"
wait_until 900 "both jobs to end" both_ended

status=0
check() {  # check JOB NAME EPOCHS: the job's history from its log and scontrol
  local job=$1 name=$2 epochs=$3 log=$work/$2.log
  echo "== job $job ($name): scontrol show job =="
  scontrol show job "$job" | grep -E 'JobState|Restarts|RunTime|TimeLimit|NodeList=|ExitCode' | sed 's/^ */  /'
  echo "== job $job ($name): its log, runs and checkpoints =="
  grep -E '^msa-dist slurm:|SIGTERM: saved|resumed from' "$log" | sed 's/^/  /'
  local fail=()
  [[ $(state "$job") == COMPLETED ]] || fail+=("did not complete")
  has "$log" 'start SLURM_RESTART_COUNT=0' || fail+=("no first run in the log")
  has "$log" 'start SLURM_RESTART_COUNT=1' || fail+=("no rerun with SLURM_RESTART_COUNT=1 in the log")
  has "$log" 'SIGTERM: saved a checkpoint' || fail+=("no checkpoint saved on SIGTERM")
  has "$log" 'resumed from' || fail+=("the rerun did not resume")
  has "$log" 'finished (rc 0)' || fail+=("no finished run")
  python - "$work/runs/$name" "$epochs" <<'EOF' || fail+=("metrics.jsonl: steps not logged once each")
import json, sys
recs = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl")]
steps = [r["step"] for r in recs if r["type"] == "train"]
assert steps == list(range(1, len(steps) + 1)) and len(steps) == 12 * int(sys.argv[2]), steps  # 96 / 8 a step
print(f"  metrics.jsonl: train steps 1..{len(steps)} once each, {sum(r['type'] == 'resume' for r in recs)} resume(s)")
EOF
  if (( ${#fail[@]} )); then
    echo "slurm_local: job $job ($name) FAILED: ${fail[*]}"; tail -n 40 "$log"; status=1
  fi
}
check "$limit" timelimit "$limit_epochs"
check "$preempt" preempt "$preempt_epochs"
grep -q 'requeueing' "$work/timelimit.log" || { echo "slurm_local: the time-limit job did not requeue itself"; status=1; }
(( status == 0 )) && echo "slurm_local: OK (time limit -> saved -> requeued -> resumed -> completed; preemption likewise)"
exit "$status"
