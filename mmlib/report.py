"""Tables of the book, drawn from the tidy results of a run (:class:`mmlib.experiment.Results`).

Each function returns a DataFrame ready to show; numbers stay numbers except where a column is explicitly a
formatted "estimate (95% CI)" string.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from .schema import all_scenarios, scenario_name

MAIN_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "precision", "mcc", "brier", "ece")


def display_name(model: str) -> str:
    """The model's name in the paper's words (its registry metadata); a name no longer registered stays as is."""
    from .models import list_models, model_class

    return model_class(model).display_name if model in list_models() else model


def clinical_floor(res) -> str | None:
    """The run's baseline that reads clinical data only (the age-only model on the paper's cohorts), if any."""
    from .models import list_models, model_class

    return next((m for m in res.run["params"]["baselines"]
                 if m in list_models() and model_class(m).inputs == ("clinical",)), None)


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


def fmt_seed_spread(row) -> str:
    """The spread over training seeds of a ``metrics.csv`` row: ``"single seeds 0.851 ± 0.012 (0.840–0.864), 3
    seeds"`` (mean ± SD, min–max of each seed's own value); ``"one training seed"`` when the run trained one."""
    n = row.get("n_seeds", np.nan) if hasattr(row, "get") else np.nan
    if not np.isfinite(n) or n < 2:
        return "one training seed"
    return (f"single seeds {row['seed_mean']:.3f} ± {row['seed_sd']:.3f} ({row['seed_min']:.3f}–{row['seed_max']:.3f}), "
            f"{int(n)} seeds")


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
        if "auc" in g.index and g.loc["auc"].get("n_seeds", 1) > 1:  # several training seeds: their spread
            row["AUC over seeds"] = fmt_seed_spread(g.loc["auc"])
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
    if imp.empty:  # a run without the input-subset scenarios
        return pd.DataFrame()
    imp = imp[imp["model"].isin(res.run["params"]["models"])]
    if imp.empty:
        return pd.DataFrame()
    out = imp.groupby("removed")[["auc_drop", "brier_change", "ece_change"]].mean()
    out = out.sort_values("auc_drop", ascending=False).round(4)
    out.attrs["ablation"] = abl
    return out


#: Readable column names for the entries of a pairwise test's ``detail`` in stats.csv that a table shows.
DETAIL_NAMES = {"b": "A right, B wrong", "c": "A wrong, B right", "auc_a": "AUC A", "auc_b": "AUC B",
                "accuracy_a": "accuracy A", "accuracy_b": "accuracy B"}
#: What each pairwise test's ``statistic`` is, as a column name (None: the other columns say it all).
TEST_STATISTICS = {"mcnemar_exact": None, "bootstrap_auc_diff": "AUC A − B (95% CI)",
                   "bootstrap_accuracy_diff": "accuracy A − B (95% CI)"}


def fmt_p(p, digits: int = 3) -> str:
    """A p-value for reading: ``0.012``, ``< 0.001``, or ``n/a``."""
    if p is None or not np.isfinite(p):
        return "n/a"
    floor = 10.0 ** -digits
    return f"< {floor:.{digits}f}" if p < floor else f"{p:.{digits}f}"


def pairwise_table(res, *, test: str = "mcnemar_exact", split: str = "cv") -> pd.DataFrame:
    """Pairwise tests of one kind, one readable row per pair of models.

    Columns: the two models; what the test compared (from ``detail``: each model's AUC or accuracy, or the
    discordant pairs of McNemar's test); the statistic with its 95% CI where the test gives one (for the
    bootstrap and DeLong, the difference A − B); raw and Holm-adjusted p-values (``< 0.001`` below that);
    what the test treats as independent (``patient`` or ``unit``) and the numbers of units and patients.
    """
    s = _sel(res.stats, test=test, split=split)
    compared = TEST_STATISTICS.get(test, "statistic")
    rows = []
    for r in s.to_dict("records"):
        row = {"model A": display_name(r["a"]), "model B": display_name(r["b"])}
        detail = json.loads(r["detail"]) if isinstance(r.get("detail"), str) and r["detail"].strip() else {}
        for key, value in detail.items():
            if key in DETAIL_NAMES:
                row[DETAIL_NAMES[key]] = round(value, 3) if isinstance(value, float) else value
        low, high = r.get("ci_low", np.nan), r.get("ci_high", np.nan)
        if test == "delong":
            row["AUC A − B (95% CI)"] = fmt_ci(detail.get("diff", np.nan), low, high)
            row["z"] = round(float(r["statistic"]), 3)
        elif compared:
            row[compared] = fmt_ci(float(r["statistic"]), low, high)
        row["p"], row["p (Holm)"] = fmt_p(r["p_value"]), fmt_p(r["p_holm"])
        if "unit" in r and isinstance(r["unit"], str):
            row["independent"] = f"{r['unit']}s"
        for key, name in (("n_units", "units"), ("n_clusters", "patients")):
            if key in r and pd.notna(r[key]):
                row[name] = int(r[key])
        rows.append(row)
    return pd.DataFrame(rows)


