"""Statistics against textbook values and second implementations written here."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, special
from scipy import stats as sps
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mmlib.metrics import METRICS, binary_metrics, expected_calibration_error
from mmlib.stats import (
    bootstrap_ci,
    bootstrap_counts,
    calibration_slope_intercept,
    cohens_d,
    compare_groups,
    decision_curve,
    delong_ci,
    delong_roc_variance,
    delong_test,
    mcnemar_exact,
    reliability_curve,
    replicate_metrics,
    weighted_auc,
)


def synthetic(n: int, seed: int = 0, shift: float = 1.0):
    """Labels and tied, rounded probabilities with a moderate AUC."""
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < 0.4).astype(int)
    p = np.round(special.expit(shift * (2 * y - 1) + rng.normal(size=n)), 2)
    return y, p


def test_mcnemar_textbook_b1_c8():
    # 1 case only model 1 gets right, 8 only model 2 gets right, 10 both, 3 neither.
    y = np.ones(22, dtype=int)
    pred1 = np.r_[np.ones(1), np.zeros(8), np.ones(10), np.zeros(3)]
    pred2 = np.r_[np.zeros(1), np.ones(8), np.ones(10), np.zeros(3)]
    res = mcnemar_exact(y, pred1, pred2)
    assert (res["b"], res["c"]) == (1, 8)
    assert res["p_value"] == pytest.approx(0.0390625)
    assert res["p_value"] == pytest.approx(2 * sps.binom.cdf(1, 9, 0.5))
    assert res["statistic"] == 1
    swapped = mcnemar_exact(y, pred2, pred1)
    assert (swapped["b"], swapped["c"], swapped["p_value"]) == (8, 1, res["p_value"])


def test_mcnemar_counts_correctness_not_predictions():
    # Both models predict 1 on a benign and 0 on a malignant case: same correctness, no discordance.
    y = np.array([0, 1, 0, 1])
    res = mcnemar_exact(y, [1, 0, 0, 1], [1, 0, 0, 1])
    assert (res["b"], res["c"], res["p_value"]) == (0, 0, 1.0)
    res = mcnemar_exact(y, [0, 1, 0, 1], [1, 0, 1, 0])  # model 1 always right, model 2 always wrong
    assert (res["b"], res["c"]) == (4, 0)
    assert res["p_value"] == pytest.approx(2 * 0.5**4)


def test_mcnemar_bad_inputs():
    with pytest.raises(ValueError, match="pred2"):
        mcnemar_exact([0, 1], [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="pred1"):
        mcnemar_exact([0, 1], [0, 0.5], [0, 1])


def psi(x, z):
    return (x > z) + 0.5 * (x == z)


def delong_by_hand(y, scores):
    """DeLong et al. 1988 structural components, O(m n) pairwise: AUCs and covariance matrix."""
    y = np.asarray(y)
    pos = [s[y == 1] for s in scores]
    neg = [s[y == 0] for s in scores]
    m, n = len(pos[0]), len(neg[0])
    v10 = np.array([[psi(px[i], nx).mean() for i in range(m)] for px, nx in zip(pos, neg)])
    v01 = np.array([[psi(px, nx[j]).mean() for j in range(n)] for px, nx in zip(pos, neg)])
    aucs = v10.mean(axis=1)
    k = len(scores)
    s10 = np.array([[np.sum((v10[r] - aucs[r]) * (v10[s] - aucs[s])) / (m - 1) for s in range(k)] for r in range(k)])
    s01 = np.array([[np.sum((v01[r] - aucs[r]) * (v01[s] - aucs[s])) / (n - 1) for s in range(k)] for r in range(k)])
    return aucs, s10 / m + s01 / n


def test_delong_variance_matches_structural_components():
    y, p = synthetic(120, seed=6)
    auc, var = delong_roc_variance(y, p)
    ref_auc, ref_cov = delong_by_hand(y, [p])
    assert auc == pytest.approx(roc_auc_score(y, p))
    assert auc == pytest.approx(ref_auc[0])
    assert var == pytest.approx(ref_cov[0, 0], rel=1e-10)


def test_delong_paired_test_matches_structural_components():
    y, p1 = synthetic(100, seed=7)
    rng = np.random.default_rng(8)
    p2 = np.round(np.clip(p1 + rng.normal(0, 0.25, p1.size), 0, 1), 2)
    res = delong_test(y, p1, p2)
    aucs, cov = delong_by_hand(y, [p1, p2])
    se = np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert res["auc1"] == pytest.approx(roc_auc_score(y, p1))
    assert res["auc2"] == pytest.approx(roc_auc_score(y, p2))
    assert res["diff"] == pytest.approx(aucs[0] - aucs[1])
    assert res["z"] == pytest.approx((aucs[0] - aucs[1]) / se)
    assert res["p_value"] == pytest.approx(2 * sps.norm.sf(abs(res["z"])))


def test_delong_identical_predictions():
    y, p = synthetic(80, seed=9)
    res = delong_test(y, p, p)
    assert (res["z"], res["p_value"], res["diff"]) == (0.0, 1.0, 0.0)


def test_delong_hanley_mcneil_ct_ratings():
    # Hanley & McNeil (1982) Table 1: 58 normal and 51 abnormal CT images rated 1-5; published AUC 0.893.
    neg = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    pos = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    y = np.r_[np.zeros(58), np.ones(51)]
    auc, var = delong_roc_variance(y, np.r_[neg, pos] / 5)
    assert round(auc, 3) == 0.893
    # Their exponential-model SE, 0.032, is an approximation to the same quantity.
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    se_hm = np.sqrt((auc * (1 - auc) + 50 * (q1 - auc**2) + 57 * (q2 - auc**2)) / (51 * 58))
    assert round(se_hm, 3) == 0.032
    assert np.sqrt(var) == pytest.approx(se_hm, abs=0.003)


def test_delong_se_close_to_bootstrap_se():
    y, p = synthetic(200, seed=10)
    _, var = delong_roc_variance(y, p)
    boot = weighted_auc(y, p, bootstrap_counts(y, n_boot=4000, seed=1, stratified=False))
    assert np.sqrt(var) == pytest.approx(boot.std(ddof=1), rel=0.1)


def test_delong_ci():
    y, p = synthetic(150, seed=11)
    auc, low, high = delong_ci(y, p, alpha=0.1)
    _, var = delong_roc_variance(y, p)
    assert low < auc < high
    assert high - auc == pytest.approx(sps.norm.ppf(0.95) * np.sqrt(var))
    assert auc - low == pytest.approx(high - auc)
    with pytest.raises(ValueError, match="at least 2 positives"):
        delong_roc_variance([0, 0, 1], [0.1, 0.2, 0.3])


def test_vectorised_auc_equals_sklearn_on_replicates():
    y, p = synthetic(90, seed=12)
    counts = bootstrap_counts(y, n_boot=5, seed=3)
    aucs = weighted_auc(y, p, counts)
    for r in range(5):
        idx = np.repeat(np.arange(len(y)), counts[r])
        assert aucs[r] == pytest.approx(roc_auc_score(y[idx], p[idx]))


def test_replicate_metrics_equal_binary_metrics_on_resampled_data():
    y, p = synthetic(70, seed=13)
    counts = bootstrap_counts(y, n_boot=4, seed=4, stratified=False)
    reps = replicate_metrics(y, p, counts, threshold=0.45, ece_bins=7)
    for r, c in enumerate(counts):
        idx = np.repeat(np.arange(len(y)), c)
        # ECE bins of the resampled data are the same equal-width bins
        direct = binary_metrics(y[idx], p[idx], threshold=0.45, ece_bins=7)
        for m in METRICS:
            assert reps[m][r] == pytest.approx(direct[m]), (r, m)


def test_bootstrap_ci_percentiles_of_replicates():
    y, p = synthetic(60, seed=23)
    counts = bootstrap_counts(y, n_boot=300, seed=5)
    reps = replicate_metrics(y, p, counts, metrics=("auc", "mcc"))
    ci = bootstrap_ci(y, p, n_boot=300, seed=5, alpha=0.1, metrics=("auc", "mcc")).set_index("metric")
    for m in ("auc", "mcc"):
        low, high = np.percentile(reps[m], [5, 95])
        assert (ci.loc[m, "ci_low"], ci.loc[m, "ci_high"]) == (pytest.approx(low), pytest.approx(high))


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    y, p = synthetic(300, seed=14)
    start = time.perf_counter()
    ci = bootstrap_ci(y, p, n_boot=2000, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0  # vectorised: well under a second on an idle core
    assert list(ci.metric) == list(METRICS)
    point = binary_metrics(y, p)
    for _, row in ci.iterrows():
        assert row.value == pytest.approx(point[row.metric])
        assert row.ci_low <= row.value <= row.ci_high, row.metric
        assert row.n_valid == 2000
    again = bootstrap_ci(y, p, n_boot=2000, seed=0)
    assert ci.equals(again)
    other = bootstrap_ci(y, p, n_boot=2000, seed=1)
    assert not np.allclose(ci.ci_low, other.ci_low)


def test_bootstrap_ci_narrows_with_n():
    widths = []
    for n in (100, 1600):
        y, p = synthetic(n, seed=15)
        ci = bootstrap_ci(y, p, n_boot=1000, metrics=("auc", "accuracy")).set_index("metric")
        widths.append(ci.ci_high - ci.ci_low)
    # Width falls like 1/sqrt(n): a factor of about 4 here.
    assert ((widths[0] / widths[1]) > 2.5).all()


def test_stratified_replicates_keep_class_counts():
    y, _ = synthetic(77, seed=16)
    counts = bootstrap_counts(y, n_boot=200, seed=0)
    assert (counts.sum(axis=1) == len(y)).all()
    assert (counts @ y == y.sum()).all()
    plain = bootstrap_counts(y, n_boot=200, seed=0, stratified=False)
    assert (plain.sum(axis=1) == len(y)).all()
    assert len(np.unique(plain @ y)) > 1


def test_cluster_bootstrap_draws_whole_groups():
    rng = np.random.default_rng(17)
    groups = np.repeat(np.arange(40), 2)  # two breasts per patient
    y = np.repeat(rng.integers(0, 2, 40), 2)
    y[1] = 1 - y[0]  # one patient with one benign and one malignant lesion
    counts = bootstrap_counts(y, n_boot=300, seed=2, groups=groups)
    np.testing.assert_array_equal(counts[:, 0::2], counts[:, 1::2])
    group_malignant = np.maximum.reduceat(y, np.arange(0, 80, 2))
    drawn = counts[:, 0::2]
    assert (drawn @ group_malignant == group_malignant.sum()).all()
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.1, 80), 0, 1)
    ci = bootstrap_ci(y, p, n_boot=300, groups=groups, metrics="auc")
    assert ci.ci_low.iloc[0] <= ci.value.iloc[0] <= ci.ci_high.iloc[0]
    with pytest.raises(ValueError, match="groups"):
        bootstrap_counts(y, groups=groups[:-1])


def test_bootstrap_undefined_metric_counted():
    y, p = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])
    ci = bootstrap_ci(y, p, n_boot=50, metrics=("precision", "auc")).set_index("metric")
    assert ci.loc["precision", "n_valid"] == 0 and np.isnan(ci.loc["precision", "ci_low"])
    assert ci.loc["auc", "n_valid"] == 50
    with pytest.raises(ValueError, match="metrics"):
        bootstrap_ci(y, p, metrics=("auroc",))
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(y, p, n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(y, p, alpha=1.5)


def test_cohens_d_hand_example():
    # means 4 and 2, variances 4 and 1, pooled variance (2*4 + 2*1) / 4 = 2.5
    res = cohens_d([2, 4, 6], [1, 2, 3])
    assert res["d"] == pytest.approx(2 / np.sqrt(2.5))
    # df = 4: J = Gamma(2) / (sqrt(2) Gamma(1.5)) = sqrt(2 / pi), near Hedges' 1 - 3 / (4 df - 1)
    assert res["hedges_g"] == pytest.approx(np.sqrt(2 / np.pi) * 2 / np.sqrt(2.5))
    assert res["hedges_g"] / res["d"] == pytest.approx(1 - 3 / 15, abs=0.005)
    assert res["ci_low"] < res["d"] < res["ci_high"]


def test_cohens_d_noncentral_t_interval_inverts_the_cdf():
    rng = np.random.default_rng(18)
    a, b = rng.normal(0.6, 1, 25), rng.normal(0, 1, 30)
    res = cohens_d(a, b, alpha=0.05)
    scale = np.sqrt(1 / 25 + 1 / 30)
    t_obs = sps.ttest_ind(a, b).statistic  # pooled t = d / scale
    assert res["d"] == pytest.approx(t_obs * scale)
    assert sps.nct.cdf(t_obs, 53, res["ci_low"] / scale) == pytest.approx(0.975, abs=1e-7)
    assert sps.nct.cdf(t_obs, 53, res["ci_high"] / scale) == pytest.approx(0.025, abs=1e-7)


def test_cohens_d_normal_interval_formula_and_agreement():
    rng = np.random.default_rng(19)
    a, b = rng.normal(0.5, 1, 400), rng.normal(0, 1, 500)
    normal = cohens_d(a, b, method="normal")
    d = normal["d"]
    se = np.sqrt(900 / (400 * 500) + d**2 / (2 * 900))
    assert normal["ci_low"] == pytest.approx(d - 1.959963985 * se)
    assert normal["ci_high"] == pytest.approx(d + 1.959963985 * se)
    exact = cohens_d(a, b)
    assert exact["ci_low"] == pytest.approx(normal["ci_low"], abs=0.005)
    assert exact["ci_high"] == pytest.approx(normal["ci_high"], abs=0.005)


def test_cohens_d_bad_inputs():
    with pytest.raises(ValueError, match="a holds 1 NaN"):
        cohens_d([1, np.nan, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        cohens_d([1], [1, 2])
    with pytest.raises(ValueError, match="zero pooled"):
        cohens_d([1, 1], [2, 2])
    with pytest.raises(ValueError, match="method"):
        cohens_d([1, 2], [2, 3], method="bootstrap")


def test_compare_groups_counts_missing_and_matches_scipy():
    rng = np.random.default_rng(20)
    a = rng.normal(58, 11, 40)
    b = rng.normal(49, 12, 35)
    a[[3, 9]] = np.nan
    b[0] = np.nan
    res = compare_groups(a, b)
    ca, cb = a[~np.isnan(a)], b[~np.isnan(b)]
    assert (res["n_a"], res["n_b"], res["missing_a"], res["missing_b"]) == (38, 34, 2, 1)
    assert res["mean_a"] == pytest.approx(ca.mean()) and res["sd_b"] == pytest.approx(cb.std(ddof=1))
    welch = sps.ttest_ind(ca, cb, equal_var=False)
    assert res["welch_t"] == pytest.approx(welch.statistic)
    assert res["welch_p"] == pytest.approx(welch.pvalue)
    mwu = sps.mannwhitneyu(ca, cb, alternative="two-sided")
    assert res["mannwhitney_u"] == mwu.statistic and res["mannwhitney_p"] == pytest.approx(mwu.pvalue)
    d = cohens_d(ca, cb)
    assert (res["d"], res["d_ci_low"], res["d_ci_high"]) == (d["d"], d["ci_low"], d["ci_high"])
    with pytest.raises(ValueError, match="at least 2 non-missing"):
        compare_groups([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="b holds infinite"):
        compare_groups([1.0, 2.0], [1.0, np.inf])


def test_reliability_curve_consistent_with_ece():
    y, p = synthetic(400, seed=21)
    for strategy in ("uniform", "quantile"):
        rc = reliability_curve(y, p, n_bins=8, strategy=strategy)
        assert list(rc.columns[:4]) == ["bin", "mean_predicted", "fraction_positive", "count"]
        gap = np.abs(rc.fraction_positive - rc.mean_predicted)
        assert float((rc["count"] * gap).sum() / rc["count"].sum()) == pytest.approx(
            expected_calibration_error(y, p, n_bins=8, strategy=strategy)
        )


def test_reliability_curve_hand_example():
    rc = reliability_curve([0, 1, 1, 1], [0.05, 0.05, 0.15, 0.15])
    assert rc["bin"].tolist() == [0, 1]
    np.testing.assert_allclose(rc.mean_predicted, [0.05, 0.15])
    np.testing.assert_allclose(rc.fraction_positive, [0.5, 1.0])
    assert rc["count"].tolist() == [2, 2]


def test_decision_curve_hand_example():
    y, p = [1, 1, 0, 0, 1], [0.9, 0.6, 0.7, 0.2, 0.3]
    dc = decision_curve(y, p, thresholds=[0.1, 0.25, 0.5]).set_index("threshold")
    # t = .5: treated {.9, .6, .7}: TP 2, FP 1 -> 2/5 - 1/5 * 1
    assert dc.loc[0.5, "net_benefit"] == pytest.approx(0.2)
    # t = .25: treated {.9, .6, .7, .3}: TP 3, FP 1 -> 3/5 - 1/5 * 1/3
    assert dc.loc[0.25, "net_benefit"] == pytest.approx(0.6 - 0.2 / 3)
    # t = .1 treats everyone, so the model equals treat-all = prevalence - (1 - prevalence) t / (1 - t)
    assert dc.loc[0.1, "net_benefit"] == pytest.approx(0.6 - 0.4 / 9)
    np.testing.assert_allclose(dc.treat_all, 0.6 - 0.4 * dc.index / (1 - dc.index))
    assert (dc.treat_none == 0).all()
    with pytest.raises(ValueError, match="thresholds"):
        decision_curve(y, p, thresholds=[0.0, 0.5])


def test_calibration_slope_intercept_second_implementation():
    rng = np.random.default_rng(22)
    lp_true = rng.normal(0, 1.5, 3000)
    y = (rng.uniform(size=lp_true.size) < special.expit(lp_true)).astype(int)
    overconfident = special.expit(2 * lp_true)
    res = calibration_slope_intercept(y, overconfident)
    lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit((2 * lp_true)[:, None], y)
    assert res["slope"] == pytest.approx(lr.coef_[0, 0], rel=1e-4)
    assert res["slope_ci_low"] < 0.5 < res["slope_ci_high"]
    # calibration-in-the-large: the a that solves sum(y - expit(a + lp)) = 0
    a = optimize.brentq(lambda a: np.sum(y - special.expit(a + 2 * lp_true)), -5, 5, xtol=1e-12)
    assert res["intercept"] == pytest.approx(a, abs=1e-6)

    calibrated = calibration_slope_intercept(y, special.expit(lp_true))
    assert calibrated["slope_ci_low"] < 1 < calibrated["slope_ci_high"]
    assert calibrated["intercept_ci_low"] < 0 < calibrated["intercept_ci_high"]
    with pytest.raises(ValueError, match="one class"):
        calibration_slope_intercept([1, 1, 1], [0.2, 0.5, 0.9])


def _clustered(n_patients=60, units=2, seed=0):
    """A toy cohort of patients with several identical units each (e.g. two breasts imaged alike)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_patients)
    p = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.25, n_patients), 0, 1)
    return np.repeat(y, units), np.repeat(p, units), np.repeat(np.arange(n_patients), units)


