#!/usr/bin/env bash
# Fault soak: a 2-rank DDP run whose ranks are SIGKILLed K times at random moments (every second
# kill during a checkpoint write); torchrun restarts the group each time and it resumes from
# `latest`. Passes (exit 0) when the weights equal an uninterrupted run's bit for bit, metrics.jsonl
# matches it line by line (timing fields aside), `latest` always named a complete checkpoint and
# nothing is left half-written; prints the result as JSON.
#
#   launch/soak.sh --config configs/cpu_small.yaml --workdir runs/soak --kills 10 --seed 1 \
#     data.shards=shards checkpoint.every_steps=5 backend.device=cpu
set -euo pipefail
exec python -m msa_dist.bench.soak "$@"