def clustered(res) -> bool:
    """Whether some patient of the run gives several units (then only the patient-level tests are valid)."""
    s = res.stats
    if "n_clusters" not in s or s.empty:
        return False
    return bool((s["n_clusters"] < s["n_units"]).any())


def age_table(res) -> pd.DataFrame:
    """Age by label, one row per patient (malignant when any of its units is): n, mean, SD, Cohen's d with its CI,
    Welch and Mann-Whitney p-values."""
    s = res.stats[res.stats["test"] == "cohens_d_age"]
    if s.empty:
        return pd.DataFrame()
    d = json.loads(s["detail"].iloc[0])
    return pd.DataFrame([{
        "patients malignant": d["n_a"], "patients benign": d["n_b"], "missing (malignant/benign)": f"{d['missing_a']}/{d['missing_b']}",
        "mean ± SD malignant": f"{d['mean_a']:.1f} ± {d['sd_a']:.1f}", "mean ± SD benign": f"{d['mean_b']:.1f} ± {d['sd_b']:.1f}",
        "Cohen's d (95% CI)": fmt_ci(d["d"], d["d_ci_low"], d["d_ci_high"], 2),
        "Welch t p": fmt_p(d["welch_p"]), "Mann-Whitney p": fmt_p(d["mannwhitney_p"])}])


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




#: What the paper's abstract reports (quoted for comparison; every other number is computed).
PAPER_REPORTED = {"amw_cnn_cv_auc": 0.992, "cuf_mt_test_auc": 0.91, "n_patients": 92}


def abstract_numbers(res) -> tuple[str, dict]:
    """The best multimodal model (pooled out-of-fold AUC) and the numbers the front matter quotes."""
    models = [m for m in res.run["params"]["models"] if m in set(res.metrics["model"])]
    cv = _sel(res.metrics, split="cv", ablation="none", scenario="all", metric="auc").set_index("model")
    best = max(models, key=lambda m: cv.loc[m, "value"])
    splits = res.splits
    nan = float("nan")

    def metric(model, split="cv"):
        try:
            return res.metric(model, "auc", split=split)
        except KeyError:
            return nan

    out = {
        "cohort_kind": "A synthetic" if res.run.get("synthetic") else "A real",
        "n_patients": int(len(splits)), "n_malignant": int(splits["label"].sum()),
        "n_dev": int((splits["split"] == "dev").sum()), "n_test": int((splits["split"] == "test").sum()),
        "best_cv_auc": float(cv.loc[best, "value"]), "best_cv_auc_low": float(cv.loc[best, "ci_low"]),
        "best_cv_auc_high": float(cv.loc[best, "ci_high"]), "best_test_auc": metric(best, "test"),
        "age_cv_auc": metric(clinical_floor(res)) if clinical_floor(res) else nan,
        "oracle_auc": float(res.run.get("oracle_auc_dev", res.run.get("oracle_auc", nan))),
    }
    imp = importance_table(res) if not res.missing.empty else pd.DataFrame()
    out["most_important_input"] = str(imp.index[0]) if len(imp) else "n/a"
    out["most_important_drop"] = float(imp["auc_drop"].iloc[0]) if len(imp) else nan
    out["oracle_text"] = f"{out['oracle_auc']:.3f}" if np.isfinite(out["oracle_auc"]) else "not known (real data)"
    out["oracle_gap_text"] = oracle_gap_text(res, best)
    out = {k: (v if not isinstance(v, float) or np.isfinite(v) else -1.0) for k, v in out.items()}
    return best, out


def oracle_gap_text(res, model: str, *, split: str = "cv") -> str:
    """``model``'s AUC minus the oracle's given the inputs each patient has, with the paired patient-level
    bootstrap CI (``stats.csv``, ``bootstrap_auc_vs_oracle``), as a sentence; says so where no oracle is known."""
    s = res.stats
    hit = s[(s["test"] == "bootstrap_auc_vs_oracle") & (s["a"] == model) & (s["split"] == split)] if "test" in s else s
    if hit.empty:
        return "No oracle is known for this cohort (real data), so no gap to it is computed."
    r = hit.iloc[0]
    return (f"Against the oracle given the inputs each patient actually has, {display_name(model)}'s AUC differs by "
            f"{r['statistic']:+.3f} (paired patient-level bootstrap 95% CI {r['ci_low']:+.3f} to {r['ci_high']:+.3f}).")


