"""Metrics against hand-worked examples and scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score, roc_curve

from mmlib.metrics import (
    METRICS,
    binary_metrics,
    calibration_table,
    expected_calibration_error,
    roc_curve_data,
    youden_threshold,
)

# Worked by hand at threshold 0.5: pred = [0, 1, 0, 1, 1] -> TP 2, FP 1, FN 1, TN 1.
Y_HAND = np.array([0, 1, 1, 0, 1])
P_HAND = np.array([0.1, 0.6, 0.4, 0.7, 0.9])


def test_binary_metrics_hand_example():
    m = binary_metrics(Y_HAND, P_HAND)
    assert tuple(m) == METRICS
    expected = {
        "auc": 4 / 6,  # positive-negative pairs ranked right: (.6,.1) (.4,.1) (.9,.1) (.9,.7)
        "accuracy": 3 / 5,
        "sensitivity": 2 / 3,
        "specificity": 1 / 2,
        "precision": 2 / 3,
        "mcc": (2 * 1 - 1 * 1) / np.sqrt(3 * 3 * 2 * 2),
        "f1": 2 * 2 / (2 * 2 + 1 + 1),
        "brier": (0.1**2 + 0.4**2 + 0.6**2 + 0.7**2 + 0.1**2) / 5,
        # one case per bin; gaps |y - p| = .1, .6, .4, .7, .1
        "ece": (0.1 + 0.6 + 0.4 + 0.7 + 0.1) / 5,
    }
    for k, v in expected.items():
        assert m[k] == pytest.approx(v), k


def test_threshold_is_inclusive():
    m = binary_metrics([0, 1], [0.3, 0.3], threshold=0.3)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.0


def test_undefined_values_follow_documented_conventions():
    one_class = binary_metrics([0, 0, 0], [0.1, 0.6, 0.4])
    assert np.isnan(one_class["auc"]) and np.isnan(one_class["sensitivity"])
    assert one_class["specificity"] == pytest.approx(2 / 3)
    none_positive = binary_metrics([0, 1, 1], [0.1, 0.2, 0.3])
    assert np.isnan(none_positive["precision"])
    assert none_positive["sensitivity"] == 0.0 and none_positive["mcc"] == 0.0


@pytest.mark.parametrize(
    "y, p, match",
    [
        ([0, 1, 1], [0.1, 0.2], "y and p differ in length"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "y must hold only 0/1"),
        ([0, np.nan, 1], [0.1, 0.2, 0.3], "y holds 1 NaN"),
        ([0, 1, 1], [0.1, 1.2, 0.3], "p must lie in \\[0, 1\\]"),
        ([0, 1, 1], [-0.1, 0.2, 0.3], "p must lie in \\[0, 1\\]"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "p holds 1 NaN"),
        ([[0, 1]], [[0.1, 0.2]], "y must be 1-D"),
        ([], [], "y is empty"),
        (["benign", "malignant"], [0.1, 0.2], "y must hold 0/1"),
    ],
)
def test_bad_inputs_name_the_argument(y, p, match):
    with pytest.raises(ValueError, match=match):
        binary_metrics(y, p)


def test_bad_threshold_and_bins():
    with pytest.raises(ValueError, match="threshold"):
        binary_metrics(Y_HAND, P_HAND, threshold=1.5)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(Y_HAND, P_HAND, n_bins=0)
    with pytest.raises(ValueError, match="strategy"):
        expected_calibration_error(Y_HAND, P_HAND, strategy="kmeans")


def test_bool_and_pandas_inputs_accepted():
    ref = binary_metrics(Y_HAND, P_HAND)
    got = binary_metrics(pd.Series(Y_HAND.astype(bool)), pd.Series(P_HAND))
    assert got == pytest.approx(ref)


def test_ece_small_for_calibrated_data():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.02
    assert expected_calibration_error(y, p, strategy="quantile") < 0.02


def test_ece_known_values():
    # 30% positives, constant forecast 0.3: perfectly calibrated in its single bin.
    y = np.array([1] * 3 + [0] * 7)
    assert expected_calibration_error(y, np.full(10, 0.3)) == pytest.approx(0.0)
    # constant 0.8 against 50% positives: gap 0.3
    assert expected_calibration_error([0, 1, 0, 1], [0.8] * 4) == pytest.approx(0.3)
    # two bins: {0.05, 0.15 -> bins 0 and 1}; weights 2/4 each
    y, p = [0, 1, 1, 1], [0.05, 0.05, 0.15, 0.15]
    # bin 0: frac .5, mean .05 -> .45; bin 1: frac 1, mean .15 -> .85
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.45 + 0.5 * 0.85)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_calibration_bins_agree_with_sklearn(strategy):
    rng = np.random.default_rng(1)
    p = np.round(rng.beta(2, 3, size=500), 2)  # rounding puts values on the bin edges
    y = (rng.uniform(size=p.size) < p).astype(int)
    table = calibration_table(y, p, n_bins=10, strategy=strategy)
    frac, mean = calibration_curve(y, p, n_bins=10, strategy=strategy)
    np.testing.assert_allclose(table["fraction_positive"], frac)
    np.testing.assert_allclose(table["mean_predicted"], mean)
    assert table["count"].sum() == len(p)
    gaps = np.abs(table["fraction_positive"] - table["mean_predicted"])
    assert expected_calibration_error(y, p, strategy=strategy) == pytest.approx(
        float((table["count"] * gaps).sum() / len(p))
    )


def test_uniform_bin_edges_closed_on_the_right():
    table = calibration_table([0, 1, 1], [0.0, 0.1, 1.0], n_bins=10)
    assert table["bin"].tolist() == [0, 9]
    assert table["count"].tolist() == [2, 1]


def test_roc_curve_data_matches_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 60)
    p = np.round(rng.uniform(size=60), 1)
    df = roc_curve_data(y, p)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_array_equal(df["fpr"], fpr)
    np.testing.assert_array_equal(df["tpr"], tpr)
    np.testing.assert_array_equal(df["threshold"], thr)
    assert np.trapezoid(df["tpr"], df["fpr"]) == pytest.approx(roc_auc_score(y, p))
    with pytest.raises(ValueError, match="one class"):
        roc_curve_data([1, 1], [0.2, 0.3])


def test_youden_hand_example():
    # J at each cut-off: .9 -> 1/3, .7 -> -1/6, .6 -> 1/6, .4 -> 1/2, .1 -> 0
    assert youden_threshold(Y_HAND, P_HAND) == pytest.approx(0.4)


def test_youden_tie_goes_to_threshold_closest_to_half():
    # J = .5 at both 0.8 and 0.3; 0.3 is closer to 0.5
    y, p = [0, 1, 0, 1], [0.2, 0.3, 0.6, 0.8]
    t = youden_threshold(y, p)
    assert t == pytest.approx(0.3)
    m = binary_metrics(y, p, threshold=t)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(0.5)


def test_youden_is_optimal_against_brute_force():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    p = np.clip(0.4 * y + rng.uniform(size=80) * 0.6, 0, 1)

    def j(t):
        pred = p >= t
        return pred[y == 1].mean() + (~pred[y == 0]).mean() - 1

    best = max(j(t) for t in np.unique(p))
    assert j(youden_threshold(y, p)) == pytest.approx(best)
