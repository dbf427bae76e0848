"""The user's own files, one per split: CSV, TSV, JSON, JSON lines and Parquet, read as text.

The `datasets` builders read them, streamed so that nothing is copied into a cache, with the
settings text needs; each file becomes {column: [value per row]}, every column the same length,
and `columns.from_tables` checks those columns and reads their labels.
"""

from __future__ import annotations

import contextlib
import csv
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ytune.errors import UserError
from ytune.extract.columns import check_columns, from_tables
from ytune.extract.data import TextDataset, check_limit, cutting_limit, read_past, reference_split
from ytune.extract.glue import glue_task

__all__ = ["load_files"]


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
    each split and marks the name (`name[:N]`), unless it cuts no split. The dataset is named `task`, or else after the
    train file's stem (the first file's, without a train split).
    """
    check_limit(limit)
    if not files:
        raise UserError("No data files given; pass at least one, e.g. a train file.")
    paths = {str(split): Path(p).expanduser() for split, p in files.items()}

    tables = {split: _read_table(path, read_past(limit)) for split, path in paths.items()}
    limit = cutting_limit(limit, (len(next(iter(t.values()))) for t in tables.values()))
    if limit is not None:
        tables = {split: {c: v[:limit] for c, v in t.items()} for split, t in tables.items()}
    # Errors name the file, and its split where there are several (predict's --input is one file).
    wheres = {s: f"split {s!r} ({p})" if len(paths) > 1 else str(p) for s, p in paths.items()}
    for split, table in tables.items():
        check_columns(list(table), {"text": text_field, "text pair": text_pair_field}, wheres[split])
    name = task if task else paths[reference_split(paths)].stem
    return from_tables(tables, wheres, text_field, text_pair_field, label_field, name, glue_task(task), limit)


# --------------------------------------------------------------------------------------------------
# Reading one file

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
            f"use one of {', '.join(_BUILDERS)}."
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
