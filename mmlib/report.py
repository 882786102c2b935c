"""Tables of the book, drawn from the tidy results of a run (:class:`mmlib.experiment.Results`).

Each function returns a DataFrame ready to show; numbers stay numbers except where a column is explicitly a
formatted "estimate (95% CI)" string.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from .schema import all_scenarios, scenario_name

#: Display names in the paper's words.
MODEL_NAMES = {
    "cuf_mt": "CUF-MT", "amw_cnn": "AMW-CNN", "mm_abmil": "MM-ABMIL", "cnn_lstm": "CNN-LSTM",
    "age_only": "Age only (logistic regression)", "ultrasound_only": "Ultrasound only", "mammography_only": "Mammography only",
    "late_fusion": "Late fusion (average)", "clinical_only": "Clinical only",
}
MAIN_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "precision", "mcc", "brier", "ece")


def display_name(model: str) -> str:
    return MODEL_NAMES.get(model, model)


def model_order(res) -> list[str]:
    """The run's models first (paper order), then its baselines."""
    p = res.run["params"]
    present = set(res.metrics["model"]) if not res.metrics.empty else set()
    return [m for m in [*p["models"], *p["baselines"]] if m in present]


def fmt_ci(value, low, high, digits: int = 3) -> str:
    if not np.isfinite(value):
        return "n/a"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def _sel(m: pd.DataFrame, **kw) -> pd.DataFrame:
    for k, v in kw.items():
        m = m[m[k] == v]
    return m


def metrics_table(res, *, split: str = "cv", ablation: str = "none", scenario: str = "all",
                  metrics=MAIN_METRICS) -> pd.DataFrame:
    """Model × metric, each cell "estimate (95% CI)" (pooled out-of-fold for ``split="cv"``)."""
    m = _sel(res.metrics, split=split, ablation=ablation, scenario=scenario)
    rows = []
    for model in model_order(res):
        g = m[m["model"] == model].set_index("metric")
        row = {"model": display_name(model)}
        for k in metrics:
            row[k.upper() if k in ("auc", "mcc", "ece") else k] = (
                fmt_ci(*g.loc[k, ["value", "ci_low", "ci_high"]]) if k in g.index else "n/a")
        rows.append(row)
    return pd.DataFrame(rows)


def fold_table(res, *, metric: str = "auc", ablation: str = "none", scenario: str = "all") -> pd.DataFrame:
    """Model × fold values of one metric, with the mean and SD over folds."""
    f = _sel(res.fold_metrics, metric=metric, ablation=ablation, scenario=scenario)
    if f.empty:
        return pd.DataFrame()
    wide = f.pivot_table(index="model", columns="fold", values="value")
    wide.columns = [f"fold {int(c) + 1}" for c in wide.columns]
    wide["mean"], wide["sd"] = wide.mean(axis=1), wide.std(axis=1, ddof=1)
    wide = wide.reindex([m for m in model_order(res) if m in wide.index])
    wide.index = [display_name(m) for m in wide.index]
    return wide.round(3)


def cv_vs_test(res, *, metric: str = "auc") -> pd.DataFrame:
    """Cross-validation and internal-test values side by side, with the difference (test − CV)."""
    m = _sel(res.metrics, ablation="none", scenario="all", metric=metric)
    rows = []
    for model in model_order(res):
        g = m[m["model"] == model].set_index("split")
        if "cv" not in g.index:
            continue
        cv = g.loc["cv"]
        te = g.loc["test"] if "test" in g.index else None
        rows.append({"model": display_name(model), "cv": fmt_ci(cv["value"], cv["ci_low"], cv["ci_high"]),
                     "test": fmt_ci(te["value"], te["ci_low"], te["ci_high"]) if te is not None else "n/a",
                     "test − cv": round(float(te["value"] - cv["value"]), 3) if te is not None else np.nan})
    return pd.DataFrame(rows)


def ablation_table(res, *, split: str = "cv", metric: str = "auc") -> pd.DataFrame:
    """Each model's ablations against its unablated version (``none``) in one metric."""
    m = _sel(res.metrics, split=split, scenario="all", metric=metric)
    rows = []
    for model in res.run["params"]["models"]:
        g = m[m["model"] == model].set_index("ablation")
        if "none" not in g.index:
            continue
        base = float(g.loc["none", "value"])
        for abl in ["none", *sorted(a for a in g.index if a != "none")]:
            r = g.loc[abl]
            rows.append({"model": display_name(model), "ablation": abl,
                         metric.upper(): fmt_ci(r["value"], r["ci_low"], r["ci_high"]),
                         "change": round(float(r["value"]) - base, 3)})
    return pd.DataFrame(rows)


def missing_table(res, *, ablation: str = "none", value: str = "auc") -> pd.DataFrame:
    """Model × the 7 input subsets (``all`` first) of one column of the missing-modality table."""
    t = res.missing[res.missing["ablation"] == ablation]
    if t.empty:
        return pd.DataFrame()
    wide = t.pivot_table(index="model", columns="scenario", values=value)
    cols = [scenario_name(s) for s in all_scenarios() if scenario_name(s) in wide.columns]
    wide = wide[cols].reindex([m for m in model_order(res) if m in wide.index])
    wide.index = [display_name(m) for m in wide.index]
    return wide.round(3)


