"""The text datasets every source becomes, and the rules all sources share.

Every loader (`glue.load_glue`, `files.load_files`, `hf.load_hf`) turns its source of labelled
text into one small, plain structure (`TextDataset`: a `TaskSpec` plus, per split, parallel lists
of texts, optional second texts and labels), so that the extractor, the cache's label columns and
the trainer all see the same rows in the same order whatever the source was. Rows keep their
source order: the cache records each example's row in its split, and labels are joined back to
features by that row.

Every problem a user can fix (a wrong task or split name, a missing file or column, a malformed
row) raises `UserError` with one sentence naming the thing; nothing here prints or exits.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ytune.errors import UserError

__all__ = ["SplitData", "TaskSpec", "TextDataset", "text_fingerprint"]


@dataclass(frozen=True)
class TaskSpec:
    """What a head must predict and how it is scored; trainer and checkpoints carry it as is.

    `label_names` fixes the meaning of each class index once (at load time), so a checkpoint, a
    cache's label column and a prediction all agree on which index is which label.
    """

    name: str  # "sst2", or the user's --task name
    kind: str  # "classification" | "regression"
    label_names: tuple[str, ...] | None  # classification: the label set in index order; regression: None
    # from {"accuracy", "f1", "mcc", "pearson", "spearman"}; the first selects the best epoch
    metrics: tuple[str, ...]


@dataclass
class SplitData:
    """One split as parallel lists, in source row order (row i of every list is example i)."""

    texts: list[str]
    pairs: list[str] | None  # second text of pair tasks, else None
    labels: list[int | float | None] | None  # class index or float target; None: the split has no labels

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class TextDataset:
    """A named set of splits for one task; `name` is part of the cache identity."""

    name: str  # e.g. "glue/sst2"; with a limit "glue/sst2[:1000]"
    task: TaskSpec
    splits: dict[str, SplitData]  # split name -> data, in the order asked


# --------------------------------------------------------------------------------------------------
# Splits and limits, the same for every source


def choose_splits(asked: Iterable[str], available: Iterable[str], owner: str) -> list[str]:
    """The splits asked for, each once and in the order asked; one that `owner` (e.g. "GLUE task
    'sst2'") lacks is an error naming the ones it has."""
    available = list(available)
    chosen = list(dict.fromkeys(asked))
    for split in chosen:
        if split not in available:
            raise UserError(f"{owner} has no split {split!r} (it has: {', '.join(available)}).")
    return chosen


def reference_split(splits: Iterable[str]) -> str:
    """The split that fixes an inferred label set and names a dataset of files: "train", else the
    first one given."""
    splits = list(splits)
    return "train" if "train" in splits else splits[0]


def check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit must be a positive whole number of rows, not {limit!r}.")


def limited_name(name: str, limit: int | None) -> str:
    """A limited dataset is another dataset: its name, so its cache, must never be the full one's."""
    return name if limit is None else f"{name}[:{limit}]"


def read_past(limit: int | None) -> int | None:
    """How many rows a loader reads for `limit`: one more, which tells a limit that cuts a split from
    one that keeps it whole."""
    return None if limit is None else limit + 1


def cutting_limit(limit: int | None, sizes: Iterable[int]) -> int | None:
    """The limit that names the dataset: None when it cuts no split (every split's row count, read
    past the limit, is at most the limit), since it then reads the whole dataset, whose name and
    cache it must share."""
    return None if limit is None or all(n <= limit for n in sizes) else limit


def first_split_rows(splits: dict[str, SplitData], limit: int | None) -> dict[str, SplitData]:
    """Each split's first `limit` rows (all of them when None)."""
    if limit is None:
        return splits
    return {
        name: SplitData(
            split.texts[:limit],
            None if split.pairs is None else split.pairs[:limit],
            None if split.labels is None else split.labels[:limit],
        )
        for name, split in splits.items()
    }


def first_rows(dataset: Any, limit: int | None) -> Any:
    """The first `limit` rows of a `datasets.Dataset` (all of them when None)."""
    return dataset if limit is None else dataset.select(range(min(limit, len(dataset))))


# --------------------------------------------------------------------------------------------------
# Identity


def text_fingerprint(split: SplitData) -> str:
    """SHA-256 (hex) of a split's texts and second texts, in row order.

    Part of the cache identity: same texts in the same order, same features, so a split added later
    can join an existing cache and a changed file can never reuse stale features. Labels are left
    out on purpose: they are not features, and new labels over cached texts must not force a new
    extraction. Every string is length-prefixed, so ("ab", "c") and ("a", "bc") differ, as do
    "no pairs" and "empty pairs". Only the UTF-8 bytes count, so it is stable across machines.
    """
    h = hashlib.sha256()
    h.update(b"ytune-text-fingerprint-v1\0")

    def add(strings: Sequence[str]) -> None:
        h.update(struct.pack("<Q", len(strings)))
        parts = []
        for s in strings:
            b = s.encode("utf-8", "surrogatepass")
            parts.append(struct.pack("<Q", len(b)))
            parts.append(b)
        h.update(b"".join(parts))

    add(split.texts)
    if split.pairs is None:
        h.update(b"\0")
    else:
        h.update(b"\1")
        add(split.pairs)
    return h.hexdigest()
