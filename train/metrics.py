"""GLUE metrics (accuracy, F1, Matthews correlation, Pearson, Spearman) and the majority-class baseline.

Thin wrappers over scikit-learn and scipy: no metric formula is written here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.stats import ConstantInputWarning, pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from ytune.errors import UserError

CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")
METRICS = CLASSIFICATION_METRICS + REGRESSION_METRICS


def _check_names(names: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise UserError(f"Unknown metric(s) {', '.join(unknown)}: expected some of {', '.join(METRICS)}.")
    return list(names)


def _correlation(fn, predictions: np.ndarray, labels: np.ndarray) -> float:
    # A constant side has no correlation: scipy warns and returns nan; keep the nan, drop the warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return float(fn(predictions.astype(np.float64), labels.astype(np.float64))[0])


def compute_metrics(names: Sequence[str], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics ``names`` of ``predictions`` against ``labels``, as Python floats, in the order asked.

    Classification metrics take class indices (F1 is binary with positive label 1, as GLUE's MRPC and
    QQP report it; zero when nothing is predicted positive). Regression metrics take scores; Pearson
    and Spearman are nan when either side is constant.
    """
    names = _check_names(names)
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if predictions.ndim != 1 or labels.ndim != 1:
        raise ValueError(
            f"predictions and labels must be 1-D, got shapes {predictions.shape} and {labels.shape} "
            "(take the argmax of logits first)"
        )
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("no examples to compute metrics on")
    out: dict[str, float] = {}
    for name in names:
        if name == "accuracy":
            out[name] = float(accuracy_score(labels, predictions))
        elif name == "f1":
            out[name] = float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0))
        elif name == "mcc":
            out[name] = float(matthews_corrcoef(labels, predictions))
        elif name == "pearson":
            out[name] = _correlation(pearsonr, predictions, labels)
        else:  # spearman
            out[name] = _correlation(spearmanr, predictions, labels)
    return out


def majority_class(train_labels: np.ndarray) -> int:
    """The most frequent class of ``train_labels`` (the smallest one on a tie)."""
    values, counts = np.unique(np.asarray(train_labels), return_counts=True)
    if len(values) == 0:
        raise ValueError("no training labels to take the majority class of")
    return values[np.argmax(counts)].item()


def majority_baseline(
    names: Sequence[str], train_labels: np.ndarray, eval_labels: np.ndarray
) -> dict[str, float]:
    """Metrics of always predicting the most frequent training class (classification only)."""
    names = _check_names(names)
    regression = [n for n in names if n in REGRESSION_METRICS]
    if regression:
        raise ValueError(f"the majority-class baseline is for classification, not {', '.join(regression)}")
    eval_labels = np.asarray(eval_labels)
    predictions = np.full(eval_labels.shape, majority_class(train_labels), dtype=eval_labels.dtype)
    return compute_metrics(names, predictions, eval_labels)


__all__ = [
    "METRICS",
    "CLASSIFICATION_METRICS",
    "REGRESSION_METRICS",
    "compute_metrics",
    "majority_baseline",
    "majority_class",
]
