"""GLUE: its tasks (label sets, metrics) and their rows, from a local folder or the hub.

A local folder in the standard GLUE layout comes first, because extraction machines often cannot
reach the Hugging Face hub; without one the task comes from the hub (`nyu-mll/glue`), whose label
indices are the same. The official files are read the way they are meant to be (no quoting, every
row as long as the header, empty texts kept), since they define the benchmark's rows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ytune.errors import UserError
from ytune.extract.columns import check_columns
from ytune.extract.data import (
    SplitData,
    TaskSpec,
    TextDataset,
    check_limit,
    choose_splits,
    cutting_limit,
    first_rows,
    first_split_rows,
    limited_name,
    read_past,
)
from ytune.extract.labels import class_index, hub_labels

__all__ = ["GLUE_TASKS", "load_glue"]

GLUE_DIR_ENV = "YTUNE_GLUE_DIR"
"""Environment variable naming a local GLUE folder, read when `load_glue` gets no `data_dir`."""

HUB_GLUE = "nyu-mll/glue"

GLUE_TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", "classification", ("negative", "positive"), ("accuracy",)),
    "cola": TaskSpec("cola", "classification", ("unacceptable", "acceptable"), ("mcc",)),
    "mrpc": TaskSpec("mrpc", "classification", ("not_equivalent", "equivalent"), ("f1", "accuracy")),
    "rte": TaskSpec("rte", "classification", ("entailment", "not_entailment"), ("accuracy",)),
    "stsb": TaskSpec("stsb", "regression", None, ("pearson", "spearman")),
    "wnli": TaskSpec("wnli", "classification", ("not_entailment", "entailment"), ("accuracy",)),
    "qnli": TaskSpec("qnli", "classification", ("entailment", "not_entailment"), ("accuracy",)),
    "qqp": TaskSpec("qqp", "classification", ("not_duplicate", "duplicate"), ("f1", "accuracy")),
    "mnli": TaskSpec("mnli", "classification", ("entailment", "neutral", "contradiction"), ("accuracy",)),
}
"""The GLUE tasks by their short name. Label index orders match the Hugging Face `nyu-mll/glue`
dataset, so a local folder and the hub give the same class indices."""


def glue_task(task: Any) -> TaskSpec | None:
    """The GLUE task a name (any case) stands for, or None: a user's `--task sst2` over their own
    files brings that task's labels and metrics."""
    return GLUE_TASKS.get(task.lower()) if isinstance(task, str) else None


@dataclass(frozen=True)
class _GlueLayout:
    """Where a GLUE task lives in the standard download and on the hub, and which columns to read."""

    folder: str
    text: str
    pair: str | None
    label: tuple[str, ...]  # candidate label columns, first present wins (MNLI: gold_label, then label)
    hub_text: str
    hub_pair: str | None
    headerless: tuple[str, ...] | None = None  # column names of files without a header row (CoLA)
    mnli_splits: bool = False

    def files(self) -> dict[str, str]:
        """Split name -> file name in the task's folder."""
        return _MNLI_FILES if self.mnli_splits else _GLUE_FILES


_GLUE_LAYOUT: dict[str, _GlueLayout] = {
    "sst2": _GlueLayout("SST-2", "sentence", None, ("label",), "sentence", None),
    "cola": _GlueLayout(
        "CoLA",
        "sentence",
        None,
        ("label",),
        "sentence",
        None,
        headerless=("source", "label", "original_label", "sentence"),
    ),
    "mrpc": _GlueLayout("MRPC", "#1 String", "#2 String", ("Quality",), "sentence1", "sentence2"),
    "rte": _GlueLayout("RTE", "sentence1", "sentence2", ("label",), "sentence1", "sentence2"),
    "stsb": _GlueLayout("STS-B", "sentence1", "sentence2", ("score",), "sentence1", "sentence2"),
    "wnli": _GlueLayout("WNLI", "sentence1", "sentence2", ("label",), "sentence1", "sentence2"),
    "qnli": _GlueLayout("QNLI", "question", "sentence", ("label",), "question", "sentence"),
    "qqp": _GlueLayout("QQP", "question1", "question2", ("is_duplicate",), "question1", "question2"),
    "mnli": _GlueLayout(
        "MNLI", "sentence1", "sentence2", ("gold_label", "label"), "premise", "hypothesis", mnli_splits=True
    ),
}

