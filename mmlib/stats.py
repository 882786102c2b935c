"""Statistics of the paper (McNemar between models, Cohen's d for age) and those it should have reported
(bootstrap and DeLong confidence intervals, paired DeLong tests, calibration, decision
curves).

Inputs follow :mod:`mmlib.metrics`: ``y`` holds 0/1 labels, ``p`` probabilities of malignancy, and a
prediction is positive when ``p >= threshold``. Bad inputs raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import optimize, special
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

from .metrics import (
    METRICS,
    binary_metrics,
    calibration_bin_edges,
    calibration_bin_ids,
    calibration_table,
    check_binary_inputs,
    check_labels,
    check_threshold,
)

# Replicates are processed in blocks of about this many (replicate, case) cells to bound memory.
_BLOCK_CELLS = 4_000_000


def _check_alpha(alpha: float) -> float:
    a = float(alpha)
    if not 0.0 < a < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    return a


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_metric_names(metrics) -> tuple[str, ...]:
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got unknown {unknown}")
    return metrics


def _rowwise_counts(draws: np.ndarray, k: int) -> np.ndarray:
    """``(B, m)`` draws from ``range(k)`` -> ``(B, k)`` how often each was drawn in each row."""
    b = draws.shape[0]
    flat = (np.arange(b)[:, None] * k + draws).ravel()
    return np.bincount(flat, minlength=b * k).reshape(b, k).astype(np.int32)


def bootstrap_counts(
    y, *, n_boot: int = 2000, seed: int = 0, stratified: bool = True, groups=None
) -> np.ndarray:
    """How often each case is drawn in each bootstrap replicate.

    A count matrix rather than index lists, so that replicates of a cluster bootstrap (whose sizes vary)
    and of a plain bootstrap are handled alike, and every metric is a weighted sum over cases.

    Args:
        y: ``(n,)`` 0/1 labels.
        n_boot: number of replicates ``B``.
        seed: seed of :func:`numpy.random.default_rng`; the same seed gives the same replicates.
        stratified: resample benign and malignant cases separately, so each replicate keeps the class
            counts of ``y``. With ``groups`` the strata are groups with and without a malignant case.
        groups: ``(n,)`` patient (cluster) ids; when given, whole groups are drawn with replacement.

    Returns:
        ``(B, n)`` int32 counts; row ``r`` is replicate ``r``.
    """
    y = check_labels(y)
    n_boot = _check_positive_int(n_boot, "n_boot")
    rng = np.random.default_rng(seed)
    if groups is None:
        codes = np.arange(len(y))
        unit_label = y
    else:
        g = np.asarray(groups)
        if g.ndim != 1 or len(g) != len(y):
            raise ValueError(f"groups must be 1-D with one id per case ({len(y)}), got shape {g.shape}")
        if pd.isna(g).any():
            raise ValueError(f"groups holds {int(pd.isna(g).sum())} missing id(s)")
        codes, _ = pd.factorize(g)
        unit_label = np.zeros(codes.max() + 1, dtype=int)
        np.maximum.at(unit_label, codes, y)
    n_units = len(unit_label)
    strata = [np.flatnonzero(unit_label == c) for c in (0, 1)] if stratified else [np.arange(n_units)]
    unit_counts = np.zeros((n_boot, n_units), dtype=np.int32)
    for members in strata:
        if len(members) == 0:
            continue
        draws = rng.integers(0, len(members), size=(n_boot, len(members)))
        unit_counts[:, members] = _rowwise_counts(draws, len(members))
    return unit_counts[:, codes]


def weighted_auc(y, p, counts: np.ndarray) -> np.ndarray:
    """AUC of each bootstrap replicate, from the Mann-Whitney statistic with case weights.

    ``AUC = sum_{i pos, j neg} w_i w_j (1[p_i > p_j] + 0.5 * 1[p_i = p_j]) / (W_pos W_neg)``, computed in
    ``O(B n)`` from the cases sorted once by ``p``: for each distinct score, the negative weight below it
    and tied with it.

    Args:
        y: ``(n,)`` 0/1 labels.
        p: ``(n,)`` scores.
        counts: ``(B, n)`` case weights (e.g. :func:`bootstrap_counts`).

    Returns:
        ``(B,)`` AUCs; NaN for a replicate without positives or without negatives.
    """
    y, p = check_binary_inputs(y, p)
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != len(y):
        raise ValueError(f"counts must have shape (B, {len(y)}), got {counts.shape}")
    order = np.argsort(p, kind="stable")
    ps, ys = p[order], y[order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    out = np.empty(counts.shape[0])
    block = max(1, _BLOCK_CELLS // len(y))
    for lo in range(0, counts.shape[0], block):
        w = counts[lo : lo + block][:, order].astype(float)
        neg = np.add.reduceat(w * (ys == 0), starts, axis=1)
        pos = np.add.reduceat(w * (ys == 1), starts, axis=1)
        neg_below = np.cumsum(neg, axis=1) - neg
        num = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
        den = pos.sum(axis=1) * neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo : lo + block] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def replicate_metrics(
    y, p, counts: np.ndarray, *, threshold: float = 0.5, ece_bins: int = 10, metrics=METRICS
) -> dict[str, np.ndarray]:
    """Each metric on each bootstrap replicate, without materialising the resampled data.

    Every replicate's value equals :func:`mmlib.metrics.binary_metrics` on the data repeated by its
    counts (same conventions for undefined values; the ECE bins are the fixed equal-width bins).

    Args:
        y: ``(n,)`` 0/1 labels.
        p: ``(n,)`` probabilities of malignancy.
        counts: ``(B, n)`` case counts per replicate (:func:`bootstrap_counts`).
        threshold: cut-off of the threshold metrics.
        ece_bins: number of equal-width ECE bins.
        metrics: names from :data:`mmlib.metrics.METRICS`.

    Returns:
        ``{metric: (B,) values}``.
    """
    y, p = check_binary_inputs(y, p)
    threshold = check_threshold(threshold)
    metrics = _check_metric_names(metrics)
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != len(y):
        raise ValueError(f"counts must have shape (B, {len(y)}), got {counts.shape}")
    pred = (p >= threshold).astype(float)
    yf = y.astype(float)
    edges = calibration_bin_edges(p, n_bins=ece_bins, strategy="uniform")
    onehot = np.eye(ece_bins)[calibration_bin_ids(p, edges)]
    # Columns of one matrix product: n, positives, TP, FP, squared error, then per-bin sums of y and p.
    design = np.column_stack(
        [np.ones_like(yf), yf, yf * pred, (1 - yf) * pred, (p - yf) ** 2, onehot * yf[:, None], onehot * p[:, None]]
    )
    block = max(1, _BLOCK_CELLS // len(y))
    sums = np.vstack([counts[lo : lo + block].astype(float) @ design for lo in range(0, counts.shape[0], block)])
    n, npos, tp, fp, sq = sums[:, :5].T
    bin_y, bin_p = sums[:, 5 : 5 + ece_bins], sums[:, 5 + ece_bins :]
    nneg = n - npos
    fn, tn = npos - tp, nneg - fp

    def ratio(a, b, fill=np.nan):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(b > 0, a / np.where(b > 0, b, 1.0), fill)

    out = {}
    for m in metrics:
        if m == "auc":
            out[m] = weighted_auc(y, p, counts)
        elif m == "accuracy":
            out[m] = (tp + tn) / n
        elif m == "sensitivity":
            out[m] = ratio(tp, npos)
        elif m == "specificity":
            out[m] = ratio(tn, nneg)
        elif m == "precision":
            out[m] = ratio(tp, tp + fp)
        elif m == "mcc":
            out[m] = ratio(tp * tn - fp * fn, np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)), fill=0.0)
        elif m == "f1":
            out[m] = ratio(2 * tp, 2 * tp + fp + fn)
        elif m == "brier":
            out[m] = sq / n
        elif m == "ece":
            out[m] = np.abs(bin_y - bin_p).sum(axis=1) / n
    return out


def bootstrap_ci(
    y,
    p,
    *,
    threshold: float = 0.5,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    stratified: bool = True,
    metrics=METRICS,
    groups=None,
    ece_bins: int = 10,
) -> pd.DataFrame:
    """Percentile bootstrap confidence intervals of the metrics.

    Cases (or, with ``groups``, whole patient groups) are resampled with replacement, stratified by label
    unless ``stratified=False``; see :func:`bootstrap_counts`. All replicates are evaluated at once on the
    count matrix (see :func:`weighted_auc`), so 2000 replicates of a few hundred cases take well under a
    second.

    Args:
        y: ``(n,)`` 0/1 labels.
        p: ``(n,)`` probabilities of malignancy.
        threshold: cut-off of the threshold metrics (``p >= threshold``).
        n_boot: number of replicates.
        seed: random seed.
        alpha: the intervals cover ``1 - alpha``.
        stratified: keep the class counts in each replicate.
        metrics: names from :data:`mmlib.metrics.METRICS`, in output order.
        groups: optional ``(n,)`` patient ids for a cluster bootstrap.
        ece_bins: number of equal-width ECE bins.

    Returns:
        One row per metric: ``metric``, ``value`` (on the full sample, :func:`binary_metrics`),
        ``ci_low``, ``ci_high`` and ``n_valid`` (replicates where the metric is defined; the others,
        e.g. a precision with no positive prediction, are left out of the percentiles).
    """
    y, p = check_binary_inputs(y, p)
    threshold = check_threshold(threshold)
    alpha = _check_alpha(alpha)
    metrics = _check_metric_names(metrics)
    counts = bootstrap_counts(y, n_boot=n_boot, seed=seed, stratified=stratified, groups=groups)
    reps = replicate_metrics(y, p, counts, threshold=threshold, ece_bins=ece_bins, metrics=metrics)
    point = binary_metrics(y, p, threshold=threshold, ece_bins=ece_bins)
    rows = []
    for m in metrics:
        vals = reps[m][~np.isnan(reps[m])]
        if len(vals):
            low, high = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        else:
            low = high = np.nan
        rows.append({"metric": m, "value": point[m], "ci_low": low, "ci_high": high, "n_valid": len(vals)})
    return pd.DataFrame(rows)


def cluster_counts(n_units: int, groups=None) -> tuple[int, int]:
    """``(n_units, n_clusters)``; ``groups=None`` makes every unit its own cluster (patient)."""
    if groups is None:
        return int(n_units), int(n_units)
    return int(n_units), int(len(pd.unique(np.asarray(groups))))


def _as_thresholds(threshold, n: int, name: str) -> np.ndarray:
    t = np.broadcast_to(np.asarray(threshold, dtype=float), (n,)) if np.ndim(threshold) == 0 else np.asarray(
        threshold, dtype=float)
    if t.shape != (n,):
        raise ValueError(f"{name} must be one cut-off or one per case ({n}), got shape {t.shape}")
    if np.isnan(t).any() or ((t < 0) | (t > 1)).any():
        raise ValueError(f"{name} must lie in [0, 1]")
    return t


def _margin(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Scores whose cut-off is 0.5 wherever ``p >= t``: per-case thresholds in one call."""
    return np.clip(p - t + 0.5, 0.0, 1.0)


