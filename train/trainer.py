"""Training label heads on a cache: several heads, one read of the stream.

Every batch is read, padded and moved once, then each head takes its own layers from it, computes
its loss, and steps its own optimizer (AdamW, warm-up then linear decay, gradient clipping). The
encoder is never loaded. After each epoch every head is evaluated; its best checkpoint is kept;
a head that stops improving for `patience` epochs stops training while the others go on. The
state after each epoch is saved, so a killed run continues with `resume=True` and ends with the
metrics an uninterrupted run would have had.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ytune.cache.reader import Batch, Cache, LabelColumn, SplitReader, open_cache
from ytune.errors import UserError
from ytune.train.checkpoint import HeadInfo, load_head, save_head
from ytune.train.metrics import compute_metrics
from ytune.train.model import KIND_DEFAULTS, HeadBank, HeadConfig, build_head, count_parameters

STATE = "state.pt"


@dataclass
class HeadSpec:
    """One head to train: its name, the label column it learns, its architecture and optimiser."""

    name: str = "ytuning"
    label: str | None = None  # label column; None: the cache's only column
    config: dict = field(default_factory=dict)  # HeadConfig fields (width, blocks, head_type, ...)
    layers: Sequence[int] | None = None  # hidden states (negatives from the end); None: all cached
    lr: float | None = None  # None: TrainConfig.lr, else the head kind's default
    weight_decay: float | None = None


@dataclass
class TrainConfig:
    epochs: int = 3  # the best epoch is kept: more epochs cost time, never accuracy
    batch_size: int = 32
    lr: float | None = None  # None: the head kind's measured default (model.KIND_DEFAULTS)
    weight_decay: float = 0.01
    warmup: float = 0.06  # share of the steps spent warming up
    clip: float = 1.0
    seed: int = 0
    patience: int = 0  # epochs without improvement before a head stops; 0: never
    train_split: str = "train"
    eval_split: str = "validation"
    device: str | None = None
    workers: int = 0  # DataLoader worker processes reading the cache; 0: a prefetch thread
    # Torch threads on CPU. Heads are small: a second thread gained 15% on an idle 2-core machine
    # but cost 30x when the cores were busy (every tiny op waits for a free core), so 1 by default.
    threads: int = 1
    buffer_size: int = 4096  # shuffle buffer, in examples
    progress: bool | None = None


@dataclass
class _Run:
    """A head in training and everything that is its own: optimizer, schedule, best so far."""

    info: HeadInfo
    head: nn.Module
    column: LabelColumn
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    best: float = -math.inf
    best_epoch: int = -1
    best_metrics: dict = field(default_factory=dict)
    stale: int = 0
    done: bool = False
    history: list = field(default_factory=list)

    def state(self) -> dict:
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "best": self.best, "best_epoch": self.best_epoch,
                "best_metrics": self.best_metrics, "stale": self.stale, "done": self.done,
                "history": self.history}  # fmt: skip

    def load(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        for key in ("best", "best_epoch", "best_metrics", "stale", "done", "history"):
            setattr(self, key, state[key])


def default_label(cache: Cache, split: str) -> str:
    columns = list(cache.manifest.splits[split].labels) if split in cache.manifest.splits else []
    if len(columns) != 1:
        raise UserError(
            f"name the label column to learn with --label (split {split!r} has: {', '.join(columns) or 'none'})."
        )
    return columns[0]


def resolve_head_layers(cache: Cache, layers: Sequence[int] | None) -> list[int]:
    """Hidden-state indices a head reads, negatives counted from the encoder's last layer."""
    cached = list(cache.identity.layers)
    if layers is None:
        return cached
    total = int(cache.manifest.info.get("num_hidden_layers", max(cached))) + 1
    out = []
    for i in layers:
        j = i % total if -total <= i < total else None
        if j not in cached:
            raise UserError(f"layer {i} is not in the cache, which holds hidden states {cached}.")
        out.append(j)
    return out


