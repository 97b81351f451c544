"""A trained model with its preprocessing: image file or bytes + text -> class probabilities.

`load_model(DIR)` reads an exported folder (`msa-dist export`) or a run directory:

    import msa_dist
    model = msa_dist.load_model("exported")
    print(model.predict("photo.jpg", "What a day!"))   # {'positive': 0.91, 'neutral': ..., 'negative': ...}

Preprocessing is the eval path of the shard loader: images are first stored as `shards build`
stored them (re-encoded to the shorter side and JPEG quality the run's shards used), then decoded,
resized and center-cropped by the same `ImageCropper`; texts are tokenized with the run's tokenizer
and `data.max_length`. So a pair gives the same probabilities here as from shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from msa_dist.common.errors import MsaDistError
from msa_dist.common.jsonfile import file_error, read_run_bytes
from msa_dist.common.labels import LABELS
from msa_dist.common.limits import MAX_IMAGE_BYTES, read_input
from msa_dist.config.data_section import DataConfig
from msa_dist.config.schema import Config, from_dict
from msa_dist.data.loading.images import ImageCropper, stored_size
from msa_dist.data.raw import reencode_image
from msa_dist.engine.batch import model_inputs

ImageInput = str | Path | bytes


@dataclass
class Preprocessing:
    """How raw pairs become model inputs: the data settings the model was trained with."""

    image_size: int = 224  # crop side fed to the image encoder
    resize_size: int = 224  # shorter side before the center crop
    max_length: int = 128  # text tokens at most
    pad_to_max_length: bool = False
    image_draft: bool = True  # reduced-scale JPEG decoding, as the loader does
    stored_image_size: int = 0  # `shards build --image-size` of the training shards (0: original bytes)
    stored_jpeg_quality: int | None = None  # `shards build --jpeg-quality` of the training shards

    @classmethod
    def from_run(cls, data: DataConfig, shard_options: dict) -> Preprocessing:
        """The run's data config plus how its shards stored images (the manifest's build options)."""
        return cls(
            data.image_size,
            data.resize_size,
            data.max_length,
            data.pad_to_max_length,
            data.image_draft,
            int(shard_options.get("image_size") or 0),
            shard_options.get("jpeg_quality"),
        )


@dataclass
class Predictor:
    """A model, its tokenizer and preprocessing; `predict` / `predict_proba` take raw images and texts."""

    model: torch.nn.Module
    tokenizer: object
    modality: str
    preprocessing: Preprocessing
    labels: list[str] = field(default_factory=lambda: list(LABELS))
    device: torch.device = torch.device("cpu")
    offsets: torch.Tensor | None = None  # per-class log-prob offsets (`--adjust`), None = none

    def __post_init__(self):
        p = self.preprocessing
        self._cropper = ImageCropper(p.image_size, p.resize_size, train=False, draft=p.image_draft)

    def stored_image(self, data: bytes) -> bytes:
        """The image bytes as `shards build` would have stored them."""
        p = self.preprocessing
        return (
            reencode_image(data, p.stored_image_size, p.stored_jpeg_quality or 85) if p.stored_image_size > 0 else data
        )

    def preprocess(self, images: Sequence[bytes], texts: Sequence[str]) -> dict:
        """A batch (uint8 images, token ids, mask) in the loader's layout, from image bytes and texts."""
        crops = []
        for data in images:
            data = self.stored_image(data)
            width, height = stored_size(data)
            crops.append(self._cropper(data, self._cropper.box(None, width, height), width, height))
        p = self.preprocessing
        enc = self.tokenizer(
            [t.strip() for t in texts],
            padding="max_length" if p.pad_to_max_length else "longest",
            truncation=True,
            max_length=p.max_length,
            return_tensors="pt",
        )
        return {"images": torch.stack(crops), "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.no_grad()
    def logits(self, batch: dict) -> torch.Tensor:
        """Raw class scores of a `preprocess` batch, fp32 on the CPU."""
        self.model.eval()
        return self.model(**model_inputs(batch, self.device, self.modality)).float().cpu()

    def predict_proba(self, images: Sequence[ImageInput], texts: Sequence[str]) -> torch.Tensor:
        """[N, classes] probabilities (with the tuned offsets applied when the predictor has them)."""
        probs = torch.softmax(self.logits(self.preprocess([_read_image(i) for i in images], texts)), dim=-1)
        if self.offsets is not None:
            probs = torch.softmax(probs.clamp(min=1e-12).log() + self.offsets, dim=-1)
        return probs

    def predict(self, image: ImageInput, text: str) -> dict:
        """{label: probability} for one image (a path or bytes) and its text."""
        return dict(zip(self.labels, self.predict_proba([image], [text])[0].tolist()))


def _read_image(image: ImageInput) -> bytes:
    if isinstance(image, bytes):
        return image
    try:
        return read_input(image, MAX_IMAGE_BYTES)  # a regular file of bounded size (common/limits.py)
    except OSError as exc:
        raise MsaDistError(f"cannot read image {image}: {exc.strerror or exc}") from None


def load_model(path: str | Path, device: str = "cpu", checkpoint: str = "best", adjust: bool = False) -> Predictor:
    """A `Predictor` from an exported folder (model.safetensors) or a run directory (its `checkpoint`).

    `adjust` applies the per-class logit offsets tuned on val (`msa-dist evaluate --adjust`) when there are some.
    """
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return _load_exported(path, torch.device(device), adjust)
    from msa_dist.engine.checkpoint.files import model_weights_path
    from msa_dist.engine.run.artifacts import load_trained_model

    dev = torch.device(device)
    cfg, tokenizer, model = load_trained_model(path, model_weights_path(path, checkpoint), dev)
    from msa_dist.inference.calibration import load_offsets

    return Predictor(
        model,
        tokenizer,
        cfg.model.modality,
        Preprocessing.from_run(cfg.data, run_shard_options(path, cfg)),
        device=dev,
        offsets=load_offsets(path) if adjust else None,
    )


def run_shard_options(run_dir: Path, cfg: Config) -> dict:
    """How the run's training shards stored images: from run_info.json, else the shards' manifest."""
    from msa_dist.engine.run.provenance import read_run_info

    info = read_run_info(run_dir) or {}
    if info.get("data", {}).get("shard_options"):
        return info["data"]["shard_options"]
    from msa_dist.data.format.manifest import load_manifest

    try:
        return load_manifest(cfg.data.shards).get("options", {})
    except MsaDistError:
        raise MsaDistError(
            f"{run_dir} has no run_info.json and its shards {cfg.data.shards} are gone: "
            "cannot tell how its images were stored"
        ) from None


def _load_exported(path: Path, device: torch.device, adjust: bool) -> Predictor:
    from safetensors import SafetensorError
    from safetensors.torch import load_model as load_safetensors

    from msa_dist.engine.run.artifacts import check_model_size
    from msa_dist.models import build_model
    from msa_dist.models.tokenizer import load_pretrained_tokenizer

    card, cfg, preprocessing = read_card(path)
    tokenizer = load_pretrained_tokenizer(str(path / "tokenizer"))
    arch_dir = path / "text_config"

    def build():
        arch = str(arch_dir) if arch_dir.is_dir() else None
        return build_model(cfg.model, vocab_size=len(tokenizer), pretrained=False, arch_dir=arch)

    check_model_size(build, path / "model.safetensors")
    model = build()
    try:
        load_safetensors(model, str(path / "model.safetensors"), device="cpu")
    except (SafetensorError, RuntimeError, OSError, ValueError) as exc:  # truncated, foreign, or another model's
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else repr(exc)
        raise MsaDistError(
            f"{path / 'model.safetensors'} does not load into the model its config.yaml describes: {reason}"
        ) from None
    offsets = torch.tensor(card["logit_offsets"]) if adjust and card.get("logit_offsets") else None
    return Predictor(
        model.to(device).eval(),
        tokenizer,
        cfg.model.modality,
        preprocessing,
        card.get("labels", list(LABELS)),
        device,
        offsets,
    )


def read_card(path: Path) -> tuple[dict, Config, Preprocessing]:
    """An exported folder's config.yaml: (the card, its model config, its preprocessing), or one line."""
    where = path / "config.yaml"
    try:
        card = yaml.safe_load(read_run_bytes(where).decode("utf-8"))  # a regular file, not a link
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        reason = file_error(exc)
        raise MsaDistError(
            f"{where} is not readable YAML ({reason}): is {path} a folder written by `msa-dist export`?"
        ) from None
    if (
        not isinstance(card, dict)
        or not isinstance(card.get("model"), dict)
        or not isinstance(card.get("preprocessing"), dict)
    ):
        raise MsaDistError(f"{where} lacks the model and preprocessing sections of `msa-dist export`")
    try:
        cfg = from_dict({"model": card["model"]})
        preprocessing = Preprocessing(**card["preprocessing"])
    except TypeError as exc:  # a key Preprocessing does not have
        raise MsaDistError(f"{where}: preprocessing: {exc}") from None
    except MsaDistError as exc:
        raise MsaDistError(f"{where}: {exc}") from None
    sizes = (preprocessing.image_size, preprocessing.resize_size, preprocessing.max_length)
    if (
        not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 16 for v in sizes)
        or not isinstance(preprocessing.stored_image_size, int)
        or preprocessing.stored_image_size < 0
    ):
        raise MsaDistError(f"{where}: preprocessing sizes must be positive integers, got {vars(preprocessing)}")
    labels, offsets = card.get("labels", list(LABELS)), card.get("logit_offsets")
    if not (isinstance(labels, list) and len(labels) == len(LABELS) and all(isinstance(x, str) for x in labels)):
        raise MsaDistError(f"{where}: labels must be a list of {len(LABELS)} class names, got {str(labels)[:80]}")
    if offsets is not None and not (
        isinstance(offsets, list) and len(offsets) == len(LABELS) and all(isinstance(x, (int, float)) for x in offsets)
    ):
        raise MsaDistError(f"{where}: logit_offsets must be {len(LABELS)} numbers, got {str(offsets)[:80]}")
    return card, cfg, preprocessing
