"""`mmlib evaluate`: external validation of a saved model, bootstrap CIs that resample patients (groups)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mmlib.cli import main
from mmlib.external import (EXTERNAL_METRICS, _bootstrap_counts, _weighted_logit, bootstrap_groups,
                            calibration_bootstrap, classifier_metrics, external_validation, mean_bootstrap)
from mmlib.stats import calibration_slope_intercept
from test_predict import TINY, masked, predicted_model, standin, whole_image_model  # noqa: F401 (fixtures)


def _grouped(manifest, folder):
    """A copy of the manifest where pairs of patients form one group (e.g. two breasts of one patient)."""
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    table["group"] = [f"G{i // 2}" for i in range(len(table))]
    out = manifest.parent / "grouped.csv"
    table.to_csv(out, index=False)
    return out


def test_evaluate_writes_tidy_results_with_grouped_cis(whole_image_model, masked, tmp_path, capsys):
    manifest = _grouped(masked, tmp_path)
    out = tmp_path / "ext"
    assert main(["evaluate", str(whole_image_model), str(manifest), "--out", str(out), "--n-boot", "200"]) == 0
    printed = capsys.readouterr().out
    assert "auc" in printed and "lesion none" in printed
    assert sorted(p.name for p in out.iterdir()) == ["figures", "metrics.csv", "predictions.csv", "reliability.csv",
                                                      "roc.csv", "summary.json"]
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["reliability.html", "reliability.json", "roc.html",
                                                                   "roc.json"]
    metrics = pd.read_csv(out / "metrics.csv").set_index("metric")
    assert list(metrics.index) == list(EXTERNAL_METRICS)
    ok = metrics.dropna(subset=["ci_low"])
    assert {"auc", "sensitivity", "specificity", "brier", "ece", "calibration_slope"} <= set(ok.index)
    assert (ok["ci_low"] <= ok["value"] + 1e-9).all() and (ok["value"] <= ok["ci_high"] + 1e-9).all()
    pred = pd.read_csv(out / "predictions.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_patients"] == len(pred) == 36 and summary["n_groups"] == 18
    assert list(pred["group"][:4]) == ["G0", "G0", "G1", "G1"]
    from sklearn.metrics import roc_auc_score

    y = (pred["label"] == "malignant").astype(int)
    assert metrics.loc["auc", "value"] == pytest.approx(roc_auc_score(y, pred["prob_malignant"]))
    sens = ((pred["prob_malignant"] >= summary["threshold"]) & (y == 1)).sum() / y.sum()
    assert metrics.loc["sensitivity", "value"] == pytest.approx(sens)
    assert summary["metrics"]["auc"]["value"] == pytest.approx(metrics.loc["auc", "value"])


def test_evaluate_scores_the_segmenter_where_masks_exist(predicted_model, masked, standin, tmp_path):
    standin.Segmenter.not_found = {"SYN0002"}
    standin.Segmenter.not_refined = {"SYN0006", "SYN0008"}
    standin.Segmenter.uncertain = {"SYN0004", "SYN0006", "SYN0002"}  # SYN0002: nothing found, so nothing uncertain
    out = external_validation(predicted_model, masked, tmp_path / "ext", n_boot=100)
    seg = pd.read_csv(out / "segmentation.csv")
    assert len(seg) == 36 and seg["expert_mask"].all() and seg["dice"].between(0, 1).all()
    assert seg.set_index("patient_id").loc["SYN0002", "dice"] == 0
    metrics = pd.read_csv(out / "metrics.csv").set_index("metric")
    assert metrics.loc["dice", "value"] == pytest.approx(seg["dice"].mean())
    assert metrics.loc["dice", "ci_low"] < metrics.loc["dice", "value"] < metrics.loc["dice", "ci_high"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lesion_source"] == "predicted" and summary["lesion_not_found"] == 1
    assert summary["refiner_found_nothing"] == 2 and seg["refined"].eq(False).sum() == 2
    assert summary["uncertain_outline"] == 2 and set(seg.loc[seg["uncertain"], "patient_id"]) == {"SYN0004", "SYN0006"}
    assert len(list((out / "masks").glob("*_mask.png"))) == 36


def test_evaluate_needs_labels(whole_image_model, masked, tmp_path, capsys):
    table = pd.read_csv(masked, dtype=str, keep_default_na=False)
    table.loc[4, "label"] = ""
    bad = masked.parent / "unlabelled.csv"
    table.to_csv(bad, index=False)
    assert main(["evaluate", str(whole_image_model), str(bad), "--out", str(tmp_path / "e")]) == 1
    assert "row 6" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_bootstrap_draws_whole_groups():
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    groups = np.array(["a", "a", "b", "b", "c", "c", "d", "d"])
    counts = _bootstrap_counts(y, groups, 500, 0)
    for g in set(groups):
        cols = counts[:, groups == g]
        assert (cols == cols[:, :1]).all()  # the rows of one group are drawn together
    ids = bootstrap_groups(type("C", (), {"patients": pd.DataFrame({"group": ["x", "", "x"],
                                                                     "patient_id": ["p1", "p2", "p3"]})})())
    assert list(ids) == ["x", "p2", "x"]


def test_grouping_widens_the_ci_of_correlated_cases():
    rng = np.random.default_rng(0)
    n = 60
    base_y = rng.integers(0, 2, n)
    base_p = np.clip(0.5 + 0.3 * (base_y - 0.5) + rng.normal(0, 0.25, n), 0.01, 0.99)
    y, p = np.repeat(base_y, 4), np.repeat(base_p, 4)  # four identical views of each patient
    groups = np.repeat(np.arange(n), 4)
    grouped = classifier_metrics(y, p, groups, threshold=0.5, n_boot=400).set_index("metric")
    naive = classifier_metrics(y, p, np.arange(len(y)), threshold=0.5, n_boot=400).set_index("metric")
    width = lambda t: t.loc["auc", "ci_high"] - t.loc["auc", "ci_low"]  # noqa: E731
    assert width(grouped) > 1.5 * width(naive)


def test_weighted_logit_matches_statsmodels():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, 300)
    y = (rng.uniform(size=300) < p ** 1.5).astype(int)
    ref = calibration_slope_intercept(y, p)
    from scipy import special

    lp = special.logit(p)
    ones = np.ones((1, 300))
    assert _weighted_logit(y.astype(float), lp, ones, slope=True)[0, 1] == pytest.approx(ref["slope"], rel=1e-6)
    assert _weighted_logit(y.astype(float), lp, ones, slope=False)[0, 0] == pytest.approx(ref["intercept"], abs=1e-6)
    counts = _bootstrap_counts(y, np.arange(300), 300, 0)
    table = calibration_bootstrap(y, p, counts).set_index("metric")
    assert table.loc["calibration_slope", "ci_low"] < ref["slope"] < table.loc["calibration_slope", "ci_high"]
    # Near the Wald interval statsmodels gives for this sample size.
    assert table.loc["calibration_slope", "ci_low"] == pytest.approx(ref["slope_ci_low"], abs=0.15)


def test_mean_bootstrap_leaves_out_missing_values():
    row = mean_bootstrap([0.5, np.nan, 0.7, 0.9], ["a", "a", "b", "c"], n_boot=200, seed=0, name="dice")
    assert row["value"] == pytest.approx(0.7) and row["ci_low"] >= 0.5 and row["ci_high"] <= 0.9


@pytest.mark.slow
def test_external_study_writes_one_tidy_table(masked, standin, tmp_path):
    from mmlib.external import external_study, external_table, load_external

    profile = tmp_path / "p.yaml"
    import yaml

    profile.write_text(yaml.safe_dump({**TINY, "roi": True, "outline_features": True}))
    out = external_study(masked, masked, tmp_path / "ext", profile=profile, sources=("expert", "predicted", "none"),
                         n_boot=50, progress=False)
    table, record = load_external(out)
    assert list(table["lesion_source"].unique()) == ["expert", "predicted", "none"]
    assert set(table[table.lesion_source == "predicted"]["metric"]) >= {"auc", "dice", "iou"}
    assert "dice" not in set(table[table.lesion_source == "none"]["metric"])
    assert record["sources"]["predicted"]["crossfit_segmentation"]["ultrasound"]["images"] == \
        record["sources"]["predicted"]["trained_on_patients"]
    shown = external_table(table).set_index("lesion from")
    dice = table[(table.lesion_source == "predicted") & (table.metric == "dice")]["value"].iloc[0]
    assert shown.loc["predicted", "dice"].startswith(f"{dice:.3f} (")


def test_chapter_reads_the_external_results_or_says_how_to_get_them(tmp_path, masked, standin):
    from mmlib.external import (EXTERNAL_COMMAND, external_glue_placeholders, external_results, external_study,
                                load_external)

    assert external_results(tmp_path / "absent") is None and "bench_external.py" in EXTERNAL_COMMAND
    import yaml

    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump(TINY))
    out = external_study(masked, masked, tmp_path / "ext", profile=profile, sources=("none",), n_boot=50,
                         progress=False)
    res = external_results(out)
    assert set(res["glue"]) == set(external_glue_placeholders())
    auc = pd.read_csv(out / "external.csv").query("metric == 'auc'")["value"].iloc[0]
    assert res["glue"]["external_auc_none"].startswith(f"{auc:.3f} (")
    assert res["glue"]["external_auc_predicted"] == "not measured" and res["glue"]["external_n_patients"] == "36"
    assert list(res["table"]["lesion from"]) == ["none"]
    # Another source run alone joins the table; the first source's rows stay, in the order expert, predicted, none.
    external_study(masked, masked, out, profile=profile, sources=("expert",), n_boot=50, progress=False,
                   overrides={"epochs": 1, "seeds": [0, 1]})
    table, record = load_external(out)
    assert record["sources"]["expert"]["seeds"] == [0, 1] and record["sources"]["none"]["seeds"] == [0]
    assert list(table["lesion_source"].unique()) == ["expert", "none"] and list(record["sources"]) == ["expert", "none"]
    assert record["sources"]["expert"]["overrides"] == {"epochs": 1, "seeds": [0, 1]}
    assert record["sources"]["none"]["overrides"] == {}
    assert table.query("lesion_source == 'none' and metric == 'auc'")["value"].iloc[0] == auc


def test_external_study_can_evaluate_again_without_training(masked, standin, tmp_path, monkeypatch):
    import yaml

    from mmlib import experiment
    from mmlib.external import external_study, load_external

    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump(TINY))
    out = external_study(masked, masked, tmp_path / "ext", profile=profile, sources=("none",), n_boot=50,
                         progress=False, overrides={"epochs": 1})
    before, record = load_external(out)
    monkeypatch.setattr(experiment, "train_model", lambda *a, **k: pytest.fail("trained again"))
    external_study(masked, masked, out, profile=profile, sources=("none",), n_boot=80, progress=False,
                   retrain=False)
    after, again = load_external(out)
    n_valid = lambda t: t.query("metric == 'auc'")["n_valid"].iloc[0]  # noqa: E731
    assert (n_valid(before), n_valid(after)) == (50, 80)  # evaluated again, with the new bootstrap
    assert again["sources"]["none"]["train_seconds"] == record["sources"]["none"]["train_seconds"]
    assert again["sources"]["none"]["overrides"] == {"epochs": 1}


def test_external_study_evaluates_a_model_trained_elsewhere(masked, standin, tmp_path, monkeypatch):
    import yaml

    from mmlib import experiment
    from mmlib.external import external_study, load_external

    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump(TINY))
    elsewhere = experiment.train_model(masked, "amw_cnn", tmp_path / "study-model", profile, lesion_source="none",
                                       epochs=1, progress=False)
    monkeypatch.setattr(experiment, "train_model", lambda *a, **k: pytest.fail("trained a second copy"))
    out = external_study(masked, masked, tmp_path / "ext", profile=profile, sources=("none",), n_boot=50,
                         progress=False, models={"none": elsewhere})
    table, record = load_external(out)
    assert record["sources"]["none"]["model_from"] == str(elsewhere) and not (out / "models" / "none").exists()
    assert record["sources"]["none"]["train_seconds"] is None  # not timed here; strict JSON (no NaN)
    json.loads((out / "external.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in external.json"))
    assert table.query("metric == 'auc'")["value"].notna().all()
    # `mmlib predict` timed as a user runs it: a fresh process, a manifest without masks, boxes or labels
    from mmlib.external import record_predict_time, time_predict

    seconds = time_predict(elsewhere, masked, out, n=5)
    bare = pd.read_csv(out / "predict-5.csv")
    assert len(bare) == 5 and "label" not in bare and not any(c.endswith(("_mask", "_bbox")) for c in bare)
    assert len(pd.read_csv(out / "predictions-5.csv")) == 5 and seconds > 0
    record_predict_time(out, seconds, "none")
    assert load_external(out)[1]["predict_100_seconds"] == seconds
    # A folder of another lesion source, or a source not asked for, is refused with what differs.
    with pytest.raises(ValueError, match="'lesion source': 'none'.*expected.*'expert'"):
        external_study(masked, masked, out, profile=profile, sources=("expert",), n_boot=50, progress=False,
                       models={"expert": elsewhere})
    with pytest.raises(ValueError, match="not among the sources"):
        external_study(masked, masked, out, profile=profile, sources=("none",), n_boot=50, progress=False,
                       models={"predicted": elsewhere})


def test_chapter_says_the_external_model_averages_its_seeds(tmp_path):
    from mmlib.external import EXTERNAL_RECORD, EXTERNAL_TABLE, external_results, model_seeds

    pd.DataFrame([{"lesion_source": "predicted", "metric": "auc", "value": 0.8, "ci_low": 0.7, "ci_high": 0.9,
                   "n_valid": 50}]).to_csv(tmp_path / EXTERNAL_TABLE, index=False)
    source = {"n_patients": 10, "trained_on_patients": 20, "seeds": [0, 1, 2]}
    (tmp_path / EXTERNAL_RECORD).write_text(json.dumps({"model": "amw_cnn", "sources": {"predicted": source}}))
    glue = external_results(tmp_path)["glue"]
    assert glue["external_predicted_model"].endswith("the mean of 3 training seeds' probabilities (as the study "
                                                     "averages its seeds)")
    source["seeds"] = [0]
    (tmp_path / EXTERNAL_RECORD).write_text(json.dumps({"model": "amw_cnn", "sources": {"predicted": source}}))
    assert external_results(tmp_path)["glue"]["external_predicted_model"] == "an AMW-CNN trained for this comparison"
    assert model_seeds({"ensemble": {"seeds": [1, 2]}, "info": {}}) == [1, 2]
    assert model_seeds({"info": {"seed": 4}}) == [4] and model_seeds({"info": {}}) is None


def test_external_uncertain_text_reads_the_flag_against_the_expert_masks(tmp_path):
    """The uncertain-outline flag on an external cohort, as prose: poor outlines among the flagged and the rest, the
    score's AUC for a poor outline, and the model's AUC on each side; "not measured" without the files."""
    from mmlib.external import uncertain_text

    seg = pd.DataFrame({"patient_id": [f"p{i}" for i in range(8)], "lesion_found": [True] * 7 + [False],
                        "uncertain": [True, True, False, False, False, False, False, False],
                        "score": [0.5, 0.6, 0.95, 0.96, 0.97, 0.9, 0.93, 0.0],
                        "dice": [0.2, 0.7, 0.9, 0.85, 0.95, 0.3, 0.88, 0.0]})
    seg.to_csv(tmp_path / "segmentation.csv", index=False)
    pred = pd.DataFrame({"patient_id": [f"p{i}" for i in range(8)],
                         "label": ["malignant", "benign", "malignant", "benign", "malignant", "benign", "malignant",
                                   "benign"],
                         "prob_malignant": [0.2, 0.8, 0.9, 0.1, 0.8, 0.3, 0.7, 0.6]})
    pred.to_csv(tmp_path / "predictions.csv", index=False)
    text = uncertain_text(tmp_path)
    assert text.startswith("it called 2 of 7 outlines it drew on BUS-BRA uncertain, 50% of them poor (Dice below 0.5) "
                           "against 20% of the others")
    assert "its score tells a poor outline from a good one with AUC 0.90" in text
    # flagged or missing: p0, p1, p7 (AUC 0: every malignant below every benign); the rest perfectly ranked
    assert text.endswith("The 3 patients with an uncertain or missing outline had AUC 0.000, the other 5 1.000")
    assert uncertain_text(tmp_path / "absent") == "not measured"


def _study(folder, models: dict, cv_auc: dict):
    """A finished study's folder as :func:`mmlib.external.external_models` reads it: ``run.json``, ``metrics.csv``
    (the cross-validated AUC of each model, with an ablation row that must not count) and ``models/<name>``."""
    import shutil

    folder.mkdir(parents=True)
    (folder / "run.json").write_text("{}")
    rows = [{"model": m, "ablation": "none", "scenario": "all", "split": "cv", "metric": "auc", "value": v,
             "ci_low": v - 0.05, "ci_high": v + 0.05} for m, v in cv_auc.items()]
    rows.append({"model": "amw_cnn", "ablation": "no_clinical", "scenario": "all", "split": "cv", "metric": "auc",
                 "value": 0.99, "ci_low": 0.98, "ci_high": 1.0})
    pd.DataFrame(rows).to_csv(folder / "metrics.csv", index=False)
    for name, src in models.items():
        shutil.copytree(src, folder / "models" / name)
    return folder


def test_external_models_picks_by_cv_and_pairs_every_model_with_it(whole_image_model, masked, tmp_path):
    from sklearn.metrics import roc_auc_score

    from mmlib.experiment import train_model
    from mmlib.external import (STUDY_MODELS_FOLDER, STUDY_MODELS_TABLE, cv_ranking, external_models,
                                external_results, study_models_table, study_models_text)

    lstm = train_model(masked, "cnn_lstm", tmp_path / "lstm", {**TINY, "roi": True, "lesion_source": "none"})
    study = _study(tmp_path / "study", {"amw_cnn": whole_image_model, "cnn_lstm": lstm},
                   {"amw_cnn": 0.80, "cnn_lstm": 0.90})
    models = ("amw_cnn", "cnn_lstm")
    assert list(cv_ranking(study, models)["cv_rank"]) == [2, 1]  # the ablation's 0.99 is not the model's
    out = tmp_path / "ext"
    table = external_models(study, masked, out, models=models, n_boot=100, progress=False).set_index("model")
    assert (out / STUDY_MODELS_TABLE).is_file()
    assert table.loc["cnn_lstm", "chosen"] and not table.loc["amw_cnn", "chosen"]
    for m in models:  # each model's external AUC is its own predictions' on the external cohort
        pred = pd.read_csv(out / STUDY_MODELS_FOLDER / m / "predictions.csv")
        assert table.loc[m, "auc"] == pytest.approx(roc_auc_score(pred["label"] == "malignant", pred["prob_malignant"]))
        assert table.loc[m, "lesion_source"] == "none" and np.isnan(table.loc[m, "dice"])
    assert table.loc["cnn_lstm", "auc_diff"] == 0 and np.isnan(table.loc["cnn_lstm", "p_value"])
    assert table.loc["amw_cnn", "auc_diff"] == pytest.approx(table.loc["amw_cnn", "auc"] - table.loc["cnn_lstm", "auc"])
    assert table.loc["amw_cnn", "auc_diff_low"] <= table.loc["amw_cnn", "auc_diff"] <= table.loc["amw_cnn",
                                                                                                    "auc_diff_high"]
    shown = study_models_table(pd.read_csv(out / STUDY_MODELS_TABLE))
    assert shown["model"].iloc[0] == "CNN-LSTM (chosen by CV)" and shown["AUC − chosen"].iloc[0] == ""
    assert "dice" not in shown
    text = study_models_text(out)
    assert text.startswith("the development cross-validation ranks CNN-LSTM first (CV AUC 0.900 (0.850–0.950))")
    assert f"on BUS-BRA, from whole images, it reaches AUC {table.loc['cnn_lstm', 'auc']:.3f} (" in text
    assert "Across the 2 models" in text
    d = table.loc["amw_cnn"]
    assert shown["AUC − chosen"].iloc[1] == f"{d.auc_diff:+.3f} ({d.auc_diff_low:+.3f} to {d.auc_diff_high:+.3f})"
    assert study_models_text(tmp_path / "absent") == "not measured"
    # the chapter reads the table beside the external study's rows
    import yaml

    from mmlib.external import external_study

    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump(TINY))
    external_study(masked, masked, out, profile=profile, sources=("none",), n_boot=50, progress=False)
    res = external_results(out)
    assert res["glue"]["external_study_models"] == text and list(res["models"]["model"]) == list(shown["model"])
    # A rerun of the study that changed its results makes the table stale: the chapter says so and shows none.
    metrics = pd.read_csv(study / "metrics.csv")
    metrics.loc[metrics["model"] == "amw_cnn", "value"] += 0.01
    metrics.to_csv(study / "metrics.csv", index=False)
    res = external_results(out)
    assert res["glue"]["external_study_models"].startswith("(not current: the study in ") and res["models"] is None
    assert f"--study-models {study.resolve()}" in res["glue"]["external_study_models"]
    pd.read_csv(out / STUDY_MODELS_TABLE).drop(columns="study").to_csv(out / STUDY_MODELS_TABLE, index=False)
    assert study_models_text(out).startswith("(not current")  # a table that does not name its study is not trusted


def test_external_models_names_what_is_missing(whole_image_model, masked, tmp_path):
    from mmlib.external import external_models

    with pytest.raises(FileNotFoundError, match="no finished study"):
        external_models(tmp_path / "nothing", masked, tmp_path / "o", models=("amw_cnn",))
    study = _study(tmp_path / "s1", {"amw_cnn": whole_image_model}, {"amw_cnn": 0.8})
    with pytest.raises(ValueError, match=r"no cross-validated AUC for \['cnn_lstm'\]"):
        external_models(study, masked, tmp_path / "o", models=("amw_cnn", "cnn_lstm"))
    study = _study(tmp_path / "s2", {"amw_cnn": whole_image_model}, {"amw_cnn": 0.8, "cnn_lstm": 0.9})
    with pytest.raises(FileNotFoundError, match=r"cnn_lstm/model.json not found: the study did not save its cnn_lstm"):
        external_models(study, masked, tmp_path / "o", models=("amw_cnn", "cnn_lstm"))
    study = _study(tmp_path / "s3", {"cnn_lstm": whole_image_model}, {"cnn_lstm": 0.9})
    with pytest.raises(ValueError, match="holds the model 'amw_cnn', expected 'cnn_lstm'"):
        external_models(study, masked, tmp_path / "o", models=("cnn_lstm",))
    assert not (tmp_path / "o").exists()  # nothing written before the checks pass
