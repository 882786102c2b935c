"""Probes read development patients only and write tidy tables; the chapter's figures come from those tables."""

import json

import numpy as np
import pandas as pd
import pytest

from mmlib import paths, probes
from mmlib.lesions import found_count


@pytest.fixture()
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RESULTS", tmp_path / "results")
    return tmp_path / "results"


def test_development_cohort_holds_no_internal_test_patient(tiny_cohort_dir):
    from mmlib.experiment import load_params
    from mmlib.splits import make_splits

    params = load_params({"cohort": str(tiny_cohort_dir / "manifest.csv"), "n_folds": 3})
    cohort, dev = probes.development_cohort(params)
    splits = make_splits(cohort, n_folds=3, test_fraction=float(params["test_fraction"]), seed=int(params["split_seed"]))
    test_ids = set(splits.loc[splits["split"] == "test", "patient_id"])
    assert test_ids and not test_ids & set(dev["patient_id"].astype(str))
    assert len(dev) == (splits["split"] == "dev").sum()


def test_record_replaces_rows_with_the_same_keys_and_lookup_reads_them(results):
    keys = ["profile", "setting", "variant", "C"]
    probes.record("p", [{"profile": "x", "setting": "a", "variant": "image", "C": 0.1, "auc": 0.7},
                        {"profile": "x", "setting": "a", "variant": "image", "C": 1.0, "auc": 0.8}], keys=keys)
    probes.record("p", [{"profile": "x", "setting": "a", "variant": "image", "C": 1.0, "auc": 0.75}], keys=keys)
    t = probes.read("p")
    assert len(t) == 2 and set(t["chosen_on"]) == {probes.CHOSEN_ON}
    assert probes.lookup("p", profile="x", setting="a", C=1.0) == pytest.approx(0.75)
    assert probes.best_auc("p", "image", profile="x", setting="a") == pytest.approx(0.75)
    assert np.isnan(probes.best_auc("p", "image", profile="y")) and np.isnan(probes.lookup("absent"))
    with pytest.raises(ValueError, match="rows match"):
        probes.lookup("p", profile="x")
    with pytest.raises(ValueError, match="key columns"):
        probes.record("p", [{"profile": "x"}], keys=keys)


def test_figure_names_the_command_where_nothing_was_measured():
    assert probes.figure(0.81234, "cmd") == "0.812"
    assert probes.figure(0.01, "cmd", signed=True) == "+0.010"
    assert "run `python benchmarks/x.py`" in probes.figure(float("nan"), "python benchmarks/x.py")


def test_variant_dir_keeps_tuning_runs_apart(results):
    assert probes.variant_dir("p") == results / "p"
    assert probes.variant_dir("p", {"a": 1}) != probes.variant_dir("p", {"a": 2})
    assert probes.variant_dir("p", {"a": 1}).name.startswith("p-")


def _results(probs: dict, seeds=(0,)):
    from types import SimpleNamespace

    ids = [f"P{i}" for i in range(len(next(iter(probs.values()))[1]))]
    rows = [pd.DataFrame({"patient_id": ids, "model": m, "ablation": "none", "scenario": "all", "split": "cv",
                          "label": y, "prob_malignant": p}) for m, (y, p) in probs.items()]
    splits = pd.DataFrame({"patient_id": ids, "group": [i.split("_")[0] for i in ids]})
    return SimpleNamespace(predictions=pd.concat(rows), splits=splits, run={"params": {"seeds": list(seeds)}})


def test_study_gains_pairs_the_same_patients():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    good = np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.2, 120), 0, 1)
    weak = np.clip(0.5 + 0.05 * (2 * y - 1) + rng.normal(0, 0.2, 120), 0, 1)
    g = probes.study_gains(_results({"m": (y, good)}, seeds=(0, 1, 2)), _results({"m": (y, weak)}), label="on vs off",
                           n_boot=300)
    r = g.iloc[0]
    assert r["gain"] == pytest.approx(r["auc_base"] - r["auc_variant"]) and r["ci_low"] > 0 and r["p_value"] < 0.05
    assert (r["n_seeds_base"], r["n_seeds_variant"], r["n_clusters"]) == (3, 1, 120)
    fewer = _results({"m": (y[:100], weak[:100])})
    with pytest.raises(ValueError, match="different patients"):
        probes.study_gains(_results({"m": (y, good)}), fewer, label="x")


