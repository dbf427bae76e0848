"""Training label heads on a cache: several heads, one read of the stream.

Every batch is read, padded, moved and cast once; heads of one shape run as one stack (batched
products over a head axis), each with its own loss, learning rate and AdamW state (warm-up then
linear decay, gradient clipping). The encoder is never loaded. After each epoch every head is
scored on its selection split (the evaluation split, or rows held out of training) and its best
checkpoint is kept; a head that stops improving for `patience` epochs stops learning while the
others go on. The state after each epoch is saved (train/state.py), so a killed run continues with
`resume=True` and ends with the metrics an uninterrupted run would have had.

Each head is two records here: its checkpoint.HeadInfo, fixed when it is built and written with
every checkpoint, and its state.Progress, which changes every epoch and is saved with the state.
Its learning rate and weight decay live in its optimizer, its weights in the bank's stacks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ytune.cache.reader import open_cache
from ytune.device import autocast, pick_device
from ytune.errors import UserError
from ytune.train.average import WeightAverage
from ytune.train.build import check_splits, head_for, head_seed, optimizer_settings
from ytune.train.checkpoint import save_head
from ytune.train.config import HOLDOUT, HeadSpec, TrainConfig
from ytune.train.dropout import dropout_key, head_generators, reseed
from ytune.train.evaluate import evaluate, evaluate_bank
from ytune.train.metrics import compute_metrics
from ytune.train.model import HeadBank, count_parameters, head_state
from ytune.train.optim import StackedAdamW
from ytune.train.plots import plot_curves
from ytune.train.state import STATE, Progress, config_key, load_state, save_state
from ytune.train.stream import batches, default_epochs, holdout_rows

log = logging.getLogger(__name__)


def losses_of(output: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Each head's mean loss, [K], from a stack's output [K, B, ...] and targets [K, B]."""
    if kind == "regression":
        return (output.float() - target.float()).pow(2).mean(1)
    k, b = target.shape
    return (
        F.cross_entropy(output.float().reshape(k * b, -1), target.reshape(-1), reduction="none")
        .view(k, b)
        .mean(1)
    )


def _schedule(step: int, steps: int, warmup: float) -> float:
    """The learning rate's factor at `step`: linear warm-up, then linear decay to 0."""
    warm = max(1, int(warmup * steps))
    return min((step + 1) / warm, max(0.0, (steps - step) / max(1, steps - warm)))


