"""Moving a loader batch to the device: non-blocking copies, images normalised there."""
from __future__ import annotations

import torch

from msa_dist.data.loader import normalize_images


def model_inputs(batch: dict, device: torch.device, modality: str) -> dict:
    """Keyword arguments for the model's forward, on `device`; only the modalities it uses."""
    non_blocking = device.type == "cuda"
    inputs = {}
    if modality in ("both", "text"):
        inputs["input_ids"] = batch["input_ids"].to(device, non_blocking=non_blocking)
        inputs["attention_mask"] = batch["attention_mask"].to(device, non_blocking=non_blocking)
    if modality in ("both", "image"):
        inputs["images"] = normalize_images(batch["images"].to(device, non_blocking=non_blocking))
    return inputs