def test_chapter_figures_say_which_command_fills_them(results):
    figs = probes.chapter_figures()
    assert "benchmarks/probe_features.py --profile breast-lesions-usg --margin 0.15" in figs["us_margin015"]
    assert "python -m mmlib run --profile cdd-cesm" in figs["cesm_study_best_auc"]
    assert "--set outline_features=false" in figs["us_outline_gain"]
    # a time beside a figure: the figure names the command, the time says only that it was not taken
    assert "probe_finetune.py --profile cdd-cesm --cut 3" in figs["cesm_ft45"] and figs["cesm_ft45_minutes"] == "not timed"
    probes.record("probe_finetune", [{"profile": "cdd-cesm", "variant": "image", "auc": 0.71, "minutes": 12.4,
                                      "setting": "cut=3 top=5 epochs=15 size=224 lr=0.001 seed=0"}],
                  keys=["profile", "setting", "variant"])
    assert probes.chapter_figures()["cesm_ft45_minutes"] == "12 minutes"
    probes.record("probe_features", [{"profile": "breast-lesions-usg", "variant": "image+age", "C": c, "auc": a,
                                      "setting": "levels=3,4,5 size=224 margin=0.15 pooling=mean"}
                                     for c, a in ((0.01, 0.8), (0.03, 0.82))], keys=["profile", "setting", "variant", "C"])
    probes.record("gains", [{"profile": "breast-lesions-usg", "comparison": "profile vs outline_features=False",
                             "model": m, "split": "cv", "auc_base": b, "auc_variant": v, "gain": b - v, "ci_low": 0.01,
                             "ci_high": 0.09, "p_value": 0.02} for m, b, v in (("cuf_mt", 0.9, 0.85), ("amw_cnn", 0.8, 0.79))],
                  keys=["profile", "comparison", "model", "split"])
    figs = probes.chapter_figures()
    assert figs["us_margin015"] == "0.820"
    assert figs["us_outline_gain"].startswith("+0.050 for CUF-MT") and "p = 0.020" in figs["us_outline_gain"]
    assert "+0.010 (AMW-CNN)" in figs["us_outline_gain_range"] and "2 of 2" in figs["us_outline_gain_range"]
    # a model the variant leaves unchanged (age alone reads no outline) is named apart, not the range's low end
    probes.record("gains", [{"profile": "breast-lesions-usg", "comparison": "profile vs outline_features=False",
                             "model": "age_only", "split": "cv", "auc_base": 0.7, "auc_variant": 0.7, "gain": 0.0,
                             "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}], keys=["profile", "comparison", "model", "split"])
    figs = probes.chapter_figures()
    assert figs["us_outline_gain_range"].startswith("from +0.010 (AMW-CNN) to +0.050 (CUF-MT)")
    assert figs["us_outline_gain_range"].endswith("2 of 2 models (Age only (logistic regression) unchanged: it does "
                                                  "not read it)")
    json.dumps(figs)  # every figure is text, ready to glue


def test_a_gain_measured_against_an_earlier_run_of_the_profile_is_not_quoted(results):
    probes.record("gains", [{"profile": "breast-lesions-usg", "comparison": "profile vs lesion_source=expert",
                             "model": m, "split": "cv", "auc_base": b, "auc_variant": v, "gain": b - v, "ci_low": -0.05,
                             "ci_high": 0.02, "p_value": 0.3} for m, b, v in (("cuf_mt", 0.84, 0.87), ("amw_cnn", 0.85, 0.86))],
                  keys=["profile", "comparison", "model", "split"])

    def study_with(aucs):  # the profile's metrics.csv on disk
        folder = paths.results_dir("breast-lesions-usg")
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([{"model": m, "split": "cv", "ablation": "none", "scenario": "all", "metric": "auc", "value": a}
                      for m, a in aucs.items()]).to_csv(folder / "metrics.csv", index=False)

    assert probes.current_gains()["base_is_current"].all()  # no study on disk: nothing to compare with
    study_with({"cuf_mt": 0.84, "amw_cnn": 0.85})
    assert probes.current_gains()["base_is_current"].all()
    figs = probes.chapter_figures()
    assert figs["us_expert_gain"].startswith("-0.010 for AMW-CNN")
    assert "0 of 2 models" in figs["us_expert_gain_range"]  # both intervals hold zero
    probes.record("gains", [{"profile": "breast-lesions-usg", "comparison": "profile vs lesion_source=expert",
                             "model": "cuf_mt", "split": "cv", "auc_base": 0.84, "auc_variant": 0.88, "gain": -0.04,
                             "ci_low": -0.07, "ci_high": -0.01, "p_value": 0.01}], keys=["profile", "comparison", "model", "split"])
    assert "1 of 2 models" in probes.chapter_figures()["us_expert_gain_range"]  # a significant loss counts too
    # the profile was run again: its AUCs moved, and the gain describes a study that no longer exists
    study_with({"cuf_mt": 0.859, "amw_cnn": 0.85})
    assert probes.current_gains().set_index("model")["base_is_current"].to_dict() == {"cuf_mt": False, "amw_cnn": True}
    figs = probes.chapter_figures()
    assert figs["us_expert_gain"].startswith("(not current") and "--set lesion_source=expert" in figs["us_expert_gain"]


def test_every_figure_the_real_data_chapter_pastes_is_computed(results):
    import re

    from mmlib.paths import BOOK

    cells = json.loads((BOOK / "11_real_data.ipynb").read_text())["cells"]
    # the sections on the profiles' choices and the summary (other sections glue their own figures)
    ours = [c for c in cells if c.get("id") in ("11-real-data-choices", "11-real-data-5")]
    pasted = set(re.findall(r"\{glue:text\}`([\w]+)", "".join("".join(c["source"]) for c in ours)))
    assert len(ours) == 2 and pasted and not pasted - set(probes.chapter_figures())


def test_seed_spread_is_formatted_mean_sd_and_range():
    from mmlib.report import fmt_seed_spread

    row = pd.Series({"n_seeds": 3, "seed_mean": 0.85, "seed_sd": 0.012, "seed_min": 0.84, "seed_max": 0.864})
    assert fmt_seed_spread(row) == "single seeds 0.850 ± 0.012 (0.840–0.864), 3 seeds"
    assert fmt_seed_spread(pd.Series({"n_seeds": 1})) == "one training seed"


def test_segmenter_figures_read_the_studys_segmentation_table(results):
    """The chapter's segmenter Dice comes from the study's segmentation.csv (held-out development patients and the
    internal test); before the study has run it names the command."""
    assert "python -m mmlib run --profile breast-lesions-usg" in probes.segmenter_figures("breast-lesions-usg", "s")["s_cv"]
    folder = paths.results_dir("breast-lesions-usg")
    folder.mkdir(parents=True)
    rows = [{"modality": "ultrasound", "split": "cv", "fold": f, "n_patients": n, "n_images": n, "dice": d,
             "dice_ci_low": d - 0.03, "dice_ci_high": d + 0.03, "iou": d - 0.1, "iou_ci_low": 0, "iou_ci_high": 1,
             "lesion_found": found} for f, n, d, found in (("0", 40, 0.7, 1.0), ("all", 200, 0.76, 0.985))]
    rows.append({**rows[-1], "split": "test", "n_patients": 50, "n_images": 50, "dice": 0.8, "dice_ci_low": 0.75, "dice_ci_high": 0.84,
                 "lesion_found": 1.0})
    pd.DataFrame(rows).to_csv(folder / "segmentation.csv", index=False)
    figs = probes.segmenter_figures("breast-lesions-usg", "s")
    assert "python -m mmlib run --profile breast-lesions-usg" in figs.pop("s_crossfit")  # a study of before the rows
    figs.pop("s_crossfit_found")
    assert "python -m mmlib run --profile breast-lesions-usg" in figs.pop("s_plan")  # no run.json: no schedule
    assert "python -m mmlib run --profile breast-lesions-usg" in figs.pop("s_refiner")  # no per-image table
    assert "python -m mmlib run --profile breast-lesions-usg" in figs.pop("s_deployed")  # no run.json
    assert "python -m mmlib run --profile breast-lesions-usg" in figs.pop("s_reading")  # no run.json
    assert figs == {"s_cv": "0.760 (95% CI 0.730–0.790; 200 patients)", "s_cv_found": "197 of 200",
                    "s_test": "0.800 (95% CI 0.750–0.840; 50 patients)", "s_test_found": "50 of 50"}
    rows.append({**rows[1], "split": "crossfit", "n_images": 800, "dice": 0.74, "dice_ci_low": 0.71,
                 "dice_ci_high": 0.77})
    pd.DataFrame(rows).to_csv(folder / "segmentation.csv", index=False)
    assert probes.segmenter_figures("breast-lesions-usg", "s")["s_crossfit"] == "0.740 (95% CI 0.710–0.770; 200 patients)"
    assert probes.chapter_figures()["us_seg_cv"] == figs["s_cv"]
    # with a refiner the per-image table holds the whole-image network's masks of the same images: a paired difference
    images = pd.DataFrame([{"row": r, "view": 0, "modality": "ultrasound", "split": split, "fold": r % 2,
                            "dice": d + (0.05 if split == "cv" else 0), "iou": d, "found": True, "group": f"p{r}"}
                           for r, d in enumerate(np.linspace(0.6, 0.9, 20)) for split in ("cv", "cv_whole_image")])
    images.to_csv(folder / "segmentation_images.csv", index=False)
    text = probes.segmenter_figures("breast-lesions-usg", "s")["s_refiner"]
    assert text.startswith("0.800 against 0.750 from the whole-image network alone on the same 20 held-out images")
    assert "paired difference +0.050, patient bootstrap 95% CI +0.050 to +0.050" in text
    images[images["split"] == "cv"].to_csv(folder / "segmentation_images.csv", index=False)
    assert "without a refiner" in probes.segmenter_figures("breast-lesions-usg", "s")["s_refiner"]
    # one image without a lesion in 202 is not "100%" (a percentage rounds it away)
    assert found_count(201 / 202, 202) == "201 of 202" and found_count(1.0, 50) == "50 of 50"


def test_the_crossfit_schedule_is_said_from_the_studys_own_parameters():
    from types import SimpleNamespace

    pairs = probes.crossfit_text(SimpleNamespace(run={"params": {"n_folds": 5}}), "cmd")  # a study of before the key
    halves = probes.crossfit_text(SimpleNamespace(run={"params": {"n_folds": 5, "segmenter_crossfit": "halves"}}), "cmd")
    assert pairs.startswith("16 segmenters for 5 folds, `segmenter_crossfit: pairs`")
    assert halves.startswith("11 segmenters for 5 folds, `segmenter_crossfit: halves`")
    assert "cmd" in probes.crossfit_text(None, "cmd")
    folds = probes.crossfit_text(SimpleNamespace(run={"params": {"n_folds": 5, "segmenter_crossfit": "halves",
                                                                 "deployed_segmenter": "folds"}}), "cmd")
    assert folds.startswith("10 segmenters for 5 folds")  # no refit on all development patients


def test_the_deployed_segmenter_is_said_with_its_development_comparison(tmp_path):
    from types import SimpleNamespace

    def study(deployed):
        return SimpleNamespace(run={"params": {"n_folds": 5, "deployed_segmenter": deployed}})

    table = tmp_path / "segmenter_ensemble.csv"
    assert "cmd" in probes.deployed_text(None, table, "cmd")
    absent = probes.deployed_text(study("folds"), table, "cmd")
    assert absent.startswith("the mean of the lesion probabilities of the study's 5 cross-validation segmenters")
    assert probes.ENSEMBLE_BENCH in absent
    pd.DataFrame([
        {"comparison": "refit", "dice": 0.8012, "ci_low": 0.77, "ci_high": 0.83, "poor_share": 0.074, "n_images": 202},
        {"comparison": "folds", "dice": 0.8123, "ci_low": 0.78, "ci_high": 0.84, "poor_share": 0.05, "n_images": 202},
        {"comparison": "one fold model", "dice": 0.79, "ci_low": 0.76, "ci_high": 0.82, "poor_share": 0.08,
         "n_images": 202},
        {"comparison": "folds - refit", "dice": 0.0111, "ci_low": -0.002, "ci_high": 0.025, "poor_share": None,
         "n_images": 202},
        {"comparison": "folds - one fold model", "dice": 0.0223, "ci_low": 0.01, "ci_high": 0.035, "poor_share": None,
         "n_images": 202}]).to_csv(table, index=False)
    text = probes.deployed_text(study("folds"), table, "cmd")
    assert "0.812 against 0.801 (paired difference +0.011, patient bootstrap 95% CI -0.002 to +0.025)" in text
    assert "5.0% of images against 7.4%" in text and "+0.022 over one of its members" in text
    assert "202 held-out images" in text
    assert probes.deployed_text(study("refit"), table, "cmd").startswith(
        "one more segmenter fitted on all development patients (`deployed_segmenter: refit`). Mimicked")


def test_study_time_says_when_the_run_reused_finished_work():
    assert probes.study_time({"wall_time_seconds": 1862.8, "units": {"total": 66, "reused": 0}}, "p") == "in 31 minutes"
    reused = probes.study_time({"wall_time_seconds": 43.9, "units": {"total": 66, "reused": 66}}, "p")
    assert reused.startswith("in 1 minute of this build, which reused 66 of 66") and "mmlib run --profile p --fresh" in reused
    # reused lesion segmenters are work the build did not pay for either, even when every classifier was retrained
    segs = probes.study_time({"wall_time_seconds": 600.0, "units": {"total": 66, "reused": 0},
                              "segmenters": {"total": 11, "reused": 11}}, "p")
    assert segs.startswith("in 10 minutes of this build, which reused 11 of 11 lesion segmenters (")
    both = probes.study_time({"wall_time_seconds": 60.0, "units": {"total": 66, "reused": 6},
                              "segmenters": {"total": 11, "reused": 5}}, "p")
    assert "reused 6 of 66 finished units of work and 5 of 11 lesion segmenters" in both
    assert probes.study_time({"wall_time_seconds": 1466.2, "units": {"total": 66, "reused": 0},
                              "segmenters": {"total": 11, "reused": 0}}, "p") == "in 24 minutes"
    assert "python -m mmlib run --profile p" in probes.study_time({}, "p")
    # networks reused to segment again under new prediction settings are not from scratch either
    again = probes.study_time({"wall_time_seconds": 700.0, "units": {"total": 66, "reused": 0},
                               "segmenters": {"total": 11, "reused": 0, "resegmented": 11}}, "p")
    assert "which reused 11 of 11 lesion segmenters' networks (segmenting again)" in again


def test_the_studys_uncertain_outlines_are_counted_with_the_auc_on_each_side():
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    n = 40
    preds = pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)], "model": "amw_cnn", "ablation": "none",
                          "scenario": "all", "split": "cv", "label": np.arange(n) % 2,
                          "prob_malignant": rng.uniform(size=n), "uncertain_outline": np.arange(n) < 6})
    preds.loc[:5, "prob_malignant"] = [0.9, 0.1, 0.8, 0.2, 0.7, 0.3]  # inverted among the flagged: AUC 0
    res = SimpleNamespace(run={"params": {"segmenter": {"uncertain_below": 0.88}}}, predictions=preds)
    text = probes.uncertain_text(res, "amw_cnn", "cmd")
    assert text.startswith("6 of 40 held-out development patients had an outline scoring below 0.88; AMW-CNN's "
                           "pooled out-of-fold AUC was 0.000 among them against ")
    assert text.endswith("among the other 34")
    none = SimpleNamespace(run=res.run, predictions=preds.assign(uncertain_outline=False))
    assert probes.uncertain_text(none, "amw_cnn", "cmd") == ("0 of 40 held-out development patients had an outline "
                                                             "scoring below 0.88")
    one_class = preds.assign(label=np.where(np.arange(n) < 6, 1, preds["label"]))
    assert "AUC was not defined (one class) among them" in probes.uncertain_text(
        SimpleNamespace(run=res.run, predictions=one_class), "amw_cnn", "cmd")
    assert "cmd" in probes.uncertain_text(SimpleNamespace(run=res.run, predictions=preds.drop(
        columns="uncertain_outline")), "amw_cnn", "cmd")
    assert "cmd" in probes.uncertain_text(None, None, "cmd")


