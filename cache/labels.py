"""A new label column over texts already cached, without extracting again (`ytune cache label`).

Each cached row takes the label of the given row with the same text (and second text), so a file
in any order, or one file for several splits, labels them. A cached row the file lacks, or a text
the file labels twice differently, is refused with the row that shows it, never silently
mislabelled. The caller reads the user's file; this module sees its rows as plain lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from ytune.cache import store
from ytune.cache.reader import Cache, open_cache
from ytune.cache.remote import url_of
from ytune.cache.writer import CacheWriter
from ytune.errors import UserError


class LabelledRows(Protocol):
    """One split of the user's file: texts, second texts (None for single texts), a label each."""

    texts: list[str]
    pairs: list[str] | None
    labels: Sequence | None


class LabelTask(Protocol):
    """What the new column is: its name, kind, label names and metrics."""

    name: str
    kind: str
    label_names: Sequence[str] | None
    metrics: Sequence[str]


def label_files(items: Sequence[str], splits: Sequence[str] | None) -> dict[str, str]:
    """Which file labels which split: `SPLIT=PATH` items, and bare PATHs that label `splits`."""
    files: dict[str, str] = {}
    for item in items:
        split, _, file = item.rpartition("=")
        for s in [split] if split else splits or []:
            if files.setdefault(s, file) != file:
                raise UserError(f"split {s!r} is given two files ({files[s]} and {file}); give it one.")
        if not split and not splits:
            raise UserError(f"say which split(s) {file} labels: --split train, or --file train={file}.")
    return files


def open_to_label(path: Path, splits: Sequence[str], name: str, replace: bool = False) -> Cache:
    """The cache at `path`, once it is known to have `splits`, to lack a column `name` in them (unless
    `replace`: a column is a task's labels, and a same-named new one must not overwrite it unasked)
    and still be named after its id (the writer finds a cache by its id)."""
    cache = open_cache(path)
    unknown = [s for s in splits if s not in cache.splits]
    if unknown:
        raise UserError(f"cache {path} has no split {unknown[0]!r} (it has: {', '.join(cache.splits)}).")
    taken = [s for s in splits if name in cache.manifest.splits[s].labels]
    if taken and not replace:
        raise UserError(
            f"split(s) {', '.join(taken)} of cache {path} already have a label column {name!r}; "
            "give --replace to overwrite it, or another --name."
        )
    where = store.where(path)
    if where.rstrip("/").rsplit("/", 1)[-1] != cache.manifest.cache_id:
        raise UserError(
            f"{where} is not named after its cache id {cache.manifest.cache_id}; rename it back first."
        )
    return cache


def attach_labels(
    path: Path, cache: Cache, task: LabelTask, given: Mapping[str, tuple[str, LabelledRows]]
) -> None:
    """Join each split's given rows (`{split: (file, rows)}`, the file for messages) onto its cached
    texts, then write the column; a store's cache gets it too, its manifest last."""
    labels = {split: join_by_text(cache, split, file, rows) for split, (file, rows) in given.items()}
    with CacheWriter(path.parent, cache.identity, cache.manifest.backend) as writer:
        for split, values in labels.items():
            writer.set_labels(split, task.name, values, task.kind, task.label_names, task.metrics)
    url = url_of(path)
    if url:  # written in the mirror, then sent to the store
        store.publish(path, url.rsplit("/", 1)[0])


def join_by_text(cache: Cache, split: str, file: str, given: LabelledRows) -> list:
    """The file's label for each cached row of `split`, matched by text; runs of whitespace count as
    one space (SST-2's cached texts end in one that a cleaned copy drops)."""
    texts, pairs = cache.texts(split)
    if (pairs is None) != (given.pairs is None):
        fix = (
            "drop --text-pair-field"
            if given.pairs is not None
            else "name the second text's column with --text-pair-field"
        )
        held = "single texts" if pairs is None else "pairs of texts"
        raise UserError(f"split {split!r} holds {held}: {fix}.")
    index, twice = {}, set()
    for key, label in zip(_keys(given.texts, given.pairs), given.labels, strict=True):
        if index.setdefault(key, label) != label:
            twice.add(key)
    out, wanted = [], _keys(texts, pairs)
    for row, key in enumerate(wanted):
        if key in twice:
            raise UserError(
                f"{file} gives the text {texts[row]!r} (row {row + 1} of split {split!r}) two different labels."
            )
        if key not in index:
            missing = sum(k not in index for k in wanted)
            raise UserError(
                f"{missing} of the {cache.manifest.splits[split].rows} rows of split {split!r} have no text in {file} "
                f"({len(given.texts)} rows); the first is row {row + 1}: {texts[row]!r}."
            )
        out.append(index[key])
    return out


def _keys(texts: list[str], pairs: list[str] | None) -> list[tuple[str, str]]:
    """What rows are matched by: text and second text, whitespace runs folded to one space."""
    seconds = pairs or [""] * len(texts)
    return [(" ".join(t.split()), " ".join(p.split())) for t, p in zip(texts, seconds, strict=True)]