class _Training:
    """One run: the heads, stacked into a bank, their optimizers, the data, and where they are."""

    def __init__(
        self, cache_path: str | Path, specs: Sequence[HeadSpec], cfg: TrainConfig, out: Path
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise UserError(f"head names must differ: {', '.join(names)}.")
        self.cfg, self.out, self.key = cfg, out, config_key(specs, cfg)
        self.cache = cache = open_cache(cache_path)
        check_splits(cache, cfg)
        self.reader, self.eval_reader = cache.split(cfg.train_split), cache.split(cfg.eval_split)
        self.device = pick_device(cfg.device)
        built = {s.name: head_for(cache, s, cfg, self.device) for s in specs}
        self.heads = {name: info for name, (_, info, _) in built.items()}
        self.progress = {name: Progress() for name in built}
        self.bank, union = HeadBank.reading({n: (h, info.layers) for n, (h, info, _) in built.items()})
        self.stream_layers = [list(cache.identity.layers).index(i) for i in union]
        settings = {s.name: optimizer_settings(s, cfg, self.heads[s.name].config.kind) for s in specs}
        self.optimizers = [
            StackedAdamW(
                stack,
                self.per_row(s, [settings[n][0] for n in self.bank.names[s]]),
                self.per_row(s, [settings[n][1] for n in self.bank.names[s]]),
            )
            for s, stack in enumerate(self.bank.stacks)
        ]
        self.generators = [head_generators(stack, stack.rows, self.device) for stack in self.bank.stacks]
        seeds = {s.name: head_seed(s, cfg) for s in specs}
        self.dropout_keys = [
            [dropout_key(seeds[n], n, j) for n in names for j in range(stack.cfg.members)]
            for stack, names in zip(self.bank.stacks, self.bank.names, strict=True)
        ]
        # Rows of the training split: all of them, or all but the held-out slice to select on.
        n = len(self.reader)
        self.keep_train = self.keep_select = None
        if cfg.select_on == HOLDOUT:
            self.keep_select = np.zeros(n, dtype=bool)
            self.keep_select[holdout_rows(n, cfg.seed)] = True
            self.keep_train = ~self.keep_select
        self.train_rows = n if self.keep_train is None else int(self.keep_train.sum())
        self.batches_per_epoch = math.ceil(self.train_rows / cfg.batch_size)
        self.epochs = cfg.epochs or default_epochs(self.train_rows)
        self.steps = self.epochs * self.batches_per_epoch
        self.averages = [
            WeightAverage(
                stack,
                self.per_row(s, [self.heads[n].config.ema for n in self.bank.names[s]]),
                self.batches_per_epoch,
            )
            for s, stack in enumerate(self.bank.stacks)
        ]
        self.step = 0
        self.encoder_params = int(cache.manifest.info.get("encoder_parameters", 0))
        # Each head's labels on the split it is selected on (rows held out of training, or the
        # evaluation split), read once.
        held = self.keep_select is not None
        self.selection = HOLDOUT if held else cfg.eval_split
        labels = {info.label for info in self.heads.values()}
        columns = {} if held else {c: cache.labels(cfg.eval_split, c).values for c in labels}
        self.select_labels = {
            n: column.values if held else columns[info.label] for n, (_, info, column) in built.items()
        }

    def describe(self) -> None:
        for name, info in self.heads.items():
            n = self.parameters(name)
            share = ""
            if self.encoder_params:
                share = f" ({100 * n / self.encoder_params:.2f}% of the encoder's {self.encoder_params / 1e6:.1f}M)"
            c = info.config
            kind = c.head_type + "".join(
                [
                    f", {c.members} members" if c.members > 1 else "",
                    f", weights averaged over {c.ema:g} epoch{'s' * (c.ema != 1)}" if c.ema else "",
                ]
            )
            log.info(f"head {name}: {kind}, {n} tunable parameters{share}, layers {info.layers}")
        log.info(f"{self.epochs} epochs over {self.train_rows} training rows")
        if self.keep_select is not None:
            log.info(
                f"selecting on {int(self.keep_select.sum())} held-out training rows, which no head trains on"
            )

    def parameters(self, name: str) -> int:
        """A head's tunable parameters, an ensemble's members counted whole."""
        stack, _ = self.bank.head(name)
        return count_parameters(stack) // stack.size

    def per_row(self, s: int, values: Sequence) -> list:
        """A value per head of stack `s` -> a value per row (each member of an ensemble its head's)."""
        return [v for v in values for _ in range(self.bank.stacks[s].cfg.members)]

    def settings_of(self, name: str) -> tuple[float, float]:
        """The learning rate and weight decay head `name` trains with, as its optimizer holds them."""
        s, i = self.bank.where[name]
        row = i * self.bank.stacks[s].cfg.members
        return self.optimizers[s].lrs[row], self.optimizers[s].weight_decays[row]

    def start(self) -> int:
        """A fresh run: each head's folder, its log emptied; the first epoch is 0."""
        for name in self.heads:
            (self.out / name).mkdir(parents=True, exist_ok=True)
            (self.out / name / "log.jsonl").unlink(missing_ok=True)
        return 0

    def resume(self) -> int:
        """Load the state after the last finished epoch; returns the epoch to start at."""
        path = self.out / STATE
        epoch, self.step, progress = load_state(path, self.bank, self.optimizers, self.averages, self.key)
        self.progress = {name: progress[name] for name in self.heads}
        log.info(f"resuming after epoch {epoch} from {path}")
        return epoch + 1

    def save_state(self, epoch: int) -> None:
        save_state(
            self.out, epoch, self.step, self.bank, self.optimizers, self.averages, self.progress, self.key
        )

    def record(
        self, epoch: int, losses: dict[str, float], scores: dict[str, dict], seen: int, seconds: float
    ) -> None:
        """An epoch's loss and selection metrics per head: its history and log line, its checkpoint
        when the epoch is its best so far, its patience otherwise."""
        for name, metrics in scores.items():
            progress = self.progress[name]
            entry = {
                "epoch": epoch,
                "loss": losses[name],
                **{f"{self.selection}_{k}": v for k, v in metrics.items()},
                "seconds": seconds,
                "examples_per_s": seen / seconds,
            }
            progress.history.append(entry)
            score = metrics[self.heads[name].metrics[0]]
            if progress.update(epoch, score, metrics, self.cfg.patience):
                self.save(name)
            log.info(json.dumps({"head": name, **entry}))
            with open(self.out / name / "log.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")

    def finish(self) -> dict[str, dict]:
        """Each head's metrics on the evaluation split at its best epoch (with holdout selection, its
        checkpoint scored once now), written to metrics.json beside its curves."""
        cfg, out = self.cfg, self.out
        final = {n: p.best_metrics for n, p in self.progress.items()}
        if cfg.select_on == HOLDOUT:
            final = evaluate([out / n for n in self.heads], self.cache.path, cfg.eval_split, cfg)
        for name, p in self.progress.items():
            lr, weight_decay = self.settings_of(name)
            summary = {
                "best_epoch": p.best_epoch,
                "selected_on": self.selection,
                "selection": p.best_metrics,
                cfg.eval_split: final[name],
                "lr": lr,
                "weight_decay": weight_decay,
                "tunable_parameters": self.parameters(name),
                "encoder_parameters": self.encoder_params,
                "history": p.history,
            }
            (out / name / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
            plot_curves(p.history, out / name / "curves.png", name)
        return final

    def train_epoch(self, epoch: int, active: list[str]) -> tuple[dict[str, float], int, float]:
        """One pass over the training rows for the active heads: their mean losses, rows, seconds."""
        cfg, where, names = self.cfg, self.bank.where, self.bank.names  # names: per stack, its heads
        stacks = sorted({where[n][0] for n in active})
        on = [self.per_row(s, [not self.progress[n].done for n in heads]) for s, heads in enumerate(names)]
        # Heads stopped early learn nothing more: their losses are masked out of the backward.
        masks = {s: torch.tensor(on[s], dtype=torch.float32, device=self.device) for s in stacks}
        start, seen = time.perf_counter(), 0
        sums = {s: torch.zeros(len(on[s]), device=self.device) for s in stacks}
        self.bank.train()
        labels = sorted({self.heads[n].label for n in active})
        stream = batches(
            self.reader, cfg, labels, self.stream_layers, shuffle=True, epoch=epoch, keep=self.keep_train
        )
        disable = not cfg.progress if cfg.progress is not None else None
        bar = tqdm(
            stream,
            total=self.batches_per_epoch,
            desc=f"epoch {epoch}",
            unit="batch",
            file=sys.stderr,
            disable=disable,
            leave=False,
        )
        for batch in bar:
            batch = batch.to(self.device, non_blocking=True).widened()
            for s in stacks:  # each head's dropout from its seed, its name and the step alone
                reseed(self.generators[s], self.dropout_keys[s], self.step)
            with autocast(self.device):
                outputs = self.bank.forward_stacks(batch.features, batch.mask, stacks)
            total = 0
            for s, output in outputs.items():
                heads = [self.heads[n] for n in names[s]]  # each member learns its head's labels
                targets = torch.stack(self.per_row(s, [batch.labels[info.label] for info in heads]))
                losses = losses_of(output, targets, heads[0].config.kind)
                total = total + (losses * masks[s]).sum()
                sums[s] += losses.detach() * len(batch.rows)  # on the device: no sync per batch
            total.backward()  # heads share no parameters: each gets exactly its own gradient
            factor = _schedule(self.step, self.steps, cfg.warmup)
            for s in stacks:
                self.optimizers[s].step(factor, on[s], cfg.clip)
                self.optimizers[s].zero_grad()
                self.averages[s].update(self.step)
            self.step += 1
            seen += len(batch.rows)
        # A head's loss: its members' mean.
        sums = {s: total.cpu().view(len(names[s]), -1).mean(1) for s, total in sums.items()}
        losses = {n: float(sums[where[n][0]][where[n][1]]) / max(seen, 1) for n in active}
        return losses, seen, time.perf_counter() - start

    def select(self, active: Sequence[str]) -> dict[str, dict]:
        """The active heads' metrics on the split they are selected on."""
        kinds = {n: self.heads[n].config.kind for n in active}
        reader = self.reader if self.keep_select is not None else self.eval_reader
        preds, rows = evaluate_bank(
            self.bank, kinds, reader, self.cfg, self.stream_layers, self.device, keep=self.keep_select
        )
        return {
            n: compute_metrics(self.heads[n].metrics, preds[n], self.select_labels[n][rows]) for n in active
        }

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """Every stack's weight averages in place of its weights (train/average.py)."""
        with contextlib.ExitStack() as swaps:
            for average in self.averages:
                swaps.enter_context(average.swapped())
            yield

    def save(self, name: str) -> None:
        stack, i = self.bank.head(name)
        save_head(self.out / name, head_state(stack, i), self.heads[name])


def train(
    cache_path: str | Path,
    specs: Sequence[HeadSpec],
    cfg: TrainConfig,
    out: str | Path,
    resume: bool = False,
) -> dict[str, dict]:
    """Train every head in `specs` on one stream of the cache; returns each head's metrics on the
    evaluation split at its best epoch (chosen on cfg.select_on)."""
    run = _Training(cache_path, specs, cfg, Path(out))
    run.describe()
    first_epoch = run.resume() if resume and (Path(out) / STATE).exists() else run.start()
    for epoch in range(first_epoch, run.epochs):
        active = [n for n, p in run.progress.items() if not p.done]
        if not active:  # every head stopped by patience
            break
        losses, seen, seconds = run.train_epoch(epoch, active)
        with run.averaged():  # what is scored and kept: each head's average where it keeps one
            run.record(epoch, losses, run.select(active), seen, seconds)
        run.save_state(epoch)
    return run.finish()
