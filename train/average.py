"""An exponential moving average of a stack's weights, each head its own horizon.

A head on frozen features reaches its best validation score within an epoch or two and then
wanders from batch to batch; the average of its recent weights sits nearer the middle of where it
wanders (Polyak averaging, the EMA of vision and diffusion training). Here a head's horizon is
given in epochs (HeadConfig.ema), so one setting means the same on RTE's 78 batches an epoch and
SST-2's 2,100. The average is what is scored after each epoch and what a checkpoint keeps; the raw
weights go on learning.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """The moving average of `module`'s trainable parameters, one horizon per row of the stack
    (0: none; that row's average is its weights)."""

    def __init__(self, module: nn.Module, epochs: Sequence[float], batches_per_epoch: int) -> None:
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.averages = [p.detach().clone() for p in self.params]
        steps = torch.tensor([e * batches_per_epoch for e in epochs], dtype=torch.float32)
        # The decay whose mean age is the horizon: 1 - 1 / steps; 0 where a row averages nothing.
        decays = torch.where(steps > 0, 1 - 1 / steps.clamp(min=1), torch.zeros(()))
        self.decays = decays.to(self.params[0].device)  # once, not a host copy every step
        self.on = bool((steps > 0).any())

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move each row's average towards its weights after optimizer step `step` (from 0). Early
        on the decay is capped at (1 + step) / (10 + step), so the first weights, drawn at random,
        leave the average within the first tens of steps."""
        if not self.on:
            return
        decay = self.decays.clamp(max=(1 + step) / (10 + step))
        for average, p in zip(self.averages, self.params, strict=True):
            average.lerp_(p.detach().to(average.dtype), (1 - decay).view(-1, *[1] * (p.dim() - 1)))

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The averages in place of the weights (to score and save them), the weights back after."""
        self._exchange()
        try:
            yield
        finally:
            self._exchange()

    @torch.no_grad()
    def _exchange(self) -> None:
        if not self.on:
            return
        for average, p in zip(self.averages, self.params, strict=True):
            weights = p.detach().clone()
            p.copy_(average)
            average.copy_(weights)

    def state(self) -> list[torch.Tensor]:
        return self.averages

    def load_state(self, averages: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            for mine, saved in zip(self.averages, averages, strict=True):
                mine.copy_(saved)
