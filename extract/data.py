"""Text datasets for the extraction stage: GLUE tasks, the user's own files, `datasets` sources.

Everything here turns some source of labelled text into one small, plain structure
(`TextDataset`: a `TaskSpec` plus, per split, parallel lists of texts, optional second texts and
labels), so that the extractor, the cache's label columns and the trainer all see the same rows in
the same order whatever the source was. Rows keep their source order: the cache records each
example's row in its split, and labels are joined back to features by that row.

Every problem a user can fix (a wrong task or split name, a missing file or column, a malformed
row) raises `UserError` with one sentence naming the thing; nothing here prints or exits.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import math
import os
import re
import struct
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ytune.errors import UserError

__all__ = [
    "GLUE_TASKS",
    "SplitData",
    "TaskSpec",
    "TextDataset",
    "load_files",
    "load_glue",
    "load_hf",
    "text_fingerprint",
]

GLUE_DIR_ENV = "YTUNE_GLUE_DIR"
"""Environment variable naming a local GLUE folder, read when `load_glue` gets no `data_dir`."""

HUB_GLUE = "nyu-mll/glue"


# --------------------------------------------------------------------------------------------------
# Data structures


@dataclass(frozen=True)
class TaskSpec:
    """What a head must predict and how it is scored; trainer and checkpoints carry it as is.

    `label_names` fixes the meaning of each class index once (at load time), so a checkpoint, a
    cache's label column and a prediction all agree on which index is which label.
    """

    name: str  # "sst2", or the user's --task name
    kind: str  # "classification" | "regression"
    label_names: tuple[str, ...] | None  # classification: the label set in index order; regression: None
    metrics: tuple[
        str, ...
    ]  # from {"accuracy","f1","mcc","pearson","spearman"}; first selects the best epoch


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
# GLUE


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


def _glue_files(layout: _GlueLayout) -> dict[str, str]:
    return _MNLI_FILES if layout.mnli_splits else _GLUE_FILES


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit must be a positive whole number of rows, not {limit!r}.")


def _limited_name(name: str, limit: int | None) -> str:
    # A limited dataset is another dataset: its cache must never be mistaken for the full one.
    return name if limit is None else f"{name}[:{limit}]"


def load_glue(
    task: str,
    splits: Sequence[str],
    data_dir: str | Path | None = None,
    limit: int | None = None,
) -> TextDataset:
    """Load GLUE task `task` (short name, e.g. "sst2") for the given split names.

    Reads a local folder in the standard GLUE layout (`<data_dir>/SST-2/train.tsv`, ...) when one is
    found, because extraction machines often cannot reach the Hugging Face hub; `data_dir=None`
    means `$YTUNE_GLUE_DIR`. `data_dir` may also be the task folder itself. Without a local folder
    the task comes from the hub (`nyu-mll/glue`), whose label indices are the same.

    Splits are "train", "validation", "test" (MNLI: "train", "validation_matched",
    "validation_mismatched", "test_matched", "test_mismatched"). GLUE's test sets are hidden, so a
    test split has `labels=None`. `limit` keeps the first N rows of each split and marks the dataset
    name (`glue/sst2[:N]`) so a limited run never shares a cache with the full dataset.

    Empty texts are kept, not rejected as `load_files` does: the official files define the
    benchmark's rows, and dropping one would misalign evaluation with everyone else's.
    """
    _check_limit(limit)
    key = task.lower() if isinstance(task, str) else task
    if key not in GLUE_TASKS:
        raise UserError(f"Unknown GLUE task {task!r}; choose one of {', '.join(GLUE_TASKS)}.")
    spec, layout = GLUE_TASKS[key], _GLUE_LAYOUT[key]
    files = _glue_files(layout)
    if isinstance(splits, str):
        splits = [splits]
    if not splits:
        raise UserError(f"No split asked for GLUE task {key!r}; choose from {', '.join(files)}.")
    for split in splits:
        if split not in files:
            raise UserError(f"Unknown split {split!r} for GLUE task {key!r}; choose from {', '.join(files)}.")
    splits = list(dict.fromkeys(splits))

    if data_dir is None:
        data_dir = os.environ.get(GLUE_DIR_ENV) or None
    folder = _find_glue_folder(Path(data_dir).expanduser(), layout.folder) if data_dir else None
    if folder is None:
        data = _load_glue_hub(key, layout, spec, splits, limit, data_dir)
    else:
        data = {split: _read_glue_split(folder, key, split, layout, spec, limit) for split in splits}
    return TextDataset(name=_limited_name(f"glue/{key}", limit), task=spec, splits=data)


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
    files = _glue_files(layout)
    path = folder / files[split]
    if not path.is_file():
        present = [s for s, f in files.items() if (folder / f).is_file()]
        raise UserError(
            f"GLUE file {path} for split {split!r} of task {task!r} does not exist; splits present "
            f"in {folder}: {', '.join(present) or 'none'}."
        )
    header, rows = _read_glue_tsv(path, layout, limit)
    col = {name: i for i, name in enumerate(header)}
    wanted = [layout.text] + ([layout.pair] if layout.pair else [])
    for name in wanted:
        if name not in col:
            raise UserError(f"GLUE file {path} has no column {name!r}; its columns are: {', '.join(header)}.")
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
    table = {n: i for i, n in enumerate(names)}
    table.update({str(i): i for i in range(len(names))})

    def parse_class(s: str) -> int:
        try:
            return table[s.strip()]
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
                if line.endswith("\n"):
                    line = line[:-1]
                if line.endswith("\r"):
                    line = line[:-1]
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
        d = ds[split]
        if limit is not None:
            d = d.select(range(min(limit, len(d))))
        cols = d[:]
        labels = cols["label"]
        # The hub marks the hidden test labels with -1.
        if all(v is None or v == -1 for v in labels):
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


# --------------------------------------------------------------------------------------------------
# The user's own files

_READERS_HELP = ".csv, .tsv, .json, .jsonl, .parquet"


def load_files(
    files: Mapping[str, str | Path],
    text_field: str,
    text_pair_field: str | None = None,
    label_field: str | None = None,
    task: str | None = None,
    limit: int | None = None,
) -> TextDataset:
    """Load the user's own files, one per split (`files` maps split name -> path).

    The extension picks the `datasets` builder that reads the file: .csv, .tsv (standard CSV
    quoting with a tab delimiter, not GLUE's no-quoting), .json and .jsonl (a list of row objects,
    or one row object a line, either in either) and .parquet. The first row of a CSV/TSV is its
    header; its columns are read as strings, and texts such as "NA", "null" or "None" stay texts. The
    files are streamed, so nothing is written under the `datasets` cache and `limit` stops reading.

    Labels (`label_field`), decided over all splits at once so every split agrees:
      - regression when every present label is a number and some are not whole numbers (0.5, 3.8);
        otherwise classification, whose label set is taken from the train split (or, without one,
        from the first split given), sorted (whole numbers numerically), and kept as strings in
        `label_names`. A label elsewhere that the train split lacks is an error: a head cannot
        learn a class it never saw, and silently dropping the row would skew evaluation.
      - if `task` names a GLUE task (e.g. "sst2"), its kind, label names and metrics are used
        instead, and labels may be given by name or by index.
      - a split whose file lacks the label column has `labels=None` (an unlabelled test set); a
        row with an empty label in a split whose other rows have one is an error, as is a NaN or
        infinite regression target.

    Empty or whitespace-only texts (and second texts) are rejected: they almost always mean a wrong
    column or a broken export, and the encoder would silently turn them into features of nothing.

    Rows in error messages are counted from 1, after any header. `limit` keeps the first N rows of
    each split and marks the name (`name[:N]`). The dataset is named `task`, or else after the
    train file's stem (the first file's, without a train split).
    """
    _check_limit(limit)
    if not files:
        raise UserError("No data files given; pass at least one, e.g. a train file.")
    paths = {str(split): Path(p).expanduser() for split, p in files.items()}

    tables = {split: _read_table(path, limit) for split, path in paths.items()}
    # Errors name the file, and its split where there are several (predict's --input is one file).
    wheres = {s: f"split {s!r} ({p})" if len(paths) > 1 else str(p) for s, p in paths.items()}
    ref = "train" if "train" in paths else next(iter(paths))
    name = task if task else paths[ref].stem
    glue_spec = GLUE_TASKS.get(task.lower()) if task else None
    return _from_tables(tables, wheres, text_field, text_pair_field, label_field, name, glue_spec, limit)


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
    `splits` picks splits (default: all); `limit` keeps the first N rows of each.
    """
    import datasets

    _check_limit(limit)
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
    parts = (
        {source.split and str(source.split) or "train": source}
        if isinstance(source, datasets.Dataset)
        else source
    )
    chosen = list(splits or parts)
    unknown = [s for s in chosen if s not in parts]
    if unknown:
        raise UserError(f"the dataset {name!r} has no split {unknown[0]!r} (it has: {', '.join(parts)}).")
    known = GLUE_TASKS.get(task.lower()) if task else None
    tables, wheres = {}, {}
    for split in chosen:
        part = parts[split] if limit is None else parts[split].select(range(min(limit, len(parts[split]))))
        wheres[split] = f"split {split!r} of {name}"
        wanted = [c for c in (text_field, text_pair_field, label_field) if c is not None]
        tables[split] = part.select_columns([c for c in wanted if c in part.column_names]).to_dict()
        for column in (text_field, text_pair_field):
            if column is not None and column not in part.column_names:
                raise UserError(f"The column {column!r} is not in {wheres[split]}; its columns are: "
                                f"{', '.join(part.column_names)}.")  # fmt: skip
        feature = part.features.get(label_field) if label_field else None
        if isinstance(feature, datasets.ClassLabel) and known is None:
            names = tuple(feature.names)
            known = TaskSpec(
                task or name,
                "classification",
                names,
                ("accuracy", "f1") if len(names) == 2 else ("accuracy",),
            )
        if isinstance(feature, datasets.ClassLabel):
            tables[split][label_field] = [None if v == -1 else v for v in tables[split][label_field]]
    return _from_tables(tables, wheres, text_field, text_pair_field, label_field, task or name, known, limit)