def test_grouped_bootstrap_widens_the_interval_of_duplicated_units():
    y, p, groups = _clustered()
    flat = bootstrap_ci(y, p, n_boot=1000, seed=0, metrics=("auc", "accuracy")).set_index("metric")
    grouped = bootstrap_ci(y, p, n_boot=1000, seed=0, metrics=("auc", "accuracy"), groups=groups).set_index("metric")
    for m in ("auc", "accuracy"):
        assert grouped.loc[m, "value"] == flat.loc[m, "value"]
        # duplicated units carry no new information: the honest interval is about sqrt(2) times wider
        assert (grouped.loc[m, "ci_high"] - grouped.loc[m, "ci_low"]) > 1.2 * (flat.loc[m, "ci_high"] - flat.loc[m, "ci_low"])


def test_one_unit_per_patient_groups_equal_the_plain_bootstrap():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 70)
    p = rng.random(70)
    ids = np.array([f"P{i:03d}" for i in rng.permutation(70)])
    np.testing.assert_array_equal(bootstrap_counts(y, n_boot=100, seed=3),
                                  bootstrap_counts(y, n_boot=100, seed=3, groups=ids))
    pd.testing.assert_frame_equal(bootstrap_ci(y, p, n_boot=200, seed=3), bootstrap_ci(y, p, n_boot=200, seed=3, groups=ids))