def importance_table(res, *, ablation: str = "modality_dropout") -> pd.DataFrame:
    """Mean AUC drop, Brier and ECE change over the multimodal models when one input is removed."""
    from .experiment import modality_importance

    abl = ablation if (res.missing["ablation"] == ablation).any() else "none"
    imp = modality_importance(res.missing, ablation=abl)
    imp = imp[imp["model"].isin(res.run["params"]["models"])]
    if imp.empty:
        return pd.DataFrame()
    out = imp.groupby("removed")[["auc_drop", "brier_change", "ece_change"]].mean()
    out = out.sort_values("auc_drop", ascending=False).round(4)
    out.attrs["ablation"] = abl
    return out


def pairwise_table(res, *, test: str = "mcnemar_exact", split: str = "cv") -> pd.DataFrame:
    """Pairwise tests of one kind: models, statistic, raw and Holm-adjusted p-values."""
    s = _sel(res.stats, test=test, split=split)
    out = s[["a", "b", "statistic", "p_value", "p_holm", "detail"]].copy()
    out["a"], out["b"] = out["a"].map(display_name), out["b"].map(display_name)
    return out.reset_index(drop=True)


def age_table(res) -> pd.DataFrame:
    """Age by label: n, mean, SD, Cohen's d with its CI, Welch and Mann-Whitney p-values."""
    s = res.stats[res.stats["test"] == "cohens_d_age"]
    if s.empty:
        return pd.DataFrame()
    d = json.loads(s["detail"].iloc[0])
    return pd.DataFrame([{
        "n malignant": d["n_a"], "n benign": d["n_b"], "missing (malignant/benign)": f"{d['missing_a']}/{d['missing_b']}",
        "mean ± SD malignant": f"{d['mean_a']:.1f} ± {d['sd_a']:.1f}", "mean ± SD benign": f"{d['mean_b']:.1f} ± {d['sd_b']:.1f}",
        "Cohen's d (95% CI)": fmt_ci(d["d"], d["d_ci_low"], d["d_ci_high"], 2),
        "Welch t p": d["welch_p"], "Mann-Whitney p": d["mannwhitney_p"]}])


def availability_table(cohort) -> pd.DataFrame:
    """Patients with each input present, by label."""
    pres = cohort.presence()
    lab = cohort.patients["label"].map({0: "benign", 1: "malignant"}).to_numpy()
    t = pres.groupby(lab).sum().T
    t["all patients"] = t.sum(axis=1)
    return t


def checklist() -> pd.DataFrame:
    """TRIPOD+AI / CLAIM items and the chapter of this book that answers each."""
    items = [
        ("Source of data, eligibility", "TRIPOD+AI 5–6; CLAIM 7–9", "01 Data"),
        ("Outcome and how it was ascertained (biopsy / follow-up)", "TRIPOD+AI 7; CLAIM 14–16", "01 Data, 11 Real data"),
        ("Predictors: imaging modalities and clinical inputs; what is never an input (BI-RADS)", "TRIPOD+AI 8; CLAIM 10–12", "01 Data, 11 Real data"),
        ("Sample size and class balance", "TRIPOD+AI 9; CLAIM 19", "01 Data"),
        ("Missing data: how absent modalities and ages are handled", "TRIPOD+AI 10; CLAIM 13", "09 Missing modalities"),
        ("Data partitions at patient level, no leakage", "TRIPOD+AI 11; CLAIM 20–21", "01 Data"),
        ("Model description, architecture, parameters", "TRIPOD+AI 12; CLAIM 22–24", "02–05 model chapters"),
        ("Training details, initialisation, augmentation", "CLAIM 25–27", "02–05, 13 Colophon"),
        ("Performance measures with confidence intervals", "TRIPOD+AI 12e, 16; CLAIM 28–29", "06 Cross-validation, 07 Internal test"),
        ("Calibration", "TRIPOD+AI 16", "10 Statistics, 09 Missing modalities"),
        ("Clinical utility (decision curves)", "TRIPOD+AI 16", "10 Statistics"),
        ("Comparison of models, multiple comparisons", "CLAIM 30", "10 Statistics"),
        ("Threshold choice, on training data only", "CLAIM 29", "06 Cross-validation"),
        ("Ablations / robustness", "CLAIM 31–32", "08 Ablations, 09 Missing modalities"),
        ("Interpretability", "CLAIM 33", "02–05 model chapters"),
        ("Limitations, synthetic vs real", "TRIPOD+AI 20; CLAIM 39", "12 Discussion"),
        ("Code, data and model availability", "TRIPOD+AI 18; CLAIM 41–42", "13 Colophon, README"),
    ]
    return pd.DataFrame(items, columns=["item", "guideline", "where in this book"])