def _from_tables(
    tables: dict[str, dict[str, list[Any]]],
    wheres: dict[str, str],
    text_field: str,
    text_pair_field: str | None,
    label_field: str | None,
    name: str,
    spec: TaskSpec | None,
    limit: int | None,
) -> TextDataset:
    """Columns of each split (files, or a `datasets` source) checked and turned into a dataset. A
    given `spec` (a GLUE task's, or a ClassLabel's names) fixes the labels' names and order."""
    data: dict[str, dict[str, Any]] = {}
    for split, table in tables.items():
        where = wheres[split]
        for field, what in ((text_field, "text"), (text_pair_field, "text pair")):
            if field is not None and field not in table:
                raise UserError(
                    f"The {what} column {field!r} is not in {where}; its columns are: {', '.join(table)}."
                )
        entry: dict[str, Any] = {"texts": _texts(table[text_field], text_field, where)}
        entry["pairs"] = (
            _texts(table[text_pair_field], text_pair_field, where) if text_pair_field is not None else None
        )
        data[split] = entry

    ref = "train" if "train" in tables else next(iter(tables))
    if label_field is None:
        spec = spec or TaskSpec(name, "classification", None, ("accuracy",))
        labels: dict[str, list | None] = dict.fromkeys(tables)
    else:
        spec, labels = _labels(tables, wheres, label_field, ref, name, spec)

    splits = {
        split: SplitData(texts=d["texts"], pairs=d["pairs"], labels=labels[split])
        for split, d in data.items()
    }
    return TextDataset(name=_limited_name(name, limit), task=spec, splits=splits)


