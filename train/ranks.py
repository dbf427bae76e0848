"""One sweep across the processes torchrun starts: each rank trains its share of the grid's heads,
reading the whole training split itself, and the heads' summaries meet on every rank.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; the process group is made as extraction makes it
(device.init_distributed: nccl with each rank on cuda:LOCAL_RANK, else gloo). Heads are dealt
round-robin in grid order, so every rank gets a similar share. A head's first weights, its
stream, the held-out rows and its dropout (train/dropout.py) come from the run's seed and its
name, not from the heads beside it. Where a rank's stacks (heads of one shape) hold the heads one
process's stacks hold, it trains them exactly as one process does (2 ranks and
`--sweep lr=... --sweep width=A,B`: each rank gets one width); where dealing splits a stack, the
smaller stacks agree with it up to the float order of the batched products (train/optim.py).

Every rank writes its heads' folders under --out, and their small summaries are gathered through
the process group (all_gather_object), so rank 0 writes the sweep's table without reading another
rank's folder: on several machines --out need not be shared, but the winner's folder, which
`ytune eval` and `ytune predict` follow from sweep.json, is then on the machine that trained it.
A rank that raises ends the run: torchrun stops the others, which would otherwise wait in the
gather.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ytune.train.config import TrainConfig

T = TypeVar("T")
RANKS = ".ranks"  # under --out: each rank's run folder (its resumable state), linking to its heads


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1


def join(cfg: TrainConfig) -> tuple[Ranks, TrainConfig]:
    """This process's rank, and `cfg` with its device (cuda:LOCAL_RANK on GPUs): one rank of one
    unless torchrun (or the caller) set WORLD_SIZE above 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), cfg
    from ytune.device import init_distributed

    return Ranks(int(os.environ["RANK"]), world), dataclasses.replace(
        cfg, device=init_distributed(cfg.device)
    )


def share(ranks: Ranks, items: Sequence[T]) -> list[T]:
    """This rank's items: every world-th, from its rank on."""
    return list(items[ranks.rank :: ranks.world])


def run_folder(ranks: Ranks, out: Path, names: Sequence[str]) -> Path:
    """Where this rank trains: `out` itself alone; with other ranks a folder of its own under it,
    since a run keeps its resumable state in its folder (trainer.train), whose head folders link to
    those in `out`, so every head is where one process would have put it."""
    if ranks.world == 1:
        return out
    own = out / RANKS / f"{ranks.rank}-of-{ranks.world}"
    own.mkdir(parents=True, exist_ok=True)
    for name in names:
        (out / name).mkdir(exist_ok=True)
        if not (own / name).is_symlink():
            (own / name).symlink_to(Path("..", "..", name))
    return own


def gather(ranks: Ranks, items: list) -> list:
    """Every rank's `items`, rank by rank, on every rank."""
    if ranks.world == 1:
        return items
    import torch.distributed as dist

    every: list = [None] * ranks.world
    dist.all_gather_object(every, items)
    return [item for part in every for item in part]