def paired_bootstrap_diff(
    y,
    p_a,
    p_b,
    *,
    metric: str = "auc",
    threshold_a=0.5,
    threshold_b=0.5,
    groups=None,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    stratified: bool = True,
) -> dict[str, float]:
    """Paired bootstrap of ``metric(a) - metric(b)``, two models scored on the same cases.

    Both models are evaluated on the same replicates; with ``groups`` whole patients are drawn (a cluster
    bootstrap), so units of one patient (e.g. two breasts) are never treated as independent. This is the
    cluster-aware counterpart of DeLong's test (``metric="auc"``) and of McNemar's (``metric="accuracy"``).

    Args:
        y: ``(n,)`` 0/1 labels.
        p_a, p_b: ``(n,)`` probabilities of models a and b.
        metric: a name from :data:`mmlib.metrics.METRICS`.
        threshold_a, threshold_b: cut-offs of the threshold metrics, one value or one per case.
        groups: optional ``(n,)`` patient ids; ``None`` resamples cases.
        n_boot, seed, alpha, stratified: as in :func:`bootstrap_ci`.

    Returns:
        ``value_a``, ``value_b``, ``diff`` (on the full sample), ``ci_low``, ``ci_high`` (percentile
        interval of the replicate differences), ``p_value`` (two-sided: twice the smaller share of
        replicate differences at or beyond 0 on either side, with the ``+1`` correction, at most 1),
        ``n_valid`` (replicates where both metrics are defined), ``n_units``, ``n_clusters``.
    """
    y, p_a = check_binary_inputs(y, p_a, p_name="p_a")
    _, p_b = check_binary_inputs(y, p_b, p_name="p_b")
    (metric,) = _check_metric_names((metric,))
    alpha = _check_alpha(alpha)
    s_a = _margin(p_a, _as_thresholds(threshold_a, len(y), "threshold_a"))
    s_b = _margin(p_b, _as_thresholds(threshold_b, len(y), "threshold_b"))
    if metric in ("auc", "brier", "ece"):  # threshold-free: on the probabilities themselves
        s_a, s_b = p_a, p_b
    counts = bootstrap_counts(y, n_boot=n_boot, seed=seed, stratified=stratified, groups=groups)
    rep_a = replicate_metrics(y, s_a, counts, threshold=0.5, metrics=(metric,))[metric]
    rep_b = replicate_metrics(y, s_b, counts, threshold=0.5, metrics=(metric,))[metric]
    d = rep_a - rep_b
    d = d[~np.isnan(d)]
    value_a = binary_metrics(y, s_a, threshold=0.5)[metric]
    value_b = binary_metrics(y, s_b, threshold=0.5)[metric]
    diff = float(value_a - value_b)
    if len(d):
        low, high = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        below, above = (np.sum(d <= 0) + 1) / (len(d) + 1), (np.sum(d >= 0) + 1) / (len(d) + 1)
        pval = float(min(1.0, 2 * min(below, above)))
    else:
        low = high = pval = np.nan
    n_units, n_clusters = cluster_counts(len(y), groups)
    return {"value_a": float(value_a), "value_b": float(value_b), "diff": diff, "ci_low": float(low),
            "ci_high": float(high), "p_value": pval, "n_valid": int(len(d)), "n_units": n_units,
            "n_clusters": n_clusters}