def _texts(values: list[Any], field: str, where: str) -> list[str]:
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v.strip():
            if v is None or isinstance(v, str):
                problem = "an empty text"
            else:
                problem = f"{v!r} ({type(v).__name__}) instead of a text"
            raise UserError(
                f"Row {i + 1} of {where} has {problem} in column {field!r}; fix or drop that row."
            )
    return values


# A label cell, normalised: (key, number). key is None for a missing label; number is None for
# a label that is not a number. Whole numbers get the key str(int(v)), so "1", "01", 1 and 1.0 agree.
_NUM_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


def _norm_label(v: Any) -> tuple[str | None, float | int | None]:
    if v is None:
        return None, None
    if isinstance(v, bool):
        return str(v).lower(), None
    if isinstance(v, int):
        return str(v), v
    if isinstance(v, float):
        if math.isfinite(v) and v.is_integer():
            return str(int(v)), int(v)
        return repr(v), v
    if isinstance(v, str):
        s = v.strip()
        if not s:
            return None, None
        if _NUM_RE.fullmatch(s):
            f = float(s)
            if math.isfinite(f) and f.is_integer():
                return str(int(f)), int(f)
            return s, f
        return s, None
    raise TypeError(type(v).__name__)


def _labels(
    tables: dict[str, dict[str, list[Any]]],
    wheres: dict[str, str],
    field: str,
    ref: str,
    name: str,
    known: TaskSpec | None,
) -> tuple[TaskSpec, dict[str, list | None]]:
    """The task spec and each split's labels (index or float per row, or None for the split)."""
    present = [s for s in tables if field in tables[s]]
    if not present:
        cols = ", ".join(tables[ref])
        raise UserError(
            f"The label column {field!r} is in none of the files; the columns of {wheres[ref]} are: {cols}."
        )
    norm: dict[str, list[tuple[str | None, Any]] | None] = {}
    for split, table in tables.items():
        if field not in table:
            norm[split] = None
            continue
        cells = []
        for i, v in enumerate(table[field]):
            try:
                cells.append(_norm_label(v))
            except TypeError as e:
                raise UserError(
                    f"Row {i + 1} of {wheres[split]} has a {e} in label column {field!r}, "
                    "not a number or a string."
                ) from None
        keys_present = [k for k, _ in cells if k is not None]
        if not keys_present:
            # A column that exists but is empty throughout is an unlabelled split (e.g. an exported test set).
            norm[split] = None
            continue
        for i, (k, _) in enumerate(cells):
            if k is None:
                raise UserError(
                    f"Row {i + 1} of {wheres[split]} has no label in column {field!r} "
                    "while other rows do; fill it in or drop the row."
                )
        norm[split] = cells

    labelled = [s for s in tables if norm[s] is not None]
    if not labelled:
        raise UserError(f"The label column {field!r} is empty in every file; there is nothing to learn.")

    all_cells = [c for s in labelled for c in norm[s]]
    if known is not None:
        kind = known.kind
    else:
        numeric = all(n is not None for _, n in all_cells)
        kind = (
            "regression" if numeric and any(isinstance(n, float) for _, n in all_cells) else "classification"
        )

    out: dict[str, list | None] = {s: None for s in tables}
    if kind == "regression":
        for split in labelled:
            vals = []
            for i, (k, n) in enumerate(norm[split]):
                if n is None:
                    raise UserError(
                        f"Row {i + 1} of {wheres[split]} has the target {k!r} in column "
                        f"{field!r}, which is not a number."
                    )
                if not math.isfinite(n):
                    raise UserError(
                        f"Row {i + 1} of {wheres[split]} has a NaN or infinite target in "
                        f"column {field!r}; fill it in or drop the row."
                    )
                vals.append(float(n))
            out[split] = vals
        spec = known or TaskSpec(name, "regression", None, ("pearson", "spearman"))
        return spec, out

    if known is not None:
        names = known.label_names or ()
        index = {n: i for i, n in enumerate(names)}
        index.update({str(i): i for i in range(len(names))})
        source = f"task {known.name!r}, whose labels are {', '.join(names)} (or 0-{len(names) - 1})"
        spec = known
    else:
        ref_split = ref if norm[ref] is not None else labelled[0]
        keys = {k for k, _ in norm[ref_split]}
        nums = {k: n for k, n in norm[ref_split]}
        if all(isinstance(nums[k], int) for k in keys):
            names = tuple(sorted(keys, key=lambda k: nums[k]))
        else:
            names = tuple(sorted(keys))
        if len(names) < 2:
            raise UserError(
                f"The label column {field!r} of {wheres[ref_split]} holds only the "
                f"label {names[0]!r}; a classifier needs at least two."
            )
        index = {n: i for i, n in enumerate(names)}
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        source = f"the {ref_split} split, whose labels are {shown}"
        metrics = ("accuracy", "f1") if len(names) == 2 else ("accuracy",)
        spec = TaskSpec(name, "classification", names, metrics)

    for split in labelled:
        idx = []
        for i, (k, _) in enumerate(norm[split]):
            j = index.get(k)
            if j is None:
                raise UserError(
                    f"Row {i + 1} of {wheres[split]} has the label {k!r}, which is not in {source}."
                )
            idx.append(j)
        out[split] = idx
    return spec, out