_GLUE_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_MNLI_FILES = {
    "train": "train.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
    "test_matched": "test_matched.tsv",
    "test_mismatched": "test_mismatched.tsv",
}


def load_glue(
    task: str,
    splits: Sequence[str],
    data_dir: str | Path | None = None,
    limit: int | None = None,
) -> TextDataset:
    """Load GLUE task `task` (short name, e.g. "sst2") for the given split names.

    Reads a local folder in the standard GLUE layout (`<data_dir>/SST-2/train.tsv`, ...) when one is
    found; `data_dir=None` means `$YTUNE_GLUE_DIR`. `data_dir` may also be the task folder itself.
    Without a local folder the task comes from the hub (`nyu-mll/glue`).

    Splits are "train", "validation", "test" (MNLI: "train", "validation_matched",
    "validation_mismatched", "test_matched", "test_mismatched"). GLUE's test sets are hidden, so a
    test split has `labels=None`. `limit` keeps the first N rows of each split and marks the dataset
    name (`glue/sst2[:N]`) so a limited run never shares a cache with the full dataset; a limit that
    cuts no split leaves the name, and the cache, the whole dataset's.

    Empty texts are kept, not rejected as `load_files` does: the official files define the
    benchmark's rows, and dropping one would misalign evaluation with everyone else's.
    """
    check_limit(limit)
    spec = glue_task(task)
    if spec is None:
        raise UserError(f"Unknown GLUE task {task!r}; choose one of {', '.join(GLUE_TASKS)}.")
    key, layout = spec.name, _GLUE_LAYOUT[spec.name]
    files = layout.files()
    if isinstance(splits, str):
        splits = [splits]
    if not splits:
        raise UserError(f"No split asked for GLUE task {key!r}; choose from {', '.join(files)}.")
    splits = choose_splits(splits, files, f"GLUE task {key!r}")

    if data_dir is None:
        data_dir = os.environ.get(GLUE_DIR_ENV) or None
    folder = _find_glue_folder(Path(data_dir).expanduser(), layout.folder) if data_dir else None
    if folder is None:
        data = _load_glue_hub(key, layout, spec, splits, read_past(limit), data_dir)
    else:
        data = {
            split: _read_glue_split(folder, key, split, layout, spec, read_past(limit)) for split in splits
        }
    limit = cutting_limit(limit, map(len, data.values()))
    return TextDataset(
        name=limited_name(f"glue/{key}", limit), task=spec, splits=first_split_rows(data, limit)
    )


# --------------------------------------------------------------------------------------------------
# A local folder


def _find_glue_folder(data_dir: Path, folder: str) -> Path | None:
    """The task's folder under `data_dir`, or `data_dir` itself when the user pointed at it."""
    if (data_dir / folder).is_dir():
        return data_dir / folder
    if data_dir.is_dir() and data_dir.name.lower() == folder.lower():
        return data_dir
    return None


def _read_glue_split(
    folder: Path, task: str, split: str, layout: _GlueLayout, spec: TaskSpec, limit: int | None
) -> SplitData:
    files = layout.files()
    path = folder / files[split]
    if not path.is_file():
        present = [s for s, f in files.items() if (folder / f).is_file()]
        raise UserError(
            f"GLUE file {path} for split {split!r} of task {task!r} does not exist; splits present "
            f"in {folder}: {', '.join(present) or 'none'}."
        )
    header, rows = _read_glue_tsv(path, layout, limit)
    check_columns(header, {"text": layout.text, "text pair": layout.pair}, f"GLUE file {path}")
    col = {name: i for i, name in enumerate(header)}
    label_col = next((col[c] for c in layout.label if c in col), None)
    if label_col is None and not split.startswith("test"):
        raise UserError(
            f"GLUE file {path} has no label column {' or '.join(map(repr, layout.label))}; "
            f"its columns are: {', '.join(header)}."
        )

    ti = col[layout.text]
    texts = [r[ti] for r in rows]
    pairs = [r[col[layout.pair]] for r in rows] if layout.pair else None
    labels = None
    if label_col is not None:
        parse = _glue_label_parser(spec)
        labels = []
        for i, r in enumerate(rows):
            try:
                labels.append(parse(r[label_col]))
            except ValueError as e:
                raise UserError(f"Row {i + 1} of GLUE file {path}: {e}.") from None
    return SplitData(texts=texts, pairs=pairs, labels=labels)


