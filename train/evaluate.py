"""Scoring heads on a split: every head's predictions from one read of it, and the metrics of trained
heads on any labelled split of a cache in their feature space.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ytune.cache.reader import SplitReader, open_cache
from ytune.device import autocast, pick_device
from ytune.errors import UserError
from ytune.train.checkpoint import head_folders, load_head
from ytune.train.config import TrainConfig
from ytune.train.metrics import compute_metrics
from ytune.train.model import HeadBank
from ytune.train.stream import batches


def predictions(output: torch.Tensor, kind: str) -> np.ndarray:
    """A head's answers from its output: scores for regression, classes otherwise."""
    return (output.float() if kind == "regression" else output.argmax(-1)).cpu().numpy()


def evaluate_bank(
    bank: HeadBank,
    kinds: dict[str, str],
    reader: SplitReader,
    cfg: TrainConfig,
    layers: Sequence[int],
    device: torch.device,
    keep: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every head's predictions over a split (the rows `keep` marks), in source row order, from one
    read of it; and those rows."""
    bank.eval()
    stacks = sorted({bank.where[name][0] for name in kinds})
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in kinds}
    rows = []
    with torch.inference_mode():
        for batch in batches(reader, cfg, [], layers, shuffle=False, keep=keep):
            batch = batch.to(device).widened()
            with autocast(device):
                outs = bank.combined(bank.forward_stacks(batch.features, batch.mask, stacks))
            for name in kinds:
                s, i = bank.where[name]
                outputs[name].append(predictions(outs[s][i], kinds[name]))
            rows.append(batch.rows.cpu().numpy())
    order = np.argsort(np.concatenate(rows))
    return {name: np.concatenate(o)[order] for name, o in outputs.items()}, np.concatenate(rows)[order]


def evaluate(
    head_dirs: Sequence[str | Path],
    cache_path: str | Path,
    split: str,
    cfg: TrainConfig | None = None,
    label: str | None = None,
) -> dict[str, dict]:
    """Metrics of trained heads on any labelled split of a cache in their feature space, each scored
    against the column `label` (None: the column it learned, which another dataset's cache may
    name differently)."""
    cfg = cfg or TrainConfig()
    cache = open_cache(cache_path)
    reader = cache.split(split)
    device = pick_device(cfg.device)
    loaded = {}
    for folder in [h for d in head_dirs for h in head_folders(d)]:  # a run's folder: each of its heads
        head, info = load_head(folder)
        if info.name in loaded:
            raise UserError(f"two of the heads are named {info.name!r}; evaluate them one at a time.")
        loaded[info.name] = (head.to(device), info, info.positions(cache.identity, f"cache {cache.path}"))
    bank, union = HeadBank.reading({n: (h, ps) for n, (h, _, ps) in loaded.items()})
    kinds = {n: info.config.kind for n, (_, info, _) in loaded.items()}
    preds, rows = evaluate_bank(bank, kinds, reader, cfg, union, device)
    results = {}
    for name, (_, info, _) in loaded.items():
        column = label or info.label
        if column not in cache.manifest.splits[split].labels:
            have = ", ".join(cache.manifest.splits[split].labels) or "none"
            raise UserError(
                f"split {split!r} of cache {cache.path} has no label column {column!r} (it has: {have}); "
                "name the one to score against with --label."
            )
        labels = cache.labels(split, column)
        if labels.kind != info.config.kind or (labels.names or None) != (info.label_names or None):
            raise UserError(
                f"label column {column!r} of split {split!r} has other labels than head {name!r} learned."
            )
        results[name] = compute_metrics(info.metrics, preds[name], labels.values[rows])
    return results
