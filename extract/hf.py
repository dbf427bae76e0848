"""A Hugging Face `datasets` source: a `Dataset` or `DatasetDict` in memory, a folder written by
`save_to_disk`, or a hub dataset's name. Its columns go through the checks the user's files get."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ytune.errors import UserError
from ytune.extract.columns import check_columns, from_tables
from ytune.extract.data import TextDataset, check_limit, choose_splits, cutting_limit, first_rows
from ytune.extract.glue import glue_task
from ytune.extract.labels import classification_task, hub_labels

__all__ = ["load_hf"]


def load_hf(
    source: Any,
    text_field: str,
    text_pair_field: str | None = None,
    label_field: str | None = None,
    task: str | None = None,
    splits: Sequence[str] | None = None,
    config: str | None = None,
    limit: int | None = None,
) -> TextDataset:
    """A Hugging Face `datasets` source: a `Dataset` or `DatasetDict`, a folder written by
    `save_to_disk`, or a hub dataset's name (with `config`, where the hub is reachable).

    Its columns go through the same checks as files' (texts must be non-empty strings; labels as
    `load_files` reads them), except that a `ClassLabel` column keeps its names in their order,
    and a split whose labels are all -1 (the hub's unlabelled test splits) has no labels.
    `splits` picks splits (default: all); `limit` keeps the first N rows of each (and names the
    dataset as the whole one when it cuts no split).
    """
    import datasets

    check_limit(limit)
    parts, name = _open(source, config, task)
    chosen = choose_splits(splits or parts, parts, f"the dataset {name!r}")
    limit = cutting_limit(limit, (len(parts[split]) for split in chosen))
    known = glue_task(task)
    tables, wheres = {}, {}
    for split in chosen:
        part = first_rows(parts[split], limit)
        wheres[split] = f"split {split!r} of {name}"
        check_columns(part.column_names, {"text": text_field, "text pair": text_pair_field}, wheres[split])
        wanted = [c for c in (text_field, text_pair_field, label_field) if c is not None]
        tables[split] = part.select_columns([c for c in wanted if c in part.column_names]).to_dict()
        feature = part.features.get(label_field) if label_field else None
        if isinstance(feature, datasets.ClassLabel):
            known = known or classification_task(task or name, tuple(feature.names))
            tables[split][label_field] = hub_labels(tables[split][label_field])
    return from_tables(tables, wheres, text_field, text_pair_field, label_field, task or name, known, limit)


def _open(source: Any, config: str | None, task: str | None) -> tuple[Mapping[str, Any], str]:
    """The source's splits by name, and its name (for messages, and the cache's identity)."""
    import datasets

    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_dir():
            try:
                source, name = datasets.load_from_disk(str(path)), path.name
            except (FileNotFoundError, ValueError) as e:
                raise UserError(f"{path} is not a dataset folder written by save_to_disk ({e}).") from None
        else:
            name = f"{source}/{config}" if config else str(source)
            try:
                source = datasets.load_dataset(str(source), config)
            except Exception as e:  # the hub and the builders raise many types; each is one sentence
                raise UserError(f"cannot load the dataset {name!r} ({type(e).__name__}: {e}).") from None
    else:
        first = source if isinstance(source, datasets.Dataset) else next(iter(source.values()))
        name = task or first.info.dataset_name or "dataset"
    if isinstance(source, datasets.Dataset):
        return {source.split and str(source.split) or "train": source}, name
    return source, name