def _glue_label_parser(spec: TaskSpec):
    """A function from a label cell to its class index (by name or by index) or float target."""
    if spec.kind == "regression":

        def parse_float(s: str) -> float:
            try:
                v = float(s)
            except ValueError:
                raise ValueError(f"the score {s!r} is not a number") from None
            if not math.isfinite(v):
                raise ValueError(f"the score {s!r} is not a finite number")
            return v

        return parse_float

    names = spec.label_names or ()
    index = class_index(names)

    def parse_class(s: str) -> int:
        try:
            return index[s.strip()]
        except KeyError:
            raise ValueError(
                f"the label {s!r} is not one of {', '.join(names)} or their indices 0-{len(names) - 1}"
            ) from None

    return parse_class


def _read_glue_tsv(path: Path, layout: _GlueLayout, limit: int | None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a GLUE TSV, the way the GLUE files are meant to be read.

    Quoting is off (SST-2 and MRPC hold bare `"`), the encoding strips MRPC's byte-order mark, and
    only "\\n" ends a line, so no character inside a text can split a row. Every row must have as
    many fields as the header: a short or long row means a corrupt file, never something to guess.
    """
    header: list[str] | None = None
    rows: list[list[str]] = []
    try:
        with open(path, encoding="utf-8-sig", newline="\n") as f:
            for lineno, line in enumerate(f, start=1):
                line = line.removesuffix("\n").removesuffix("\r")
                if not line:
                    continue
                fields = line.split("\t")
                if header is None:
                    # CoLA's train/dev files have no header row; its test file has one.
                    if layout.headerless and layout.text not in fields:
                        header = list(layout.headerless)
                    else:
                        header = fields
                        continue
                if len(fields) != len(header):
                    raise UserError(
                        f"Line {lineno} of GLUE file {path} has {len(fields)} tab-separated fields "
                        f"where the header has {len(header)}; the file looks corrupt."
                    )
                rows.append(fields)
                if limit is not None and len(rows) >= limit:
                    break
    except UnicodeDecodeError as e:
        raise UserError(f"GLUE file {path} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    if header is None or not rows:
        raise UserError(f"GLUE file {path} holds no rows.")
    return header, rows


# --------------------------------------------------------------------------------------------------
# The hub


def _load_glue_hub(
    task: str,
    layout: _GlueLayout,
    spec: TaskSpec,
    splits: list[str],
    limit: int | None,
    data_dir: str | Path | None,
) -> dict[str, SplitData]:
    """The task from the Hugging Face hub; any failure there is the user's to fix by pointing at files."""
    where = f"in {data_dir}" if data_dir else f"(no --data-dir given and ${GLUE_DIR_ENV} unset)"
    try:
        import datasets

        ds = datasets.load_dataset(HUB_GLUE, task)
    except Exception as e:  # no network, no cache, hub changes: all end the same way for the user
        raise UserError(
            f"No local GLUE folder {layout.folder} was found {where} and the Hugging Face hub is "
            f"unreachable ({type(e).__name__}); pass --data-dir or set ${GLUE_DIR_ENV} to a folder in "
            f"the standard GLUE layout ({layout.folder}/train.tsv, ...)."
        ) from e
    out = {}
    for split in splits:
        cols = first_rows(ds[split], limit)[:]
        labels = cols["label"]
        if all(v is None for v in hub_labels(labels)):  # a hidden test split
            labels = None
        elif spec.kind == "regression":
            labels = [float(v) for v in labels]
        else:
            labels = [int(v) for v in labels]
        out[split] = SplitData(
            texts=list(cols[layout.hub_text]),
            pairs=list(cols[layout.hub_pair]) if layout.hub_pair else None,
            labels=labels,
        )
    return out