def cohort_truth_table(cohort_info: dict) -> pd.DataFrame:
    """Oracle and per-source AUCs of the synthetic generator (empty for a real cohort)."""
    if not cohort_info.get("synthetic") or "source_auc" not in cohort_info:
        return pd.DataFrame({"note": ["real cohort: no known ground truth"]})
    rows = [{"source": "all sources (oracle)", "effect size d": np.nan, "AUC (empirical)": cohort_info["oracle_auc"],
             "AUC (theoretical)": cohort_info.get("oracle_auc_theoretical")}]
    d = cohort_info.get("config", {}).get("informativeness", {})
    for s, v in cohort_info["source_auc"].items():
        rows.append({"source": s, "effect size d": d.get(s, np.nan), "AUC (empirical)": v["empirical"],
                     "AUC (theoretical)": v["theoretical"]})
    return pd.DataFrame(rows).round(3)


def example_images(cohort, *, n_per_class: int = 2, seed: int = 0) -> dict:
    """``{"<modality> <label> <patient>": image}`` for a few patients of each class with each modality."""
    from .imaging import read_image
    from .schema import IMAGE_MODALITIES

    rng = np.random.default_rng(seed)
    out = {}
    pats = cohort.patients
    for m in IMAGE_MODALITIES:
        has = pats[pats[m].map(lambda v: isinstance(v, list) and len(v) > 0)]
        for label, name in ((0, "benign"), (1, "malignant")):
            g = has[has["label"] == label]
            for i in rng.choice(len(g), size=min(n_per_class, len(g)), replace=False) if len(g) else []:
                row = g.iloc[int(i)]
                out[f"{m} · {name} · {row['patient_id']}"] = read_image(row[m][0])
    return out


def timings_table(run: dict) -> pd.DataFrame:
    rows = [{"stage": k, "seconds": v["seconds"], "peak memory (MB)": v["peak_memory_mb"],
             "peak memory of a worker process (MB)": v.get("peak_child_memory_mb", float("nan"))}
            for k, v in run["timings"].items()]
    rows.append({"stage": "total", "seconds": run["wall_time_seconds"], "peak memory (MB)": max(r["peak memory (MB)"] for r in rows)})
    return pd.DataFrame(rows).round({"seconds": 1, "peak memory (MB)": 0, "peak memory of a worker process (MB)": 0})


def training_log(res, model: str, *, ablation: str = "none") -> pd.DataFrame:
    """fastai CSV logs of a model's cross-validation folds, stacked with a ``fold`` column."""
    folder = res.folder / "logs" / f"{model}__{ablation}"
    frames = []
    for f in sorted(folder.glob("seed*_fold*.csv")):
        df = pd.read_csv(f)
        df["fold"] = f.stem.split("_fold")[-1]
        frames.append(df)
    if not frames:
        raise FileNotFoundError(f"no training logs in {folder}")
    log = pd.concat(frames, ignore_index=True)
    # one curve per epoch: the mean over folds (fastai writes one row per epoch per fold)
    num = log.drop(columns=["fold", "time"], errors="ignore").apply(pd.to_numeric, errors="coerce")
    return num.groupby("epoch", as_index=False).mean()


def attention_figures(cohort, patient_ids, maps: dict, spec, *, labels=None) -> list:
    """CUF-MT: one figure per example patient and imaging modality, the CLS attention over its first view."""
    from . import figures
    from .data import ImageLoader, patient_views
    from .schema import IMAGE_MODALITIES

    loader = ImageLoader(spec.images)
    index = pd.Index(cohort.patients["patient_id"].astype(str))
    figs = []
    for i, pid in enumerate(patient_ids):
        row = cohort.patients.iloc[index.get_loc(str(pid))]
        for m in IMAGE_MODALITIES:
            if (i, m, 0) not in maps:
                continue
            views = patient_views(row, m)
            if not views:
                continue
            img = loader(*views[0])
            label = "" if labels is None else (" (malignant)" if labels[i] else " (benign)")
            figs.append(figures.attention_overlay(img, maps[(i, m, 0)], title=f"{pid}{label}: CLS attention on {m}"))
    return figs


def threshold_table(res) -> pd.DataFrame:
    p = res.predictions
    g = p[(p["ablation"] == "none") & (p["scenario"] == "all")]
    t = g.groupby(["model", "split", "fold"])["threshold"].first().reset_index()
    t["model"] = t["model"].map(display_name)
    return t.round(4)


def ablation_metrics(res) -> pd.DataFrame:
    """metrics.csv rows of the ablations, with the model column naming model and ablation (for a forest plot)."""
    m = res.metrics[res.metrics["model"].isin(res.run["params"]["models"])].copy()
    m["model"] = m["model"].map(display_name) + " · " + m["ablation"]
    return m


