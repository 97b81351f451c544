#!/usr/bin/env bash
# Throughput check on a GPU machine: both benchmarks, for the seed baseline and the optimised config.
#
#   launch/device_check.sh prepare [DATA_ROOT] [PAIRS]   # here, with network: wheels + a slice of real data
#   launch/device_check.sh run                           # on the GPU machine: no network, <= 8 minutes
#
# `prepare` downloads the wheels the GPU machine lacks (it has torch, torchvision and transformers,
# not webdataset, simplejpeg, deepspeed or pydantic; its python3 is 3.12) into benchmarks/wheels/, and copies the first PAIRS (600) labelled
# pairs of DATA_ROOT (a course layout) into benchmarks/device-data/raw/. Both folders are git-ignored
# (benchmarks/.gitignore) and travel with the working tree when named in the device tool's `carry`:
#   run(command="bash launch/device_check.sh run", carry=["benchmarks/wheels", "benchmarks/device-data"])
# Without a data slice, `run` writes a synthetic dataset instead (the result records which).
#
# `run` builds shards from the slice (original images for the seed baseline, 256 px for the rest),
# copies them to ~13k training samples (so epochs outlast worker start-up), then runs, most telling
# first, as long as the time budget (BUDGET_S) lasts (ONLY=REGEX: just the parts whose names match):
#   bench train   gpu_fast (the trainer's TrainStep, with a torch.profiler table), the seed baseline,
#                 gpu_fast with texts padded to a multiple of 16, batch 512, torch.compile
#   DeepSpeed     ZeRO-1/2/3 in bf16 and fp16 (one rank), and a save + mid-epoch resume on CUDA
#   bench memory  the largest micro batch: BERT-base + ResNet-50 and BERT-large + ResNet-101,
#                 with and without activation checkpointing
#   whole runs    the single-GPU debug mode with ANOMALY=1; msa-dist train -> SIGTERM -> --resume
#                 auto -> evaluate -> predict, compared with an uninterrupted run
# and writes benchmarks/results/<device>-<date>.json (and a copy, with the logs, under $OUT if set).
# DRY_RUN=1 runs the plumbing on a CPU with tiny models.
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
        -d "$WHEELS" "simplejpeg==1.9.0" "pydantic-core==2.46.4" || exit 1
    # DeepSpeed is an sdist: built here into a pure-Python wheel (no ops compiled; msa-dist uses torch's AdamW)
    "$PY" -m pip download --no-deps --only-binary=:all: -d "$WHEELS" "pydantic==2.13.4" "annotated-types==0.7.0" \
        "typing-inspection==0.4.2" "hjson==3.1.0" || exit 1
    DS_BUILD_OPS=0 "$PY" -m pip wheel --no-deps --no-build-isolation -w "$WHEELS" "deepspeed==0.19.8" || exit 1
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
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PY

    if ! "$PY" -c "import webdataset, simplejpeg, deepspeed" 2>/dev/null; then
        ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "webdataset/deepspeed missing and no wheels in $WHEELS: run '$0 prepare' where there is network"; exit 1; }
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
    step() {
        local name=$1 est=$2; shift 2
        [[ -n "${ONLY:-}" && ! "$name" =~ $ONLY ]] && return  # ONLY=REGEX: run just the matching parts
        local left=$((budget_s - (SECONDS - start)))
        if [ "$left" -lt "$est" ]; then echo "SKIP $name: ${left}s left, needs ~${est}s"; return; fi
        echo "== $name"
        timeout "$left" "$PY" -m msa_dist bench "$@" --json "$parts/$name.json" >"$logs/$name.log" 2>&1
        local rc=$?
        grep -E "samples/s|data wait|MFU|ratio per core|peak memory|largest batch" "$logs/$name.log" | head -8
        [ "$rc" -eq 0 ] || { echo "FAILED $name (rc $rc):"; tail -5 "$logs/$name.log"; }
    }
    # timed_part NAME EST_S FUNCTION: a scripted part with its own JSON (parts/NAME.json), if the budget allows
    timed_part() {
        local name=$1 est=$2 fn=$3
        [[ -n "${ONLY:-}" && ! "$name" =~ $ONLY ]] && return
        local left=$((budget_s - (SECONDS - start)))
        if [ "$left" -lt "$est" ]; then echo "SKIP $name: ${left}s left, needs ~${est}s"; return; fi
        echo "== $name"
        PART_JSON="$parts/$name.json" PART_DIR="$work/$name" timeout "$left" bash -c "$(declare -f "$fn"); $fn" \
            >"$logs/$name.log" 2>&1
        local rc=$?
        tail -4 "$logs/$name.log"
        [ "$rc" -eq 0 ] || echo "FAILED $name (rc $rc)"
    }
    # DRY_RUN=1 checks the plumbing on a CPU: tiny models, two steps, short loader timings.
    local secs=10 fast_steps="--steps 30 --warmup 10" base_steps="--steps 12 --warmup 3" ds_steps="--steps 15 --warmup 5"
    local tiny="" gpu=1 mem="--start 512 --resolution 256"
    # BERT-base-sized text model from scratch (no hub here) for whole runs: a WordPiece of the shard texts
    local base_text="model.text.name=tiny model.text.tiny_hidden=768 model.text.tiny_layers=12 model.text.tiny_heads=12 model.text.tiny_vocab_size=30522 model.image.weights=none"
    if [ "${DRY_RUN:-0}" = 1 ]; then
        secs=2 fast_steps="--steps 2 --warmup 1" base_steps="--steps 2 --warmup 1" ds_steps="--steps 2 --warmup 1" gpu=0
        tiny="model.text.name=tiny model.image.name=tiny model.image.weights=none data.image_size=64 data.resize_size=72 train.batch_size=8 data.workers=1 backend.device=cpu"
        base_text="$tiny"
    fi
    # overrides last: argparse takes the key=value words as one run of positionals
    local fast="--config configs/gpu_fast.yaml $fast_steps data.shards=$work/big256 $tiny"
    local ds="--config configs/gpu_fast.yaml $ds_steps data.shards=$work/big256 $tiny backend.name=deepspeed optim.fused=false"
    # most telling first: the budget may end the list early (measured 2026-11-30: 01, 02, 03, 04)
    step 01-gpu-fast 40 train $fast --profile "$logs/profile-gpu-fast.txt"
    step 02-seed-baseline 45 train --config configs/seed_baseline.yaml $base_steps data.shards="$work/bigorig" $tiny
    step 05-fast-pad16 40 train $fast data.pad_to_multiple_of=16
    step 05b-fast-no-cudnn-sdpa 40 train $fast backend.cudnn_sdpa=false
    [ "$gpu" = 1 ] && step 06-ds-zero2-fp16 35 train $ds backend.zero_stage=2 backend.precision=fp16
    step 07-ds-zero1-bf16 35 train $ds backend.zero_stage=1
    step 08-ds-zero3-bf16 40 train $ds backend.zero_stage=3
    DS_ARGS="--config configs/gpu_fast.yaml data.shards=$work/big256 $base_text backend.name=deepspeed backend.zero_stage=2 optim.fused=false" \
        timed_part 09-ds-save-resume 60 ds_save_resume
    if [ "$gpu" = 1 ]; then
        step 10-memory-base 35 memory --config configs/gpu_fast.yaml $mem data.shards=$work/big256
        step 11-memory-base-ckpt 50 memory --config configs/gpu_fast.yaml $mem data.shards=$work/big256 model.text.gradient_checkpointing=true model.image.gradient_checkpointing=true
        step 12-memory-large 40 memory --config configs/gpu_fast.yaml $mem data.shards=$work/big256 model.text.name=bert-large-uncased model.image.name=resnet101
        step 13-memory-large-ckpt 50 memory --config configs/gpu_fast.yaml $mem data.shards=$work/big256 model.text.name=bert-large-uncased model.image.name=resnet101 model.text.gradient_checkpointing=true model.image.gradient_checkpointing=true
    fi
    DEBUG_ARGS="data.shards=$work/s256 $base_text train.epochs=1 train.max_steps_per_epoch=3" timed_part 14-debug-anomaly 45 debug_anomaly
    step 15-fast-batch512 40 train $fast train.batch_size=512
    [ "$gpu" = 1 ] && step 16-ds-zero1-fp16 35 train $ds backend.zero_stage=1 backend.precision=fp16
    [ "$gpu" = 1 ] && step 17-ds-zero3-fp16 40 train $ds backend.zero_stage=3 backend.precision=fp16
    step 18-fast-compile-pad16 150 train $fast data.pad_to_multiple_of=16 backend.compile=true
    WHOLE_RUN_ARGS="--config configs/gpu_fast.yaml data.shards=$work/big256 $base_text" timed_part 19-whole-run 120 whole_run
    step 20-ds-zero2-bf16 35 train $ds backend.zero_stage=2

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

