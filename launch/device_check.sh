#!/usr/bin/env bash
# Throughput check on a GPU machine: both benchmarks, for the seed baseline and the optimised config.
#
#   launch/device_check.sh prepare [DATA_ROOT] [PAIRS]   # here, with network: wheels + a slice of real data
#   launch/device_check.sh run                           # on the GPU machine: no network, <= 8 minutes
#
# `prepare` downloads the wheels the GPU machine lacks (it has torch, torchvision and transformers,
# not webdataset or simplejpeg; its python3 is 3.12) into benchmarks/wheels/, and copies the first PAIRS (600) labelled
# pairs of DATA_ROOT (a course layout) into benchmarks/device-data/raw/. Both folders are git-ignored
# (benchmarks/.gitignore) and travel with the working tree when named in the device tool's `carry`:
#   run(command="bash launch/device_check.sh run", carry=["benchmarks/wheels", "benchmarks/device-data"])
# Without a data slice, `run` writes a synthetic dataset instead (the result records which).
#
# `run` builds shards from the slice (original images for the seed baseline, 256 px for the rest),
# copies them to ~13k training samples (so epochs outlast worker start-up), then runs
#   bench data   (1 and 8 workers; the seed-style reference loader in the same command)
#   bench train  configs/seed_baseline.yaml, configs/gpu_fast.yaml, and gpu_fast with one option
#                changed at a time (fp32, nvJPEG decoding, cuDNN autotuning, no channels_last, 128 fixed
#                tokens, no fused AdamW, no pinned memory, random crops, DDP on one rank with default and
#                tuned buckets/static graph, torch.compile), as long as the time budget (BUDGET_S) lasts
# and writes benchmarks/results/<device>-<date>.json (and a copy, with the logs, under $OUT if set).
set -uo pipefail

cd "$(dirname "$0")/.."
MODE=${1:-run}
PY=${PYTHON:-python3}
WHEELS=benchmarks/wheels
SLICE=benchmarks/device-data/raw

prepare() {
    local data_root=${1:-../shared/data/mvsa} pairs=${2:-600}
    mkdir -p "$WHEELS"
    "$PY" -m pip download --no-deps --only-binary=:all: -d "$WHEELS" "webdataset==1.0.2" "braceexpand==0.1.7" || exit 1
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" "simplejpeg==1.9.0" || exit 1
    "$PY" - "$data_root" "$SLICE" "$pairs" <<'EOF' || exit 1
import csv, shutil, sys
from pathlib import Path
src, dst, pairs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
rows = list(csv.reader(open(src / "train.txt", newline="")))
(dst / "data").mkdir(parents=True, exist_ok=True)
kept = [r for r in rows[1:] if r and (src / "data" / f"{r[0]}.jpg").is_file()][:pairs]
for guid, _ in kept:
    for ext in ("jpg", "txt"):
        shutil.copyfile(src / "data" / f"{guid}.{ext}", dst / "data" / f"{guid}.{ext}")
with open(dst / "train.txt", "w", newline="") as f:
    csv.writer(f).writerows([rows[0], *kept])
print(f"copied {len(kept)} pairs of {src} into {dst}")
EOF
    du -sh "$WHEELS" "$SLICE"
}