# --------------------------------------------------------------------------------------------------
# File readers: the `datasets` builders, streamed so that nothing is copied into a cache, with
# the settings text needs. Each returns {column: [value per row]}, every column the same length.

_BUILDERS = {  # extension -> (datasets builder, the format's name in messages)
    ".csv": ("csv", "CSV"),
    ".tsv": ("csv", "TSV"),
    ".json": ("json", "JSON"),
    ".jsonl": ("json", "JSON lines"),
    ".parquet": ("parquet", "Parquet"),
}


def _read_table(path: Path, limit: int | None) -> dict[str, list[Any]]:
    if not path.is_file():
        raise UserError(f"Data file {path} does not exist.")
    ext = path.suffix.lower()
    if ext not in _BUILDERS:
        raise UserError(
            f"Cannot tell the format of {path} from its extension {ext or '(none)'!r}; "
            f"use one of {_READERS_HELP}."
        )
    builder, fmt = _BUILDERS[ext]
    if builder == "parquet":
        _check_parquet(path)
    options = _delimited_options(path, "\t" if ext == ".tsv" else ",", fmt) if builder == "csv" else {}

    import datasets
    import pandas
    import pyarrow

    columns: dict[str, list[Any]] = {}
    count = 0
    try:
        with (
            tempfile.TemporaryDirectory(prefix="ytune-datasets-") as scratch,
            _quiet_datasets(),
            warnings.catch_warnings(),
        ):
            # pandas only warns when the first row is longer than the header (and drops the rest).
            warnings.simplefilter("error", pandas.errors.ParserWarning)
            rows = datasets.load_dataset(
                builder, data_files=str(path), split="train", streaming=True, cache_dir=scratch, **options
            )
            for batch in (rows if limit is None else rows.take(limit)).iter(batch_size=10_000):
                size = len(next(iter(batch.values())))
                for name in {**dict.fromkeys(columns), **dict.fromkeys(batch)}:
                    # a column first seen late is missing (None) in the rows before it, and after
                    columns.setdefault(name, [None] * count).extend(batch.get(name, [None] * size))
                count += size
    except pandas.errors.ParserWarning:
        raise UserError(
            f"The first row of {path} has more fields than its header; is it really a {fmt} file?"
        ) from None
    except (ValueError, pyarrow.ArrowException) as e:  # includes decoding and parser errors
        raise UserError(f"{path} is not a readable {fmt} file ({_first_line(e)}).") from None
    if not count:
        raise _no_rows(path)
    return columns


