"""A run's state after each epoch, so that a killed run continues (`resume=True`) and ends with the
metrics an uninterrupted run would have had: the stacks, the optimizers' moments, the weights'
moving averages, the random states, the step, each head's progress and the settings a resume must match. One safetensors file,
replaced atomically: tensors, and the rest as JSON in its header, so loading it runs no code.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ytune.errors import UserError
from ytune.train.average import WeightAverage
from ytune.train.config import HeadSpec, TrainConfig
from ytune.train.model import HeadBank
from ytune.train.optim import StackedAdamW

STATE = "state.safetensors"
MOMENTS = ("exp_avgs", "exp_avg_sqs")
# Settings a resumed run may change: they decide neither the stream nor the heads' arithmetic.
# (workers stay in the key: they set the stream's order.)
FREE = ("epochs", "device", "progress")


@dataclass
class Progress:
    """A head's way through a run: its best epoch so far, its patience, its history. Kept beside
    the head's checkpoint record (checkpoint.HeadInfo), which does not change while it trains."""

    best: float = -math.inf
    best_epoch: int = -1
    best_metrics: dict = field(default_factory=dict)
    stale: int = 0  # epochs since the best
    done: bool = False  # stopped by patience
    history: list = field(default_factory=list)  # one entry per epoch: loss, selection metrics, time

    def update(self, epoch: int, score: float, metrics: dict, patience: int) -> bool:
        """Record the epoch's selection score; whether it is the best so far."""
        if score > self.best:
            self.best, self.best_epoch, self.best_metrics, self.stale = score, epoch, metrics, 0
            return True
        self.stale += 1
        self.done = bool(patience) and self.stale >= patience
        return False


def config_key(specs: Sequence[HeadSpec], cfg: TrainConfig) -> str:
    """The heads and settings a saved state belongs to: a resume with other ones is refused."""
    keep = {k: v for k, v in cfg.__dict__.items() if k not in FREE}
    return json.dumps([[s.__dict__ for s in specs], keep], sort_keys=True, default=str)


def save_state(
    out: Path,
    epoch: int,
    step: int,
    bank: HeadBank,
    optimizers: Sequence[StackedAdamW],
    averages: Sequence[WeightAverage],
    progress: Mapping[str, Progress],
    key: str,
) -> None:
    """Everything a resumed run needs after `epoch`, in `out`/STATE: the stacks, the optimizers'
    moments, the random states (CPU and every CUDA device), and as JSON the step, each head's
    progress, and the settings' `key`."""
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{d}": s for d, s in enumerate(torch.cuda.get_rng_state_all())})
    steps = []
    for i, (stack, optimizer, average) in enumerate(zip(bank.stacks, optimizers, averages, strict=True)):
        tensors.update({f"stacks.{i}.{k}": v for k, v in stack.state_dict().items()})
        if average.on:
            tensors.update({f"averages.{i}.{j}": t for j, t in enumerate(average.state())})
        saved = optimizer.state_dict()
        for moment in MOMENTS:
            tensors.update({f"optimizers.{i}.{moment}.{j}": t for j, t in enumerate(saved[moment])})
        steps.append(saved["steps"])
    meta = {
        "epoch": epoch,
        "step": step,
        "steps": steps,
        "config": key,
        "runs": {name: dataclasses.asdict(p) for name, p in progress.items()},
    }
    tmp = out / f".{STATE}.tmp"
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, {"state": json.dumps(meta)}
    )
    tmp.replace(out / STATE)


def load_state(
    path: Path,
    bank: HeadBank,
    optimizers: Sequence[StackedAdamW],
    averages: Sequence[WeightAverage],
    key: str,
) -> tuple[int, int, dict[str, Progress]]:
    """Load a saved state into the bank, its optimizers, its averages and torch's random states;
    returns the epoch it was saved after, the step, and each head's progress."""
    try:
        with safe_open(path, "pt") as f:
            meta = json.loads(f.metadata()["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise UserError(
            f"{path} is not a resumable training state ({type(e).__name__}); use another --out."
        ) from None
    if sorted(meta["runs"]) != sorted(bank.where) or meta["config"] != key:
        raise UserError(f"{path} was saved by a run with other heads or settings; use another --out.")
    for i, (stack, optimizer, average) in enumerate(zip(bank.stacks, optimizers, averages, strict=True)):
        if average.on:
            average.load_state(
                [tensors[k] for k in sorted(tensors, key=_natural) if k.startswith(f"averages.{i}.")]
            )
        prefix = f"stacks.{i}."
        stack.load_state_dict({k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)})
        moments = {
            moment: [
                tensors[k] for k in sorted(tensors, key=_natural) if k.startswith(f"optimizers.{i}.{moment}.")
            ]
            for moment in MOMENTS
        }
        optimizer.load_state_dict({**moments, "steps": meta["steps"][i]})
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    progress = {name: Progress(**saved) for name, saved in meta["runs"].items()}
    return meta["epoch"], meta["step"], progress


def _natural(key: str) -> tuple:
    """Sort "a.10" after "a.9"."""
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))