def _build(cache: Cache, spec: HeadSpec, cfg: TrainConfig, steps: int, device: torch.device) -> _Run:
    label = spec.label or default_label(cache, cfg.train_split)
    column = cache.labels(cfg.train_split, label)
    missing = int(
        np.sum(column.values < 0) if column.kind == "classification" else np.isnan(column.values).sum()
    )
    if missing:
        raise UserError(
            f"{missing} rows of split {cfg.train_split!r} have no {label!r} label; training needs all."
        )
    layers = resolve_head_layers(cache, spec.layers)
    known = set(HeadConfig.__dataclass_fields__)
    unknown = sorted(set(spec.config) - known)
    if unknown:
        raise UserError(
            f"unknown head setting {', '.join(unknown)}; settings are: {', '.join(sorted(known))}."
        )
    config = HeadConfig(**{**spec.config, "kind": column.kind, "num_labels": len(column.names or [None]),
                           "num_layers_in": len(layers), "hidden_in": int(cache.manifest.info["hidden_size"])})  # fmt: skip
    torch.manual_seed(cfg.seed)  # every head starts as it would in a run of its own
    head = build_head(config).to(device)
    if config.label_init == "names":
        if column.vectors is None:
            raise UserError(f"label column {label!r} holds no label-name features (it was attached without the "
                            "encoder); use label_init=random.")  # fmt: skip
        cached = list(cache.identity.layers)
        head.init_queries(
            torch.from_numpy(column.vectors[:, [cached.index(i) for i in layers]].mean(1)).to(device)
        )
    info = HeadInfo(spec.name, config, label, column.names, column.metrics, layers, cache.identity.to_dict(),
                    cache.manifest.info)  # fmt: skip
    # fused: one kernel per parameter instead of a dozen small ops (a step of the default head on CPU:
    # 39 ms with the default implementation, 34 ms fused).
    lr = next(x for x in (spec.lr, cfg.lr, KIND_DEFAULTS[config.kind]["lr"]) if x is not None)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, fused=True,
                                  weight_decay=cfg.weight_decay if spec.weight_decay is None else spec.weight_decay)  # fmt: skip
    warm = max(1, int(cfg.warmup * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
    )
    return _Run(info, head, column, optimizer, schedule)


def batches(reader: SplitReader, cfg: TrainConfig, labels: Sequence[str], layers: Sequence[int], *, shuffle: bool,
            epoch: int = 0) -> Iterator[Batch]:  # fmt: skip
    """The split's batches, from a prefetch thread or from DataLoader worker processes."""
    args = dict(
        labels=list(labels), layers=list(layers), shuffle=shuffle, seed=cfg.seed, buffer_size=cfg.buffer_size
    )
    if cfg.workers <= 0:
        return reader.stream(cfg.batch_size, epoch=epoch, **args)
    dataset = reader.dataset(cfg.batch_size, epoch=epoch, **args)
    return iter(
        torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=cfg.workers, persistent_workers=False
        )
    )


def loss_of(output: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "regression":
        return F.mse_loss(output.float(), target.float())
    return F.cross_entropy(output.float(), target)


def predictions(output: torch.Tensor, kind: str) -> np.ndarray:
    return (output.float() if kind == "regression" else output.argmax(-1)).cpu().numpy()


def evaluate_bank(bank: HeadBank, kinds: dict[str, str], reader: SplitReader, cfg: TrainConfig,
                  layers: Sequence[int], device: torch.device) -> tuple[dict[str, np.ndarray], np.ndarray]:  # fmt: skip
    """Every head's predictions over a split, in source row order, from one read of it."""
    bank.eval()
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in kinds}
    rows = []
    with torch.inference_mode():
        for batch in batches(reader, cfg, [], layers, shuffle=False):
            batch = batch.to(device)
            with _autocast(device):
                for name, out in bank(batch.features, batch.mask, names=list(kinds)).items():
                    outputs[name].append(predictions(out, kinds[name]))
            rows.append(batch.rows.cpu().numpy())
    order = np.argsort(np.concatenate(rows))
    return {name: np.concatenate(o)[order] for name, o in outputs.items()}, np.concatenate(rows)[order]


