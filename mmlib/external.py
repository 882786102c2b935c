"""External validation: a saved model folder evaluated on a labelled cohort from elsewhere.

:func:`external_validation` (``mmlib evaluate MODEL_DIR MANIFEST --out FOLDER``) writes a new folder:

``predictions.csv``   one row per patient (:func:`mmlib.deploy.predict_manifest`) with its bootstrap ``group``
``metrics.csv``       ``metric, value, ci_low, ci_high, n_valid``: AUC, sensitivity, specificity, accuracy,
                      precision, MCC, F1 at the threshold carried from training, Brier, ECE, calibration slope and
                      intercept, and the segmenter's ``dice`` and ``iou`` where the manifest has expert masks;
                      percentile bootstrap CIs resampling patients (the ``group`` column, e.g. a patient's two
                      breasts, else ``patient_id``), stratified by label (calibration: not stratified)
``segmentation.csv``  one row per segmented image: ``lesion_found``, ``refined``, ``score``, ``uncertain``,
                      ``dice``, ``iou``
``roc.csv``, ``reliability.csv``  the curves' data
``figures/``          ``roc`` and ``reliability`` as plotly JSON and HTML
``summary.json``      the model, the cohort, the threshold, every metric with its CI, the wall time

Nothing is tuned on the external cohort: the threshold is the one saved with the model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .cohort import Cohort
from .metrics import METRICS

SUMMARY = "summary.json"
#: Metrics of the classifier, in the order of ``metrics.csv``.
EXTERNAL_METRICS = ("auc", "sensitivity", "specificity", "accuracy", "precision", "mcc", "f1", "brier", "ece",
                    "calibration_slope", "calibration_intercept")


def bootstrap_groups(cohort: Cohort) -> np.ndarray:
    """The unit the bootstrap resamples: the manifest's ``group`` (rows of one patient), else the patient id."""
    groups = cohort.patients["group"].astype(str).to_numpy()
    ids = cohort.patients["patient_id"].astype(str).to_numpy()
    return np.where(groups == "", ids, groups)


def _bootstrap_counts(y, groups, n_boot: int, seed: int, stratified: bool = True) -> np.ndarray:
    """``(B, n)`` case counts of a bootstrap that draws whole groups (:func:`mmlib.stats.bootstrap_counts`)."""
    from .stats import bootstrap_counts

    return bootstrap_counts(y, n_boot=n_boot, seed=seed, stratified=stratified, groups=groups)


def _weighted_logit(y: np.ndarray, lp: np.ndarray, w: np.ndarray, *, slope: bool, iters: int = 50) -> np.ndarray:
    """Newton fits of ``logit P(y) = a + b lp`` (``slope``) or ``a + lp`` (offset) for each row of weights ``w``
    ``(B, n)``; returns ``(B, 2)`` ``(a, b)`` (``b`` = 1 for the offset fit), NaN where a fit does not converge."""
    B = w.shape[0]
    theta = np.zeros((B, 2))
    theta[:, 1] = 0.0 if slope else 1.0
    ok = np.ones(B, dtype=bool)
    for _ in range(iters):
        eta = theta[:, :1] + theta[:, 1:] * lp[None, :]
        mu = 1.0 / (1.0 + np.exp(-np.clip(eta, -30, 30)))
        r, v = w * (y[None, :] - mu), w * mu * (1 - mu)
        if slope:
            g = np.stack([r.sum(1), (r * lp).sum(1)], 1)
            h00, h01, h11 = v.sum(1), (v * lp).sum(1), (v * lp * lp).sum(1)
            det = h00 * h11 - h01 ** 2
            with np.errstate(invalid="ignore", divide="ignore"):
                step = np.stack([(h11 * g[:, 0] - h01 * g[:, 1]) / det, (h00 * g[:, 1] - h01 * g[:, 0]) / det], 1)
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                step = np.stack([r.sum(1) / v.sum(1), np.zeros(B)], 1)
        step = np.where(np.isfinite(step), step, 0.0)
        theta = theta + np.clip(step, -5, 5)
        if np.abs(step).max() < 1e-8:
            break
    ok &= np.all(np.isfinite(theta), 1) & (np.abs(theta).max(1) < 1e3)
    theta[~ok] = np.nan
    return theta


def calibration_bootstrap(y, p, counts: np.ndarray, *, alpha: float = 0.05) -> pd.DataFrame:
    """Calibration slope and intercept (:func:`mmlib.stats.calibration_slope_intercept`) with percentile
    bootstrap CIs over the replicates ``counts``."""
    from scipy import special

    from .stats import LOGIT_CLIP, calibration_slope_intercept

    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    point = calibration_slope_intercept(y.astype(int), p)
    lp = special.logit(np.clip(p, LOGIT_CLIP, 1 - LOGIT_CLIP))
    w = counts.astype(float)
    both = (w * y).sum(1) > 0
    both &= (w * (1 - y)).sum(1) > 0
    reps = {"calibration_slope": _weighted_logit(y, lp, w, slope=True)[:, 1],
            "calibration_intercept": _weighted_logit(y, lp, w, slope=False)[:, 0]}
    rows = []
    for name, key in (("calibration_slope", "slope"), ("calibration_intercept", "intercept")):
        vals = reps[name][both & np.isfinite(reps[name])]
        low, high = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)]) if len(vals) else (np.nan, np.nan)
        rows.append({"metric": name, "value": point[key], "ci_low": low, "ci_high": high, "n_valid": len(vals)})
    return pd.DataFrame(rows)


