"""A head to train, made from its spec and the cache: the label column it learns, the hidden states
it reads, its config and first weights, the record its checkpoints carry, its optimiser settings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ytune.cache.identity import resolve_index
from ytune.cache.reader import Cache, LabelColumn
from ytune.errors import UserError
from ytune.train.checkpoint import HeadInfo
from ytune.train.config import KIND_DEFAULTS, HeadConfig, HeadSpec, TrainConfig
from ytune.train.model import build_head


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


def check_splits(cache: Cache, cfg: TrainConfig) -> None:
    """The splits a run reads are in the cache; a missing one names the flag that picks another, so a
    cache of a training split alone is not a dead end."""
    have = list(cache.manifest.splits)
    for split, flag, role in (
        (cfg.train_split, "--train-split", "train"),
        (cfg.eval_split, "--eval-split", "evaluate"),
    ):
        if split not in have:
            raise UserError(
                f"cache {cache.path} has no split {split!r} to {role} on (it has: {', '.join(have) or 'none'}); "
                f"name one with {flag}."
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


def label_column(cache: Cache, spec: HeadSpec, split: str) -> LabelColumn:
    """The column the head learns on the training split, every row labelled."""
    label = spec.label or default_label(cache, split)
    column = cache.labels(split, label)
    missing = int(
        np.sum(column.values < 0) if column.kind == "classification" else np.isnan(column.values).sum()
    )
    if missing:
        raise UserError(f"{missing} rows of split {split!r} have no {label!r} label; training needs all.")
    return column


def head_config(spec: HeadSpec, column: LabelColumn, layers: Sequence[int], hidden: int) -> HeadConfig:
    """The spec's head settings over what the cache decides: the kind of task, the labels, the
    layers read and the encoder's width."""
    known = set(HeadConfig.__dataclass_fields__)
    unknown = sorted(set(spec.config) - known)
    if unknown:
        raise UserError(
            f"unknown head setting {', '.join(unknown)}; settings are: {', '.join(sorted(known))}."
        )
    cache_decides = {
        "kind": column.kind,
        "num_labels": len(column.names or [None]),
        "num_layers_in": len(layers),
        "hidden_in": hidden,
    }
    return HeadConfig(**{**spec.config, **cache_decides})


def head_for(
    cache: Cache, spec: HeadSpec, cfg: TrainConfig, device: torch.device
) -> tuple[nn.Module, HeadInfo, LabelColumn]:
    """A single head, initialised as it would be in a run of its own; the record its checkpoints
    carry; the label column it learns."""
    column = label_column(cache, spec, cfg.train_split)
    layers = resolve_head_layers(cache, spec.layers)
    config = head_config(spec, column, layers, int(cache.manifest.info["hidden_size"]))
    torch.manual_seed(head_seed(spec, cfg))  # every head starts as it would in a run of its own
    head = build_head(config).to(device)
    if config.label_init == "names":
        if column.vectors is None:
            raise UserError(
                f"label column {column.name!r} holds no label-name features (it was attached without the "
                "encoder); use label_init=random."
            )
        cached = list(cache.identity.layers)
        head.init_queries(
            torch.from_numpy(column.vectors[:, [cached.index(i) for i in layers]].mean(1)).to(device)
        )
    info = HeadInfo(
        spec.name,
        config,
        column.name,
        column.names,
        column.metrics,
        layers,
        cache.identity.to_dict(),
        cache.manifest.info,
    )
    return head, info, column


def optimizer_settings(spec: HeadSpec, cfg: TrainConfig, kind: str) -> tuple[float, float]:
    """A head's learning rate and weight decay: its own, else the run's, else its kind's default."""
    lr = next(x for x in (spec.lr, cfg.lr, KIND_DEFAULTS[kind]["lr"]) if x is not None)
    return lr, cfg.weight_decay if spec.weight_decay is None else spec.weight_decay


def head_seed(spec: HeadSpec, cfg: TrainConfig) -> int:
    """What seeds a head's first weights and dropout: its own seed, else the run's."""
    return cfg.seed if spec.seed is None else spec.seed