def train(cache_path: str | Path, specs: Sequence[HeadSpec], cfg: TrainConfig, out: str | Path,
          resume: bool = False, log=print) -> dict[str, dict]:  # fmt: skip
    """Train every head in `specs` on one stream of the cache; returns each head's best eval metrics."""
    out = Path(out)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UserError(f"head names must differ: {', '.join(names)}.")
    cache = open_cache(cache_path)
    reader, eval_reader = cache.split(cfg.train_split), cache.split(cfg.eval_split)
    device = _device(cfg)
    steps = cfg.epochs * math.ceil(len(reader) / cfg.batch_size)
    runs = {s.name: _build(cache, s, cfg, steps, device) for s in specs}
    bank, union = HeadBank.reading({n: (r.head, r.info.layers) for n, r in runs.items()})
    cached = list(cache.identity.layers)
    eval_labels = {n: cache.labels(cfg.eval_split, r.info.label).values for n, r in runs.items()}
    encoder_params = int(cache.manifest.info.get("encoder_parameters", 0))
    for name, r in runs.items():
        n = count_parameters(r.head)
        share = (
            f" ({100 * n / encoder_params:.2f}% of the encoder's {encoder_params / 1e6:.1f}M)"
            if encoder_params
            else ""
        )
        log(f"head {name}: {r.info.config.head_type}, {n} tunable parameters{share}, layers {r.info.layers}")

    first_epoch = 0
    if resume and (out / STATE).exists():
        state = torch.load(out / STATE, weights_only=False)
        if sorted(state["heads"]) != sorted(runs) or state["config"] != _config_key(specs, cfg):
            raise UserError(
                f"{out / STATE} was saved by a run with other heads or settings; use another --out."
            )
        for name, r in runs.items():
            r.load(state["heads"][name])
        torch.set_rng_state(state["rng"])
        first_epoch = state["epoch"] + 1
        log(f"resuming after epoch {state['epoch']} from {out / STATE}")

    stream_layers = [cached.index(i) for i in union]
    if first_epoch == 0:
        for name in runs:
            (out / name).mkdir(parents=True, exist_ok=True)
            (out / name / "log.jsonl").unlink(missing_ok=True)
    for epoch in range(first_epoch, cfg.epochs):
        active = [n for n, r in runs.items() if not r.done]
        if not active:
            break
        start, seen, losses = time.perf_counter(), 0, {n: 0.0 for n in active}
        bank.train()
        bar = tqdm(batches(reader, cfg, sorted({runs[n].info.label for n in active}), stream_layers, shuffle=True, epoch=epoch),
                   total=math.ceil(len(reader) / cfg.batch_size), desc=f"epoch {epoch}", unit="batch",
                   disable=not cfg.progress if cfg.progress is not None else None, file=sys.stderr, leave=False)  # fmt: skip
        for batch in bar:
            batch = batch.to(device, non_blocking=True)
            with _autocast(device):
                outputs = bank(batch.features, batch.mask, names=active)
            total = 0
            for name, output in outputs.items():
                r = runs[name]
                loss = loss_of(output, batch.labels[r.info.label], r.column.kind)
                losses[name] += float(loss.detach()) * len(batch.rows)
                total = total + loss
            total.backward()  # heads share no parameters: each gets exactly its own gradient
            for name in active:
                r = runs[name]
                nn.utils.clip_grad_norm_(r.head.parameters(), cfg.clip, foreach=True)
                r.optimizer.step()
                r.optimizer.zero_grad(set_to_none=True)
                r.schedule.step()
            seen += len(batch.rows)
        train_seconds = time.perf_counter() - start
        preds, rows = evaluate_bank(
            bank, {n: runs[n].column.kind for n in active}, eval_reader, cfg, stream_layers, device
        )
        for name in active:
            r = runs[name]
            metrics = compute_metrics(r.info.metrics, preds[name], eval_labels[name][rows])
            entry = {"epoch": epoch, "loss": losses[name] / max(seen, 1), **{f"{cfg.eval_split}_{k}": v for k, v in metrics.items()},
                     "seconds": train_seconds, "examples_per_s": seen / train_seconds}  # fmt: skip
            r.history.append(entry)
            score = metrics[r.info.metrics[0]]
            if score > r.best:
                r.best, r.best_epoch, r.best_metrics, r.stale = score, epoch, metrics, 0
                save_head(out / name, r.head, r.info)
            else:
                r.stale += 1
                r.done = bool(cfg.patience) and r.stale >= cfg.patience
            log(json.dumps({"head": name, **entry}))
            with open(out / name / "log.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
        torch.save({"epoch": epoch, "heads": {n: r.state() for n, r in runs.items()}, "rng": torch.get_rng_state(),
                    "config": _config_key(specs, cfg)}, out / f".{STATE}.tmp")  # fmt: skip
        (out / f".{STATE}.tmp").replace(out / STATE)

    results = {}
    for name, r in runs.items():
        n = count_parameters(r.head)
        summary = {"best_epoch": r.best_epoch, cfg.eval_split: r.best_metrics, "tunable_parameters": n,
                   "encoder_parameters": encoder_params, "history": r.history}  # fmt: skip
        (out / name / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
        plot_curves(r.history, out / name / "curves.png", name)
        results[name] = r.best_metrics
    return results


def _config_key(specs: Sequence[HeadSpec], cfg: TrainConfig) -> str:
    keep = {
        k: v
        for k, v in cfg.__dict__.items()
        if k not in ("epochs", "device", "workers", "progress", "threads")
    }
    return json.dumps([[s.__dict__ for s in specs], keep], sort_keys=True, default=str)


def _device(cfg: TrainConfig) -> torch.device:
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    return device


def _autocast(device: torch.device):
    return (
        torch.autocast("cuda", torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    """Loss and evaluation metrics per epoch, one PNG per head."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(epochs, [h["loss"] for h in history], marker="o")
    left.set(xlabel="epoch", ylabel="training loss", title=title)
    for key in [k for k in history[0] if k not in ("epoch", "loss", "seconds", "examples_per_s")]:
        right.plot(epochs, [h[key] for h in history], marker="o", label=key)
    right.set(xlabel="epoch", title="evaluation")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def evaluate(
    head_dirs: Sequence[str | Path], cache_path: str | Path, split: str, cfg: TrainConfig | None = None
) -> dict[str, dict]:
    """Metrics of trained heads on any labelled split of a cache in their feature space."""
    cfg = cfg or TrainConfig()
    cache = open_cache(cache_path)
    reader = cache.split(split)
    device = _device(cfg)
    loaded = {}
    for d in head_dirs:
        head, info = load_head(d)
        loaded[info.name] = (head.to(device), info, info.positions(cache.identity, f"cache {cache.path}"))
    bank, union = HeadBank.reading({n: (h, ps) for n, (h, _, ps) in loaded.items()})
    kinds = {n: info.config.kind for n, (_, info, _) in loaded.items()}
    preds, rows = evaluate_bank(bank, kinds, reader, cfg, union, device)
    results = {}
    for name, (_, info, _) in loaded.items():
        labels = cache.labels(split, info.label)
        if labels.kind != info.config.kind or (labels.names or None) != (info.label_names or None):
            raise UserError(
                f"label column {info.label!r} of split {split!r} has other labels than head {name!r} learned."
            )
        results[name] = compute_metrics(info.metrics, preds[name], labels.values[rows])
    return results
