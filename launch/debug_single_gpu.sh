#!/usr/bin/env bash
# Debug run: one process, no process group (backend.name=single), a small batch, the data read
# in the main process (data.workers=0, so breakpoints work), deterministic algorithms, a log
# line every step. ANOMALY=1 adds autograd anomaly detection (slow; names the op behind a NaN).
#
#   launch/debug_single_gpu.sh CONFIG [msa-dist train overrides...]
#   ANOMALY=1 BATCH=4 launch/debug_single_gpu.sh configs/bert_resnet50.yaml data.shards=/data/mvsa-shards
#
# Uses GPU 0 (CUDA_VISIBLE_DEVICES to pick another), or the CPU when there is none.
# Run dir: RUN_DIR, default runs/debug-<config name>. PYTHON: the interpreter (default python).
set -euo pipefail
config=${1:?usage: launch/debug_single_gpu.sh CONFIG [overrides...]}
shift
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}  # deterministic cuBLAS
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
anomaly=false
[[ "${ANOMALY:-0}" == 1 ]] && anomaly=true
exec "${PYTHON:-python}" -m msa_dist train --config "$config" --run-dir "${RUN_DIR:-runs/debug-$(basename "$config" .yaml)}" \
  backend.name=single train.batch_size="${BATCH:-8}" data.workers=0 train.deterministic=true \
  train.detect_anomaly="$anomaly" log.every_steps=1 "$@"
