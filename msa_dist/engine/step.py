"""One training step, shared by `msa-dist train` and `msa-dist bench train`, with no host sync.

`TrainStep(batch, is_boundary)` runs forward, loss and backward of one micro batch and, at an
accumulation boundary, the optimizer step. Nothing is read back to the host on the way:

- each micro step all-reduces a small vote on the device: [loss not finite, SIGTERM seen, loss,
  corrupt samples] (a no-op for one process). A micro batch whose loss is not finite on any
  rank contributes zero gradient: with accumulation the backend masks it on the device
  (`GradMask`); without, the whole step is skipped (below). Its forward pass has still updated
  BatchNorm's running statistics (train mode), as any forward does.
- a window with no finite micro batch changes no weight (`skip_update`: on the device for a
  fused AdamW);
- the window's numbers stay on the device in a `StepResult`, copied into pinned host memory
  without waiting. `StepLedger` reads them one optimizer step later, when the GPU has long
  filled them, or at once at log, save and epoch-end points, where every rank reads together.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch

from msa_dist.common.errors import MsaDistError
from msa_dist.engine.batch import model_inputs
from msa_dist.engine.teacher import hard_labels

# The numbers one optimizer step leaves on the device, in this order.
FIELDS = ("micro", "nonfinite", "trailing_nonfinite", "loss_sum", "finite", "stop", "corrupt", "grad_norm")
_F = {name: i for i, name in enumerate(FIELDS)}


class StepResult:
    """One optimizer step's numbers: on their way to pinned host memory, read with `read()`."""

    def __init__(self, stats: torch.Tensor, samples: int):
        self.samples = samples  # this rank's samples in the step (host count)
        if stats.is_cuda:
            self._host = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)
            self._host.copy_(stats, non_blocking=True)
            self._ready: torch.cuda.Event | None = torch.cuda.Event()
            self._ready.record()
        else:
            self._host, self._ready = stats.clone(), None

    def read(self) -> dict:
        """The numbers (waits only for this step's copy, not for the work queued after it)."""
        if self._ready is not None:
            self._ready.synchronize()
        return dict(zip(FIELDS, self._host.tolist()))


class TrainStep:
    """Forward, loss, backward and (at a boundary) the optimizer step; returns a `StepResult` at a boundary."""

    def __init__(
        self, backend, loss_fn: Callable, modality: str, mixup_alpha: float = 0.0, targets: Callable = hard_labels
    ):
        # targets(batch, device): what loss_fn compares the logits with (labels; or labels and a teacher's rows)
        self.backend, self.loss_fn, self.modality, self.targets = backend, loss_fn, modality, targets
        # mixup: lambda ~ Beta(alpha, alpha), drawn from torch's CPU generator (saved with every checkpoint)
        self.mixup = torch.distributions.Beta(mixup_alpha, mixup_alpha) if mixup_alpha > 0 else None
        device = backend.env.device
        self.vote = torch.zeros(4, device=device)  # [nonfinite, stop, loss, corrupt], summed over ranks
        self.window = torch.zeros(len(FIELDS), dtype=torch.float64, device=device)
        self.samples = 0

    def __call__(self, batch: dict, is_boundary: bool, stop: bool = False, corrupt: int = 0) -> StepResult | None:
        backend, device = self.backend, self.backend.env.device
        with backend.accumulate(is_boundary):
            loss = self._loss(batch, device)
            drop = self._vote(loss, stop, corrupt)
            backend.backward(loss, drop=drop)
        self.samples += len(batch["keys"])
        if not is_boundary:
            backend.step(False)
            return None
        w = self.window
        grad_norm = backend.step(True, skip=w[_F["finite"]] == 0)
        w[_F["grad_norm"]] = float("nan") if grad_norm is None else grad_norm.detach().to(w.device, w.dtype)
        result = StepResult(w, self.samples)
        w.zero_()
        self.samples = 0
        return result

    def _loss(self, batch: dict, device: torch.device) -> torch.Tensor:
        """The micro batch's loss; with mixup, of the model's output for mixed pairs (both labels weighed)."""
        inputs = model_inputs(batch, device, self.modality)
        labels = self.targets(batch, device)
        if self.mixup is not None:
            lam = float(self.mixup.sample())  # a CPU draw: no device sync
            perm = torch.randperm(len(labels), device=device)
            inputs["mix"] = (perm, lam)
        with self.backend.autocast():
            logits = self.backend.model(**inputs).float()
        loss = self.loss_fn(logits, labels)
        return loss if self.mixup is None else lam * loss + (1.0 - lam) * self.loss_fn(logits, labels[perm])

    def _vote(self, loss: torch.Tensor, stop: bool, corrupt: int) -> torch.Tensor:
        """All ranks agree, on the device, whether this micro batch is dropped; the window counts it."""
        v, w, world = self.vote, self.window, self.backend.env.world_size
        detached = loss.detach().float()
        finite = torch.isfinite(detached)
        v[0] = ~finite
        v[1] = float(stop)  # a fill with a host scalar: no copy, no sync
        v[2] = torch.where(finite, detached, 0.0)
        v[3] = float(corrupt)
        self.backend.all_reduce_sum(v)
        drop = v[0] > 0
        w[_F["micro"]] += 1
        w[_F["nonfinite"]] += drop
        w[_F["trailing_nonfinite"]] = torch.where(drop, w[_F["trailing_nonfinite"]] + 1, 0.0)
        w[_F["loss_sum"]] += torch.where(drop, 0.0, v[2].double() / world)
        w[_F["finite"]] += ~drop
        w[_F["stop"]] = torch.maximum(w[_F["stop"]], (v[1] > 0).double())
        w[_F["corrupt"]] = v[3]
        return drop


