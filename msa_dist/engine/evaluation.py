"""Evaluation and prediction over a split: one loop, the split dealt across ranks, metrics reduced to one result."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import torch

from msa_dist.common.errors import MsaDistError
from msa_dist.common.labels import NUM_CLASSES
from msa_dist.common.urls import redact_url
from msa_dist.config.schema import Config
from msa_dist.data.loading.loader import EvalLoader, StreamSpec, build_loader
from msa_dist.engine.batch import model_inputs
from msa_dist.engine.metrics import confusion_matrix, metrics_from_confusion


@dataclass
class SplitOutputs:
    """A split's samples through the model, as far as this rank read them."""

    keys: list[str]
    logits: torch.Tensor  # [N, C] float32, on the CPU
    labels: torch.Tensor  # [N]; -1 where unlabelled


def _forward(model, inputs: dict, hflip: bool) -> torch.Tensor:
    """The model's logits; with `hflip` (data.eval_hflip) the mean of those on the image and on its mirror."""
    logits = model(**inputs)
    if hflip and "images" in inputs:
        logits = (logits + model(**{**inputs, "images": inputs["images"].flip(-1)})) / 2
    return logits


@torch.no_grad()
def split_outputs(
    cfg: Config,
    model,
    tokenizer,
    env,
    split: str,
    batch_size: int,
    shard_dir: str | None = None,
    autocast=None,
    loader: EvalLoader | None = None,
    complete: bool = False,
) -> SplitOutputs:
    """The one evaluation loop (validation, evaluate, predict, calibration): this rank's share of a split.

    Samples that could not be read or decoded are skipped with a warning each (loader.py); with
    `complete` (evaluate, predict, calibration) any skip ends in one line naming how many: a metric
    over part of a split must not pass for the split's.

    Every rank runs the same number of forward passes (padding with repeats of its last batch)
    because a ZeRO-3 forward is itself a collective. `loader`: this split's EvalLoader, whose
    workers were forked before training began (a training run's validation); else a loader is
    built (its workers forked now) for this one pass.
    """
    shard_dir = shard_dir or cfg.data.shards
    spec = StreamSpec(
        split=split, train=False, batch_size=batch_size, rank=env.rank, world_size=env.world_size, seed=cfg.train.seed
    )
    if loader is None:
        loader = build_loader(cfg.data, shard_dir, spec, tokenizer)
    else:
        assert loader.spec == spec, f"an EvalLoader for {loader.spec}, not {spec}"
    if complete:
        _require_complete(loader, split, shard_dir)
    mine, most = loader.plan.batches, loader.plan.most_batches
    keys, logits, labels, last = [], [], [], None
    if mine == 0 and most > 0:
        # No share of the split for this rank, yet it must join every forward (DDP's buffer
        # broadcast, ZeRO-3's gathers): it repeats the split's first batch and discards the outputs.
        first = StreamSpec(split=split, train=False, batch_size=batch_size, seed=cfg.train.seed)
        last = next(iter(build_loader(dataclasses.replace(cfg.data, workers=0), shard_dir, first, tokenizer)))
    was_training = model.training
    model.eval()
    batches = itertools.chain(loader, itertools.repeat(None))
    for _, batch in zip(range(most), batches):
        padding = batch is None
        batch = last if padding else batch
        if batch is None:  # an empty split: nothing to pad with
            continue
        with autocast or torch.autocast(env.device.type, enabled=False):
            out = _forward(model, model_inputs(batch, env.device, cfg.model.modality), cfg.data.eval_hflip)
        if padding:
            continue
        last = batch
        keys += batch["keys"]
        logits.append(out.float().cpu())
        labels.append(batch["labels"])
    model.train(was_training)
    if complete:
        _require_complete(loader, split, shard_dir, len(keys))
    if not keys:
        return SplitOutputs([], torch.zeros(0, NUM_CLASSES), torch.zeros(0, dtype=torch.long))
    return SplitOutputs(keys, torch.cat(logits), torch.cat(labels))


def _require_complete(loader, split: str, shard_dir: str, read: int | None = None) -> None:
    """MsaDistError when the manifest's sample count of `split` is not its shards', or (given the
    samples `read`) when fewer than this rank's share were read."""
    where = redact_url(str(shard_dir))
    if loader.plan.num_samples != loader.listed:
        raise MsaDistError(
            f"the manifest of {where} states {loader.listed} samples in split '{split}', its shards "
            f"{loader.plan.num_samples}: run `msa-dist shards verify {where}`"
        )
    if read is not None and read != loader.plan.samples:
        raise MsaDistError(
            f"{loader.plan.samples - read} of {loader.plan.samples} samples of split '{split}' in {where} could "
            "not be read or decoded (the warnings above name them): no result for part of a split; retry, "
            "or check the shards with `msa-dist shards verify`"
        )


def run_split(
    cfg: Config,
    model,
    tokenizer,
    env,
    backend,
    split: str,
    batch_size: int,
    shard_dir: str | None = None,
    autocast=None,
    loader: EvalLoader | None = None,
    complete: bool = False,
) -> tuple[dict | None, list]:
    """Metrics (of the labelled samples, `loss` their mean cross-entropy; reduced across ranks) and this rank's
    (key, probs) predictions;
    `complete`: MsaDistError unless every sample of this rank's share was read (split_outputs)."""
    out = split_outputs(cfg, model, tokenizer, env, split, batch_size, shard_dir, autocast, loader, complete)
    labelled = out.labels >= 0
    cm = confusion_matrix(out.labels[labelled], out.logits[labelled].argmax(-1))
    cm = backend.all_reduce_sum(cm.to(env.device)).cpu() if backend else cm
    metrics = metrics_from_confusion(cm) if cm.sum() > 0 else None
    # the mean cross-entropy of the labelled samples (unweighted, unsmoothed): summed over ranks first
    nll = torch.nn.functional.cross_entropy(out.logits[labelled], out.labels[labelled], reduction="sum")
    nll = torch.stack([nll.double(), torch.tensor(float(labelled.sum()), dtype=torch.float64)])
    nll = backend.all_reduce_sum(nll.to(env.device)).cpu() if backend else nll
    if metrics is not None:
        metrics["loss"] = float(nll[0] / nll[1])
    return metrics, list(zip(out.keys, torch.softmax(out.logits, dim=-1).tolist()))
