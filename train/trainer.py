"""Training label heads on a cache: several heads, one read of the stream.

Every batch is read, padded, moved and cast once; heads of one shape run as one stack (batched
products over a head axis), each with its own loss, learning rate and AdamW state (warm-up then
linear decay, gradient clipping). The encoder is never loaded. After each epoch every head is
scored on its selection split (the evaluation split, or rows held out of training) and its best
checkpoint is kept; a head that stops improving for `patience` epochs stops learning while the
others go on. The state after each epoch is saved, so a killed run continues with `resume=True`
and ends with the metrics an uninterrupted run would have had.
"""

from __future__ import annotations

import ctypes
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
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from ytune.cache.identity import resolve_index
from ytune.cache.reader import Batch, Cache, LabelColumn, SplitReader, open_cache
from ytune.device import autocast, pick_device
from ytune.errors import UserError
from ytune.train.checkpoint import HeadInfo, load_head, save_head
from ytune.train.config import HOLDOUT, HeadSpec, TrainConfig
from ytune.train.metrics import compute_metrics
from ytune.train.model import KIND_DEFAULTS, HeadBank, HeadConfig, build_head, count_parameters, head_state
from ytune.train.optim import StackedAdamW

STATE = "state.safetensors"  # tensors, and the rest as JSON in its header: loading runs no code


EXAMPLES = 60_000  # what a default run shows the heads, epochs permitting (default_epochs)


def default_epochs(rows: int) -> int:
    """Epochs for a training set of `rows`: enough passes to show the heads about 60,000 examples,
    3 to 10. Measured with the default head: STS-B's 5,749 pairs reach Pearson 0.795 in 3 epochs and
    0.810 in 10; SST-2's 67,349 phrases peak within 3 (RESULTS.md 5a)."""
    return min(10, max(3, math.ceil(EXAMPLES / max(rows, 1))))


def holdout_rows(rows: int, seed: int, share: float = 0.1, least: int = 300) -> np.ndarray:
    """The training rows held out to select on: a seeded draw of `share` of them, at least `least`
    where the split has five times that (so small splits keep 80% to learn from). The same rows for
    every head of a run and for any rerun with the same seed."""
    n = min(max(round(share * rows), least), rows // 5)
    if n < 1:
        raise UserError(
            f"a training split of {rows} rows is too small to hold rows out; select on validation."
        )
    return np.sort(np.random.default_rng([seed, 0x5E1EC7]).choice(rows, n, replace=False))


@dataclass
class _Run:
    """A head in training and what is its own: its place in a stack, its best so far."""

    info: HeadInfo
    column: LabelColumn
    lr: float
    weight_decay: float
    best: float = -math.inf
    best_epoch: int = -1
    best_metrics: dict = field(default_factory=dict)
    stale: int = 0
    done: bool = False
    history: list = field(default_factory=list)

    SAVED = ("best", "best_epoch", "best_metrics", "stale", "done", "history")


def default_label(cache: Cache, split: str) -> str:
    """The label column a head learns unless told: the split's only one, or the one extraction
    attached, named after the dataset's task (columns added with `ytune cache label` are learned
    by name, with --label)."""
    columns = list(cache.manifest.splits[split].labels) if split in cache.manifest.splits else []
    task = cache.identity.dataset.split("[:")[0].rsplit("/", 1)[-1]  # glue/sst2[:300] -> sst2
    if len(columns) == 1 or task in columns:
        return columns[0] if len(columns) == 1 else task
    raise UserError(
        f"name the label column to learn with --label (split {split!r} has: {', '.join(columns) or 'none'})."
    )


def resolve_head_layers(cache: Cache, layers: Sequence[int] | None) -> list[int]:
    """Hidden-state indices a head reads, negatives counted from the encoder's last layer."""
    cached = list(cache.identity.layers)
    if layers is None:
        return cached
    total = int(cache.manifest.info.get("num_hidden_layers", max(cached))) + 1
    out = []
    for i in layers:
        j = resolve_index(i, total)
        if j not in cached:
            raise UserError(f"layer {i} is not in the cache, which holds hidden states {cached}.")
        out.append(j)
    return out


def _build(cache: Cache, spec: HeadSpec, cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, _Run]:
    """A single head, initialised as it would be in a run of its own, and its run record."""
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
    lr = next(x for x in (spec.lr, cfg.lr, KIND_DEFAULTS[config.kind]["lr"]) if x is not None)
    wd = cfg.weight_decay if spec.weight_decay is None else spec.weight_decay
    return head, _Run(info, column, lr, wd)


def batches(reader: SplitReader, cfg: TrainConfig, labels: Sequence[str], layers: Sequence[int], *, shuffle: bool,
            epoch: int = 0, keep: np.ndarray | None = None) -> Iterator[Batch]:  # fmt: skip
    """The split's batches (only the rows `keep` marks, if given), through a DataLoader with
    `cfg.workers` worker processes (0: read ahead by a thread of this one), page-locked on CUDA so
    their copies to the GPU overlap compute. The stream orders itself from `cfg.seed`; the loader
    gets a generator of its own, because each of its iterators draws a seed from it, which from
    torch's global generator would shift the heads' dropout with every epoch and evaluation."""
    pin = pick_device(cfg.device).type == "cuda"
    dataset = reader.dataset(cfg.batch_size, labels=list(labels), layers=list(layers), shuffle=shuffle,
                             seed=cfg.seed, epoch=epoch, buffer_size=cfg.buffer_size, keep=keep, pin=pin)  # fmt: skip
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=cfg.workers,
        pin_memory=pin and cfg.workers > 0,
        generator=torch.Generator(),
    )
    return iter(loader)


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