class StepLedger:
    """The host's running account of the steps, folded in one optimizer step late.

    `add(result)` folds in the previous step's numbers (read without stalling the GPU);
    `settle()` folds in everything now. Every rank folds the same steps at the same points, so
    they agree on the stop flag and on the step where too many non-finite losses end the run.
    """

    def __init__(self, state, max_nonfinite: int):
        self.state, self.max_nonfinite = state, max_nonfinite
        self.pending: deque = deque()
        self.stop = False
        self.last: dict = {}

    def start_epoch(self, window: list | None) -> None:
        """A new loss window, or the saved one when resuming mid-epoch."""
        self.state.loss_window = list(window) if window else [0.0, 0]

    def add(self, result: StepResult, settle: bool = False) -> None:
        self.pending.append(result)
        while len(self.pending) > (0 if settle else 1):
            self._fold(self.pending.popleft().read())

    def settle(self) -> None:
        while self.pending:
            self._fold(self.pending.popleft().read())

    def _fold(self, v: dict) -> None:
        state = self.state
        micro, bad = int(v["micro"]), int(v["nonfinite"])
        state.nonfinite_total += bad
        state.nonfinite_streak = state.nonfinite_streak + bad if bad == micro else int(v["trailing_nonfinite"])
        if state.nonfinite_streak >= self.max_nonfinite:
            raise MsaDistError(
                f"{state.nonfinite_streak} non-finite losses in a row at step {state.step}: "
                "lower optim.lr, use backend.precision=bf16 or fp32, or check the data"
            )
        state.loss_window = [state.loss_window[0] + v["loss_sum"], state.loss_window[1] + int(v["finite"])]
        self.stop = self.stop or v["stop"] > 0
        self.last = v

    def window_mean(self) -> float:
        """The mean loss of the current log window, as far as it has been folded in (nan if none)."""
        total, count = self.state.loss_window
        return total / count if count else float("nan")

    def take_record(self) -> dict:
        """The train record's loss (mean over the window's finite micro batches), grad norm and counts; a new window."""
        total, count = self.state.loss_window
        grad_norm = self.last.get("grad_norm") if self.last.get("finite") else None  # None: a skipped step
        record = {
            "loss": total / count if count else None,
            "grad_norm": None if grad_norm is None or grad_norm != grad_norm else grad_norm,
            "nonfinite_total": self.state.nonfinite_total,
            "corrupt_samples": int(self.last.get("corrupt", 0)),
        }
        self.state.loss_window = [0.0, 0]
        return record
