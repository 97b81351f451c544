"""The `msa-dist predict` command's options; predict_raw.py runs it."""

from __future__ import annotations


def add_predict_parser(sub) -> None:
    """Register `msa-dist predict` (imports nothing heavy)."""
    pr = sub.add_parser("predict", help="predict a shard split, or raw pairs (--inputs / --image --text / --data)")
    pr.set_defaults(handler="msa_dist.inference.predict_raw:run_predict_command")
    pr.add_argument("--run", required=True, help="a run dir, or a folder written by `msa-dist export`")
    pr.add_argument("--shards", default=None, help="shard folder of --split (default: the run's data.shards)")
    pr.add_argument("--out", required=True, help="the CSV to write")
    pr.add_argument("--split", default="test", help="the shard split to predict (default %(default)s)")
    pr.add_argument(
        "--inputs",
        default=None,
        metavar="CSV",
        help="raw pairs instead of shards: a CSV with columns id,image,text (image paths relative to it)",
    )
    pr.add_argument("--image", default=None, help="one raw pair instead of shards: its image file (with --text)")
    pr.add_argument("--text", default=None, help="the text of the --image pair")
    pr.add_argument(
        "--data",
        default=None,
        metavar="DATA_ROOT",
        help="raw pairs instead of shards: the unlabelled pairs of a course-layout folder",
    )
    pr.add_argument(
        "--format",
        default=None,
        choices=["probs", "course"],
        help="probs: id,tag and one prob_<label> column per class; course: guid,tag "
        "(default: course for a shard split, probs for raw pairs)",
    )
    pr.add_argument("--batch-size", type=int, default=64, help="pairs per forward pass (default %(default)s)")
    pr.add_argument("--checkpoint", default="best", help="best | latest | step-NNNNNNN (run dirs only)")
    pr.add_argument(
        "--onnx",
        action="store_true",
        help="run --run's model.onnx (a folder written by `export --onnx`) with ONNX Runtime (needs msa-dist[onnx])",
    )
    pr.add_argument(
        "--adjust",
        action="store_true",
        help="add per-class logit offsets tuned on the val split for macro-F1 (RUN/logit_offsets.json)",
    )