# -- scripted parts of `run` (each runs in its own bash with PY, PART_DIR and PART_JSON set) ---------

# msa-dist train as a user runs it: one epoch uninterrupted; the same run again, SIGTERM mid-epoch,
# --resume auto; the final weights compared; evaluate and predict on the resumed run.
whole_run() {
    local a=$PART_DIR/uninterrupted b=$PART_DIR/interrupted
    local common="train.epochs=1 train.max_steps_per_epoch=40 checkpoint.every_steps=10 checkpoint.keep_last=3 log.every_steps=2 log.progress=false train.deterministic=true"
    export CUBLAS_WORKSPACE_CONFIG=:4096:8
    mkdir -p "$b"
    local t0=$SECONDS
    $PY -m msa_dist train --run-dir "$a" $WHOLE_RUN_ARGS $common || return 1
    echo "uninterrupted run: $((SECONDS - t0)) s"
    cp -r "$a/tokenizer" "$b/"  # the same WordPiece (training one is not deterministic across processes)
    $PY -m msa_dist train --run-dir "$b" $WHOLE_RUN_ARGS $common >"$PART_DIR/interrupted-1.log" 2>&1 &
    local pid=$! i
    for i in $(seq 1 1200); do
        grep -Eq '"type": "train".*"step": (1[2-9]|[2-9][0-9])' "$b/metrics.jsonl" 2>/dev/null && break
        sleep 0.1
    done
    local t_sig; t_sig=$(date +%s.%N)
    kill -TERM "$pid"; wait "$pid"; local rc1=$?
    local t_exit; t_exit=$(date +%s.%N)
    tail -2 "$PART_DIR/interrupted-1.log"
    $PY -m msa_dist train --run-dir "$b" --resume auto $WHOLE_RUN_ARGS $common >"$PART_DIR/interrupted-2.log" 2>&1 || { tail -5 "$PART_DIR/interrupted-2.log"; return 1; }
    $PY -m msa_dist evaluate --run "$b" --split val --checkpoint latest || return 1
    $PY -m msa_dist predict --run "$b" --split val --checkpoint latest --out "$PART_DIR/predictions.csv" || return 1
    $PY - "$a" "$b" "$PART_DIR" "$PART_JSON" "$rc1" "$t_sig" "$t_exit" <<'PYEOF'
import json, re, sys
from pathlib import Path
import torch
a, b, part, out = map(Path, sys.argv[1:5])
rc1, t_sig, t_exit = int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
def latest(run):
    root = run / "checkpoints"
    return torch.load(root / (root / "latest").read_text().strip() / "model.pt", map_location="cpu")
wa, wb = latest(a), latest(b)
diff = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa if wa[k].is_floating_point())
recs = lambda run: [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
train_a = [r for r in recs(a) if r["type"] == "train"]
train_b = [r for r in recs(b) if r["type"] == "train"]
saved = re.search(r"saved a checkpoint at step (\d+)", (part / "interrupted-1.log").read_text())
loss_a = {r["step"]: r["loss"] for r in train_a}
loss_b = {r["step"]: r["loss"] for r in train_b}
result = {"bench": "run", "label": out.stem, "samples_per_s": train_a[-1]["samples_per_s"],
          "steps": train_a[-1]["step"], "sigterm_exit_code": rc1, "sigterm_to_exit_s": round(t_exit - t_sig, 2),
          "sigterm_saved_step": int(saved.group(1)) if saved else None,
          "resumed_losses_equal": loss_a == loss_b,
          "max_abs_loss_difference": max(abs(loss_a[s] - loss_b[s]) for s in loss_a if s in loss_b and loss_a[s] is not None),
          "final_weights_max_abs_difference": diff, "final_weights_equal": diff == 0.0,
          "val": [r for r in recs(b) if r["type"] == "eval"][-1:],
          "predictions": len((part / "predictions.csv").read_text().splitlines()) - 1,
          "data_wait": train_a[-1]["data_wait"]}
out.write_text(json.dumps(result, indent=1))
print(json.dumps({k: v for k, v in result.items() if k != "val"}))
PYEOF
}