def predictions(output: torch.Tensor, kind: str) -> np.ndarray:
    return (output.float() if kind == "regression" else output.argmax(-1)).cpu().numpy()


def evaluate_bank(bank: HeadBank, kinds: dict[str, str], reader: SplitReader, cfg: TrainConfig,
                  layers: Sequence[int], device: torch.device, keep: np.ndarray | None = None,
                  ) -> tuple[dict[str, np.ndarray], np.ndarray]:  # fmt: skip
    """Every head's predictions over a split (the rows `keep` marks), in source row order, from one
    read of it."""
    bank.eval()
    stacks = sorted({bank.where[name][0] for name in kinds})
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in kinds}
    rows = []
    with torch.inference_mode():
        for batch in batches(reader, cfg, [], layers, shuffle=False, keep=keep):
            batch = batch.to(device)
            with autocast(device):
                outs = bank.forward_stacks(batch.features, batch.mask, stacks)
            for name in kinds:
                s, i = bank.where[name]
                outputs[name].append(predictions(outs[s][i], kinds[name]))
            rows.append(batch.rows.cpu().numpy())
    order = np.argsort(np.concatenate(rows))
    return {name: np.concatenate(o)[order] for name, o in outputs.items()}, np.concatenate(rows)[order]


def _schedule(step: int, steps: int, warmup: float) -> float:
    """The learning rate's factor at `step`: linear warm-up, then linear decay to 0."""
    warm = max(1, int(warmup * steps))
    return min((step + 1) / warm, max(0.0, (steps - step) / max(1, steps - warm)))


