"""Labels from a column of cells: which task the column makes, and each row's class index or target.

The user's files and `datasets` sources give labels as whatever their format holds (strings,
whole or fractional numbers, None, NaN); GLUE's files give names or indices of a label set fixed in
advance. Everything here turns such cells into the class indices or float targets a cache stores,
deciding over all splits at once so that every split agrees on which index is which label.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from ytune.errors import UserError
from ytune.extract.data import TaskSpec, reference_split

Cells = list[tuple[str | None, float | int | None]]
"""A label column normalised by `norm_label`, one (key, number) per row."""

# A label cell, normalised: (key, number). key is None for a missing label; number is None for
# a label that is not a number. Whole numbers get the key str(int(v)), so "1", "01", 1 and 1.0 agree.
_NUM_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


def norm_label(v: Any) -> tuple[str | None, float | int | None]:
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


def class_index(names: Sequence[str]) -> dict[str, int]:
    """A known label set's class index by each label's name and by the index itself written as
    text ("entailment" and "0"): the two ways a file gives the labels of a task such as GLUE's."""
    index = {n: i for i, n in enumerate(names)}
    index.update({str(i): i for i in range(len(names))})
    return index


def classification_task(name: str, names: tuple[str, ...]) -> TaskSpec:
    """A classification task over `names`, scored by accuracy, and by F1 too when there are two."""
    return TaskSpec(name, "classification", names, ("accuracy", "f1") if len(names) == 2 else ("accuracy",))


def hub_labels(values: list[Any]) -> list[Any]:
    """A label column of a `datasets` source with the hub's mark for a hidden label (-1, as in the
    GLUE test splits) turned into None, a missing label like any other."""
    return [None if v == -1 else v for v in values]


def read_labels(
    tables: dict[str, dict[str, list[Any]]],
    wheres: dict[str, str],
    field: str,
    name: str,
    known: TaskSpec | None,
) -> tuple[TaskSpec, dict[str, list | None]]:
    """The task spec and each split's labels (index or float per row, or None for the split).

    A given `known` task (a GLUE task's, or a ClassLabel's names) fixes the kind and the labels'
    names and order; otherwise the column decides: regression when every label is a number and
    some are not whole, else classification over the reference split's labels.
    """
    ref = reference_split(tables)
    if not any(field in table for table in tables.values()):
        cols = ", ".join(tables[ref])
        raise UserError(
            f"The label column {field!r} is in none of the files; the columns of {wheres[ref]} are: {cols}."
        )
    cells = {
        split: _split_cells(table[field], wheres[split], field) if field in table else None
        for split, table in tables.items()
    }
    labelled = [s for s in tables if cells[s] is not None]
    if not labelled:
        raise UserError(f"The label column {field!r} is empty in every file; there is nothing to learn.")

    out: dict[str, list | None] = dict.fromkeys(tables)
    if _kind(cells, labelled, known) == "regression":
        for split in labelled:
            out[split] = _targets(cells[split], wheres[split], field)
        return known or TaskSpec(name, "regression", None, ("pearson", "spearman")), out

    if known is not None:
        names = known.label_names or ()
        spec, index = known, class_index(names)
        source = f"task {known.name!r}, whose labels are {', '.join(names)} (or 0-{len(names) - 1})"
    else:
        ref_split = ref if cells[ref] is not None else labelled[0]
        spec, source = _inferred_task(cells[ref_split], ref_split, wheres[ref_split], field, name)
        index = {n: i for i, n in enumerate(spec.label_names)}
    for split in labelled:
        out[split] = _class_indices(cells[split], index, source, wheres[split])
    return spec, out


def _split_cells(values: list[Any], where: str, field: str) -> Cells | None:
    """One split's label column normalised; None when it is empty throughout (an unlabelled split,
    e.g. an exported test set), an error when only some rows lack a label."""
    cells = []
    for i, v in enumerate(values):
        try:
            cells.append(norm_label(v))
        except TypeError as e:
            raise UserError(
                f"Row {i + 1} of {where} has a {e} in label column {field!r}, not a number or a string."
            ) from None
    if all(k is None for k, _ in cells):
        return None
    for i, (k, _) in enumerate(cells):
        if k is None:
            raise UserError(
                f"Row {i + 1} of {where} has no label in column {field!r} "
                "while other rows do; fill it in or drop the row."
            )
    return cells


def _kind(cells: dict[str, Cells | None], labelled: list[str], known: TaskSpec | None) -> str:
    if known is not None:
        return known.kind
    every = [c for s in labelled for c in cells[s]]
    numeric = all(n is not None for _, n in every)
    return "regression" if numeric and any(isinstance(n, float) for _, n in every) else "classification"


def _targets(cells: Cells, where: str, field: str) -> list[float]:
    values = []
    for i, (k, n) in enumerate(cells):
        if n is None:
            raise UserError(
                f"Row {i + 1} of {where} has the target {k!r} in column {field!r}, which is not a number."
            )
        if not math.isfinite(n):
            raise UserError(
                f"Row {i + 1} of {where} has a NaN or infinite target in "
                f"column {field!r}; fill it in or drop the row."
            )
        values.append(float(n))
    return values


def _inferred_task(cells: Cells, split: str, where: str, field: str, name: str) -> tuple[TaskSpec, str]:
    """The classification task whose labels are those of `split`, sorted (whole numbers
    numerically), and how to name that label set in an error."""
    keys = {k for k, _ in cells}
    nums = {k: n for k, n in cells}
    if all(isinstance(nums[k], int) for k in keys):
        names = tuple(sorted(keys, key=lambda k: nums[k]))
    else:
        names = tuple(sorted(keys))
    if len(names) < 2:
        raise UserError(
            f"The label column {field!r} of {where} holds only the "
            f"label {names[0]!r}; a classifier needs at least two."
        )
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    return classification_task(name, names), f"the {split} split, whose labels are {shown}"


def _class_indices(cells: Cells, index: dict[str, int], source: str, where: str) -> list[int]:
    indices = []
    for i, (k, _) in enumerate(cells):
        j = index.get(k)
        if j is None:
            raise UserError(f"Row {i + 1} of {where} has the label {k!r}, which is not in {source}.")
        indices.append(j)
    return indices
