# Scripted parts of launch/device_check.sh `run` (sourced by it). Each runs in its own bash, started
# by `timed_part`, with PY, PART_DIR (its scratch folder) and PART_JSON (where its numbers go) set,
# and writes one JSON object whose "bench" is "run" (`msa-dist bench summary` lists it).

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

# The pretrained CPU recipe's 5-fold CV (configs/minilm_efflite.yaml, the command whose 2-core time
# docs/pretrained.md gives) on this machine's GPU: the packaged MiniLM and EfficientNet-Lite0 weights
# and the 128 px MVSA shards come in pieces (benchmarks/device_carry.py); without all of them the
# part says which are missing and stops (exit status 3).
pretrained_cv() {
    $PY benchmarks/device_carry.py unpack "$STAGED" --to "$PACK" || return 3
    export PYTHONPATH="$PYTHONPATH:$PACK/site"
    local t0=$SECONDS
    $PY -m msa_dist cv --config configs/minilm_efflite.yaml --folds "$CV_FOLDS" --run-dir "$PART_DIR/cv" \
        data.shards="$PACK/shards128" $CV_ARGS || return 1
    $PY - "$PART_DIR/cv/cv.json" "$PART_JSON" "$((SECONDS - t0))" "$CV_ARGS" <<'PYEOF'
import json, sys
from pathlib import Path
cv, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
result = {"bench": "run", "label": out.stem, "command": "msa-dist cv --config configs/minilm_efflite.yaml "
          f"--folds {cv['folds']} data.shards=<128 px shards> {sys.argv[4]}", "wall_s": int(sys.argv[3]),
          "train_seconds": [r["train_seconds"] for r in cv["runs"]], "mean": cv["mean"], "complete": cv["complete"]}
out.write_text(json.dumps(result, indent=1))
print(json.dumps({k: result[k] for k in ("wall_s", "train_seconds")}), {k: round(v, 4) for k, v in cv["mean"].items()})
PYEOF
}