class _Training:
    """One run: the heads, stacked into a bank, their optimizers, the data, and where they are."""

    def __init__(self, cache_path: str | Path, specs: Sequence[HeadSpec], cfg: TrainConfig, out: Path,
                 log) -> None:  # fmt: skip
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise UserError(f"head names must differ: {', '.join(names)}.")
        self.cfg, self.out, self.log, self.specs = cfg, out, log, specs
        self.cache = cache = open_cache(cache_path)
        self.reader, self.eval_reader = cache.split(cfg.train_split), cache.split(cfg.eval_split)
        self.device = _device(cfg)
        built = {s.name: _build(cache, s, cfg, self.device) for s in specs}
        self.runs = {name: run for name, (_, run) in built.items()}
        self.bank, union = HeadBank.reading({n: (h, r.info.layers) for n, (h, r) in built.items()})
        self.stream_layers = [list(cache.identity.layers).index(i) for i in union]
        self.members = [[self.runs[n] for n in names] for names in self.bank.names]
        self.optimizers = [
            StackedAdamW(stack, [r.lr for r in runs], [r.weight_decay for r in runs])
            for stack, runs in zip(self.bank.stacks, self.members, strict=True)
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
        self.step = 0
        self.encoder_params = int(cache.manifest.info.get("encoder_parameters", 0))
        # Each head's labels on the split it is selected on (rows held out of training, or the
        # evaluation split), read once.
        held = self.keep_select is not None
        self.selection = HOLDOUT if held else cfg.eval_split
        labels = {r.info.label for r in self.runs.values()}
        columns = {} if held else {c: cache.labels(cfg.eval_split, c).values for c in labels}
        self.select_labels = {
            n: r.column.values if held else columns[r.info.label] for n, r in self.runs.items()
        }

    def describe(self) -> None:
        for name, r in self.runs.items():
            n = self.parameters(name)
            share = f" ({100 * n / self.encoder_params:.2f}% of the encoder's {self.encoder_params / 1e6:.1f}M)" \
                if self.encoder_params else ""  # fmt: skip
            self.log(
                f"head {name}: {r.info.config.head_type}, {n} tunable parameters{share}, layers {r.info.layers}"
            )
        self.log(f"{self.epochs} epochs over {self.train_rows} training rows")
        if self.keep_select is not None:
            self.log(
                f"selecting on {int(self.keep_select.sum())} held-out training rows, which no head trains on"
            )

    def parameters(self, name: str) -> int:
        stack, _ = self.bank.head(name)
        return count_parameters(stack) // stack.size

    def start(self) -> int:
        """A fresh run: each head's folder, its log emptied; the first epoch is 0."""
        for name in self.runs:
            (self.out / name).mkdir(parents=True, exist_ok=True)
            (self.out / name / "log.jsonl").unlink(missing_ok=True)
        return 0

    def record(
        self, epoch: int, losses: dict[str, float], scores: dict[str, dict], seen: int, seconds: float
    ) -> None:
        """An epoch's loss and selection metrics per head: its history and log line, its checkpoint
        when the epoch is its best so far, its patience otherwise."""
        for name, metrics in scores.items():
            r = self.runs[name]
            entry = {"epoch": epoch, "loss": losses[name], **{f"{self.selection}_{k}": v for k, v in metrics.items()},
                     "seconds": seconds, "examples_per_s": seen / seconds}  # fmt: skip
            r.history.append(entry)
            score = metrics[r.info.metrics[0]]
            if score > r.best:
                r.best, r.best_epoch, r.best_metrics, r.stale = score, epoch, metrics, 0
                self.save(name)
            else:
                r.stale += 1
                r.done = bool(self.cfg.patience) and r.stale >= self.cfg.patience
            self.log(json.dumps({"head": name, **entry}))
            with open(self.out / name / "log.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")

    def finish(self) -> dict[str, dict]:
        """Each head's metrics on the evaluation split at its best epoch (with holdout selection, its
        checkpoint scored once now), written to metrics.json beside its curves."""
        cfg, out = self.cfg, self.out
        final = {n: r.best_metrics for n, r in self.runs.items()}
        if cfg.select_on == HOLDOUT:
            final = evaluate([out / n for n in self.runs], self.cache.path, cfg.eval_split, cfg)
        for name, r in self.runs.items():
            summary = {"best_epoch": r.best_epoch, "selected_on": self.selection,
                       "selection": r.best_metrics, cfg.eval_split: final[name], "lr": r.lr, "weight_decay": r.weight_decay,
                       "tunable_parameters": self.parameters(name),
                       "encoder_parameters": self.encoder_params, "history": r.history}  # fmt: skip
            (out / name / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
            plot_curves(r.history, out / name / "curves.png", name)
        return final

    def save_state(self, epoch: int) -> None:
        """Everything a resumed run needs after `epoch`, in one file replaced atomically: the stacks,
        the optimizers' moments, the random states (CPU and every CUDA device), and as JSON the
        step, each head's record, and the settings a resume must match."""
        tensors = {"rng.cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            tensors.update({f"rng.cuda.{d}": s for d, s in enumerate(torch.cuda.get_rng_state_all())})
        steps = []
        for i, (stack, optimizer) in enumerate(zip(self.bank.stacks, self.optimizers, strict=True)):
            tensors.update({f"stacks.{i}.{k}": v for k, v in stack.state_dict().items()})
            saved = optimizer.state_dict()
            for key in ("exp_avgs", "exp_avg_sqs"):
                tensors.update({f"optimizers.{i}.{key}.{j}": t for j, t in enumerate(saved[key])})
            steps.append(saved["steps"])
        meta = {"epoch": epoch, "step": self.step, "steps": steps, "config": _config_key(self.specs, self.cfg),
                "runs": {n: {k: getattr(r, k) for k in _Run.SAVED} for n, r in self.runs.items()}}  # fmt: skip
        tmp = self.out / f".{STATE}.tmp"
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, {"state": json.dumps(meta)}
        )
        tmp.replace(self.out / STATE)

    def resume(self) -> int:
        """Load the state after the last finished epoch; returns the epoch to start at."""
        path = self.out / STATE
        try:
            with safe_open(path, "pt") as f:
                meta, tensors = json.loads(f.metadata()["state"]), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except (OSError, ValueError, KeyError, SafetensorError) as e:
            raise UserError(
                f"{path} is not a resumable training state ({type(e).__name__}); use another --out."
            ) from None
        if sorted(meta["runs"]) != sorted(self.runs) or meta["config"] != _config_key(self.specs, self.cfg):
            raise UserError(f"{path} was saved by a run with other heads or settings; use another --out.")  # fmt: skip
        for i, (stack, optimizer) in enumerate(zip(self.bank.stacks, self.optimizers, strict=True)):
            prefix = f"stacks.{i}."
            stack.load_state_dict(
                {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
            )
            moments = {key: [tensors[k] for k in sorted(tensors, key=_natural) if k.startswith(f"optimizers.{i}.{key}.")]
                       for key in ("exp_avgs", "exp_avg_sqs")}  # fmt: skip
            optimizer.load_state_dict({**moments, "steps": meta["steps"][i]})
        for name, r in self.runs.items():
            for key in _Run.SAVED:
                setattr(r, key, meta["runs"][name][key])
        torch.set_rng_state(tensors["rng.cpu"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        self.step = meta["step"]
        self.log(f"resuming after epoch {meta['epoch']} from {path}")
        return meta["epoch"] + 1

    def train_epoch(self, epoch: int, active: list[str]) -> tuple[dict[str, float], int, float]:
        """One pass over the training rows for the active heads: their mean losses, rows, seconds."""
        cfg, runs, where = self.cfg, self.runs, self.bank.where
        stacks = sorted({where[n][0] for n in active})
        on = [[not r.done for r in self.members[s]] for s in range(len(self.members))]
        # Heads stopped early learn nothing more: their losses are masked out of the backward.
        masks = {s: torch.tensor(on[s], dtype=torch.float32, device=self.device) for s in stacks}
        start, seen = time.perf_counter(), 0
        sums = {s: torch.zeros(len(self.members[s]), device=self.device) for s in stacks}
        self.bank.train()
        stream = batches(self.reader, cfg, sorted({runs[n].info.label for n in active}), self.stream_layers,
                         shuffle=True, epoch=epoch, keep=self.keep_train)  # fmt: skip
        bar = tqdm(stream, total=self.batches_per_epoch, desc=f"epoch {epoch}", unit="batch", file=sys.stderr,
                   disable=not cfg.progress if cfg.progress is not None else None, leave=False)  # fmt: skip
        for batch in bar:
            batch = batch.to(self.device, non_blocking=True)
            with autocast(self.device):
                outputs = self.bank.forward_stacks(batch.features, batch.mask, stacks)
            total = 0
            for s, output in outputs.items():
                members = self.members[s]
                targets = torch.stack([batch.labels[r.info.label] for r in members])
                losses = losses_of(output, targets, members[0].column.kind)
                total = total + (losses * masks[s]).sum()
                sums[s] += losses.detach() * len(batch.rows)  # on the device: no sync per batch
            total.backward()  # heads share no parameters: each gets exactly its own gradient
            factor = _schedule(self.step, self.steps, cfg.warmup)
            for s in stacks:
                self.optimizers[s].step(factor, on[s], cfg.clip)
                self.optimizers[s].zero_grad()
            self.step += 1
            seen += len(batch.rows)
        sums = {s: total.cpu() for s, total in sums.items()}
        losses = {n: float(sums[where[n][0]][where[n][1]]) / max(seen, 1) for n in active}
        return losses, seen, time.perf_counter() - start

    def select(self, active: Sequence[str]) -> dict[str, dict]:
        """The active heads' metrics on the split they are selected on."""
        kinds = {n: self.runs[n].column.kind for n in active}
        reader = self.reader if self.keep_select is not None else self.eval_reader
        preds, rows = evaluate_bank(self.bank, kinds, reader, self.cfg, self.stream_layers, self.device,
                                    keep=self.keep_select)  # fmt: skip
        return {
            n: compute_metrics(self.runs[n].info.metrics, preds[n], self.select_labels[n][rows])
            for n in active
        }

    def save(self, name: str) -> None:
        stack, i = self.bank.head(name)
        save_head(self.out / name, head_state(stack, i), self.runs[name].info)


def train(cache_path: str | Path, specs: Sequence[HeadSpec], cfg: TrainConfig, out: str | Path,
          resume: bool = False, log=print) -> dict[str, dict]:  # fmt: skip
    """Train every head in `specs` on one stream of the cache; returns each head's metrics on the
    evaluation split at its best epoch (chosen on cfg.select_on)."""
    run = _Training(cache_path, specs, cfg, Path(out), log)
    run.describe()
    first_epoch = run.resume() if resume and (Path(out) / STATE).exists() else run.start()
    for epoch in range(first_epoch, run.epochs):
        active = [n for n, r in run.runs.items() if not r.done]
        if not active:  # every head stopped by patience
            break
        losses, seen, seconds = run.train_epoch(epoch, active)
        run.record(epoch, losses, run.select(active), seen, seconds)
        run.save_state(epoch)
    return run.finish()


def _natural(key: str) -> tuple:
    """Sort "a.10" after "a.9"."""
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


def _config_key(specs: Sequence[HeadSpec], cfg: TrainConfig) -> str:
    keep = {
        k: v
        for k, v in cfg.__dict__.items()
        if k not in ("epochs", "device", "progress", "threads")  # workers stay: they set the stream's order
    }
    return json.dumps([[s.__dict__ for s in specs], keep], sort_keys=True, default=str)


def _device(cfg: TrainConfig) -> torch.device:
    device = pick_device(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads)
        _keep_freed_memory()
    return device


def _keep_freed_memory() -> None:
    """Let glibc keep freed blocks of up to 256 MB for reuse. By default it maps each large block
    afresh and unmaps it when freed, so every step's weight-sized gradients and activations fault
    their pages in again: measured on a 2-core CPU, 27% of a step of 8 stacked default heads and 10%
    of one head's. Glibc only (elsewhere nothing changes); memory stays bounded by the 512 MB trim."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD


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
        if info.name in loaded:
            raise UserError(f"two of the heads are named {info.name!r}; evaluate them one at a time.")
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
