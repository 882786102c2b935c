"""Classification metrics of the paper, plus the calibration error it did not report.

Every function takes ``y`` (true labels, 0 = benign, 1 = malignant) and ``p`` (predicted probability of
malignancy), both 1-D and of equal length. A prediction is positive when ``p >= threshold``.

Conventions for undefined values (they matter on small folds and in bootstrap replicates):

- ``auc`` is NaN when ``y`` holds one class only.
- ``sensitivity`` is NaN without positives, ``specificity`` NaN without negatives.
- ``precision`` is NaN when nothing is predicted positive (scikit-learn ``zero_division=np.nan``);
  ``f1`` is NaN when there are neither positives nor positive predictions.
- ``mcc`` is 0 when a row or column of the confusion matrix is empty (scikit-learn's convention).

Calibration bins (:func:`expected_calibration_error`, :func:`mmlib.stats.reliability_curve`) follow
:func:`sklearn.calibration.calibration_curve`: with ``strategy="uniform"`` the ``n_bins`` bins split
[0, 1] into equal widths, the first closed ``[0, 1/n]`` and the others half-open on the left
``(k/n, (k+1)/n]``; with ``strategy="quantile"`` the edges are quantiles of ``p`` (bins that coincide merge).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (
    brier_score_loss,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_score,
    roc_auc_score,
    roc_curve,
)

#: Metrics returned by :func:`binary_metrics`, in report order.
METRICS: tuple[str, ...] = (
    "auc",
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "mcc",
    "f1",
    "brier",
    "ece",
)
#: Binning strategies of the calibration functions.
BIN_STRATEGIES: tuple[str, ...] = ("uniform", "quantile")


def check_labels(y, *, name: str = "y") -> np.ndarray:
    """``y`` as a 1-D int array of 0/1 values.

    Raises:
        ValueError: naming ``name`` when ``y`` is not 1-D, is empty, holds NaN or a value other than 0/1.
    """
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.dtype == bool:
        return arr.astype(int)
    try:
        num = arr.astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold 0/1 labels, got dtype {arr.dtype}") from None
    if np.isnan(num).any():
        raise ValueError(f"{name} holds {int(np.isnan(num).sum())} NaN value(s); expected 0/1 labels")
    bad = ~np.isin(num, (0.0, 1.0))
    if bad.any():
        raise ValueError(
            f"{name} must hold only 0/1 labels, got {np.unique(num[bad])[:5].tolist()} at index {int(np.argmax(bad))}"
        )
    return num.astype(int)


def check_probabilities(p, *, name: str = "p") -> np.ndarray:
    """``p`` as a 1-D float array of probabilities in [0, 1].

    Raises:
        ValueError: naming ``name`` when ``p`` is not 1-D, is empty, holds NaN or a value outside [0, 1].
    """
    arr = np.asarray(p)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    try:
        arr = arr.astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold probabilities, got dtype {np.asarray(p).dtype}") from None
    if np.isnan(arr).any():
        raise ValueError(f"{name} holds {int(np.isnan(arr).sum())} NaN value(s); expected probabilities in [0, 1]")
    bad = (arr < 0) | (arr > 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name} must lie in [0, 1], got {arr[i]!r} at index {i}")
    return arr


def check_binary_inputs(y, p, *, y_name: str = "y", p_name: str = "p") -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(y, p)``: 0/1 labels and probabilities of the same length."""
    y = check_labels(y, name=y_name)
    p = check_probabilities(p, name=p_name)
    if len(y) != len(p):
        raise ValueError(f"{y_name} and {p_name} differ in length: {len(y)} vs {len(p)}")
    return y, p


def check_threshold(threshold: float, *, name: str = "threshold") -> float:
    t = float(threshold)
    if not 0.0 <= t <= 1.0 or np.isnan(t):
        raise ValueError(f"{name} must lie in [0, 1], got {threshold!r}")
    return t


def _check_bins(n_bins: int, strategy: str) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if strategy not in BIN_STRATEGIES:
        raise ValueError(f"strategy must be one of {BIN_STRATEGIES}, got {strategy!r}")


def calibration_bin_edges(p: np.ndarray, *, n_bins: int = 10, strategy: str = "uniform") -> np.ndarray:
    """Edges of the calibration bins, ``(n_bins + 1,)``; see the module docstring for which side is closed."""
    _check_bins(n_bins, strategy)
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    return np.percentile(p, np.linspace(0.0, 100.0, n_bins + 1))


