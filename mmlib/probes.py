"""Tidy tables of the benchmarks that choose a setting, and the development patients they may read.

A probe (``benchmarks/probe_*.py``) or a tuning run (``benchmarks/bench_real.py --set``) selects a profile's
settings; it reads only the **development** patients of the study's own splitter (:func:`development_cohort`),
never the internal test ones, and writes what it measured to ``results/probes/<name>.csv`` (git-ignored), one row
per measured figure, so that the real-data chapter glues every figure from a file (:func:`figure`) and says which
command fills it where the file or the row is absent.

``gains.csv`` holds paired comparisons of two studies on the same out-of-fold patients (:func:`study_gains`): a
claimed gain (outline features, a fusion choice) with its patient-level paired bootstrap CI and p-value.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import paths

#: What every probe row was chosen on (the chapter quotes it).
CHOSEN_ON = "development patients (split dev of the study's splitter)"


def probes_dir() -> Path:
    """``results/probes/`` (follows ``MMLIB_RESULTS``)."""
    return paths.RESULTS / "probes"


def development_cohort(params: dict):
    """The cohort of a run restricted to its development patients, split exactly as the study splits it.

    Returns:
        ``(cohort, dev_patients)``: the whole :class:`mmlib.cohort.Cohort` and its ``patients`` table cut to the
        rows of ``split == "dev"`` (index reset), so that no choice ever sees an internal-test patient.
    """
    from .experiment import prepare_cohort
    from .splits import make_splits

    cohort = prepare_cohort(params)[0]
    splits = make_splits(cohort, n_folds=int(params["n_folds"]), test_fraction=float(params["test_fraction"]),
                         seed=int(params["split_seed"]))
    dev = splits["split"].to_numpy() == "dev"
    return cohort, cohort.patients[dev].reset_index(drop=True)


def record(name: str, rows: list[dict], *, keys: list[str]) -> Path:
    """Write ``rows`` into ``results/probes/<name>.csv``, replacing earlier rows with the same ``keys`` values.

    Every row gets ``chosen_on`` (:data:`CHOSEN_ON`) unless it says otherwise.
    """
    if not rows:
        raise ValueError(f"record({name!r}): no rows to write")
    missing = [k for k in keys if any(k not in r for r in rows)]
    if missing:
        raise ValueError(f"record({name!r}): rows lack the key columns {missing}")
    new = pd.DataFrame([{"chosen_on": CHOSEN_ON, **r} for r in rows])
    path = probes_dir() / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        old = pd.read_csv(path, dtype=str)
        new_keys = set(map(tuple, new[keys].astype(str).to_numpy()))
        old = old[[tuple(r) not in new_keys for r in old[keys].astype(str).to_numpy()]]
        new = pd.concat([old, new.astype({k: str for k in keys})], ignore_index=True)
    new.to_csv(path, index=False)
    return path


def read(name: str) -> pd.DataFrame:
    """``results/probes/<name>.csv`` (empty when no probe has written it)."""
    path = probes_dir() / f"{name}.csv"
    return pd.read_csv(path, dtype={"setting": str}) if path.is_file() else pd.DataFrame()


def lookup(name: str, column: str = "auc", **where) -> float:
    """One figure of a probe table: ``column`` of the row matching ``where`` (NaN when absent).

    Raises:
        ValueError: when several rows match (the selector is ambiguous).
    """
    t = read(name)
    if t.empty or column not in t:
        return float("nan")
    for k, v in where.items():
        if k not in t:
            return float("nan")
        t = t[t[k].astype(str) == str(v)]
    if len(t) > 1:
        raise ValueError(f"{name}.csv: {len(t)} rows match {where}; add a column to the selector")
    return float(t[column].iloc[0]) if len(t) else float("nan")


def figure(value: float, command: str, *, digits: int = 3, signed: bool = False) -> str:
    """``value`` formatted for the prose, or where it was not measured, the command that measures it."""
    if value is None or not np.isfinite(value):
        return f"(not measured in this build: run `{command}`)"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def study_time(run: dict, profile: str) -> str:
    """How long a study's run took, as prose: ``in 31 minutes``; where the run reused finished work (a book build
    after the study), its wall time is not the study's cost, and the text says so and names the benchmark that
    times a run from scratch."""
    minutes = float(run.get("wall_time_seconds", float("nan"))) / 60
    if not np.isfinite(minutes):
        return figure(minutes, f"python -m mmlib run --profile {profile}")
    units, segs = run.get("units") or {}, run.get("segmenters") or {}
    shown = f"{minutes:.0f} minute{'' if round(minutes) == 1 else 's'}"
    reused = [f"{n[part]} of {n.get('total', n[part])} {what}" for n, part, what in
              ((units, "reused", "finished units of work"), (segs, "reused", "lesion segmenters"),
               (segs, "resegmented", "lesion segmenters' networks (segmenting again)")) if n.get(part)]
    if not reused:
        return f"in {shown}"
    return (f"in {shown} of this build, which reused {' and '.join(reused)} "
            f"(`python -m mmlib run --profile {profile} --fresh` times a run from scratch)")


def variant_dir(profile: str, overrides: dict | None = None) -> Path:
    """``results/<profile>/`` without overrides, else ``results/<profile>-<8 hex of the overrides>/`` (a tuning
    run never overwrites the profile's results)."""
    if not overrides:
        return paths.results_dir(profile)
    h = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return paths.results_dir(f"{profile}-{h}")


def study_gains(base, variant, *, label: str, split: str = "cv", n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Paired comparison of two studies of the same cohort and splits: per model, the AUC of ``base`` minus that of
    ``variant`` on the same out-of-fold patients, by a paired bootstrap resampling patients (whole groups of units),
    with DeLong's paired test beside it (units independent).

    Args:
        base, variant: :class:`mmlib.experiment.Results` of the two studies (e.g. with and without outlines).
        label: what the comparison claims, e.g. ``"outline_features: true vs false"``.

    Returns:
        ``comparison, model, split, auc_base, auc_variant, gain, ci_low, ci_high, p_value, delong_p, n_units,
        n_clusters, n_seeds_base, n_seeds_variant``.
    """
    from .stats import delong_test, paired_bootstrap_diff

    rows = []
    sel = lambda r: r.predictions[(r.predictions["ablation"] == "none") & (r.predictions["scenario"] == "all")  # noqa: E731
                                  & (r.predictions["split"] == split)]
    a, b = sel(base), sel(variant)
    group_of = base.splits.assign(patient_id=base.splits["patient_id"].astype(str)).set_index("patient_id")["group"]
    for model in [m for m in a["model"].unique() if m in set(b["model"])]:
        pa = a[a["model"] == model].set_index("patient_id")
        pb = b[b["model"] == model].set_index("patient_id")
        ids = pa.index.intersection(pb.index)
        if len(ids) < len(pa) or len(ids) < len(pb):
            raise ValueError(f"{label}: the two studies predicted different patients for {model} ({len(pa)} vs "
                             f"{len(pb)}, {len(ids)} shared); compare studies with the same cohort and splits")
        y = pa.loc[ids, "label"].to_numpy()
        if (y != pb.loc[ids, "label"].to_numpy()).any():
            raise ValueError(f"{label}: labels differ between the two studies for {model}")
        r = paired_bootstrap_diff(y, pa.loc[ids, "prob_malignant"].to_numpy(), pb.loc[ids, "prob_malignant"].to_numpy(),
                                  groups=group_of.loc[ids].astype(str).to_numpy(), n_boot=n_boot, seed=seed)
        dl = delong_test(y, pa.loc[ids, "prob_malignant"].to_numpy(), pb.loc[ids, "prob_malignant"].to_numpy())
        rows.append({"comparison": label, "model": model, "split": split, "auc_base": r["value_a"],
                     "auc_variant": r["value_b"], "gain": r["diff"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                     "p_value": r["p_value"], "delong_p": dl["p_value"], "n_units": r["n_units"],
                     "n_clusters": r["n_clusters"], "n_seeds_base": len(base.run["params"]["seeds"]),
                     "n_seeds_variant": len(variant.run["params"]["seeds"])})
    return pd.DataFrame(rows)


#: Targets of the real-data studies (pooled out-of-fold AUC): the best model, and the margin of every model over
#: age (``benchmarks/bench_real.py`` prints them; the real-data chapter quotes them).
TARGETS = {"breast-lesions-usg": {"best_auc": 0.87, "margin_over_age": 0.08},  # lesions from the segmenter (#13)
           "breast-lesions-usg-expert": {"best_auc": 0.88, "margin_over_age": 0.08},  # the expert's lesions
           "cdd-cesm": {"best_auc": 0.80, "margin_over_age": None}}


def best_auc(name: str, variant: str, **where) -> float:
    """The highest ``auc`` of a probe table's rows of ``variant`` matching ``where`` (the probes try three
    regularisation strengths ``C``, all on development patients); NaN when none was measured."""
    t = read(name)
    if t.empty:
        return float("nan")
    t = t[t["variant"].astype(str) == variant]
    for k, v in where.items():
        t = t[t[k].astype(str) == str(v)] if k in t else t.iloc[:0]
    return float(pd.to_numeric(t["auc"]).max()) if len(t) else float("nan")


def current_gains() -> pd.DataFrame:
    """``gains.csv`` with ``base_is_current``: whether the row's ``auc_base`` is still the pooled out-of-fold AUC
    of that model in the profile's study on disk. A gain is measured against one run of the profile; once the
    profile is run again (new code, new masks, other seeds) the row describes a study that no longer exists, and
    the chapter says so instead of quoting it. Rows of a profile with no study on disk stay current (nothing to
    compare with)."""
    gains = read("gains")
    if gains.empty:
        return gains.assign(base_is_current=pd.Series(dtype=bool))
    current = []
    studies: dict = {}
    for r in gains.itertuples():
        if r.profile not in studies:
            studies[r.profile] = _study_cv_aucs(str(r.profile))
        aucs = studies[r.profile]
        if aucs is None:
            current.append(True)
        else:
            now = aucs.get(r.model, np.nan)
            current.append(bool(np.isfinite(now) and abs(float(now) - float(r.auc_base)) <= 1e-6))
    return gains.assign(base_is_current=current)


def _study_cv_aucs(profile: str) -> pd.Series | None:
    """Pooled out-of-fold AUC per model (all inputs, no ablation) of the profile's study on disk; None if absent."""
    path = paths.results_dir(profile) / "metrics.csv"
    if not path.is_file():
        return None
    from .report import _sel

    return _sel(pd.read_csv(path), split="cv", ablation="none", scenario="all", metric="auc").set_index("model")["value"]


def _study(profile: str):
    from .experiment import load_results

    folder = paths.results_dir(profile)
    return load_results(folder) if (folder / "run.json").is_file() else None


def segmenter_figures(profile: str, key: str) -> dict[str, str]:
    """The lesion segmenter's Dice in a profile's study (``segmentation.csv``: held-out development patients of
    every fold, the classifiers' training rows (their cross-fitted masks) and the internal test), as text to glue;
    the command that measures them where absent."""
    from .lesions import found_count

    cmd = f"python -m mmlib run --profile {profile}"
    path = paths.results_dir(profile) / "segmentation.csv"
    table = pd.read_csv(path, dtype={"fold": str}) if path.is_file() else pd.DataFrame()
    out = {}
    for name, split in (("cv", "cv"), ("crossfit", "crossfit"), ("test", "test")):
        rows = table[(table["split"] == split) & (table["fold"] == "all")] if len(table) else table
        if rows.empty:
            out[f"{key}_{name}"] = figure(float("nan"), cmd)
            out[f"{key}_{name}_found"] = figure(float("nan"), cmd)
            continue
        r = rows.iloc[0]
        out[f"{key}_{name}"] = (f"{r['dice']:.3f} (95% CI {r['dice_ci_low']:.3f}–{r['dice_ci_high']:.3f}; "
                                f"{int(r['n_patients'])} patients)")
        out[f"{key}_{name}_found"] = found_count(r["lesion_found"], r["n_images"])
    out[f"{key}_plan"] = crossfit_text(_study(profile), cmd)
    out[f"{key}_refiner"] = refiner_text(paths.results_dir(profile), cmd)
    out[f"{key}_deployed"] = deployed_text(_study(profile), paths.results_dir("probes") / "segmenter_ensemble.csv",
                                           cmd)
    out[f"{key}_reading"] = reading_text(_study(profile), paths.results_dir("probes") / "segmenter_tta.csv", cmd)
    return out


def _reading(settings) -> str:
    """How a segmenter with ``settings`` reads an image at prediction, in words."""
    sides = " and ".join(str(v) for v in settings.scales)
    text = (f"each image at {sides} px (with their mirrors; the maps averaged)" if len(settings.scales) > 1 else
            f"each image at {sides} px (with its mirror)")
    if int(settings.refine_size):
        many = len(settings.margins) > 1
        text += (f", the refiner {'its crops' if many else 'its crop'} at margin{'s' if many else ''} "
                 f"{' and '.join(f'{m:g}' for m in settings.margins)}")
    return text


#: The benchmark that compares the segmenter's prediction settings on held-out development images.
TTA_BENCH = "python benchmarks/bench_segmenter_tta.py"


def reading_text(res, table: Path, cmd: str) -> str:
    """How a study's segmenters read each image at prediction (``tta_scales``, ``refine_margins``: settings that
    change the masks, not the networks) and what each variant measured on held-out development images
    (``results/probes/segmenter_tta.csv``, :data:`TTA_BENCH`), as text to glue."""
    from dataclasses import replace

    from .segmentation import SegmenterSettings

    if res is None:
        return figure(float("nan"), cmd)
    settings = SegmenterSettings.from_dict(res.run["params"].get("segmenter") or {})
    said = f"The study's segmenters read {_reading(settings)}"
    rows = pd.read_csv(table) if Path(table).is_file() else pd.DataFrame()
    if rows.empty:
        return f"{said}; the comparison on development images: {figure(float('nan'), TTA_BENCH)}"
    rows["setting"] = [(tuple(json.loads(a)), tuple(json.loads(b))) for a, b in zip(rows["tta_scales"],
                                                                                 rows["refine_margins"])]
    own = (tuple(settings.tta_scales), tuple(settings.refine_margins))
    whole = rows[rows["folds"] == "all folds"].set_index("variant")
    ref = whole[whole.index == whole["against"]]
    if ref.empty or own not in set(rows["setting"]):
        return f"{said}; the comparison on development images does not hold this setting: " \
               f"{figure(float('nan'), TTA_BENCH)}"

    def gain(r) -> str:
        return f"{r.gain:+.3f} (95% CI {r.gain_ci_low:+.3f} to {r.gain_ci_high:+.3f})"

    mine = rows[rows["setting"] == own].drop_duplicates("folds").set_index("folds")
    old = replace(settings, tta_scales=ref["setting"].iloc[0][0], refine_margins=ref["setting"].iloc[0][1])
    if (rows.loc[rows["variant"] == ref.index[0], "setting"] == own).all():
        text = f"{said}, the reference of the comparison below"
    else:
        text = (f"{said}: held-out Dice {mine.loc['all folds', 'dice']:.3f} against {ref['dice'].iloc[0]:.3f} reading "
                f"{_reading(old)}, on the same {int(ref['n_images'].iloc[0])} images, a paired gain of "
                f"{gain(next(mine.loc[['all folds']].itertuples()))}")
        if {"choosing folds", "confirming folds"} <= set(mine.index):
            text += (f"; {gain(next(mine.loc[['choosing folds']].itertuples()))} on the folds that chose and "
                     f"{gain(next(mine.loc[['confirming folds']].itertuples()))} on the others")
    others = whole[(whole.index != ref.index[0]) & (whole["setting"] != own)]
    if len(others):
        text += ". Also tried: " + "; ".join(
            f"{_reading(replace(settings, tta_scales=r.setting[0], refine_margins=r.setting[1]))}: {r.dice:.3f}, "
            f"{gain(r)}" for r in others.itertuples())
    return (f"{text} (prediction settings change the masks, not the networks: measured on the development images "
            f"each fold's segmenter held out, with no refit; `benchmarks/bench_segmenter_tta.py`)")


def uncertain_text(res, model: str | None, cmd: str) -> str:
    """How many held-out development patients of a study had an uncertain lesion outline (``predictions.csv``:
    ``uncertain_outline``, the flag ``mmlib predict`` raises) and ``model``'s pooled out-of-fold AUC among them and
    among the rest, as text to glue; the command that measures it where the study or the column is absent."""
    from sklearn.metrics import roc_auc_score

    from .report import display_name

    if res is None or model is None or "uncertain_outline" not in res.predictions:
        return figure(float("nan"), cmd)
    below = float((res.run["params"].get("segmenter") or {}).get("uncertain_below", 0))
    rows = res.predictions.query("split == 'cv' and ablation == 'none' and scenario == 'all'")
    rows = rows[rows["model"] == model]
    flagged = rows["uncertain_outline"].astype(bool)

    def auc(part):
        return (f"{roc_auc_score(part['label'], part['prob_malignant']):.3f}" if part["label"].nunique() == 2
                else "not defined (one class)")

    text = (f"{int(flagged.sum())} of {len(rows)} held-out development patients had an outline scoring below "
            f"{below:g}")
    if not flagged.any():
        return text
    return (f"{text}; {display_name(model)}'s pooled out-of-fold AUC was {auc(rows[flagged])} among them against "
            f"{auc(rows[~flagged])} among the other {int((~flagged).sum())}")


#: The benchmark that compares the two ``deployed_segmenter`` choices on development patients.
ENSEMBLE_BENCH = "python benchmarks/bench_segmenter_ensemble.py"


def deployed_text(res, table: Path, cmd: str) -> str:
    """Which segmenter a study saved with its models and used on the internal test (the run parameter
    ``deployed_segmenter``), and how the two choices compared on development patients
    (``results/probes/segmenter_ensemble.csv``, :data:`ENSEMBLE_BENCH`), as text to glue."""
    if res is None:
        return figure(float("nan"), cmd)
    p = res.run["params"]
    k = int(p["n_folds"])
    said = ("the mean of the lesion probabilities of the study's " f"{k} cross-validation segmenters "
            "(`deployed_segmenter: folds`, as nnU-Net deploys its fold models; no segmenter is fitted on all "
            "development patients)" if p.get("deployed_segmenter", "refit") == "folds" else
            "one more segmenter fitted on all development patients (`deployed_segmenter: refit`)")
    rows = pd.read_csv(table).set_index("comparison") if Path(table).is_file() else pd.DataFrame()
    need = {"refit", "folds", "folds - refit", "folds - one fold model"}
    if not need <= set(rows.index):
        return f"{said}; the comparison on development patients: {figure(float('nan'), ENSEMBLE_BENCH)}"
    r = rows.loc
    return (f"{said}. Mimicked one level down on development patients (inside each outer fold, the mean of the "
            f"segmenters fitted on three of its four training folds against one fitted on all four, scored on the "
            f"fold's {int(r['refit', 'n_images'])} held-out images; `benchmarks/bench_segmenter_ensemble.py`), the "
            f"mean held-out Dice is {r['folds', 'dice']:.3f} against {r['refit', 'dice']:.3f} (paired difference "
            f"{r['folds - refit', 'dice']:+.3f}, patient bootstrap 95% CI {r['folds - refit', 'ci_low']:+.3f} to "
            f"{r['folds - refit', 'ci_high']:+.3f}), with poor outlines (Dice below 0.5) in "
            f"{r['folds', 'poor_share']:.1%} of images against {r['refit', 'poor_share']:.1%}; the averaging "
            f"itself adds {r['folds - one fold model', 'dice']:+.3f} over one of its members (CI "
            f"{r['folds - one fold model', 'ci_low']:+.3f} to {r['folds - one fold model', 'ci_high']:+.3f})")


def refiner_text(folder: Path, cmd: str) -> str:
    """What the segmenter's refiner (``segmenter: refine_size``) added to held-out Dice in a study, as text to glue
    (``segmentation_images.csv``: the refined masks against the whole-image network's own, same images); says so
    where the study ran without one, and names the command where the study is absent."""
    from .lesions import refiner_gain

    path = Path(folder) / "segmentation_images.csv"
    if not path.is_file():
        return figure(float("nan"), cmd)
    g = refiner_gain(pd.read_csv(path, dtype={"group": str, "patient_id": str}))
    if g is None:
        return "this build's study ran without a refiner (`refine_size: 0`)"
    return (f"{g['dice']:.3f} against {g['dice_whole_image']:.3f} from the whole-image network alone on the same "
            f"{g['n_images']} held-out images (paired difference {g['diff']:+.3f}, patient bootstrap 95% CI "
            f"{g['ci_low']:+.3f} to {g['ci_high']:+.3f})")


def crossfit_text(res, cmd: str) -> str:
    """How a study's training rows got their masks (the run parameter ``segmenter_crossfit``), with the number of
    segmenters fitted, as text to glue; the command that runs the study where it is absent."""
    from .lesions import crossfit_plan

    if res is None:
        return figure(float("nan"), cmd)
    p = res.run["params"]
    scheme, k = p.get("segmenter_crossfit", "pairs"), int(p["n_folds"])
    n = len(crossfit_plan(k, scheme, p.get("deployed_segmenter", "refit")))
    if scheme == "halves":
        return (f"{n} segmenters for {k} folds, `segmenter_crossfit: halves`: each outer fold's training folds are "
                f"split into two halves that segment each other, so a training row's mask comes from a segmenter "
                f"fitted on about half the training folds")
    return (f"{n} segmenters for {k} folds, `segmenter_crossfit: pairs`: a training row's mask comes from the "
            f"segmenter fitted without its own fold and the held-out fold")


#: The probe that splits the BUS-BRA gap between the segmenter's masks and the masks the classifier learned from.
EXTERNAL_MASKS_PROBE = "python benchmarks/probe_external_masks.py"


def external_masks_text(table: Path, cmd: str = EXTERNAL_MASKS_PROBE) -> str:
    """Where the BUS-BRA gap between the expert's lesion and the segmenter's lies (``results/probes/
    external_masks.csv``, :data:`EXTERNAL_MASKS_PROBE`): what the expert-lesion model loses reading the segmenter's
    masks (overall, and among the patients with the poorest and the best outlines), and what a classifier trained on
    cross-fitted predicted masks changes, as text to glue; the command that measures it where absent."""
    rows = pd.read_csv(table) if Path(table).is_file() else pd.DataFrame()
    if rows.empty or not {"expert_model_expert_masks", "images_only_model"} <= set(rows["a"]) | set(rows["b"]):
        return figure(float("nan"), cmd)
    masks = rows[(rows["a"] == "expert_model_expert_masks") & (rows["b"] == "expert_model_segmenter_masks")]
    trained = rows[(rows["a"] == "expert_model_segmenter_masks") & (rows["b"] == "images_only_model")]
    whole_m = masks[(masks["dice_from"] == 0) & (masks["dice_to"] >= 1)].iloc[0]
    whole_t = trained[(trained["dice_from"] == 0) & (trained["dice_to"] >= 1)].iloc[0]
    strata = masks[~((masks["dice_from"] == 0) & (masks["dice_to"] >= 1))].sort_values("dice_from")

    def ci(r, sign=1):
        lo, hi = sorted((sign * float(r["ci_low"]), sign * float(r["ci_high"])))
        return f"95% CI {lo:+.3f} to {hi:+.3f}"

    text = (f"on the {int(whole_m['n_patients'])} BUS-BRA patients in whose every view the segmenter found a lesion "
            f"({int(whole_m['left_out_no_lesion'])} left out), the expert-lesion model's AUC fell from "
            f"{whole_m['auc_a']:.3f} to {whole_m['auc_b']:.3f} when it read the segmenter's masks instead of the "
            f"expert's ({-float(whole_m['diff']):+.3f}, paired patient bootstrap {ci(whole_m, -1)})")
    if len(strata) >= 2:
        low, high = strata.iloc[0], strata.iloc[-1]
        text += (f": {-float(low['diff']):+.3f} among the {int(low['n_patients'])} patients whose poorest outline "
                 f"had Dice below {float(low['dice_to']):g}, {-float(high['diff']):+.3f} among the "
                 f"{int(high['n_patients'])} with Dice {float(high['dice_from']):g} or more")
    text += (f". Reading the same masks, the images-only model, whose classifier learned from cross-fitted predicted "
             f"masks, scored {whole_t['auc_b']:.3f} against {whole_t['auc_a']:.3f} for the classifier that learned "
             f"from the expert's ({-float(whole_t['diff']):+.3f}, {ci(whole_t, -1)})")
    clear_m, clear_t = (float(r["ci_high"]) < 0 or float(r["ci_low"]) > 0 for r in (whole_m, whole_t))
    if clear_m and not clear_t:
        text += (". The gap lies in the segmenter's outlines on another hospital's images, no clear part of it in the "
                 "masks the classifier learned from")
    elif clear_m and clear_t:
        text += ". Both the outlines and the masks the classifier learned from make part of the gap"
    elif not clear_m:
        text += ". The interval of the outlines' part includes zero: the gap is not placed"
    return text


def chapter_figures() -> dict[str, str]:
    """Every figure the real-data chapter's prose quotes, as text to glue: read from ``results/probes/*.csv`` and
    the profiles' studies, or, where a file or row is absent, the command that fills it."""
    from .report import abstract_numbers, display_name, fmt_seed_spread

    out: dict[str, str] = {}
    us = "python benchmarks/probe_features.py --profile breast-lesions-usg"
    cesm = "python benchmarks/probe_features.py --profile cdd-cesm"

    def pf(key, profile, cmd, variant="image+age", levels="3,4,5", size=224, margin="0", pooling="mean"):
        setting = f"levels={levels} size={size} margin={margin} pooling={pooling}"
        out[key] = figure(best_auc("probe_features", variant, profile=profile, setting=setting), cmd)

    pf("us_margin0", "breast-lesions-usg", us)
    pf("us_margin015", "breast-lesions-usg", f"{us} --margin 0.15", margin="0.15")
    pf("us_margin05", "breast-lesions-usg", f"{us} --margin 0.5", margin="0.5")
    pf("us_whole", "breast-lesions-usg", f"{us} --whole-image", margin="whole-image")
    pf("us_last_margin0", "breast-lesions-usg", f"{us} --levels last", levels="last")
    pf("us_last_whole", "breast-lesions-usg", f"{us} --levels last --whole-image", levels="last", margin="whole-image")
    pf("us_size320", "breast-lesions-usg", f"{us} --size 320", size=320)
    pf("us_size448", "breast-lesions-usg", f"{us} --size 448", size=448)
    pf("us_outline_alone", "breast-lesions-usg", f"{us} --outline", variant="outline+age")
    pf("us_outline_stacked", "breast-lesions-usg", f"{us} --outline", variant="stacked")

    pf("cesm_probe", "cdd-cesm", cesm, margin="none")
    for size in (320, 448, 512):
        pf(f"cesm_size{size}", "cdd-cesm", f"{cesm} --size {size}", size=size, margin="none")
    for key, pooling in (("meanstd", "mean+std"), ("max", "max"), ("grid3max", "grid3max")):
        pf(f"cesm_pool_{key}", "cdd-cesm", f"{cesm} --pooling {pooling}", margin="none", pooling=pooling)
    pf("cesm_levels456", "cdd-cesm", f"{cesm} --levels 4,5,6", levels="4,5,6", margin="none")
    lever = "python benchmarks/probe_cesm.py --profile cdd-cesm --lever"
    for key, lev, variant in (("cesm_breast_crop", "breast-crop", "breast crop+age"),
                              ("cesm_enh_alone", "enhancement", "enhancement"),
                              ("cesm_enh_age", "enhancement", "enhancement+age"),
                              ("cesm_enh_stacked", "enhancement", "stacked"),
                              ("cesm_blobs", "auto-roi", "blob crops+age"),
                              ("cesm_blobs_whole", "auto-roi", "whole+blob crops+age")):
        out[key] = figure(best_auc("probe_cesm", variant, profile="cdd-cesm",
                                   setting=f"lever={lev} size=224 window=0.3 candidates=3"), f"{lever} {lev}")
    ft = "python benchmarks/probe_finetune.py --profile cdd-cesm"
    for key, cut, epochs in (("cesm_ft45", 3, 15), ("cesm_ft15", 0, 8)):
        setting = f"cut={cut} top=5 epochs={epochs} size=224 lr=0.001 seed=0"
        cmd = f"{ft} --cut {cut} --epochs {epochs}"
        out[key] = figure(lookup("probe_finetune", profile="cdd-cesm", setting=setting, variant="image"), cmd)
        # the AUC beside it already names the command; the time reads "(12 minutes)" or "(not timed)"
        minutes = lookup("probe_finetune", "minutes", profile="cdd-cesm", setting=setting, variant="image")
        out[key + "_minutes"] = (f"{minutes:.0f} minutes" if minutes is not None and np.isfinite(minutes)
                                 else "not timed")

    for profile, key in (("breast-lesions-usg", "us"), ("cdd-cesm", "cesm")):
        run_cmd = f"python -m mmlib run --profile {profile}"
        res = _study(profile)
        if res is None:
            for k in ("best_model", "best_auc", "best_ci", "best_seeds", "age_auc", "minutes"):
                out[f"{key}_study_{k}"] = figure(float("nan"), run_cmd)
        else:
            best, nums = abstract_numbers(res)
            row = res.metrics[(res.metrics["model"] == best) & (res.metrics["split"] == "cv")
                              & (res.metrics["ablation"] == "none") & (res.metrics["scenario"] == "all")
                              & (res.metrics["metric"] == "auc")].iloc[0]
            out[f"{key}_study_best_model"] = display_name(best)
            out[f"{key}_study_best_auc"] = figure(nums["best_cv_auc"], run_cmd)
            out[f"{key}_study_best_ci"] = f"{nums['best_cv_auc_low']:.3f}–{nums['best_cv_auc_high']:.3f}"
            out[f"{key}_study_best_seeds"] = fmt_seed_spread(row)
            out[f"{key}_study_age_auc"] = figure(nums["age_cv_auc"] if nums["age_cv_auc"] >= 0 else np.nan, run_cmd)
            out[f"{key}_study_minutes"] = study_time(res.run, profile)
        out[f"{key}_target"] = f"{TARGETS[profile]['best_auc']:.2f}"

    out.update(segmenter_figures("breast-lesions-usg", "us_seg"))
    res = _study("breast-lesions-usg")
    out["external_mask_gap"] = external_masks_text(paths.results_dir("probes") / "external_masks.csv")
    out["us_seg_uncertain"] = uncertain_text(res, abstract_numbers(res)[0] if res is not None else None,
                                             "python -m mmlib run --profile breast-lesions-usg")

    gains = current_gains()
    for key, profile, label in (("us_outline", "breast-lesions-usg", "outline_features=False"),
                                ("us_levels", "breast-lesions-usg", "encoder_levels=None"),
                                ("us_expert", "breast-lesions-usg", "lesion_source=expert"),
                                ("us_crossfit", "breast-lesions-usg", "segmenter_crossfit=pairs"),
                                ("us_refiner", "breast-lesions-usg", "segmenter.refine_size=0"),
                                ("cesm_levels456", "cdd-cesm", "encoder_levels=[4, 5, 6]")):
        cmd = f"python benchmarks/bench_real.py --profile {profile} --set {label.replace('False', 'false').replace('None', 'null').replace(' ', '')}"
        g = gains[(gains["profile"] == profile) & (gains["comparison"] == f"profile vs {label}")] if len(gains) else gains
        if g.empty:
            out[f"{key}_gain"] = out[f"{key}_gain_range"] = out[f"{key}_variant_auc"] = figure(float("nan"), cmd)
            continue
        if not g["base_is_current"].all():  # measured against an earlier run of the profile: not quoted as current
            out[f"{key}_gain"] = out[f"{key}_gain_range"] = out[f"{key}_variant_auc"] = (
                f"(not current: measured against an earlier run of the {profile} study; run `{cmd}`)")
            continue
        best = g.loc[pd.to_numeric(g["auc_base"]).idxmax()]
        out[f"{key}_gain"] = (f"{float(best['gain']):+.3f} for {display_name(best['model'])} (paired patient-level "
                              f"bootstrap 95% CI {float(best['ci_low']):+.3f} to {float(best['ci_high']):+.3f}, "
                              f"p = {float(best['p_value']):.3f})")
        # a model that does not read what the variant changes (age alone, for a lesion setting) gains exactly 0 on
        # every replicate: named apart, not the low end of the range
        same = (pd.to_numeric(g["gain"]) == 0) & (pd.to_numeric(g["ci_low"]) == 0) & (pd.to_numeric(g["ci_high"]) == 0)
        moved = g[~same] if (~same).any() else g
        lo, hi = moved.loc[pd.to_numeric(moved["gain"]).idxmin()], moved.loc[pd.to_numeric(moved["gain"]).idxmax()]
        n_sig = int(((pd.to_numeric(moved["ci_low"]) > 0) | (pd.to_numeric(moved["ci_high"]) < 0)).sum())
        out[f"{key}_gain_range"] = (f"from {float(lo['gain']):+.3f} ({display_name(lo['model'])}) to "
                                    f"{float(hi['gain']):+.3f} ({display_name(hi['model'])}); the interval excludes "
                                    f"zero for {n_sig} of {len(moved)} models" + (
                                        f" ({', '.join(display_name(m) for m in g.loc[same, 'model'])} unchanged: "
                                        f"{'it does' if same.sum() == 1 else 'they do'} not read it)"
                                        if same.any() and (~same).any() else ""))
        out[f"{key}_variant_auc"] = figure(float(best["auc_variant"]), cmd)
    return out