# DeepSpeed ZeRO-2 on the GPU: 2 epochs of 4 steps with a checkpoint every 2; a copy resumed from
# the mid-epoch-2 checkpoint must log the same losses and end with the same weights.
ds_save_resume() {
    local whole=$PART_DIR/whole resumed=$PART_DIR/resumed
    local common="train.epochs=2 train.max_steps_per_epoch=4 checkpoint.every_steps=2 checkpoint.keep_last=4 log.every_steps=1 log.progress=false train.deterministic=true"
    export CUBLAS_WORKSPACE_CONFIG=:4096:8
    $PY -m msa_dist train --run-dir "$whole" $DS_ARGS $common || return 1
    cp -r "$whole" "$resumed"
    local t0=$SECONDS
    $PY -m msa_dist train --run-dir "$resumed" --resume "$resumed/checkpoints/step-0000006" $DS_ARGS $common || return 1
    echo "resume from step 6: $((SECONDS - t0)) s"
    $PY - "$whole" "$resumed" "$PART_JSON" <<'PYEOF'
import json, sys
from pathlib import Path
import torch
whole, resumed, out = map(Path, sys.argv[1:4])
recs = lambda run: [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
la = {r["step"]: r["loss"] for r in recs(whole) if r["type"] == "train"}
lb = {r["step"]: r["loss"] for r in recs(resumed) if r["type"] == "train"}
wa = torch.load(whole / "checkpoints/step-0000008/model.pt", map_location="cpu")
wb = torch.load(resumed / "checkpoints/step-0000008/model.pt", map_location="cpu")
diff = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa if wa[k].is_floating_point())
files = sorted(p.name for p in (whole / "checkpoints/step-0000008/deepspeed").iterdir())
result = {"bench": "run", "label": out.stem, "steps": max(la), "losses_equal_after_resume": la == lb,
          "max_abs_loss_difference": max(abs(la[s] - lb[s]) for s in la), "final_weights_max_abs_difference": diff,
          "deepspeed_files": files, "resume_records": sum(r["type"] == "resume" for r in recs(resumed))}
out.write_text(json.dumps(result, indent=1))
print(json.dumps(result))
PYEOF
}

# The design's single-GPU debug mode, as a user runs it, with autograd anomaly detection.
debug_anomaly() {
    local t0=$SECONDS
    RUN_DIR=$PART_DIR/run ANOMALY=1 BATCH=8 PYTHON=$PY bash launch/debug_single_gpu.sh configs/gpu_fast.yaml $DEBUG_ARGS \
        log.progress=false || return 1
    $PY - "$PART_DIR/run" "$PART_JSON" "$((SECONDS - t0))" <<'PYEOF'
import json, sys
from pathlib import Path
run, out, secs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
result = {"bench": "run", "label": out.stem, "seconds": secs, "steps": max(r.get("step", 0) for r in recs),
          "losses": [r["loss"] for r in recs if r["type"] == "train"],
          "val_accuracy": next((r["accuracy"] for r in recs if r["type"] == "eval"), None)}
out.write_text(json.dumps(result, indent=1))
print(json.dumps(result))
PYEOF
}

case "$MODE" in
    prepare) shift; prepare "$@" ;;
    run) run ;;
    *) echo "usage: $0 prepare [DATA_ROOT] [PAIRS] | run"; exit 2 ;;
esac
