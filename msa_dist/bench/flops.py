"""The FLOP count behind MFU, and the peak it is divided by.

Training FLOPs per sample (forward + backward = 3x forward; 2 FLOPs per multiply-add):
- text encoder: 6 * N * T, N = its dense (non-embedding) parameters, T = the sample's real
  (non-padding) tokens. Padding is computed but not counted: it is waste, not model work. The
  attention-score term (6 * layers * T^2 * hidden) is left out: under 1% at T <= 128 for bert-base.
- image encoder: 3 * its forward FLOPs at the training resolution, counted once by
  torch.utils.flop_counter on one image (ResNet-50 at 224 px: 8.2 GFLOPs = 4.1 G multiply-adds).
- fusion head: 6 * its parameters.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch.utils.flop_counter import FlopCounterMode

from msa_dist.bench.build import dense_params

log = logging.getLogger(__name__)

# Dense bf16 tensor-core peaks in TFLOP/s (datasheet figures, without sparsity).
BF16_PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "GH200": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10G": 70.0,
    "RTX 4090": 165.2,
}


def image_forward_flops(image_encoder: torch.nn.Module | None, image_size: int) -> float:
    """Forward FLOPs of the image encoder on one image (counted on a meta-device copy: no compute)."""
    if image_encoder is None:
        return 0.0
    try:
        meta = copy.deepcopy(image_encoder).to("meta").eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            meta(torch.empty(1, 3, image_size, image_size, device="meta"))
    except Exception as exc:
        log.warning("bench: image FLOPs not counted (%s); MFU is not reported", str(exc).splitlines()[0][:120])
        return float("nan")
    return float(counter.get_total_flops())


class FlopModel:
    """Training FLOPs of a batch, from the model's parts (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, image_size: int):
        self.text_params = dense_params(getattr(model, "text_encoder", None))
        self.head_params = dense_params(getattr(model, "head", None))
        self.image_forward = image_forward_flops(getattr(model, "image_encoder", None), image_size)

    def batch_flops(self, samples: int, real_tokens: int) -> float:
        text = 6.0 * self.text_params * real_tokens if self.text_params else 0.0
        return text + samples * (3.0 * self.image_forward + 6.0 * self.head_params)

    def describe(self) -> dict:
        return {
            "text_dense_params": self.text_params,
            "head_params": self.head_params,
            "image_forward_flops_per_sample": self.image_forward,
            "rule": "6*N_text*real_tokens + 3*image_forward + 6*N_head per sample",
        }


def gpu_peak_tflops(device: torch.device) -> tuple[float | None, str]:
    """(dense bf16 peak, device name) of a CUDA device; peak None when the card is not in the table."""
    if device.type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name(device)
    # longest key first: "H100 NVL" must not match the plain "H100 80GB HBM3" entry
    for key in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return BF16_PEAK_TFLOPS[key], name
    return None, name