def test_paired_bootstrap_diff_of_auc_and_accuracy():
    from mmlib.stats import paired_bootstrap_diff

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 200)
    good = np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.2, 200), 0, 1)
    weak = np.clip(0.5 + 0.05 * (2 * y - 1) + rng.normal(0, 0.2, 200), 0, 1)
    r = paired_bootstrap_diff(y, good, weak, n_boot=500, seed=1)
    assert r["diff"] == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, weak))
    assert r["ci_low"] > 0 and r["p_value"] < 0.01 and r["n_units"] == r["n_clusters"] == 200
    same = paired_bootstrap_diff(y, good, good, n_boot=200, seed=1)
    assert same["diff"] == 0 and same["p_value"] == 1.0 and same["ci_low"] == same["ci_high"] == 0
    acc = paired_bootstrap_diff(y, good, weak, metric="accuracy", threshold_a=0.5,
                                threshold_b=np.full(200, 0.5), n_boot=300, seed=1)
    assert acc["diff"] == pytest.approx(np.mean((good >= 0.5) == y) - np.mean((weak >= 0.5) == y))
    # per-case thresholds: the cut-off of each case is applied to it
    t = np.where(np.arange(200) < 100, 0.3, 0.7)
    acc_t = paired_bootstrap_diff(y, good, weak, metric="accuracy", threshold_a=t, n_boot=50)
    assert acc_t["value_a"] == pytest.approx(np.mean((good >= t) == y))
    with pytest.raises(ValueError, match="threshold_a"):
        paired_bootstrap_diff(y, good, weak, metric="accuracy", threshold_a=np.full(3, 0.5))
    with pytest.raises(ValueError, match="metrics"):
        paired_bootstrap_diff(y, good, weak, metric="roc")


