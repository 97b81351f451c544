#!/usr/bin/env bash
# A/B of the loader: an old commit's `bench data` against this checkout's, alternating, same shards,
# each with the seed-style reference in the same command; then this checkout's over HTTP.
#
#   git worktree add /tmp/old 46985e3                       # the loader before issue 10
#   msa-dist shards build ../shared/data/mvsa --out /tmp/sh-default
#   bash benchmarks/ab_loader.sh [OLD_TREE] [SHARDS] [DATA_ROOT]
set -u
old=${1:-/tmp/old} shards=${2:-/tmp/sh-default} data=${3:-../shared/data/mvsa}
here=$(cd "$(dirname "$0")/.." && pwd)
data=$(cd "$data" && pwd)
export HF_HUB_OFFLINE=1
show="ratio per core|samples_per_s_per_worker|reference samples|bytes_read"
for i in 1 2 3; do
  echo "== old $i"; (cd /tmp && PYTHONPATH=$old python -m msa_dist bench data --shards "$shards" --seconds 15 --reference "$data" 2>&1 | grep -E "$show")
  echo "== new $i"; (cd "$here" && python -m msa_dist bench data --shards "$shards" --seconds 15 --reference "$data" 2>&1 | grep -E "$show")
done
python -m msa_dist shards serve "$shards" --port 18765 >/dev/null 2>&1 &
server=$!
trap 'kill $server' EXIT
sleep 2
for i in 1 2; do
  echo "== new over http $i"; (cd "$here" && python -m msa_dist bench data --shards http://127.0.0.1:18765 --seconds 15 --reference "$data" 2>&1 | grep -E "$show")
done
