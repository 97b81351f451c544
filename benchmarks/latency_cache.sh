#!/usr/bin/env bash
# Would a node-local cache of the shards pay? The most it could give is reading the local folder, so:
# msa-dist's `bench data` on the folder itself and over HTTP with a per-request latency, alternating
# (local, http, http, local, ...) on the same machine.
#
#   bash benchmarks/latency_cache.sh SHARDS [LATENCY_MS=50] [ROUNDS=2] [SECONDS=20] [WORKERS=2]
set -u
shards=$1 latency=${2:-50} rounds=${3:-2} seconds=${4:-20} workers=${5:-2}
export HF_HUB_OFFLINE=1
port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python -m msa_dist shards serve "$shards" --port "$port" --latency-ms "$latency" >/dev/null 2>&1 &
server=$!
trap 'kill $server' EXIT
for _ in $(seq 100); do python -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break; sleep 0.2; done
bench() {  # $1: label, $2: shards location
  echo "== $1: $(python -m msa_dist bench data --shards "$2" --workers "$workers" --seconds "$seconds" 2>/dev/null \
    | grep -E '^(samples_per_s_per_worker|bytes_read_per_sample|requests_per_sample)' | tr '\n' ' ')"
}
for i in $(seq "$rounds"); do
  if [ $((i % 2)) -eq 1 ]; then bench local "$shards"; bench "http+${latency}ms" "http://127.0.0.1:$port"
  else bench "http+${latency}ms" "http://127.0.0.1:$port"; bench local "$shards"; fi
done