def mean_bootstrap(values, groups, *, n_boot: int, seed: int, alpha: float = 0.05, name: str) -> dict:
    """Mean of per-case ``values`` (NaN left out) with a percentile bootstrap CI drawing whole groups."""
    values = np.asarray(values, dtype=float)
    keep = np.isfinite(values)
    values, groups = values[keep], np.asarray(groups)[keep]
    if not len(values):
        return {"metric": name, "value": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n_valid": 0}
    counts = _bootstrap_counts(np.zeros(len(values), dtype=int), groups, n_boot, seed, stratified=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = (counts * values).sum(1) / counts.sum(1)
    reps = reps[np.isfinite(reps)]
    low, high = np.percentile(reps, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"metric": name, "value": float(values.mean()), "ci_low": low, "ci_high": high, "n_valid": len(reps)}


def classifier_metrics(y, p, groups, *, threshold: float, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """:data:`EXTERNAL_METRICS` with bootstrap CIs that resample ``groups``: stratified by label, except calibration
    slope and intercept (whose replicates must let the prevalence vary)."""
    from .stats import bootstrap_ci

    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    table = bootstrap_ci(y, p, threshold=threshold, n_boot=n_boot, seed=seed, groups=groups, metrics=METRICS)
    # Not stratified: a replicate that keeps the class counts keeps the prevalence, and with it most of the
    # variation of calibration-in-the-large.
    counts = _bootstrap_counts(y, groups, n_boot, seed, stratified=False)
    table = pd.concat([table, calibration_bootstrap(y, p, counts)], ignore_index=True)
    return table.set_index("metric").loc[list(EXTERNAL_METRICS)].reset_index()


def _segmentation_scores(cohort: Cohort, views: pd.DataFrame) -> pd.DataFrame:
    """Dice and IoU of each predicted mask against the manifest's expert mask (NaN where it has none)."""
    from .imaging import read_mask, resize_mask
    from .schema import mask_column
    from .segmentation import dice_iou

    scores = []
    for r in views.itertuples():
        truth = cohort.patients[mask_column(r.modality)].iloc[r.row][r.view]
        if truth is None:
            scores.append((np.nan, np.nan))
            continue
        pred = read_mask(r.mask)
        scores.append(dice_iou(pred, resize_mask(read_mask(truth), pred.shape)))
    out = views.drop(columns=["row"]).copy()
    out["image"] = out["image"].map(lambda f: Path(f).name)
    out["mask"] = out["mask"].map(lambda f: Path(f).name)
    out["expert_mask"] = [cohort.patients[mask_column(r.modality)].iloc[r.row][r.view] is not None
                          for r in views.itertuples()]
    out["dice"], out["iou"] = [s[0] for s in scores], [s[1] for s in scores]
    return out


def _figures(pred: pd.DataFrame, model_name: str, folder: Path, ece_bins: int) -> None:
    from .figures import reliability_diagram, roc_curves

    table = pred.assign(model=model_name, split="external", scenario="all", ablation="none")
    folder.mkdir(parents=True, exist_ok=True)
    for name, fig in (("roc", roc_curves(table, split="external")),
                      ("reliability", reliability_diagram(table, split="external", n_bins=ece_bins))):
        (folder / f"{name}.json").write_text(fig.to_json())
        fig.write_html(folder / f"{name}.html", include_plotlyjs="cdn", full_html=True)


def external_validation(model_dir, manifest, out, *, n_boot: int = 2000, seed: int = 0, ece_bins: int = 10,
                        progress: bool = False) -> Path:
    """Evaluate a saved model on a labelled cohort and write the tidy results into the new folder ``out``.

    Args:
        model_dir: a model folder (``mmlib train``; with a segmenter when its lesion is ``predicted``).
        manifest: a labelled manifest (masks only needed by an ``expert``-lesion model; where present and the model
            segments, they score the segmenter).
        out: the folder to write (replaced when it holds an earlier evaluation; see the module docstring).
        n_boot, seed: bootstrap replicates and their seed.
        ece_bins: equal-width bins of the ECE and the reliability diagram.
        progress: show the segmenter's progress.

    Returns:
        ``out``.
    """
    from .deploy import load_cohort_for, output_folder, predict_cohort, write_csv_atomic
    from .learner import load_model
    from .metrics import calibration_table, roc_curve_data

    t0 = time.perf_counter()
    model, meta = load_model(model_dir)
    cohort = load_cohort_for(meta, manifest, labels_required=True, strict_masks=True)
    y = cohort.labels
    if len(np.unique(y)) < 2:
        raise ValueError(f"{cohort.manifest}: all {len(y)} patients are {cohort.patients['label_name'].iloc[0]}; "
                         "external validation needs benign and malignant patients")
    threshold = meta.get("threshold")
    if threshold is None:
        raise ValueError(f"{model_dir}: the model carries no decision threshold (model.json 'threshold'); "
                         "sensitivity and specificity need the one chosen in training")
    groups = bootstrap_groups(cohort)
    with output_folder(out, marker=SUMMARY) as tmp:
        t1 = time.perf_counter()
        pred, views = predict_cohort(model, meta, cohort, model_dir=model_dir, progress=progress,
                                     workdir=tmp / "masks")
        predict_seconds = time.perf_counter() - t1
        pred.insert(1, "group", groups)
        write_csv_atomic(pred, tmp / "predictions.csv")
        p = pred["prob_malignant"].to_numpy(dtype=float)
        metrics = classifier_metrics(y, p, groups, threshold=float(threshold), n_boot=n_boot, seed=seed)
        seg = None
        if len(views):
            seg = _segmentation_scores(cohort, views)
            write_csv_atomic(seg, tmp / "segmentation.csv")
            view_groups = groups[views["row"].to_numpy(dtype=int)]
            for name in ("dice", "iou"):
                row = mean_bootstrap(seg[name], view_groups, n_boot=n_boot, seed=seed, name=name)
                metrics = pd.concat([metrics, pd.DataFrame([row])], ignore_index=True)
        write_csv_atomic(metrics, tmp / "metrics.csv")
        write_csv_atomic(roc_curve_data(y, p), tmp / "roc.csv")
        write_csv_atomic(calibration_table(y, p, n_bins=ece_bins), tmp / "reliability.csv")
        _figures(pred, meta["model"], tmp / "figures", ece_bins)
        summary = {
            "model": meta["model"], "model_dir": str(Path(model_dir).resolve()),
            "manifest": str(cohort.manifest), "lesion_source": pred["lesion_source"].iloc[0],
            "threshold": float(threshold), "n_patients": int(len(y)), "n_groups": int(len(set(groups))),
            "labels": {"benign": int((y == 0).sum()), "malignant": int((y == 1).sum())},
            "lesion_not_found": int((~pred["lesion_found"]).sum()) if "lesion_found" in pred else 0,
            "images_segmented": int(len(views)),
            # the segmenter's refiner found nothing around the found lesion: the whole-image outline was used
            "refiner_found_nothing": int((views["refined"] == False).sum()) if len(views) else 0,  # noqa: E712
            # found with a score below the segmenter's uncertain_below: the row's note says so
            "uncertain_outline": int(views["uncertain"].sum()) if len(views) else 0,
            "images_with_expert_mask": int(seg["expert_mask"].sum()) if seg is not None else 0,
            "n_boot": int(n_boot), "seed": int(seed), "bootstrap_unit": "group",
            "metrics": {r.metric: {"value": _num(r.value), "ci_low": _num(r.ci_low), "ci_high": _num(r.ci_high)}
                        for r in metrics.itertuples()},
            "predict_seconds": round(predict_seconds, 2), "wall_seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return Path(out)


def _num(v) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def format_external(folder) -> str:
    """The lines ``mmlib evaluate`` prints: cohort, lesion source and each metric with its CI."""
    s = json.loads((Path(folder) / SUMMARY).read_text())
    lines = [f"{folder}: {s['model']} on {Path(s['manifest']).name}, {s['n_patients']} patients ({s['n_groups']} "
             f"groups), lesion {s['lesion_source']}, threshold {s['threshold']:.3f}"]
    if s["lesion_not_found"]:
        lines.append(f"  no lesion found for {s['lesion_not_found']} patient(s): whole image used")
    for name, m in s["metrics"].items():
        if m["value"] is None:
            continue
        ci = "" if m["ci_low"] is None else f" [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
        lines.append(f"  {name:22s} {m['value']:.3f}{ci}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- the study stage
#: The tidy table :func:`external_study` writes: one row per lesion source and metric.
EXTERNAL_TABLE = "external.csv"
EXTERNAL_RECORD = "external.json"


def external_study(train_manifest, test_manifest, out, *, model: str = "amw_cnn", profile="breast-lesions-usg",
                   sources=("expert", "predicted", "none"), n_boot: int = 2000, seed: int = 0,
                   progress: bool = True, overrides: dict | None = None, retrain: bool = True,
                   models: dict | None = None) -> Path:
    """Train ``model`` on one cohort's development patients once per lesion source and validate it on another.

    For each source in ``sources`` (see :mod:`mmlib.deploy`): :func:`mmlib.experiment.train_model` with the
    profile and ``lesion_source`` set, then :func:`external_validation` on ``test_manifest``. Nothing is tuned on
    the external cohort.

    Writes into ``out``: ``models/<source>/``, ``<source>/`` (each evaluation), ``external.csv`` (``lesion_source,
    metric, value, ci_low, ci_high, n_valid``) and ``external.json`` (cohorts, training patients, wall times). Rows
    of other sources already there are kept when they come from the same cohorts, model and profile (one source
    can be rerun alone; each source records its own ``overrides``). With ``retrain=False`` a model already in
    ``models/<source>/`` is evaluated again without training (e.g. after a change of the statistics).

    ``models`` maps a source to a model folder trained elsewhere, evaluated instead of training one: the paper's
    build passes the BrEaST study's own saved AMW-CNN for ``predicted``, so its sixteen segmenters are not fitted
    again for a second copy of the same model. The folder must hold ``model`` trained with that lesion source on
    the same training cohort (checked: a ValueError names what differs); ``external.json`` records it as
    ``model_from``.

    Returns:
        ``out``.
    """
    from .deploy import write_csv_atomic
    from .experiment import train_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = dict(overrides or {})
    record = {"train_manifest": str(train_manifest), "test_manifest": str(test_manifest), "model": model,
              "profile": str(profile), "sources": {}}
    earlier = json.loads((out / EXTERNAL_RECORD).read_text())["sources"] if (out / EXTERNAL_RECORD).is_file() else {}
    given = {str(k): Path(v) for k, v in (models or {}).items()}
    unknown = sorted(set(given) - set(sources))
    if unknown:
        raise ValueError(f"external_study: models given for {unknown}, which are not among the sources {list(sources)}")
    for source in sources:
        t0 = time.perf_counter()
        model_dir, used = out / "models" / source, overrides
        if source in given:
            model_dir, used = given[source], {}
            train_seconds = None  # trained elsewhere (JSON null: not timed here)
            _check_given_model(model_dir, model, source, train_manifest)
        elif retrain or not (model_dir / "model.json").is_file():
            train_model(train_manifest, model, model_dir, profile,
                        **{**overrides, "lesion_source": source, "progress": progress})
            train_seconds = time.perf_counter() - t0
        else:
            train_seconds = earlier.get(source, {}).get("train_seconds")
            used = earlier.get(source, {}).get("overrides", overrides)
        folder = external_validation(model_dir, test_manifest, out / source, n_boot=n_boot, seed=seed,
                                     progress=progress)
        summary = json.loads((folder / SUMMARY).read_text())
        meta = json.loads((model_dir / "model.json").read_text())
        table = pd.read_csv(folder / "metrics.csv")
        table.insert(0, "lesion_source", source)
        # Read again just before writing: other sources' rows, possibly written meanwhile by another run, stay.
        tables = [table]
        if (out / EXTERNAL_TABLE).is_file() and (out / EXTERNAL_RECORD).is_file():
            old_table, old = load_external(out)
            if all(old.get(k) == v for k, v in record.items() if k != "sources"):
                record["sources"] = {s: r for s, r in old["sources"].items() if s != source}
                tables.insert(0, old_table[old_table.lesion_source != source])
        record["sources"][source] = {
            "overrides": used,
            "train_seconds": None if train_seconds is None or train_seconds != train_seconds else round(train_seconds, 1),
            **({"model_from": str(model_dir)} if source in given else {}),
            "predict_seconds": summary["predict_seconds"], "evaluate_seconds": summary["wall_seconds"],
            "trained_on_patients": meta["info"]["trained_on_patients"],
            "seeds": model_seeds(meta),
            "threshold": summary["threshold"], "lesion_not_found": summary["lesion_not_found"],
            "crossfit_segmentation": meta["info"].get("crossfit_segmentation"),
            "n_patients": summary["n_patients"], "labels": summary["labels"]}
        order = {s: i for i, s in enumerate(("expert", "predicted", "none"))}
        merged = pd.concat(tables, ignore_index=True)
        merged = merged.sort_values("lesion_source", key=lambda c: c.map(order).fillna(9), kind="stable")
        record["sources"] = dict(sorted(record["sources"].items(), key=lambda kv: order.get(kv[0], 9)))
        write_csv_atomic(merged, out / EXTERNAL_TABLE)
        (out / EXTERNAL_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return out


def time_predict(model_dir, manifest, out, *, n: int = 100) -> float:
    """Wall time of the ``mmlib predict`` command, in a fresh process as a user runs it, with the model in
    ``model_dir`` on the first ``n`` patients of ``manifest`` stripped of masks, boxes and labels (what a new
    patient brings). The stripped manifest and the predictions are written into ``out``."""
    import subprocess
    import sys

    from .paths import ROOT

    manifest, out = Path(manifest), Path(out)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False).head(int(n))
    for col in ("mammography", "ultrasound"):
        table[col] = table[col].map(lambda v: "|".join(str(manifest.parent / p) for p in v.split("|")) if v else v)
    drop = [c for c in table.columns if c == "label" or c.endswith("_mask") or c.endswith("_bbox")]
    bare = out / f"predict-{n}.csv"
    table.drop(columns=drop).to_csv(bare, index=False)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mmlib", "predict", str(model_dir), str(bare), "--out",
                    str(out / f"predictions-{n}.csv")], check=True, cwd=ROOT)
    return time.perf_counter() - t0


def record_predict_time(out, seconds: float, source: str) -> None:
    """Add the ``mmlib predict`` timing of :func:`time_predict` to ``external.json`` (the chapter quotes it)."""
    path = Path(out) / EXTERNAL_RECORD
    record = json.loads(path.read_text())
    record["predict_100_seconds"], record["predict_100_lesion_source"] = float(seconds), source
    path.write_text(json.dumps(record, indent=2) + "\n")


def model_seeds(meta: dict) -> list[int] | None:
    """The training seeds of a saved model (one per member of a seed ensemble), or None where it does not say."""
    info = meta.get("info", {})
    seeds = (meta.get("ensemble") or {}).get("seeds") or info.get("seeds")
    if seeds is None and info.get("seed") is not None:
        seeds = [info["seed"]]
    return None if seeds is None else [int(s) for s in seeds]


def _check_given_model(model_dir: Path, model: str, source: str, train_manifest) -> None:
    """A model folder passed to :func:`external_study` holds ``model`` trained with ``source`` on the cohort of
    ``train_manifest`` (the same manifest, or one with the same patients, images and labels)."""
    config = model_dir / "model.json"
    if not config.is_file():
        raise FileNotFoundError(f"external_study: {config} not found: the model given for the {source!r} lesion "
                                "source is not a saved model folder")
    meta = json.loads(config.read_text())
    found = {"model": meta.get("model"), "lesion source": (meta.get("lesion") or {}).get("source", "expert")}
    wanted = {"model": model, "lesion source": source}
    if found != wanted:
        raise ValueError(f"external_study: {model_dir} holds {found}, expected {wanted}")
    trained_on = (meta.get("info") or {}).get("cohort")
    if trained_on and Path(trained_on).resolve() != Path(train_manifest).resolve():
        ours, theirs = (_cohort_key(Path(m)) for m in (train_manifest, trained_on))
        if ours != theirs:
            raise ValueError(f"external_study: {model_dir} was trained on {trained_on}, whose patients, images or "
                             f"labels differ from {train_manifest}")


def _cohort_key(manifest: Path) -> list:
    """Patients, labels, and each image's name and size: equal for two imports of one collection."""
    from .cohort import load_manifest
    from .schema import IMAGE_MODALITIES

    if not manifest.is_file():
        return [str(manifest)]
    pats = load_manifest(manifest, decode_images=False).patients
    key = []
    for _, row in pats.iterrows():
        images = [(Path(f).name, Path(f).stat().st_size) for m in IMAGE_MODALITIES
                  for f in (row[m] if isinstance(row[m], list) else [])]
        key.append((str(row["patient_id"]), str(row["label"]), images))
    return sorted(key)


def load_external(folder) -> tuple[pd.DataFrame, dict]:
    """``external.csv`` and ``external.json`` of :func:`external_study`."""
    folder = Path(folder)
    if not (folder / EXTERNAL_TABLE).is_file():
        raise FileNotFoundError(f"{folder / EXTERNAL_TABLE} not found: run `python benchmarks/bench_external.py` "
                                "(needs ../shared/data/breast-lesions-usg and ../shared/data/bus-bra)")
    return pd.read_csv(folder / EXTERNAL_TABLE), json.loads((folder / EXTERNAL_RECORD).read_text())


def external_table(table: pd.DataFrame, metrics=("auc", "sensitivity", "specificity", "brier", "ece",
                                                 "calibration_slope", "calibration_intercept", "dice")) -> pd.DataFrame:
    """One row per lesion source, one column per metric, each ``value [ci_low, ci_high]``."""
    from .report import fmt_ci

    rows = []
    for source, g in table.groupby("lesion_source", sort=False):
        g = g.set_index("metric")
        rows.append({"lesion from": source, **{m: fmt_ci(g.loc[m, "value"], g.loc[m, "ci_low"], g.loc[m, "ci_high"])
                                                for m in metrics if m in g.index and np.isfinite(g.loc[m, "value"])}})
    return pd.DataFrame(rows).fillna("")


#: Where :mod:`benchmarks.bench_external` writes the BrEaST -> BUS-BRA validation the real-data chapter shows.
EXTERNAL_RESULTS = "external-bus-bra"
EXTERNAL_COMMAND = ("OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_external.py "
                    "(needs ../shared/data/breast-lesions-usg and ../shared/data/bus-bra)")


def external_results(folder=None) -> dict | None:
    """The external validation the real-data chapter shows, or None where it has not been run.

    Returns:
        ``{"table": external_table(...), "glue": {key: text}, "record": external.json, "models": the study's models
        side by side (:func:`study_models_table`) or None}``; the glue texts are ``value (low–high)`` (AUC by lesion
        source, the segmenter's Dice), counts and seconds, and sentences.
    """
    from .paths import results_dir
    from .report import fmt_ci

    folder = Path(folder) if folder else results_dir(EXTERNAL_RESULTS)
    try:
        table, record = load_external(folder)
    except FileNotFoundError:
        return None
    glue = external_glue_placeholders()

    def ci(source, metric):
        hit = table[(table.lesion_source == source) & (table.metric == metric)]
        return fmt_ci(*hit[["value", "ci_low", "ci_high"]].iloc[0]) if len(hit) else "not measured"

    for source in ("expert", "predicted", "none"):
        glue[f"external_auc_{source}"] = ci(source, "auc")
    glue["external_dice"] = ci("predicted", "dice")
    sources = record["sources"]
    first = next(iter(sources.values()))
    glue["external_n_patients"] = str(first["n_patients"])
    glue["external_train_patients"] = str(first["trained_on_patients"])
    given = (sources.get("predicted") or {}).get("model_from")
    if "predicted" in sources:
        from .report import display_name

        name = display_name(record.get("model", "amw_cnn"))
        seeds = sources["predicted"].get("seeds") or []
        glue["external_predicted_model"] = (
            f"the {Path(given).parent.parent.name} study's own saved {name} (`{Path(given).parent.parent.name}/models/"
            f"{Path(given).name}`), not a second copy" if given else f"an {name} trained for this comparison") + (
            f", the mean of {len(seeds)} training seeds' probabilities (as the study averages its seeds)"
            if len(seeds) > 1 else "")
    if record.get("predict_100_seconds") is not None:
        source = record.get("predict_100_lesion_source")
        glue["external_predict_timing"] = (f"took {record['predict_100_seconds']:.0f} seconds, from starting the "
                                           f"command to the written file"
                                           + (f", with the model whose lesion source is {source}" if source else ""))
    if "predicted" in sources:
        glue["external_uncertain"] = uncertain_text(folder / "predicted")
    glue["external_study_models"] = study_models_text(folder)
    models = pd.read_csv(folder / STUDY_MODELS_TABLE) if (folder / STUDY_MODELS_TABLE).is_file() else None
    return {"table": external_table(table), "glue": glue, "record": record,
            "models": study_models_table(models) if models is not None and study_models_current(models) else None}


def external_glue_placeholders() -> dict:
    """The chapter's glue keys, each "not measured" (the text reads where the benchmark has not run)."""
    untimed = "was not timed in this build (`python benchmarks/bench_external.py` or `make book PROFILE=paper` times it)"
    keys = ["external_auc_expert", "external_auc_predicted", "external_auc_none", "external_dice",
            "external_n_patients", "external_train_patients", "external_predict_timing",
            "external_predicted_model", "external_uncertain", "external_study_models"]
    return {k: untimed if k == "external_predict_timing" else "not measured" for k in keys}


#: An outline with Dice below this against the expert's is poor (as in ``benchmarks/bench_uncertain_outline.py``).
POOR_DICE = 0.5


def uncertain_text(folder) -> str:
    """How the uncertain-outline flag fared on the external cohort (``<folder>/segmentation.csv`` and
    ``predictions.csv`` of an images-only model's evaluation): the share of poor outlines (Dice below
    :data:`POOR_DICE`) among the flagged and the other outlines, the score's AUC for a poor outline, and the
    model's AUC among patients with an uncertain or missing outline and among the rest; "not measured" where the
    files, the expert masks or a class are missing."""
    from sklearn.metrics import roc_auc_score

    folder = Path(folder)
    if not (folder / "segmentation.csv").is_file() or not (folder / "predictions.csv").is_file():
        return "not measured"
    seg = pd.read_csv(folder / "segmentation.csv")
    seg = seg[seg["dice"].notna()]
    pred = pd.read_csv(folder / "predictions.csv")
    if seg.empty or "uncertain" not in seg or pred["label"].nunique() != 2:
        return "not measured"
    poor = seg["dice"] < POOR_DICE
    flagged = seg["uncertain"].astype(bool)
    found = seg["lesion_found"].astype(bool)
    text = (f"it called {int(flagged.sum())} of {int(found.sum())} outlines it drew on BUS-BRA uncertain, "
            f"{100 * poor[flagged].mean():.0f}% of them poor (Dice below {POOR_DICE:g}) against "
            f"{100 * poor[found & ~flagged].mean():.0f}% of the others" if flagged.any() else
            f"it called none of the {int(found.sum())} outlines it drew on BUS-BRA uncertain")
    if poor[found].nunique() == 2:
        score_auc = roc_auc_score(poor[found], -seg.loc[found, "score"])
        text += f"; its score tells a poor outline from a good one with AUC {score_auc:.2f}"
    said = seg.assign(said=~found | flagged).groupby("patient_id")["said"].any()
    pred["said"] = pred["patient_id"].map(said).fillna(False).astype(bool)
    parts = {k: pred[pred["said"] == k] for k in (True, False)}
    if all(part["label"].nunique() == 2 for part in parts.values()):
        def auc(part):
            return roc_auc_score(part["label"] == "malignant", part["prob_malignant"])

        text += (f". The {len(parts[True])} patients with an uncertain or missing outline had AUC "
                 f"{auc(parts[True]):.3f}, the other {len(parts[False])} {auc(parts[False]):.3f}")
    return text


# ----------------------------------------------------------------------------------------------- a study's models
#: The paper's four models: :func:`external_models` evaluates each a study saved.
STUDY_MODELS = ("cuf_mt", "amw_cnn", "mm_abmil", "cnn_lstm")
#: Inside the external results: one evaluation folder per study model, and the table that ranks them.
STUDY_MODELS_FOLDER = "study-models"
STUDY_MODELS_TABLE = "study_models.csv"
#: The columns of :data:`STUDY_MODELS_TABLE` read from each model's ``metrics.csv``.
STUDY_MODELS_METRICS = ("auc", "sensitivity", "specificity", "brier", "ece", "dice")


def cv_ranking(study, models=STUDY_MODELS) -> pd.DataFrame:
    """The study's models ranked by their cross-validated AUC on its development patients (``metrics.csv``: split
    ``cv``, no ablation, every modality): ``model, cv_auc, cv_auc_low, cv_auc_high, cv_rank`` (1 first). This is how
    :func:`external_models` picks its headline model before the external cohort is read.

    Raises:
        FileNotFoundError: ``study`` holds no finished run.
        ValueError: a model has no such row (the study did not train it), named.
    """
    study = Path(study)
    path = study / "metrics.csv"
    if not (study / "run.json").is_file() or not path.is_file():
        raise FileNotFoundError(f"{study} holds no finished study (run.json or metrics.csv missing): run "
                                f"`mmlib run --profile breast-lesions-usg` first")
    from .report import _sel

    m = _sel(pd.read_csv(path), split="cv", ablation="none", scenario="all", metric="auc")
    missing = [x for x in models if x not in set(m["model"])]
    if missing:
        raise ValueError(f"{path}: no cross-validated AUC for {missing} (split cv, ablation none, scenario all); "
                         f"the study trained {sorted(set(m['model']))}")
    m = m.set_index("model").loc[list(models)]
    out = pd.DataFrame({"model": list(models), "cv_auc": m["value"].to_numpy(float),
                        "cv_auc_low": m["ci_low"].to_numpy(float), "cv_auc_high": m["ci_high"].to_numpy(float)})
    # ties keep the listed order (the paper's), so the choice never depends on the table's row order
    out["cv_rank"] = out["cv_auc"].rank(ascending=False, method="first").astype(int)
    return out


def external_models(study, test_manifest, out, *, models=STUDY_MODELS, n_boot: int = 2000, seed: int = 0,
                    progress: bool = True) -> pd.DataFrame:
    """Evaluate each of the paper's models a finished study saved on an external cohort, side by side.

    The headline model is fixed before the external cohort is read: the one the study's development
    cross-validation ranks first (:func:`cv_ranking`). Each ``<study>/models/<model>`` is evaluated with
    :func:`external_validation` into ``<out>/study-models/<model>/`` (nothing tuned on the external cohort). Every
    model's external AUC is then compared with the chosen one's on the same patients (a paired bootstrap resampling
    patients, :func:`mmlib.stats.paired_bootstrap_diff`).

    Writes ``<out>/study_models.csv``, one row per model: ``model, lesion_source, cv_auc (+ _low, _high), cv_rank,
    study`` (its folder: :func:`study_models_current` checks the study has not changed since), ``chosen``, each
    metric of :data:`STUDY_MODELS_METRICS` with ``_low``/``_high`` (NaN where not measured, e.g. the Dice of a model
    that does not segment), ``auc_diff`` (its external AUC minus the chosen model's) with its CI and ``p_value``, and
    ``n_patients``.

    Returns:
        the table.
    """
    from .deploy import write_csv_atomic
    from .stats import paired_bootstrap_diff

    study, out = Path(study), Path(out)
    ranking = cv_ranking(study, models)
    folders = {m: study / "models" / m for m in models}
    for m, folder in folders.items():
        config = folder / "model.json"
        if not config.is_file():
            raise FileNotFoundError(f"{config} not found: the study did not save its {m} (save_models)")
        found = json.loads(config.read_text()).get("model")
        if found != m:
            raise ValueError(f"{config} holds the model {found!r}, expected {m!r}")
    rows, preds = [], {}
    for i, (m, folder) in enumerate(folders.items(), start=1):
        if progress:
            print(f"[mmlib] external validation of the study's {m} ({i} of {len(folders)}) ...", flush=True)
        done = external_validation(folder, test_manifest, out / STUDY_MODELS_FOLDER / m, n_boot=n_boot, seed=seed,
                                   progress=progress)
        summary = json.loads((done / SUMMARY).read_text())
        metrics = pd.read_csv(done / "metrics.csv").set_index("metric")
        row = {"model": m, "lesion_source": summary["lesion_source"], "n_patients": summary["n_patients"]}
        for name in STUDY_MODELS_METRICS:
            hit = metrics.loc[name] if name in metrics.index else None
            for suffix, col in (("", "value"), ("_low", "ci_low"), ("_high", "ci_high")):
                row[name + suffix] = float(hit[col]) if hit is not None else float("nan")
        rows.append(row)
        preds[m] = pd.read_csv(done / "predictions.csv").set_index("patient_id")
    table = ranking.merge(pd.DataFrame(rows), on="model")
    table["study"] = str(study.resolve())
    chosen = table.loc[table["cv_rank"] == 1, "model"].iloc[0]
    table["chosen"] = table["model"] == chosen
    ref = preds[chosen]
    y = (ref["label"] == "malignant").to_numpy(int)
    table[["auc_diff", "auc_diff_low", "auc_diff_high", "p_value"]] = [0.0, 0.0, 0.0, float("nan")]  # the chosen one
    for k, m in enumerate(table["model"]):
        if m == chosen:
            continue
        p = preds[m].loc[ref.index, "prob_malignant"].to_numpy(float)  # the same patients, in the same order
        d = paired_bootstrap_diff(y, p, ref["prob_malignant"].to_numpy(float), metric="auc",
                                  groups=ref["group"].astype(str).to_numpy(), n_boot=n_boot, seed=seed)
        table.loc[k, ["auc_diff", "auc_diff_low", "auc_diff_high", "p_value"]] = [
            d["diff"], d["ci_low"], d["ci_high"], d["p_value"]]
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(table, out / STUDY_MODELS_TABLE)
    return table


def study_models_table(table: pd.DataFrame) -> pd.DataFrame:
    """:data:`STUDY_MODELS_TABLE` for the reader: one row per model, the CV-chosen one marked; ``value (low–high)``."""
    from .report import display_name, fmt_ci

    rows = []
    for r in table.sort_values("cv_rank").itertuples():
        rows.append({"model": display_name(r.model) + (" (chosen by CV)" if r.chosen else ""),
                     "CV AUC (development)": fmt_ci(r.cv_auc, r.cv_auc_low, r.cv_auc_high),
                     **{name: fmt_ci(getattr(r, name), getattr(r, name + "_low"), getattr(r, name + "_high"))
                        for name in STUDY_MODELS_METRICS if np.isfinite(getattr(r, name))},
                     "AUC − chosen": "" if r.chosen else
                     f"{r.auc_diff:+.3f} ({r.auc_diff_low:+.3f} to {r.auc_diff_high:+.3f})"})
    return pd.DataFrame(rows).fillna("")


def study_models_current(table: pd.DataFrame) -> bool:
    """Whether :data:`STUDY_MODELS_TABLE` still describes its study: every model's cross-validated AUC there is the
    one the study's ``metrics.csv`` holds now (a rerun that changed the study changed its saved models too). A study
    no longer on disk cannot be checked and counts as current."""
    if "study" not in table:  # written before the table named its study: it cannot be checked
        return False
    study = Path(table["study"].iloc[0])
    try:
        now = cv_ranking(study, list(table["model"])).set_index("model")["cv_auc"]
    except FileNotFoundError:
        return True
    except ValueError:  # the study no longer trains one of the models
        return False
    return bool(np.allclose(now.loc[list(table["model"])].to_numpy(float), table["cv_auc"].to_numpy(float),
                            rtol=0, atol=1e-9))


#: How :func:`study_models_text` says where the models' lesion came from.
LESION_WORDS = {"predicted": "with the study's segmenter, ", "expert": "with the expert's lesion, ",
                "none": "from whole images, "}


def study_models_text(folder) -> str:
    """The chapter's sentence on :data:`STUDY_MODELS_TABLE` in ``folder``: the CV-chosen model's external AUC, the
    range over the models and which differ from it (the paired interval excludes 0); "not measured" without it."""
    from .report import display_name, fmt_ci

    path = Path(folder) / STUDY_MODELS_TABLE
    if not path.is_file():
        return "not measured"
    t = pd.read_csv(path)
    if not study_models_current(t):
        study = t["study"].iloc[0] if "study" in t else "results/breast-lesions-usg"
        return (f"(not current: the study in {study} may have changed since its models were evaluated; run "
                f"`python benchmarks/bench_external.py --study-models {study}`)")
    c = t[t["chosen"]].iloc[0]
    text = (f"the development cross-validation ranks {display_name(c.model)} first (CV AUC "
            f"{fmt_ci(c.cv_auc, c.cv_auc_low, c.cv_auc_high)}); on BUS-BRA, {LESION_WORDS.get(c.lesion_source, '')}"
            f"it reaches AUC {fmt_ci(c.auc, c.auc_low, c.auc_high)}")
    others = t[~t["chosen"]]
    if len(others):
        lo, hi = t.loc[t["auc"].idxmin()], t.loc[t["auc"].idxmax()]
        text += (f". Across the {len(t)} models the external AUC runs from {lo.auc:.3f} ({display_name(lo.model)}) "
                 f"to {hi.auc:.3f} ({display_name(hi.model)})")
        apart = others[(others["auc_diff_low"] > 0) | (others["auc_diff_high"] < 0)]
        if apart.empty:
            text += f"; no model's paired difference from {display_name(c.model)} excludes zero"
        else:
            text += "; " + "; ".join(
                f"{display_name(r.model)} differs from it by {r.auc_diff:+.3f} (paired 95% CI {r.auc_diff_low:+.3f} "
                f"to {r.auc_diff_high:+.3f})" for r in apart.itertuples())
    return text