def calibration_bin_ids(p: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each probability, ``(n,)`` ints in ``[0, len(edges) - 2]``."""
    # Same rule as sklearn.calibration.calibration_curve, so the two agree bin by bin.
    return np.searchsorted(edges[1:-1], p)


def calibration_table(y, p, *, n_bins: int = 10, strategy: str = "uniform") -> pd.DataFrame:
    """Per non-empty bin: ``bin``, ``bin_lower``, ``bin_upper``, ``mean_predicted``, ``fraction_positive``,
    ``count``. The shared basis of :func:`expected_calibration_error` and the reliability curve."""
    y, p = check_binary_inputs(y, p)
    edges = calibration_bin_edges(p, n_bins=n_bins, strategy=strategy)
    ids = calibration_bin_ids(p, edges)
    count = np.bincount(ids, minlength=n_bins)
    sum_p = np.bincount(ids, weights=p, minlength=n_bins)
    sum_y = np.bincount(ids, weights=y, minlength=n_bins)
    keep = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame(
            {
                "bin": np.flatnonzero(keep),
                "bin_lower": edges[:-1][keep],
                "bin_upper": edges[1:][keep],
                "mean_predicted": (sum_p / count)[keep],
                "fraction_positive": (sum_y / count)[keep],
                "count": count[keep],
            }
        )


def expected_calibration_error(y, p, *, n_bins: int = 10, strategy: str = "uniform") -> float:
    """Expected calibration error: ``sum_b (n_b / n) * |fraction_positive_b - mean_predicted_b|``.

    The sum runs over non-empty bins only. With the default ``strategy="uniform"`` the bins split [0, 1]
    into ``n_bins`` equal widths (see the module docstring for the closed sides).

    Args:
        y: ``(n,)`` 0/1 labels.
        p: ``(n,)`` predicted probabilities of class 1.
        n_bins: number of bins.
        strategy: ``"uniform"`` (equal widths on [0, 1]) or ``"quantile"`` (equal counts).

    Returns:
        The ECE, in [0, 1].
    """
    table = calibration_table(y, p, n_bins=n_bins, strategy=strategy)
    weight = table["count"].to_numpy() / table["count"].sum()
    gap = np.abs(table["fraction_positive"].to_numpy() - table["mean_predicted"].to_numpy())
    return float(np.sum(weight * gap))


def binary_metrics(y, p, *, threshold: float = 0.5, ece_bins: int = 10) -> dict[str, float]:
    """All :data:`METRICS` for one set of predictions.

    Args:
        y: ``(n,)`` 0/1 labels.
        p: ``(n,)`` predicted probabilities of malignancy.
        threshold: a case is predicted malignant when ``p >= threshold``.
        ece_bins: number of equal-width bins of the ECE.

    Returns:
        ``{metric: value}`` in :data:`METRICS` order; undefined values follow the module docstring.
    """
    y, p = check_binary_inputs(y, p)
    threshold = check_threshold(threshold)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    both_classes = len(np.unique(y)) == 2
    return {
        "auc": float(roc_auc_score(y, p)) if both_classes else float("nan"),
        "accuracy": float((tp + tn) / len(y)),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "precision": float(precision_score(y, pred, labels=[0, 1], zero_division=np.nan)),
        "mcc": float(matthews_corrcoef(y, pred)),
        "f1": float(f1_score(y, pred, labels=[0, 1], zero_division=np.nan)),
        "brier": float(brier_score_loss(y, p, labels=[0, 1])),
        "ece": expected_calibration_error(y, p, n_bins=ece_bins),
    }


def roc_curve_data(y, p) -> pd.DataFrame:
    """The ROC curve as a table: ``fpr``, ``tpr``, ``threshold`` (one row per distinct cut-off).

    The first row is sklearn's ``threshold = inf`` (nothing predicted positive, the point (0, 0)).

    Raises:
        ValueError: when ``y`` holds one class only (the curve is undefined).
    """
    y, p = check_binary_inputs(y, p)
    if len(np.unique(y)) < 2:
        raise ValueError("y holds one class only; the ROC curve needs both benign (0) and malignant (1) cases")
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr})


def youden_threshold(y, p) -> float:
    """The cut-off that maximises Youden's J = sensitivity + specificity - 1.

    Candidates are the distinct values of ``p`` (the ROC curve's finite thresholds), so the result is
    used as ``p >= t``. Among cut-offs with the same maximal J the one closest to 0.5 wins (the higher
    one if two are equally close).

    Returns:
        The threshold ``t``, one of the values of ``p``.
    """
    roc = roc_curve_data(y, p)
    roc = roc[np.isfinite(roc["threshold"])]
    j = (roc["tpr"] - roc["fpr"]).to_numpy()
    thr = roc["threshold"].to_numpy()
    best = thr[np.isclose(j, j.max(), rtol=0.0, atol=1e-12)]
    # Thresholds are in decreasing order, so argmin keeps the higher of two equally close ones.
    return float(best[np.argmin(np.abs(best - 0.5))])