def one_row_per_patient(values, labels, groups, *, rule: str = "any_malignant") -> tuple[np.ndarray, np.ndarray]:
    """Collapse units to patients for patient-level statistics (e.g. age by label).

    A patient's label is malignant when any of its units is (``rule="any_malignant"``, the only rule):
    a woman with one benign and one malignant breast is a malignant patient. Her value is the mean of
    her units' non-missing values (NaN when all are missing; a patient-level variable such as age is the
    same on every unit).

    Returns:
        ``(values, labels)``, one entry per patient in order of first appearance.
    """
    if rule != "any_malignant":
        raise ValueError(f"rule must be 'any_malignant', got {rule!r}")
    y = check_labels(labels, name="labels")
    v = _check_sample(values, "values", allow_nan=True)
    g = np.asarray(groups)
    if g.shape != y.shape or v.shape != y.shape:
        raise ValueError(f"values, labels and groups must have one entry per unit, got {v.shape}, {y.shape}, {g.shape}")
    if pd.isna(g).any():
        raise ValueError(f"groups holds {int(pd.isna(g).sum())} missing id(s)")
    frame = pd.DataFrame({"g": g, "v": v, "y": y})
    per = frame.groupby("g", sort=False).agg(v=("v", "mean"), y=("y", "max"))
    return per["v"].to_numpy(), per["y"].to_numpy().astype(int)


