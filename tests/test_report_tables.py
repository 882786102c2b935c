"""The book's tables read well: display names, p-values as a reader writes them, no raw JSON."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd

from mmlib import report


def _stats():
    common = {"split": "cv", "a": "cuf_mt", "b": "age_only", "n_units": 80, "n_clusters": 64}
    return pd.DataFrame([
        {"test": "bootstrap_auc_diff", **common, "statistic": 0.1234, "p_value": 0.00001, "p_holm": 0.0004,
         "ci_low": 0.05, "ci_high": 0.2, "unit": "patient",
         "detail": json.dumps({"auc_a": 0.9123456789, "auc_b": 0.7889, "n_boot": 200, "n_valid": 200})},
        {"test": "delong", **common, "statistic": 2.5, "p_value": 0.0123, "p_holm": 0.5, "ci_low": 0.01,
         "ci_high": 0.23, "unit": "unit", "detail": json.dumps({"auc_a": 0.91, "auc_b": 0.79, "diff": 0.12})},
        {"test": "mcnemar_exact", **common, "statistic": 3.0, "p_value": 1.0, "p_holm": 1.0, "ci_low": np.nan,
         "ci_high": np.nan, "unit": "unit", "detail": json.dumps({"b": 9, "c": 3})},
    ])


def test_pairwise_tables_have_readable_columns_and_p_values():
    res = SimpleNamespace(stats=_stats())
    boot = report.pairwise_table(res, test="bootstrap_auc_diff")
    assert list(boot.columns) == ["model A", "model B", "AUC A", "AUC B", "AUC A − B (95% CI)", "p", "p (Holm)",
                                  "independent", "units", "patients"]
    row = boot.iloc[0]
    assert (row["model A"], row["model B"]) == ("CUF-MT", "Age only (logistic regression)")
    assert row["AUC A"] == 0.912 and row["AUC A − B (95% CI)"] == "0.123 (0.050–0.200)"
    assert (row["p"], row["p (Holm)"], row["independent"], row["patients"]) == ("< 0.001", "< 0.001", "patients", 64)
    delong = report.pairwise_table(res, test="delong").iloc[0]
    assert delong["AUC A − B (95% CI)"] == "0.120 (0.010–0.230)" and delong["z"] == 2.5 and delong["p"] == "0.012"
    mcnemar = report.pairwise_table(res, test="mcnemar_exact")
    assert list(mcnemar.columns[:4]) == ["model A", "model B", "A right, B wrong", "A wrong, B right"]
    assert "statistic" not in mcnemar.columns and "detail" not in mcnemar.columns
    for table in (boot, mcnemar):
        assert not any(isinstance(v, str) and "{" in v for v in table.to_numpy().ravel())


def test_fmt_p():
    assert report.fmt_p(0.0004) == "< 0.001" and report.fmt_p(0.001) == "0.001" and report.fmt_p(0.51234) == "0.512"
    assert report.fmt_p(float("nan")) == "n/a" and report.fmt_p(None) == "n/a"


def test_real_vs_synthetic_lists_run_profiles_not_tuning_variants_or_benchmarks(tmp_path, monkeypatch):
    import mmlib.experiment
    from mmlib import paths

    monkeypatch.setattr(paths, "RESULTS", tmp_path / "results")
    for name in ("default", "breast-lesions-usg", "breast-lesions-usg-8358fb1f", "bench-default-local-w2"):
        (tmp_path / "results" / name).mkdir(parents=True)
        (tmp_path / "results" / name / "run.json").write_text("{}")
    metrics = pd.DataFrame([{"model": "amw_cnn", "split": "cv", "ablation": "none", "scenario": "all",
                             "metric": "auc", "value": 0.9, "n_seeds": 1}])
    monkeypatch.setattr(mmlib.experiment, "load_results",
                        lambda folder: SimpleNamespace(metrics=metrics, run={"synthetic": folder.name == "default"}))
    monkeypatch.setattr(report, "abstract_numbers", lambda r: ("amw_cnn", {
        "n_patients": 10, "best_cv_auc": 0.9, "best_cv_auc_low": 0.8, "best_cv_auc_high": 0.95, "age_cv_auc": 0.7,
        "oracle_auc": -1}))
    table = report.real_vs_synthetic("default")
    assert list(table["profile"]) == ["breast-lesions-usg", "default"]
    assert list(table["cohort"]) == ["real", "synthetic"]
