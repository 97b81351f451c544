#!/usr/bin/env bash
# Train with torchrun: one process per GPU, DDP or DeepSpeed as the config's backend.name says.
#
#   launch/torchrun.sh NUM_GPUS CONFIG [msa-dist train options and key=value overrides...]
#
# One node, 4 GPUs, shards built by `msa-dist shards build` in /data/mvsa-shards:
#   launch/torchrun.sh 4 configs/bert_resnet50.yaml backend.name=ddp data.shards=/data/mvsa-shards --run-dir runs/ddp
#   launch/torchrun.sh 4 configs/bert_resnet50.yaml backend.name=deepspeed backend.zero_stage=2 data.shards=...
# Several nodes: run the same command on every node with the same rendezvous endpoint (a host
# every node reaches) and NNODES; the run dir and the shards must be on a shared filesystem:
#   NNODES=2 RDZV_ENDPOINT=node0:29500 launch/torchrun.sh 8 configs/bert_resnet50.yaml data.shards=...
# A failed rank restarts the whole group (up to MAX_RESTARTS, default 3), which then resumes
# from the run's `latest` checkpoint by itself (set checkpoint.every_steps to lose less).
# On a CPU-only machine NUM_GPUS is the number of processes (gloo), e.g. 2.
set -euo pipefail
nproc=${1:?usage: launch/torchrun.sh NUM_GPUS CONFIG [args...]}
config=${2:?usage: launch/torchrun.sh NUM_GPUS CONFIG [args...]}
shift 2
if [[ -z "${RDZV_ENDPOINT:-}" && "${NNODES:-1}" == 1 ]]; then
  rendezvous=(--standalone)  # one node: a local rendezvous on a free port
else
  rendezvous=(--rdzv-backend c10d --rdzv-endpoint "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port for several nodes}"
              --rdzv-id "${RDZV_ID:-msa-dist}")
fi
# A hung collective fails the run (after backend.timeout_s) instead of hanging it: an NCCL error or
# timeout ends the process (3 is torch's default, set here so it shows), and the flight recorder
# writes each rank's last collectives to RUN_DIR/nccl-trace-rank-N (or /tmp without --run-dir).
# A value set before calling this script wins (README: "When a multi-node job hangs").
run_dir=/tmp
for (( i = 1; i < $#; i++ )); do [[ "${!i}" == --run-dir ]] && { j=$((i + 1)); run_dir=${!j}; }; done
[[ "$run_dir" == *://* ]] && run_dir=/tmp  # a run dir on a store (s3://...): traces in /tmp, no local folder
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-3}
export TORCH_FR_BUFFER_SIZE=${TORCH_FR_BUFFER_SIZE:-${TORCH_NCCL_TRACE_BUFFER_SIZE:-2000}}  # the old name counts too
export TORCH_NCCL_DUMP_ON_TIMEOUT=${TORCH_NCCL_DUMP_ON_TIMEOUT:-1}
export TORCH_NCCL_DEBUG_INFO_TEMP_FILE=${TORCH_NCCL_DEBUG_INFO_TEMP_FILE:-$run_dir/nccl-trace-rank-}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
[[ "$run_dir" == /tmp ]] || mkdir -p "$run_dir"
exec torchrun --nnodes "${NNODES:-1}" --nproc_per_node "$nproc" "${rendezvous[@]}" \
  --max-restarts "${MAX_RESTARTS:-3}" \
  -m msa_dist train --config "$config" "$@"
