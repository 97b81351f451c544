"""`msa-dist export`: a run's model as a portable folder that needs neither the run dir nor a pickle.

OUT/model.safetensors   the weights (safetensors: no code runs when they are loaded); LoRA adapters merged in
OUT/config.yaml         the model config, label names, preprocessing, logit offsets, provenance
OUT/tokenizer/          the run's tokenizer
OUT/text_config/        the text backbone's architecture (no hub access when loading)
OUT/model.onnx          with --onnx: the same model as an ONNX graph (onnx_export.py), for `predict --onnx`
OUT/README.md           a model card with the val metrics and three lines of Python to predict
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import yaml

from msa_dist.common.errors import MsaDistError
from msa_dist.common.jsonfile import read_json_object, read_json_records
from msa_dist.common.labels import LABELS
from msa_dist.config.schema import to_dict
from msa_dist.engine.checkpoint.files import model_weights_path
from msa_dist.engine.run.artifacts import load_run_config
from msa_dist.engine.run.provenance import read_run_info

log = logging.getLogger(__name__)


def _val_metrics(run_dir: Path, weights: Path) -> dict | None:
    """The checkpoint's val metrics (saved beside `best`), else the run's last eval record; a broken
    file is skipped with a warning (the card then lacks the metrics), never a traceback."""
    saved = weights.parent / "metrics.json"
    if saved.is_file() or saved.is_symlink():
        try:
            return read_json_object(saved)
        except MsaDistError as exc:
            log.warning("export: no val metrics in the model card: %s", exc)
    path = run_dir / "metrics.jsonl"
    if not (path.is_file() or path.is_symlink()):
        return None
    try:
        records, broken = read_json_records(path)
    except MsaDistError as exc:
        log.warning("export: no val metrics in the model card: %s", exc)
        return None
    if broken:
        log.warning("export: skipped %d broken line(s) of %s", broken, path)
    evals = [r for r in records if r.get("type") == "eval"]
    return evals[-1] if evals else None


def _card(run_dir: Path, which: str, metrics: dict | None, card: dict) -> str:
    lines = [
        f"# msa-dist model: {run_dir.name}",
        "",
        f"Image-text sentiment classifier ({', '.join(card['labels'])}) exported from the `{which}` checkpoint "
        f"of run `{run_dir.name}` (modality {card['model']['modality']}, text {card['model']['text']['name']}, "
        f"image {card['model']['image']['name']}, fusion {card['model']['head']['fusion']}).",
        "",
    ]
    if metrics:
        lines += ["## Validation metrics", "", "| metric | value |", "|---|---|"]
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        lines += [f"| {k} | {numbers[k]:.4f} |" for k in ("accuracy", "macro_f1", "weighted_f1") if k in numbers]
        lines += [f"| samples | {numbers.get('samples', '?')} |", ""]
    lines += [
        "## Use",
        "",
        "```python",
        "import msa_dist",
        'model = msa_dist.load_model("THIS_FOLDER")',
        'print(model.predict("photo.jpg", "What a day!"))  # {label: probability}',
        "```",
        "",
        "or `msa-dist predict --run THIS_FOLDER --inputs pairs.csv --out predictions.csv`.",
        "",
        "## Provenance",
        "",
        "```json",
        json.dumps(card.get("source", {}), indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def _merge_adapters(model, model_card: dict) -> dict | None:
    """Fold LoRA adapters into their base layers, in place, and set the card's model config to lora.r=0, so
    the exported folder is a plain model (`load_model` builds it without peft); returns the merged settings."""
    from msa_dist.models.lora import has_lora, merge_lora

    if not has_lora(model):
        return None
    merge_lora(model)
    merged = {}
    for tower in ("text", "image"):
        lora = model_card[tower]["lora"]
        if lora["r"]:
            merged[tower] = {**lora}
            lora["r"] = 0
    return merged


def export_run(run_dir: str | Path, out: str | Path, which: str = "best", onnx: bool = False) -> Path:
    """Write the portable folder for `which` checkpoint of `run_dir` (and model.onnx with `onnx`); returns `out`."""
    from safetensors.torch import save_model

    from msa_dist.inference.predictor import load_model

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and any(out.iterdir()):
        raise MsaDistError(f"--out {out} exists and is not empty: choose a new folder")
    cfg = load_run_config(run_dir)
    weights = model_weights_path(run_dir, which)
    predictor = load_model(run_dir, device="cpu", checkpoint=which)
    model_card = to_dict(cfg)["model"]
    merged_lora = _merge_adapters(predictor.model, model_card)
    info = read_run_info(run_dir) or {}
    from msa_dist.inference.calibration import load_offsets

    offsets = load_offsets(run_dir)
    card = {
        "format": 1,
        "labels": list(LABELS),
        "model": model_card,
        "preprocessing": asdict(predictor.preprocessing),
        "logit_offsets": offsets.tolist() if offsets is not None else None,  # used by load_model(adjust=True)
        "merged_lora": merged_lora,  # the LoRA adapters folded into the weights (model.*.lora.r is 0 here)
        "source": {
            "run": str(run_dir.resolve()),
            "checkpoint": which,
            "weights": weights.name,
            "git_commit": info.get("git", {}).get("commit"),
            "git_dirty": info.get("git", {}).get("dirty"),
            "manifest_sha256": info.get("data", {}).get("manifest_sha256"),
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    save_model(predictor.model, str(out / "model.safetensors"))
    (out / "config.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    predictor.tokenizer.save_pretrained(str(out / "tokenizer"))
    if (run_dir / "text_config").is_dir():
        shutil.copytree(run_dir / "text_config", out / "text_config")
    if onnx:
        from msa_dist.inference.onnx_export import ONNX_FILE, export_onnx

        p = predictor.preprocessing
        export_onnx(predictor.model, cfg.model.modality, p.image_size, p.max_length, out / ONNX_FILE)
    (out / "README.md").write_text(_card(run_dir, which, _val_metrics(run_dir, weights), card))
    return out


def push_to_hub(folder: str | Path, repo_id: str) -> str:
    """Upload an exported folder to a Hugging Face model repo (needs huggingface_hub and a login)."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise MsaDistError("--push-to-hub needs huggingface_hub: pip install 'msa-dist[hub]'") from None
    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except Exception as exc:  # network, auth and hub errors come in many types
        raise MsaDistError(
            f"--push-to-hub {repo_id} failed: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from None
    return f"https://huggingface.co/{repo_id}"


def run_export_command(args) -> int:
    """`msa-dist export`: write the folder, then push it when --push-to-hub is given."""
    from msa_dist.common.display import console

    out = export_run(args.run, args.out, args.checkpoint, onnx=args.onnx)
    console.print(f"exported the {args.checkpoint} checkpoint of {args.run} to {out}")
    if args.push_to_hub:
        console.print(f"uploaded to {push_to_hub(out, args.push_to_hub)}")
    return 0
