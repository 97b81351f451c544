"""A ZeRO checkpoint at another world size: DeepSpeed's universal checkpoint.

ZeRO-1/2/3 files hold each rank's slice of the flat optimizer state, so they load only on the
number of ranks that wrote them. DeepSpeed's `ds_to_universal` rewrites them as one folder per
parameter (fp32 weights, exp_avg, exp_avg_sq, step), which an engine with
`"checkpoint": {"load_universal": true}` slices afresh for its own world size.

Layout inside a step directory (pruned with it):
  deepspeed/             the checkpoint as saved
  universal/deepspeed/   the converted copy: written under a temporary name by rank 0, renamed
                         when complete, reused by any later resume from the same step if
                         universal/trust.json says this user made it (engine/checkpoint/trust.py)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
from pathlib import Path

from msa_dist.common.atomic import fresh_dir, remove, swap_dir
from msa_dist.common.errors import MsaDistError
from msa_dist.engine.checkpoint import trust as checkpoint_trust

UNIVERSAL = "universal"  # the converted copy's sub-directory inside a step directory


def universal_root(ckpt_dir: Path) -> Path:
    """Where the converted copy of `ckpt_dir`'s DeepSpeed checkpoint lives (load_dir for DeepSpeed)."""
    return Path(ckpt_dir) / UNIVERSAL


def convert_to_universal(ckpt_dir: Path, tag: str) -> Path:
    """ds_to_universal of ckpt_dir/tag into ckpt_dir/universal/tag, unless already there; returns
    ckpt_dir/universal. One process only (rank 0): the others wait at a barrier."""
    ckpt_dir = Path(ckpt_dir)
    final = universal_root(ckpt_dir)
    # A complete copy (only a finished conversion is renamed to this name) that this user made:
    # DeepSpeed unpickles it, so one that came with a downloaded run dir is converted afresh.
    if (final / tag / "zero" / "optimizer_state.pt").is_file() and checkpoint_trust.made_here(final, tag):
        return final
    tmp = ckpt_dir / f".tmp-{UNIVERSAL}"
    remove(final)  # a copy not made here (of a link: only the link)
    fresh_dir(tmp)  # not what a conversion killed half way left
    from deepspeed.checkpoint import ds_to_universal

    # One process, no pool: a forked worker of a rank that holds a process group can deadlock.
    # inject_missing_state: DeepSpeed's engine writes `universal_checkpoint_info` only for
    # Megatron-style models that set it; for a plain data-parallel model the defaults are right.
    args = argparse.Namespace(
        input_folder=str(ckpt_dir / tag),
        output_folder=str(tmp / tag),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):  # its progress bars
            ds_to_universal.main(args)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MsaDistError(
            f"DeepSpeed's universal checkpoint conversion of {ckpt_dir / tag} failed ({type(exc).__name__}: {first})"
        ) from exc
    (tmp / "conversion.log").write_text(log.getvalue())
    checkpoint_trust.sign(tmp, tag)
    swap_dir(tmp, final)
    return final


def repair_stage3_load(optimizer, universal_dir: Path) -> None:
    """Undo two slips of DeepSpeed 0.19.8's ZeRO-3 universal load (runtime/zero/stage3.py,
    load_hp_checkpoint_state_from_checkpoint_dir_stage3); ZeRO-1/2 load both right.

    - line 3687 copies the first saved group's hyperparameters into every group: each part's lr
      and the no-decay groups' weight_decay=0 would be lost. Each group gets its own back.
    - line 3681 gives every group's state the same `step` tensor, which AdamW increments in place
      once per group: after one step with 4 groups it had counted 4, so the bias correction went
      wrong from the first step after the resume. Each state gets its own copy.
    """
    import torch

    saved = _universal_optimizer_state(Path(universal_dir) / "zero" / "optimizer_state.pt")
    saved = saved["optimizer_state_dict"]["param_groups"]
    assert len(saved) == len(optimizer.param_groups), (len(saved), len(optimizer.param_groups))
    for group, saved_group in zip(optimizer.param_groups, saved):
        group.update({key: value for key, value in saved_group.items() if key != "params"})
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def _universal_optimizer_state(path: Path) -> dict:
    """The converted copy's optimizer_state.pt, read with weights_only: DeepSpeed pickles its
    ZeRO stage (an enum) and its loss scaler in it, which are allow-listed here and nothing else.
    (DeepSpeed's own stage-3 load unpickles this file without such a limit: docs/security.md.)"""
    import torch
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from msa_dist.engine.checkpoint.safe_load import load_tensors

    with torch.serialization.safe_globals([ZeroStageEnum, LossScaler, DynamicLossScaler]):
        return load_tensors(path)
