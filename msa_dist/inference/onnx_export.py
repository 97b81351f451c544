"""`msa-dist export --onnx`: the exported model as OUT/model.onnx, for ONNX Runtime (`predict --onnx`).

The graph takes the inputs of the model's modality — `input_ids` and `attention_mask` (int64
[batch, text_length]) and/or `images` (float32 [batch, 3, S, S], ImageNet-normalised, S the
preprocessing's crop) — and gives `logits` [batch, classes]. Batch and text length are dynamic axes;
the tokenizer, preprocessing and labels stay in the folder's other files, as for the PyTorch model.
Written with torch.onnx's exporter (torch.export, then onnxscript), in one file (weights inside).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from msa_dist.common.errors import MsaDistError

ONNX_FILE = "model.onnx"
TEXT_INPUTS, IMAGE_INPUTS = ("input_ids", "attention_mask"), ("images",)


def onnx_input_names(modality: str) -> tuple[str, ...]:
    """The graph's inputs for a model of `modality`, in order."""
    return (TEXT_INPUTS if modality in ("both", "text") else ()) + (IMAGE_INPUTS if modality != "text" else ())


class _Inputs(nn.Module):
    """The classifier with positional inputs of its modality only (an ONNX graph has no optional inputs)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors)))


def _examples(names: tuple[str, ...], image_size: int, max_length: int) -> tuple[torch.Tensor, ...]:
    text_length = min(8, max_length)
    ids = torch.full((2, text_length), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, text_length // 2 :] = 0  # a padded row, so the graph does not assume a full mask
    tensors = {"input_ids": ids, "attention_mask": mask, "images": torch.zeros(2, 3, image_size, image_size)}
    return tuple(tensors[name] for name in names)


def export_onnx(model: nn.Module, modality: str, image_size: int, max_length: int, path: str | Path) -> Path:
    """Write `model` (eval mode, CPU, fp32) as an ONNX graph with dynamic batch and text-length axes."""
    try:
        import onnxscript  # noqa: F401 (torch.onnx's exporter needs it; say so in one line, not its traceback)
    except ImportError:
        raise MsaDistError("--onnx needs onnx and onnxscript: pip install 'msa-dist[onnx]'") from None
    names = onnx_input_names(modality)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    text_length = torch.export.Dim("text_length", min=1, max=max(2, max_length))
    axes = {"input_ids": {0: batch, 1: text_length}, "attention_mask": {0: batch, 1: text_length}}
    axes["images"] = {0: batch}
    wrapped = _Inputs(model.float().cpu().eval(), names).eval()
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on axis names and deprecations
        try:
            program = torch.onnx.export(
                wrapped,
                _examples(names, image_size, max_length),
                dynamo=True,
                input_names=list(names),
                output_names=["logits"],
                dynamic_shapes=({"tensors": tuple(axes[name] for name in names)}),
                optimize=True,
                verbose=False,
            )
        except Exception as exc:  # torch.export and onnxscript raise many types for an unsupported layer
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise MsaDistError(f"could not export the model to ONNX: {first}") from None
    program.save(str(path), external_data=False)
    return path
