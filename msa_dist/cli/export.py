"""The `msa-dist export` command's options; export.py runs it."""

from __future__ import annotations


def add_export_parser(sub) -> None:
    """Register `msa-dist export` (imports nothing heavy)."""
    ex = sub.add_parser(
        "export", help="write a run's model as a portable folder (safetensors, config, tokenizer, card)"
    )
    ex.set_defaults(handler="msa_dist.inference.export:run_export_command")
    ex.add_argument("--run", required=True, help="the --run-dir of a `msa-dist train`")
    ex.add_argument("--out", required=True, help="the folder to write (new or empty)")
    ex.add_argument("--checkpoint", default="best", help="best | latest | step-NNNNNNN (default %(default)s)")
    ex.add_argument(
        "--onnx",
        action="store_true",
        help="also write model.onnx (dynamic batch and text length) for `predict --onnx` (needs msa-dist[onnx])",
    )
    ex.add_argument(
        "--push-to-hub",
        default=None,
        metavar="REPO",
        help="then upload the folder to this Hugging Face model repo (needs huggingface_hub and a login)",
    )