run() {
    local budget_s=${BUDGET_S:-420} start=$SECONDS
    local work=${WORK_DIR:-/tmp/msa-dist-device-check}
    local parts=$work/parts logs=$work/logs
    rm -rf "$work" && mkdir -p "$parts" "$logs"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

    if ! "$PY" -c "import webdataset, simplejpeg" 2>/dev/null; then
        ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "webdataset missing and no wheels in $WHEELS: run '$0 prepare' where there is network"; exit 1; }
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHEELS"/*.whl || exit 1
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
    fi
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv 2>/dev/null

    local raw=$SLICE data_kind=real
    if [ ! -f "$SLICE/train.txt" ]; then
        raw=$work/synthetic data_kind=synthetic
        "$PY" -c "from msa_dist.data.synthetic import write_synthetic_dataset as w; w('$raw', n_labelled=600, n_test=0, image_px=480)"
    fi
    "$PY" -m msa_dist shards build "$raw" --out "$work/s256" --image-size 256 --jpeg-quality 90 >"$logs/shards.log" 2>&1 &&
    "$PY" -m msa_dist shards build "$raw" --out "$work/sorig" --image-size 0 >>"$logs/shards.log" 2>&1 &&
    "$PY" -m msa_dist bench replicate "$work/s256" --out "$work/big256" --copies 24 &&
    "$PY" -m msa_dist bench replicate "$work/sorig" --out "$work/bigorig" --copies 4 || { cat "$logs/shards.log"; exit 1; }
    echo "shards ready after $((SECONDS - start)) s ($data_kind data)"

    # step NAME EST_S ARGS...: run `msa-dist bench ARGS --json parts/NAME.json` if the budget allows
    # (under torchrun with one process when LAUNCH=torchrun)
    step() {
        local name=$1 est=$2; shift 2
        local left=$((budget_s - (SECONDS - start)))
        if [ "$left" -lt "$est" ]; then echo "SKIP $name: ${left}s left, needs ~${est}s"; return; fi
        echo "== $name"
        local launch=(-m msa_dist)
        [ "${LAUNCH:-}" = torchrun ] && launch=(-m torch.distributed.run --standalone --nproc_per_node 1 -m msa_dist)
        timeout "$left" "$PY" "${launch[@]}" bench "$@" --json "$parts/$name.json" >"$logs/$name.log" 2>&1
        local rc=$?
        grep -E "samples/s|data wait|MFU|ratio per core|peak memory" "$logs/$name.log" | head -8
        [ "$rc" -eq 0 ] || { echo "FAILED $name (rc $rc):"; tail -5 "$logs/$name.log"; }
    }
    # DRY_RUN=1 checks the plumbing on a CPU: tiny models, two steps, short loader timings.
    local secs=10 fast_steps="--steps 30 --warmup 10" base_steps="--steps 20 --warmup 5" tiny=""
    if [ "${DRY_RUN:-0}" = 1 ]; then
        secs=2 fast_steps="--steps 2 --warmup 1" base_steps="--steps 2 --warmup 1"
        tiny="model.text.name=tiny model.image.name=tiny model.image.weights=none data.image_size=64 data.resize_size=72 train.batch_size=8 data.workers=1 backend.device=cpu"
    fi
    # overrides last: argparse takes the key=value words as one run of positionals
    local fast="--config configs/gpu_fast.yaml $fast_steps data.shards=$work/big256 $tiny"
    # most telling first: the budget may end the list early
    step 01-data-1worker 30 data --shards "$work/big256" --seconds $secs --workers 1 --reference "$raw"
    step 02-data-8workers 25 data --shards "$work/big256" --seconds $secs --workers 8
    step 03-seed-baseline 60 train --config configs/seed_baseline.yaml $base_steps data.shards="$work/bigorig" $tiny
    step 04-gpu-fast 45 train $fast
    step 05-fast-fp32 50 train $fast backend.precision=fp32
    step 06-fast-decode-on-device 40 train $fast data.decode_on_device=true
    step 07-fast-cudnn-benchmark 40 train $fast --cudnn-benchmark
    step 08-fast-no-channels-last 40 train $fast model.image.channels_last=false
    step 09-fast-pad-128 40 train $fast data.max_length=128 data.pad_to_max_length=true
    step 10-fast-no-fused-adamw 40 train $fast optim.fused=false
    step 11-fast-no-pin-memory 40 train $fast data.pin_memory=false
    step 12-fast-random-crop 40 train $fast data.train_crop=random
    LAUNCH=torchrun step 13-fast-ddp 50 train $fast backend.name=ddp
    LAUNCH=torchrun step 14-fast-ddp-static-bucket100 50 train $fast backend.name=ddp backend.ddp_static_graph=true backend.ddp_bucket_mb=100
    step 15-fast-compile 150 train $fast backend.compile=true

    ls "$parts"/*.json >/dev/null 2>&1 || { echo "no benchmark finished; logs in $logs"; exit 1; }
    local device date out_json
    device=$("$PY" -c "import re, torch; n = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'; print(re.sub(r'[^a-z0-9]+', '-', n.lower()).strip('-'))")
    date=$(date +%Y-%m-%d)
    out_json=benchmarks/results/$device-$date.json
    "$PY" -m msa_dist bench summary "$parts"/*.json --out "$out_json" | tee "$work/summary.md"
    "$PY" -c "import json,sys; p=sys.argv[1]; d=json.load(open(p)); d['data']=sys.argv[2]; open(p,'w').write(json.dumps(d, indent=1)+'\n')" "$out_json" "$data_kind"
    echo "wrote $out_json after $((SECONDS - start)) s"
    if [ -n "${OUT:-}" ]; then
        cp "$out_json" "$work/summary.md" "$OUT"/ && tar -czf "$OUT/logs.tgz" -C "$work" logs
    fi
}

case "$MODE" in
    prepare) shift; prepare "$@" ;;
    run) run ;;
    *) echo "usage: $0 prepare [DATA_ROOT] [PAIRS] | run"; exit 2 ;;
esac
