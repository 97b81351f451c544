#!/usr/bin/env bash
# Train with the DeepSpeed launcher (it passes --local_rank, which `msa-dist train` accepts).
#
#   launch/deepspeed.sh NUM_GPUS CONFIG [msa-dist train options and key=value overrides...]
#
# One node, 4 GPUs, ZeRO-2, shards in /data/mvsa-shards:
#   launch/deepspeed.sh 4 configs/bert_resnet50.yaml backend.zero_stage=2 data.shards=/data/mvsa-shards --run-dir runs/zero2
# Extra DeepSpeed settings go in a JSON file merged over the one generated from the config:
#   launch/deepspeed.sh 4 configs/bert_resnet50.yaml backend.deepspeed_config=ds_extra.json ...
# Several nodes: HOSTFILE=hostfile (DeepSpeed's format: "node0 slots=4" per line; it starts the
# other nodes over ssh/pdsh). Run dir and shards on a shared filesystem.
# backend.name=deepspeed is set here; ZeRO stage and precision come from the config or overrides.
set -euo pipefail
ngpus=${1:?usage: launch/deepspeed.sh NUM_GPUS CONFIG [args...]}
config=${2:?usage: launch/deepspeed.sh NUM_GPUS CONFIG [args...]}
shift 2
hostfile=()
[[ -n "${HOSTFILE:-}" ]] && hostfile=(--hostfile "$HOSTFILE")
exec deepspeed "${hostfile[@]}" --num_gpus "$ngpus" --master_port "${MASTER_PORT:-29500}" \
  --module msa_dist train --config "$config" backend.name=deepspeed "$@"
