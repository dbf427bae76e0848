"""Columns of rows into a dataset: the checks a table shares whoever read it (the user's files, a
`datasets` source, a GLUE file), so every source refuses the same mistakes in the same words."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ytune.errors import UserError
from ytune.extract.data import SplitData, TaskSpec, TextDataset, limited_name
from ytune.extract.labels import read_labels


def check_columns(columns: Sequence[str], fields: dict[str, str | None], where: str) -> None:
    """Every field asked for (what it holds -> its column name, e.g. {"text": "sentence"}) must be
    one of `columns`; the error lists the columns there are, so a misspelt name is plain to see."""
    for what, field in fields.items():
        if field is not None and field not in columns:
            raise UserError(
                f"The {what} column {field!r} is not in {where}; its columns are: {', '.join(columns)}."
            )


def from_tables(
    tables: dict[str, dict[str, list[Any]]],
    wheres: dict[str, str],
    text_field: str,
    text_pair_field: str | None,
    label_field: str | None,
    name: str,
    spec: TaskSpec | None,
    limit: int | None,
) -> TextDataset:
    """Columns of each split (whose text columns `check_columns` found) turned into a dataset. A
    given `spec` (a GLUE task's, or a ClassLabel's names) fixes the labels' names and order."""
    texts = {}
    for split, table in tables.items():
        where = wheres[split]
        first = check_texts(table[text_field], text_field, where)
        second = (
            check_texts(table[text_pair_field], text_pair_field, where)
            if text_pair_field is not None
            else None
        )
        texts[split] = (first, second)

    if label_field is None:
        spec = spec or TaskSpec(name, "classification", None, ("accuracy",))
        labels: dict[str, list | None] = dict.fromkeys(tables)
    else:
        spec, labels = read_labels(tables, wheres, label_field, name, spec)

    splits = {
        split: SplitData(texts=split_texts, pairs=pairs, labels=labels[split])
        for split, (split_texts, pairs) in texts.items()
    }
    return TextDataset(name=limited_name(name, limit), task=spec, splits=splits)


def check_texts(values: Sequence[Any], field: str, where: str) -> Sequence[str]:
    """The column as it is, once every cell is a non-empty text: an empty one almost always means a
    wrong column or a broken export, and the encoder would turn it into features of nothing."""
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