def test_paired_bootstrap_diff_is_wider_with_clusters():
    from mmlib.stats import paired_bootstrap_diff

    y, p, groups = _clustered(80, seed=2)
    rng = np.random.default_rng(9)
    q = np.repeat(np.clip(p[::2] + rng.normal(0, 0.2, 80), 0, 1), 2)
    flat = paired_bootstrap_diff(y, p, q, n_boot=800, seed=0)
    grouped = paired_bootstrap_diff(y, p, q, n_boot=800, seed=0, groups=groups)
    assert grouped["diff"] == flat["diff"] and grouped["n_clusters"] == 80 and grouped["n_units"] == 160
    assert grouped["ci_high"] - grouped["ci_low"] > 1.2 * (flat["ci_high"] - flat["ci_low"])


def test_one_row_per_patient_any_malignant():
    from mmlib.stats import one_row_per_patient

    age, label = one_row_per_patient([50, 50, 40, np.nan, 61], [0, 1, 0, 0, 1], ["a", "a", "b", "b", "c"])
    np.testing.assert_array_equal(label, [1, 0, 1])
    np.testing.assert_allclose(age, [50, 40, 61])
    with pytest.raises(ValueError, match="one entry per unit"):
        one_row_per_patient([1, 2], [0, 1], ["a"])
    with pytest.raises(ValueError, match="rule"):
        one_row_per_patient([1], [0], ["a"], rule="first")
