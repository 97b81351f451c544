"""A torchrun entry point for tests: `msa-dist train` with test-only faults and per-rank weights.

MSA_TEST_NAN_CALLS="3,4"  the training loss is NaN at these (1-based) calls on rank MSA_TEST_NAN_RANK
                          (every rank when unset): what a diverging step looks like to the loop.
MSA_TEST_HOST_READS=DIR    count every read of a tensor's value by the host (`.item()`, `bool()`,
                          `float()`, `int()`, `.tolist()`, what syncs a GPU) made inside the
                          training loop, by caller, into DIR/rank{R}.json
Every checkpoint also gets model-rank{R}.pt (this rank's parameters and buffers), so a test can
check that the ranks agree.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path

import torch

import msa_dist.engine.trainer as trainer
from msa_dist.cli import main


def nan_loss_builder(nan_calls: set[int], nan_rank: str | None = None):
    """A replacement for trainer.build_loss whose loss is NaN at the given calls."""
    real_build_loss = trainer.build_loss

    def build_loss(cfg, class_weights):
        loss_fn, calls = real_build_loss(cfg, class_weights), [0]

        def loss(logits, labels):
            calls[0] += 1
            out = loss_fn(logits, labels)
            if calls[0] in nan_calls and nan_rank in (None, os.environ.get("RANK", "0")):
                out = out * float("nan")  # stays in the graph, like a real overflow
            return out

        return loss

    return build_loss


def per_rank_weights(real_save_checkpoint):
    """Wrap checkpoint.save_checkpoint to also write each rank's parameters and buffers."""

    def save_checkpoint(backend, ckpt_root, step, client_state, keep_last, **options):
        step_dir = real_save_checkpoint(backend, ckpt_root, step, client_state, keep_last, **options)
        module = backend.module
        tensors = {
            n: t.detach().cpu().clone()
            for n, t in [*module.named_parameters(), *module.named_buffers()]
            if t.numel() > 0
        }  # ZeRO-3 leaves empty placeholders of the parameters it shards
        torch.save(tensors, step_dir / f"model-rank{backend.env.rank}.pt")
        return step_dir

    return save_checkpoint


def count_host_reads(out_dir: str) -> None:
    """Wrap the tensor methods that read a value back; count the calls made while TrainStep runs
    or the loop handles its result (from `train_step` to the next one), by calling file:line."""
    counts: collections.Counter = collections.Counter()
    in_loop = [False]

    def wrap(name):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, **kwargs):
            if in_loop[0]:
                caller = sys._getframe(1)
                counts[f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}"] += 1
            return real(self, *args, **kwargs)

        setattr(torch.Tensor, name, counted)

    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        wrap(name)

    import msa_dist.engine.step as step

    real_call = step.TrainStep.__call__

    def call(self, *args, **kwargs):
        in_loop[0] = True
        counts["micro_steps"] += 1
        return real_call(self, *args, **kwargs)

    step.TrainStep.__call__ = call
    real_validate = trainer._validate

    def validate(*args, **kwargs):  # epoch end: validation reads its results, as it may
        in_loop[0] = False
        counts["epochs"] += 1
        return real_validate(*args, **kwargs)

    trainer._validate = validate

    def dump():
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(counts))

    import atexit

    atexit.register(dump)


if __name__ == "__main__":
    if os.environ.get("MSA_TEST_HOST_READS"):
        count_host_reads(os.environ["MSA_TEST_HOST_READS"])
    calls = {int(x) for x in os.environ.get("MSA_TEST_NAN_CALLS", "").split(",") if x}
    trainer.build_loss = nan_loss_builder(calls, os.environ.get("MSA_TEST_NAN_RANK"))
    trainer.ckpt.save_checkpoint = per_rank_weights(trainer.ckpt.save_checkpoint)
    sys.exit(main(sys.argv[1:]))
