"""A torchrun entry point for tests: `msa-dist train` with test-only faults and per-rank weights.

MSA_TEST_NAN_CALLS="3,4"  the training loss is NaN at these (1-based) calls on rank MSA_TEST_NAN_RANK
                          (every rank when unset): what a diverging step looks like to the loop.
Every checkpoint also gets model-rank{R}.pt (this rank's parameters and buffers), so a test can
check that the ranks agree.
"""
from __future__ import annotations

import os
import sys

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
    def save_checkpoint(backend, ckpt_root, step, client_state, keep_last):
        step_dir = real_save_checkpoint(backend, ckpt_root, step, client_state, keep_last)
        module = backend.module
        tensors = {n: t.detach().cpu().clone() for n, t in [*module.named_parameters(), *module.named_buffers()]
                   if t.numel() > 0}  # ZeRO-3 leaves empty placeholders of the parameters it shards
        torch.save(tensors, step_dir / f"model-rank{backend.env.rank}.pt")
        return step_dir
    return save_checkpoint


if __name__ == "__main__":
    calls = {int(x) for x in os.environ.get("MSA_TEST_NAN_CALLS", "").split(",") if x}
    trainer.build_loss = nan_loss_builder(calls, os.environ.get("MSA_TEST_NAN_RANK"))
    trainer.ckpt.save_checkpoint = per_rank_weights(trainer.ckpt.save_checkpoint)
    sys.exit(main(sys.argv[1:]))