def test_external_masks_text_places_the_gap_from_the_probe_table(tmp_path):
    """benchmarks/probe_external_masks.py's table as prose: the loss from the segmenter's masks (overall and at both
    ends of the Dice strata), the change from the masks the classifier learned from, and where the gap lies only
    when the intervals say so; the command where the table is absent."""
    def row(a, b, lo, hi, n, auc_a, auc_b, ci_low, ci_high):
        return {"comparison": "", "a": a, "b": b, "dice_from": lo, "dice_to": hi, "n_patients": n, "n_malignant": 9,
                "auc_a": auc_a, "auc_b": auc_b, "diff": auc_a - auc_b, "ci_low": ci_low, "ci_high": ci_high,
                "p_value": 0.01, "left_out_no_lesion": 7}

    e, s, i = "expert_model_expert_masks", "expert_model_segmenter_masks", "images_only_model"
    rows = [row(e, s, 0.0, 1.0, 657, 0.905, 0.829, 0.056, 0.097), row(s, i, 0.0, 1.0, 657, 0.829, 0.819, -0.002, 0.022),
            row(e, s, 0.0, 0.5, 83, 0.913, 0.684, 0.13, 0.34), row(e, s, 0.9, 1.0, 109, 0.858, 0.826, 0.004, 0.061)]
    path = tmp_path / "external_masks.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    text = probes.external_masks_text(path, "cmd")
    assert text.startswith("on the 657 BUS-BRA patients in whose every view the segmenter found a lesion (7 left out), "
                           "the expert-lesion model's AUC fell from 0.905 to 0.829")
    assert "(-0.076, paired patient bootstrap 95% CI -0.097 to -0.056): -0.229 among the 83 patients whose poorest " \
           "outline had Dice below 0.5, -0.032 among the 109 with Dice 0.9 or more" in text
    assert "scored 0.819 against 0.829 for the classifier that learned from the expert's (-0.010, 95% CI -0.022 to " \
           "+0.002). The gap lies in the segmenter's outlines" in text
    rows[0].update(ci_low=-0.01)  # the outlines' interval now includes zero: nothing is placed
    pd.DataFrame(rows).to_csv(path, index=False)
    assert probes.external_masks_text(path, "cmd").endswith("the gap is not placed")
    rows[0].update(ci_low=0.056)
    rows[1].update(ci_low=0.001)
    pd.DataFrame(rows).to_csv(path, index=False)
    assert probes.external_masks_text(path, "cmd").endswith("make part of the gap")
    assert "cmd" in probes.external_masks_text(tmp_path / "absent.csv", "cmd")


