"""Moving a loader batch to the device: non-blocking copies, images decoded (optionally) and normalised there."""

from __future__ import annotations

import torch
import torchvision.io as tvio

from msa_dist.data.loading.batching import normalize_images
from msa_dist.data.loading.images import resize_crop


def model_inputs(batch: dict, device: torch.device, modality: str) -> dict:
    """Keyword arguments for the model's forward, on `device`; only the modalities it uses."""
    non_blocking = device.type == "cuda"
    inputs = {}
    if modality in ("both", "text"):
        inputs["input_ids"] = batch["input_ids"].to(device, non_blocking=non_blocking)
        inputs["attention_mask"] = batch["attention_mask"].to(device, non_blocking=non_blocking)
    if modality in ("both", "image"):
        if "jpeg_bytes" in batch:
            offsets = batch["jpeg_offsets"].tolist()
            jpegs = [batch["jpeg_bytes"][a:b] for a, b in zip(offsets[:-1], offsets[1:])]
            images = decode_on_device(jpegs, batch["crop_boxes"], batch["image_size"], device)
        else:
            # the loader stacks images in channels_last memory; the model gets a contiguous batch
            # (an image encoder with channels_last converts it back itself)
            images = batch["images"].to(device, non_blocking=non_blocking).contiguous()
        inputs["images"] = normalize_images(images)
    return inputs


def decode_on_device(
    jpegs: list[torch.Tensor], crop_boxes: torch.Tensor, image_size: int, device: torch.device
) -> torch.Tensor:
    """JPEG bytes + the loader's crop boxes -> uint8 [B, 3, S, S] on `device` (nvJPEG on a GPU).

    Each box is (top, left, height, width, flip) in stored pixels, chosen by the loader exactly as
    for CPU decoding, so both paths augment a sample the same way.
    """
    decoded = tvio.decode_jpeg(jpegs, mode=tvio.ImageReadMode.RGB, device=device)
    out = torch.empty(len(decoded), 3, image_size, image_size, dtype=torch.uint8, device=device)
    for i, (image, (top, left, height, width, flip)) in enumerate(zip(decoded, crop_boxes.tolist())):
        crop = resize_crop(image[None, :, top : top + height, left : left + width], image_size)
        out[i] = crop[0].flip(-1) if flip else crop[0]
    return out
