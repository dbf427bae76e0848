import math

import numpy as np
import pytest

from ytune import UserError
from ytune.train.metrics import compute_metrics, majority_baseline, majority_class


def test_classification_metrics_hand_computed():
    # predictions [1, 0, 1, 1] vs labels [1, 1, 1, 0]: TP = 2, FP = 1, FN = 1, TN = 0.
    got = compute_metrics(["accuracy", "f1", "mcc"], np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0]))
    assert got["accuracy"] == pytest.approx(0.5)
    assert got["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # 2/3
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = -1 / sqrt(3*3*1*1)
    assert got["mcc"] == pytest.approx(-1 / 3)
    assert list(got) == ["accuracy", "f1", "mcc"]
    assert all(type(v) is float for v in got.values())


def test_perfect_and_multiclass():
    labels = np.array([0, 2, 1, 2, 0])
    got = compute_metrics(["accuracy", "mcc"], labels.copy(), labels)
    assert got == {"accuracy": 1.0, "mcc": 1.0}
    got = compute_metrics(["accuracy"], np.array([0, 2, 2, 2, 1]), labels)
    assert got["accuracy"] == pytest.approx(3 / 5)


def test_f1_with_no_positive_prediction_is_zero():
    got = compute_metrics(["f1"], np.array([0, 0, 0]), np.array([1, 0, 1]))
    assert got["f1"] == 0.0


def test_correlations_hand_computed():
    labels = np.array([1.0, 2.0, 3.0, 4.0])
    got = compute_metrics(["pearson", "spearman"], np.array([1.0, 3.0, 2.0, 4.0]), labels)
    # deviations [-1.5, -.5, .5, 1.5] and [-1.5, .5, -.5, 1.5]: covariance sum 4, variance sums 5.
    assert got["pearson"] == pytest.approx(0.8)
    assert got["spearman"] == pytest.approx(0.8)  # ranks are the values themselves
    got = compute_metrics(["pearson", "spearman"], np.array([1.0, 2.0, 3.0, 10.0]), labels)
    # deviations [-3, -2, -1, 6] and [-1.5, -.5, .5, 1.5]: covariance sum 14, variance sums 50 and 5.
    assert got["pearson"] == pytest.approx(14 / math.sqrt(250))
    assert got["spearman"] == pytest.approx(1.0)  # same order
    assert all(type(v) is float for v in got.values())


def test_constant_predictions_correlation_is_nan():
    got = compute_metrics(["pearson", "spearman"], np.ones(4), np.array([1.0, 3.0, 2.0, 4.0]))
    assert math.isnan(got["pearson"]) and math.isnan(got["spearman"])


def test_bad_inputs():
    with pytest.raises(UserError, match="Unknown metric"):
        compute_metrics(["accuracy", "auc"], np.array([1]), np.array([1]))
    with pytest.raises(ValueError, match="predictions for"):
        compute_metrics(["accuracy"], np.array([1, 0]), np.array([1]))
    with pytest.raises(ValueError, match="1-D"):
        compute_metrics(["accuracy"], np.zeros((2, 2)), np.array([1, 0]))
    with pytest.raises(ValueError, match="no examples"):
        compute_metrics(["accuracy"], np.array([]), np.array([]))


def test_majority_baseline():
    assert majority_class(np.array([0, 1, 1])) == 1
    assert majority_class(np.array([1, 0, 0, 1])) == 0  # tie: smallest class
    got = majority_baseline(["accuracy", "f1", "mcc"], np.array([0, 1, 1]), np.array([0, 1, 1, 1]))
    # always 1 on [0, 1, 1, 1]: TP = 3, FP = 1; a constant prediction has MCC 0.
    assert got == pytest.approx({"accuracy": 0.75, "f1": 6 / 7, "mcc": 0.0})
    got = majority_baseline(["accuracy", "f1"], np.array([0, 0, 1]), np.array([0, 1, 1, 1]))
    assert got == pytest.approx({"accuracy": 0.25, "f1": 0.0})
    with pytest.raises(ValueError, match="classification"):
        majority_baseline(["pearson"], np.array([0.5]), np.array([0.5]))
