"""An exponential moving average (EMA) of the model's weights, evaluated and saved in their place.

With `train.ema_decay` > 0, every optimizer step moves a shadow copy of each floating-point
parameter and buffer towards the trained one: shadow += (1 - decay_t) * (weight - shadow), on the
device, with no host read. decay_t = min(decay, (1 + t) / (10 + t)) at step t, so the average does
not cling to the random initial weights. Validation and every checkpoint's `model.pt` (what
`evaluate`, `predict`, `best/` and `cv` use) hold the averaged weights; the trained weights travel
in the checkpoint's client state, so a resume continues both exactly.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from msa_dist.common.errors import MsaDistError


class WeightAverage:
    """The EMA of `module`'s floating-point state (parameters and buffers); a no-op when `decay` is 0."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.names: list[str] = []
        self.live: list[torch.Tensor] = []
        if decay > 0:
            for name, tensor in module.state_dict(keep_vars=True).items():
                if tensor.is_floating_point():
                    self.names.append(name)
                    self.live.append(tensor.data)  # the module's own storage: updated in place by the optimizer
        self.shadow = [t.detach().clone() for t in self.live]
        # one fused update per kind of tensor: FSDP's sharded parameters (DTensors) and its plain buffers
        self._kinds: dict[type, tuple[list, list]] = {}
        for shadow, live in zip(self.shadow, self.live):
            pair = self._kinds.setdefault(type(live), ([], []))
            pair[0].append(shadow)
            pair[1].append(live)

    @property
    def enabled(self) -> bool:
        return self.decay > 0

    def update(self, step: int) -> None:
        """Fold in the weights after optimizer step `step` (1-based)."""
        if not self.enabled:
            return
        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for shadow, live in self._kinds.values():
                torch._foreach_lerp_(shadow, live, 1.0 - decay)

    def _swap(self) -> None:
        with torch.no_grad():
            for live, shadow in zip(self.live, self.shadow):
                held = live.clone()
                live.copy_(shadow)
                shadow.copy_(held)

    @contextmanager
    def _swapped(self):
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def averaged(self):
        """A context in which the module holds the averaged weights (the trained ones are kept aside)."""
        return self._swapped() if self.enabled else nullcontext()

    def state_dict(self) -> dict:
        """The weights not in the module right now: inside `averaged()`, the trained ones."""
        return {name: t.detach().cpu() for name, t in zip(self.names, self.shadow)}

    def restore(self, saved: dict, where: str) -> None:
        """After loading a checkpoint's `model.pt` (the averaged weights, with EMA on): put the trained
        weights it saved back into the module and the average into the shadow."""
        if bool(saved) != self.enabled:
            held = "averaged" if saved else "trained"
            raise MsaDistError(
                f"{where} was saved with train.ema_decay {'> 0' if saved else '= 0'}: resume it with "
                f"the same setting (its model.pt holds {held} weights)"
            )
        if not self.enabled:
            return
        with torch.no_grad():
            for name, shadow in zip(self.names, self.shadow):
                shadow.copy_(saved[name])  # KeyError only if the architecture changed, which loading model.pt catches
        self._swap()