def largest_ablation_loss(res) -> str:
    t = ablation_table(res)
    t = t[t["ablation"] != "none"]
    if t.empty:
        return "no ablations in this run"
    r = t.sort_values("change").iloc[0]
    return f"{r['model']} {r['ablation']} ({r['change']:+.3f} AUC)"


def generator_order(res) -> list[str]:
    """The synthetic generator's order of importance in the book's input names (age -> clinical)."""
    info = res.run.get("cohort", {})
    order = info.get("importance_order") or []
    mapping = info.get("source_modality", {"age": "clinical"})
    return [mapping.get(s, s) for s in order]


def age_effect(res) -> float:
    s = res.stats[res.stats["test"] == "cohens_d_age"]
    return float(s["statistic"].iloc[0]) if len(s) else float("nan")


def calibration_table(res, *, split: str = "cv") -> pd.DataFrame:
    from .stats import calibration_slope_intercept

    p = res.predictions
    rows = []
    for model in model_order(res):
        g = p[(p["model"] == model) & (p["ablation"] == "none") & (p["scenario"] == "all") & (p["split"] == split)]
        if g["label"].nunique() < 2:
            continue
        c = calibration_slope_intercept(g["label"].to_numpy(), g["prob_malignant"].to_numpy())
        b = res.metrics[(res.metrics["model"] == model) & (res.metrics["ablation"] == "none") & (res.metrics["scenario"] == "all")
                        & (res.metrics["split"] == split)].set_index("metric")
        rows.append({"model": display_name(model), "slope": fmt_ci(c["slope"], c["slope_ci_low"], c["slope_ci_high"], 2),
                     "intercept": fmt_ci(c["intercept"], c["intercept_ci_low"], c["intercept_ci_high"], 2),
                     "Brier": round(float(b.loc["brier", "value"]), 3), "ECE": round(float(b.loc["ece", "value"]), 3)})
    return pd.DataFrame(rows)


def real_vs_synthetic(profile: str, results_dir: str = "") -> pd.DataFrame:
    """The best model and the age-only baseline of every finished run of a run profile (``params/*.yaml``) beside
    this one, real and synthetic. Tuning variants (``results/<profile>-<hash>/``, compared in ``gains.csv``) and
    benchmark runs are left out: they are not profiles a reader can rerun by name."""
    from .experiment import load_results
    from .paths import PARAMS, RESULTS

    profiles = {f.stem for f in PARAMS.glob("*.yaml")}
    rows = []
    for folder in sorted(RESULTS.glob("*")) if RESULTS.is_dir() else []:
        if not (folder / "run.json").is_file() or folder.name not in profiles:
            continue
        try:
            r = load_results(folder)
            best, nums = abstract_numbers(r)
        except (KeyError, ValueError, FileNotFoundError):
            continue
        row = _sel(r.metrics, model=best, split="cv", ablation="none", scenario="all", metric="auc").iloc[0]
        rows.append({"profile": folder.name, "cohort": "synthetic" if r.run.get("synthetic") else "real",
                     "patients": nums["n_patients"], "best model": display_name(best),
                     "best CV AUC (95% CI)": fmt_ci(nums["best_cv_auc"], nums["best_cv_auc_low"], nums["best_cv_auc_high"]),
                     "seed spread": fmt_seed_spread(row),
                     "age only CV AUC": round(nums["age_cv_auc"], 3) if nums["age_cv_auc"] >= 0 else "n/a",
                     "oracle AUC": round(nums["oracle_auc"], 3) if nums["oracle_auc"] >= 0 else "n/a"})
    if not rows:
        return pd.DataFrame({"note": ["no finished runs yet"]})
    return pd.DataFrame(rows)


def real_cohort_summaries() -> pd.DataFrame:
    """Patients, labels and missing ages of the public collections in ``../shared/data`` (if present)."""
    from .experiment import import_real_cohort
    from .cohort import load_manifest
    from .paths import SHARED_DATA

    rows = []
    for kind in ("breast-lesions-usg", "cdd-cesm"):
        if not (SHARED_DATA / kind).is_dir():
            rows.append({"collection": kind, "status": "not found in ../shared/data: see README to download"})
            continue
        c = load_manifest(import_real_cohort(kind), decode_images=False)
        pres = c.presence()
        rows.append({"collection": kind, "status": "found", "units": len(c), "malignant": int(c.labels.sum()),
                     "groups (patients)": int(c.patients["group"].nunique()),
                     "age missing": int(c.patients["age"].isna().sum()),
                     "with mammography": int(pres["mammography"].sum()), "with ultrasound": int(pres["ultrasound"].sum())})
    return pd.DataFrame(rows)