def _delimited_options(path: Path, delimiter: str, fmt: str) -> dict[str, Any]:
    """The csv builder's settings for text: every column a string (labels are parsed later), "NA",
    "null" and "" kept as they are, the byte-order mark dropped, no column taken for an index.

    The header is read here first because pandas renames a repeated column ("a", "a.1") where a
    repeated name is a mistake to report, and because the string types need the column names.
    """
    import datasets

    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = next((row for row in csv.reader(f, delimiter=delimiter, strict=True) if row), None)
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path} is not a readable {fmt} file ({e}).") from None
    if header is None:
        raise _no_rows(path)
    _check_unique(header, path)
    return {
        "sep": delimiter,
        "features": datasets.Features({name: datasets.Value("string") for name in header}),
        "keep_default_na": False,
        "na_filter": False,
        "encoding": "utf-8-sig",
        "index_col": False,
    }


def _check_parquet(path: Path) -> None:
    """Column names and row count from the footer: the builder refuses an empty file with an
    error about batch sizes, and accepts a repeated column name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path} is not a readable Parquet file ({_first_line(e)}).") from None
    _check_unique(meta.schema.names, path)
    if not meta.num_rows:
        raise _no_rows(path)


def _no_rows(path: Path) -> UserError:
    return UserError(f"Data file {path} holds no rows.")


def _check_unique(header: list[str], path: Path) -> None:
    seen = set()
    for name in header:
        if name in seen:
            raise UserError(f"The header of {path} names the column {name!r} twice.")
        seen.add(name)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


@contextlib.contextmanager
def _quiet_datasets():
    """The builders log each failure before raising it; the one sentence raised is the user's."""
    from datasets.utils import logging as datasets_logging

    level = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)
    try:
        yield
    finally:
        datasets_logging.set_verbosity(level)


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