def _delong_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fast DeLong (Sun & Xu 2014): AUCs ``(k,)`` and their covariance ``(k, k)`` from midranks."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"y needs at least 2 positives and 2 negatives for DeLong's variance, got {m} and {n}")
    tx = sps.rankdata(pos, axis=1)
    ty = sps.rankdata(neg, axis=1)
    tz = sps.rankdata(np.hstack([pos, neg]), axis=1)
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1) / (2 * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_roc_variance(y, p) -> tuple[float, float]:
    """AUC and its DeLong variance (DeLong et al. 1988, the fast algorithm of Sun & Xu 2014).

    Returns:
        ``(auc, var)``.
    """
    y, p = check_binary_inputs(y, p)
    aucs, cov = _delong_components(y, p[None, :])
    return float(aucs[0]), float(cov[0, 0])


def delong_ci(y, p, alpha: float = 0.05) -> tuple[float, float, float]:
    """Normal-theory ``1 - alpha`` interval of the AUC with DeLong's variance, clipped to [0, 1].

    Returns:
        ``(auc, low, high)``.
    """
    alpha = _check_alpha(alpha)
    auc, var = delong_roc_variance(y, p)
    half = sps.norm.ppf(1 - alpha / 2) * np.sqrt(var)
    return auc, float(max(0.0, auc - half)), float(min(1.0, auc + half))


def delong_test(y, p1, p2) -> dict[str, float]:
    """DeLong's test of two paired AUCs (two models scored on the same cases).

    Returns:
        ``auc1``, ``auc2``, ``diff = auc1 - auc2``, ``se`` of the difference, ``z``, two-sided ``p_value``.
        Identical AUCs give ``z = 0``, ``p_value = 1``.
    """
    y, p1 = check_binary_inputs(y, p1, p_name="p1")
    _, p2 = check_binary_inputs(y, p2, p_name="p2")
    aucs, cov = _delong_components(y, np.vstack([p1, p2]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    if diff == 0.0:
        z, pval = 0.0, 1.0
    elif se == 0.0:
        z, pval = float(np.sign(diff) * np.inf), 0.0
    else:
        z = diff / se
        pval = float(2 * sps.norm.sf(abs(z)))
    return {"auc1": float(aucs[0]), "auc2": float(aucs[1]), "diff": diff, "se": se, "z": z, "p_value": pval}


def mcnemar_exact(y, pred1, pred2) -> dict[str, float]:
    """Exact McNemar test of two classifiers' correctness on the same cases.

    Args:
        y: ``(n,)`` 0/1 labels.
        pred1, pred2: ``(n,)`` 0/1 predictions of model 1 and model 2.

    Returns:
        ``b`` (model 1 right, model 2 wrong), ``c`` (model 1 wrong, model 2 right), ``statistic``
        (``min(b, c)``) and the exact two-sided binomial ``p_value`` (statsmodels, ``exact=True``).
    """
    y = check_labels(y)
    pred1 = check_labels(pred1, name="pred1")
    pred2 = check_labels(pred2, name="pred2")
    for name, pred in (("pred1", pred1), ("pred2", pred2)):
        if len(pred) != len(y):
            raise ValueError(f"y and {name} differ in length: {len(y)} vs {len(pred)}")
    right1, right2 = pred1 == y, pred2 == y
    table = np.array(
        [[np.sum(right1 & right2), np.sum(right1 & ~right2)], [np.sum(~right1 & right2), np.sum(~right1 & ~right2)]]
    )
    res = mcnemar(table, exact=True)
    return {
        "b": int(table[0, 1]),
        "c": int(table[1, 0]),
        "statistic": float(res.statistic),
        "p_value": float(res.pvalue),
    }


def _check_sample(x, name: str, *, allow_nan: bool) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    try:
        arr = arr.astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got dtype {np.asarray(x).dtype}") from None
    if np.isinf(arr).any():
        raise ValueError(f"{name} holds infinite values")
    if not allow_nan and np.isnan(arr).any():
        raise ValueError(
            f"{name} holds {int(np.isnan(arr).sum())} NaN value(s); use compare_groups to drop and count them"
        )
    return arr


def cohens_d(a, b, *, alpha: float = 0.05, method: str = "noncentral_t") -> dict[str, float]:
    """Cohen's d of ``mean(a) - mean(b)`` with the pooled SD, its CI, and Hedges' g.

    ``d = (mean_a - mean_b) / s``, ``s^2 = ((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2)``.
    ``hedges_g = J d`` with the exact small-sample factor
    ``J = Gamma(df / 2) / (sqrt(df / 2) Gamma((df - 1) / 2))``, ``df = n_a + n_b - 2``.

    Args:
        a, b: the two samples (no NaN; see :func:`compare_groups`).
        alpha: the interval covers ``1 - alpha``.
        method: ``"noncentral_t"`` (default, exact under normality: invert the noncentral t distribution
            of ``t = d / sqrt(1/n_a + 1/n_b)``, Steiger & Fouladi 1997) or ``"normal"`` (Hedges & Olkin
            1985: ``d +- z SE``, ``SE^2 = (n_a + n_b) / (n_a n_b) + d^2 / (2 (n_a + n_b))``).

    Returns:
        ``d``, ``ci_low``, ``ci_high``, ``hedges_g``.
    """
    a = _check_sample(a, "a", allow_nan=False)
    b = _check_sample(b, "b", allow_nan=False)
    alpha = _check_alpha(alpha)
    if method not in ("noncentral_t", "normal"):
        raise ValueError(f"method must be 'noncentral_t' or 'normal', got {method!r}")
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        raise ValueError(f"a and b need at least 2 values each, got {na} and {nb}")
    df = na + nb - 2
    pooled = np.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / df)
    if pooled == 0:
        raise ValueError("a and b have zero pooled standard deviation; Cohen's d is undefined")
    d = float((a.mean() - b.mean()) / pooled)
    scale = np.sqrt(1 / na + 1 / nb)
    if method == "normal":
        se = np.sqrt((na + nb) / (na * nb) + d**2 / (2 * (na + nb)))
        z = sps.norm.ppf(1 - alpha / 2)
        low, high = d - z * se, d + z * se
    else:
        t_obs = d / scale
        low = _noncentrality(t_obs, df, 1 - alpha / 2) * scale
        high = _noncentrality(t_obs, df, alpha / 2) * scale
    j = np.exp(special.gammaln(df / 2) - 0.5 * np.log(df / 2) - special.gammaln((df - 1) / 2))
    return {"d": d, "ci_low": float(low), "ci_high": float(high), "hedges_g": float(j * d)}


def _noncentrality(t_obs: float, df: int, target: float) -> float:
    """The noncentrality ``nc`` with ``P(T <= t_obs | df, nc) = target`` (the CDF falls as ``nc`` grows)."""

    def f(nc: float) -> float:
        return sps.nct.cdf(t_obs, df, nc) - target

    step = 1.0 + abs(t_obs)
    lo, hi = t_obs - step, t_obs + step
    while f(lo) < 0:
        lo -= step
        step *= 2
    step = 1.0 + abs(t_obs)
    while f(hi) > 0:
        hi += step
        step *= 2
    return float(optimize.brentq(f, lo, hi, xtol=1e-12))


def compare_groups(a, b, *, alpha: float = 0.05) -> dict[str, float]:
    """Compare a numeric variable (e.g. age) between two groups (e.g. malignant ``a`` vs benign ``b``).

    NaNs are dropped from each group and counted in ``missing_a`` / ``missing_b``.

    Returns:
        ``n_a``, ``n_b``, ``missing_a``, ``missing_b``, ``mean_a``, ``mean_b``, ``sd_a``, ``sd_b`` (ddof 1),
        ``d``, ``d_ci_low``, ``d_ci_high``, ``hedges_g`` (:func:`cohens_d`, noncentral-t CI),
        ``welch_t``, ``welch_df``, ``welch_p`` (``scipy.stats.ttest_ind(equal_var=False)``),
        ``mannwhitney_u``, ``mannwhitney_p`` (two-sided ``scipy.stats.mannwhitneyu``; U of ``a``).
    """
    a = _check_sample(a, "a", allow_nan=True)
    b = _check_sample(b, "b", allow_nan=True)
    miss_a, miss_b = int(np.isnan(a).sum()), int(np.isnan(b).sum())
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) < 2 or len(b) < 2:
        raise ValueError(
            f"a and b need at least 2 non-missing values each, got {len(a)} and {len(b)} "
            f"({miss_a} and {miss_b} missing)"
        )
    eff = cohens_d(a, b, alpha=alpha)
    welch = sps.ttest_ind(a, b, equal_var=False)
    mwu = sps.mannwhitneyu(a, b, alternative="two-sided")
    return {
        "n_a": len(a),
        "n_b": len(b),
        "missing_a": miss_a,
        "missing_b": miss_b,
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "sd_a": float(a.std(ddof=1)),
        "sd_b": float(b.std(ddof=1)),
        "d": eff["d"],
        "d_ci_low": eff["ci_low"],
        "d_ci_high": eff["ci_high"],
        "hedges_g": eff["hedges_g"],
        "welch_t": float(welch.statistic),
        "welch_df": float(welch.df),
        "welch_p": float(welch.pvalue),
        "mannwhitney_u": float(mwu.statistic),
        "mannwhitney_p": float(mwu.pvalue),
    }


def reliability_curve(y, p, *, n_bins: int = 10, strategy: str = "uniform") -> pd.DataFrame:
    """Reliability diagram data, one row per non-empty bin.

    The bins are those of :func:`mmlib.metrics.expected_calibration_error` (and of
    :func:`sklearn.calibration.calibration_curve`), so ``ECE = sum(count * |fraction_positive -
    mean_predicted|) / sum(count)`` over these rows.

    Returns:
        ``bin`` (index), ``mean_predicted``, ``fraction_positive``, ``count``, ``bin_lower``, ``bin_upper``.
    """
    table = calibration_table(y, p, n_bins=n_bins, strategy=strategy)
    return table[["bin", "mean_predicted", "fraction_positive", "count", "bin_lower", "bin_upper"]]


def decision_curve(y, p, *, thresholds=np.linspace(0.01, 0.99, 99)) -> pd.DataFrame:
    """Decision curve analysis (Vickers & Elkin 2006).

    At threshold probability ``t``: ``net_benefit = TP/n - FP/n * t / (1 - t)`` for the model
    (``p >= t`` treated), ``treat_all = prevalence - (1 - prevalence) * t / (1 - t)``, ``treat_none = 0``.

    Args:
        y: ``(n,)`` 0/1 labels.
        p: ``(n,)`` probabilities of malignancy.
        thresholds: threshold probabilities, each in the open interval (0, 1).

    Returns:
        ``threshold``, ``net_benefit``, ``treat_all``, ``treat_none``; one row per threshold.
    """
    y, p = check_binary_inputs(y, p)
    t = np.atleast_1d(np.asarray(thresholds, dtype=float))
    if t.ndim != 1 or t.size == 0 or np.isnan(t).any() or ((t <= 0) | (t >= 1)).any():
        raise ValueError(f"thresholds must be a non-empty 1-D array of values in (0, 1), got {thresholds!r}")
    n = len(y)
    treated = p[:, None] >= t[None, :]
    tp = (treated & (y[:, None] == 1)).sum(axis=0)
    fp = (treated & (y[:, None] == 0)).sum(axis=0)
    odds = t / (1 - t)
    prevalence = y.mean()
    return pd.DataFrame(
        {
            "threshold": t,
            "net_benefit": tp / n - fp / n * odds,
            "treat_all": prevalence - (1 - prevalence) * odds,
            "treat_none": np.zeros_like(t),
        }
    )


#: Probabilities are clipped to [CLIP, 1 - CLIP] before the logit, so 0 and 1 stay finite.
LOGIT_CLIP = 1e-6


def calibration_slope_intercept(y, p, *, alpha: float = 0.05) -> dict[str, float]:
    """Logistic recalibration (Cox 1958; Van Calster et al. 2016) on the linear predictor ``logit(p)``.

    - ``slope``: ``b`` in ``logit P(y = 1) = a + b logit(p)`` (1 = ideal, < 1 = too extreme predictions).
    - ``intercept`` (calibration-in-the-large): ``a`` in ``logit P(y = 1) = a + logit(p)``, the slope
      fixed at 1 by an offset (0 = ideal, > 0 = risks underestimated).

    Both are statsmodels ``Logit`` maximum-likelihood fits with Wald ``1 - alpha`` intervals.
    ``p`` is clipped to ``[LOGIT_CLIP, 1 - LOGIT_CLIP]`` first.

    Returns:
        ``slope``, ``slope_ci_low``, ``slope_ci_high``, ``intercept``, ``intercept_ci_low``,
        ``intercept_ci_high``.
    """
    y, p = check_binary_inputs(y, p)
    alpha = _check_alpha(alpha)
    if len(np.unique(y)) < 2:
        raise ValueError("y holds one class only; calibration slope and intercept need both classes")
    lp = special.logit(np.clip(p, LOGIT_CLIP, 1 - LOGIT_CLIP))
    with warnings.catch_warnings():
        # Near-separation is reported through the wide intervals, not a console warning.
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        warnings.simplefilter("ignore", category=PerfectSeparationWarning)
        slope_fit = sm.Logit(y, sm.add_constant(lp, has_constant="add")).fit(disp=0)
        citl_fit = sm.Logit(y, np.ones((len(y), 1)), offset=lp).fit(disp=0)
    s_ci = np.asarray(slope_fit.conf_int(alpha))[1]
    i_ci = np.asarray(citl_fit.conf_int(alpha))[0]
    return {
        "slope": float(slope_fit.params[1]),
        "slope_ci_low": float(s_ci[0]),
        "slope_ci_high": float(s_ci[1]),
        "intercept": float(citl_fit.params[0]),
        "intercept_ci_low": float(i_ci[0]),
        "intercept_ci_high": float(i_ci[1]),
    }