def test_the_segmenters_reading_is_said_with_its_paired_gain_on_development_images(tmp_path):
    """bench_segmenter_tta.compare's table (variants of the prediction settings, paired against the first, on all
    folds, the choosing folds and the others) and the chapter's sentence read from it."""
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_segmenter_tta as bench

    assert bench.parse_variant("two:192:0.3,0.45") == ("two", {"tta_scales": [192], "refine_margins": [0.3, 0.45]})
    assert bench.parse_variant("plain::") == ("plain", {"tta_scales": [], "refine_margins": []})
    with pytest.raises(SystemExit, match="name:scales:margins"):
        bench.parse_variant("192")
    variants = dict(bench.parse_variant(v) for v in ("plain::", "two-scales:192:"))
    rng = np.random.default_rng(0)
    n = 50
    base = rng.uniform(0.5, 0.9, n)
    images = pd.concat([pd.DataFrame({"fold": np.arange(n) % 5, "row": np.arange(n), "patient_id": [f"p{i}" for i in
                                      range(n)], "variant": name, "dice": base + gain})
                        for name, gain in (("plain", 0.0), ("two-scales", 0.01))])
    images.loc[(images["variant"] == "two-scales") & (images["fold"] == 1), "dice"] -= 0.01  # no gain in fold 1
    table = bench.compare(images, variants, [0, 2, 3])
    got = table.set_index(["folds", "variant"])
    assert got.loc[("all folds", "plain"), "gain"] == 0 and got.loc[("all folds", "two-scales"), "n_images"] == n
    assert got.loc[("choosing folds", "two-scales"), "gain"] == pytest.approx(0.01)
    assert got.loc[("confirming folds", "two-scales"), "gain"] == pytest.approx(0.005)
    assert got.loc[("all folds", "two-scales"), "gain_ci_low"] <= 0.008 <= got.loc[("all folds", "two-scales"),
                                                                                     "gain_ci_high"]
    path = tmp_path / "segmenter_tta.csv"
    assert "bench_segmenter_tta.py" in probes.reading_text(SimpleNamespace(run={"params": {}}), path, "cmd")
    assert "cmd" in probes.reading_text(None, path, "cmd")
    table.to_csv(path, index=False)

    def study(**segmenter):
        return SimpleNamespace(run={"params": {"segmenter": {"refine_size": 128, **segmenter}}})

    chosen = probes.reading_text(study(tta_scales=[192]), path, "cmd")
    assert chosen.startswith("The study's segmenters read each image at 160 and 192 px (with their mirrors; the maps "
                             "averaged), the refiner its crop at margin 0.3: held-out Dice ")
    assert (f"against {base.mean():.3f} reading each image at 160 px (with its mirror), the refiner its crop at margin "
            f"0.3, on the same {n} images, a paired gain of +0.008") in chosen
    assert "+0.010 (95% CI +0.010 to +0.010) on the folds that chose and +0.005" in chosen
    assert "Also tried" not in chosen  # the only other variant is the reference
    plain = probes.reading_text(study(), path, "cmd")
    assert ("each image at 160 px (with its mirror), the refiner its crop at margin 0.3, the reference of the "
            "comparison below. Also tried") in plain
    assert "Also tried: each image at 160 and 192 px" in plain
    assert "does not hold this setting" in probes.reading_text(study(tta_scales=[224]), path, "cmd")
