"""Dropout for a stack of heads that draws each head's units from a generator of its own.

nn.Dropout on a stack [K, ...] takes one draw for all K heads from torch's global generator, so
the units a head drops depend on which heads share its stack and its pass, and a sweep split
between processes (train/ranks.py) would train other heads than one process does. Here each
head's generator is reseeded before every step from the run's seed, the head's name and the step:
a head drops the same units whichever heads train beside it, and a resumed run needs no saved
generator state to go on as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class HeadDropout(nn.Module):
    """Dropout over [K, ...]: head k's mask from generators[k] once they are set (head_generators);
    until then from torch's global generator, as nn.Dropout."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.generators: list[torch.Generator] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.generators is None:
            return F.dropout(x, self.p, training=True)
        draws = [torch.rand(x.shape[1:], generator=g, device=x.device) for g in self.generators]
        return x * (torch.stack(draws) >= self.p) / (1 - self.p)


def head_generators(stack: nn.Module, size: int, device: torch.device) -> list[torch.Generator]:
    """One generator per row of `stack` (a head, or an ensemble's member), given to every
    HeadDropout in it."""
    generators = [torch.Generator(device) for _ in range(size)]
    for module in stack.modules():
        if isinstance(module, HeadDropout):
            module.generators = generators
    return generators


def dropout_key(seed: int, name: str, member: int = 0) -> str:
    """What a head's dropout is drawn from besides the step: its seed, its name and, in an ensemble,
    which member (the first draws as a head of one would)."""
    return f"{seed}\0{name}" + (f"#{member}" if member else "")


def reseed(generators: Sequence[torch.Generator], keys: Sequence[str], step: int) -> None:
    """Each head's generator set for `step` from its dropout_key (a digest, not Python's hash(),
    which differs between processes)."""
    for generator, key in zip(generators, keys, strict=True):
        digest = hashlib.blake2b(f"{key}\0{step}".encode(), digest_size=8).digest()
        generator.manual_seed(int.from_bytes(digest, "little") >> 1)
