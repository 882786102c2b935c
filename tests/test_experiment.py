"""The study engine end to end on a tiny cohort: schema of every output, protocol rules, reuse of finished work."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmlib import experiment as ex
from mmlib.schema import all_scenarios, scenario_name


def _params(tmp_path, **kw):
    p = dict(profile="tiny", cohort="synthetic", synthetic_patients=60, synthetic_seed=3, n_folds=3, image_size=64,
             n_augment=1, epochs=2, early_stopping=0, bs=16, dim=32, models=["amw_cnn", "cnn_lstm"],
             baselines=["age_only", "ultrasound_only"], ablations=True, n_boot=50, progress=False,
             results_dir=str(tmp_path / "results"))
    p.update(kw)
    return ex.load_params(p)


def holm_by_hand(pvals):
    """Holm's step-down adjustment, written out: max over k <= i of (m - k) p_(k), capped at 1."""
    pvals = np.asarray(pvals, dtype=float)
    order = np.argsort(pvals)
    m = len(pvals)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * pvals[i])
        adjusted[i] = min(1.0, running)
    return adjusted


def test_holm_by_hand_values():
    np.testing.assert_allclose(holm_by_hand([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm_by_hand([0.5, 0.01, 0.04]), [0.5, 0.03, 0.08])


@pytest.fixture(scope="module")
def run(tmp_path_factory, study_results):
    params = _params(tmp_path_factory.mktemp("exp"), workers=2)  # two processes, compared with one below
    params["results_dir"] = study_results(params["results_dir"])
    out = ex.run_experiment(params)
    return params, out, ex.load_results(out)


@pytest.mark.slow
def test_outputs_have_the_documented_schema(run):
    _, out, res = run
    assert list(res.predictions.columns)[:9] == ["patient_id", "model", "ablation", "scenario", "split", "fold",
                                                 "seed", "prob_malignant", "label"]
    assert list(res.metrics.columns)[:10] == ["model", "ablation", "scenario", "split", "metric", "value", "ci_low",
                                              "ci_high", "n_units", "n_clusters"]
    for m in ("auc", "accuracy", "sensitivity", "specificity", "precision", "mcc", "f1", "brier", "ece"):
        assert m in set(res.metrics["metric"]), m
    assert set(res.predictions["split"]) == {"cv", "test"}
    assert set(res.predictions["scenario"]) == {scenario_name(s) for s in all_scenarios()}
    assert {"none", "no_clinical", "modality_dropout"} <= set(res.predictions["ablation"])
    assert "oracle_auc" in res.run and 0.5 < res.run["oracle_auc"] <= 1
    assert res.run["git"]["commit"] and res.run["versions"]["torch"]
    assert (out / "models" / "amw_cnn" / "model.safetensors").is_file()


@pytest.mark.slow
def test_cv_predictions_are_out_of_fold_once_per_patient(run):
    _, _, res = run
    p = res.predictions
    cv = p[(p["split"] == "cv") & (p["model"] == "amw_cnn") & (p["ablation"] == "none") & (p["scenario"] == "all")]
    assert cv["patient_id"].is_unique
    dev = res.splits[res.splits["split"] == "dev"]
    assert set(cv["patient_id"]) == set(dev["patient_id"])
    fold_of = dev.set_index("patient_id")["fold"]
    assert (cv.set_index("patient_id")["fold"] == fold_of.loc[cv["patient_id"]].to_numpy()).all()
    test = p[(p["split"] == "test") & (p["model"] == "amw_cnn") & (p["ablation"] == "none") & (p["scenario"] == "all")]
    assert set(test["patient_id"]) == set(res.splits.loc[res.splits["split"] == "test", "patient_id"])


@pytest.mark.slow
def test_thresholds_come_from_training_folds_only(run):
    from mmlib.metrics import youden_threshold

    _, _, res = run
    p, inner = res.predictions, res.inner
    sel = lambda d, split: d[(d["split"] == split) & (d["model"] == "amw_cnn") & (d["ablation"] == "none")  # noqa: E731
                             & (d["scenario"] == "all")]
    g, gi = sel(p, "cv"), sel(inner, "inner")
    fold_t = {}
    for k, gk in g.groupby("fold"):
        own = gi[gi["fold"] == k]
        # the inner validation patients of fold k's model are its training patients, never fold k's
        assert len(own) and not set(own["patient_id"]) & set(gk["patient_id"])
        fold_t[k] = youden_threshold(own["label"], own["prob_malignant"])
        assert gk["threshold"].iloc[0] == pytest.approx(fold_t[k])
    # the fold ensemble predicting the test set uses the mean of its members' thresholds
    assert sel(p, "test")["threshold"].iloc[0] == pytest.approx(np.mean(list(fold_t.values())))
    assert res.run["thresholds"]["amw_cnn"] == pytest.approx(np.mean(list(fold_t.values())), abs=1e-4)


def test_assign_thresholds_per_fold_seed_and_ensemble():
    from mmlib.metrics import youden_threshold

    rng = np.random.default_rng(0)
    base = {"model": "m", "ablation": "none", "scenario": "all"}
    preds, inner = [], []
    for seed in (0, 1):
        for fold in (0, 1):
            y = rng.integers(0, 2, 30)
            inner.append(pd.DataFrame({**base, "split": "inner", "fold": fold, "seed": seed, "label": y,
                                       "patient_id": [f"i{fold}{j}" for j in range(30)],
                                       "prob_malignant": np.clip(0.3 * y + rng.random(30) * 0.7, 0, 1)}))
            preds.append(pd.DataFrame({**base, "split": "cv", "fold": fold, "seed": seed, "label": [0, 1],
                                       "patient_id": [f"c{fold}0", f"c{fold}1"], "prob_malignant": [0.2, 0.8]}))
        preds.append(pd.DataFrame({**base, "split": "test", "fold": -1, "seed": seed, "label": [0, 1],
                                   "patient_id": ["t0", "t1"], "prob_malignant": [0.1 + seed / 10, 0.9]}))
    preds, inner = pd.concat(preds, ignore_index=True), pd.concat(inner, ignore_index=True)
    avg, per_seed, summary = ex.assign_thresholds(preds, inner)
    t = {(s, k): youden_threshold(g["label"], g["prob_malignant"]) for (s, k), g in inner.groupby(["seed", "fold"])}
    cv0 = per_seed[(per_seed["split"] == "cv") & (per_seed["fold"] == 0)].groupby("seed")["threshold"].first()
    assert cv0.loc[0] == pytest.approx(t[0, 0]) and cv0.loc[1] == pytest.approx(t[1, 0])
    # seed-averaged predictions: the mean of the seeds' thresholds (and probabilities)
    a0 = avg[(avg["split"] == "cv") & (avg["fold"] == 0)]
    assert a0["threshold"].iloc[0] == pytest.approx((t[0, 0] + t[1, 0]) / 2) and len(a0) == 2
    test = avg[avg["split"] == "test"].set_index("patient_id")
    assert test.loc["t0", "threshold"] == pytest.approx(np.mean(list(t.values())))
    assert test.loc["t0", "prob_malignant"] == pytest.approx(0.15)
    assert summary["test"]["m"] == pytest.approx(np.mean(list(t.values())), abs=1e-4)
    assert summary["threshold_fallbacks"] == 0
    # an inner set of a single class gives no Youden threshold: 0.5, counted
    one_class = inner.assign(label=np.where(inner["fold"] == 1, 0, inner["label"]))
    _, per_seed, summary = ex.assign_thresholds(preds, one_class)
    assert summary["threshold_fallbacks"] == 2
    assert (per_seed[(per_seed["split"] == "cv") & (per_seed["fold"] == 1)]["threshold"] == 0.5).all()
    with pytest.raises(ValueError, match="inner validation"):
        ex.assign_thresholds(preds, inner.iloc[:0])


@pytest.mark.slow
def test_metrics_match_recomputation(run):
    from sklearn.metrics import roc_auc_score

    _, _, res = run
    p = res.predictions
    g = p[(p["split"] == "cv") & (p["model"] == "cnn_lstm") & (p["ablation"] == "none") & (p["scenario"] == "all")]
    assert res.metric("cnn_lstm", "auc") == pytest.approx(roc_auc_score(g["label"], g["prob_malignant"]))
    sens = ((g["prob_malignant"] >= g["threshold"]) & (g["label"] == 1)).sum() / (g["label"] == 1).sum()
    assert res.metric("cnn_lstm", "sensitivity") == pytest.approx(sens)
    row = res.metrics[(res.metrics["model"] == "cnn_lstm") & (res.metrics["metric"] == "auc") & (res.metrics["split"] == "cv")
                      & (res.metrics["ablation"] == "none") & (res.metrics["scenario"] == "all")].iloc[0]
    assert row["ci_low"] <= row["value"] <= row["ci_high"]


@pytest.mark.slow
def test_statistics_and_missing_table(run):
    _, _, res = run
    s = res.stats
    mc = s[(s["test"] == "mcnemar_exact") & (s["split"] == "cv")]
    n_models = 4  # amw_cnn, cnn_lstm, age_only, ultrasound_only
    assert len(mc) == n_models * (n_models - 1) // 2
    for test in ("mcnemar_exact", "delong"):
        for split, g in s[s["test"] == test].groupby("split"):
            np.testing.assert_allclose(g["p_holm"], holm_by_hand(g["p_value"]), err_msg=f"{test} {split}")
    assert {"delong", "bootstrap_auc_diff", "bootstrap_accuracy_diff", "cohens_d_age", "welch_t_age",
            "mann_whitney_age"} <= set(s["test"])
    assert list(s.columns) == ex.STATS_COLUMNS
    m = res.missing
    full = m[(m["model"] == "amw_cnn") & (m["ablation"] == "none") & (m["scenario"] == "all")]
    assert float(full["auc_drop"].iloc[0]) == pytest.approx(0.0)
    assert len(m[(m["model"] == "amw_cnn") & (m["ablation"] == "none")]) == 7
    # a synthetic cohort: every input subset has its own oracle, and each model its paired gap to the full one
    assert m["oracle_auc"].between(0.5, 1).all()
    assert m.groupby("scenario")["oracle_auc"].nunique().eq(1).all() and m["oracle_auc"].nunique() > 3
    gap = s[(s["test"] == "bootstrap_auc_vs_oracle") & (s["a"] == "amw_cnn") & (s["split"] == "cv")].iloc[0]
    auc = res.metric("amw_cnn")
    assert gap["statistic"] == pytest.approx(auc - json.loads(gap["detail"])["auc_oracle"])
    assert gap["ci_low"] <= gap["statistic"] <= gap["ci_high"]
    # the seed spread sits beside every metric (one seed here: min = max = the seed's own value)
    row = res.metrics[(res.metrics["model"] == "amw_cnn") & (res.metrics["metric"] == "auc")
                      & (res.metrics["split"] == "cv") & (res.metrics["ablation"] == "none")
                      & (res.metrics["scenario"] == "all")].iloc[0]
    assert row["n_seeds"] == 1 and row["seed_min"] == row["seed_max"] == pytest.approx(row["value"])


@pytest.mark.slow
def test_rerun_reuses_finished_work(run, capsys):
    params, out, res = run
    ex.run_experiment(dict(params, progress=True))
    n = len(ex.experiment_configs(params))
    assert f"training: all {n} units of work reused" in capsys.readouterr().err
    again = ex.load_results(out)
    assert again.run["units"] == {"total": n, "reused": n, "trained": 0}
    pd.testing.assert_frame_equal(again.predictions, res.predictions)


@pytest.mark.slow
def test_results_do_not_depend_on_the_number_of_workers(run, tmp_path, study_results, monkeypatch):
    """The module's run trained in two worker processes (frozen CPU path); one process gives bit-identical
    probabilities: training and prediction run on one thread either way (a worker has one; predicting on more
    threads in this process changed the last bit of some probabilities in the default study)."""
    import torch

    from mmlib import learner

    params, out, res = run
    assert ex.n_workers(params) == 2
    threads, real = [], learner.predict_proba

    def spy(*a, **kw):
        threads.append(torch.get_num_threads())
        return real(*a, **kw)

    monkeypatch.setattr(learner, "predict_proba", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # as this process has on a 2-core machine
    try:
        one = ex.load_results(ex.run_experiment(dict(params, workers=1, models=["amw_cnn"], baselines=["age_only"],
                                                     ablations=False, results_dir=study_results(tmp_path / "one"))))
    finally:
        torch.set_num_threads(before)
    key = ["model", "ablation", "scenario", "split", "fold", "patient_id"]
    for model in ("amw_cnn", "age_only"):
        a = res.predictions.query("model == @model and ablation == 'none'").sort_values(key).reset_index(drop=True)
        b = one.predictions.query("model == @model and ablation == 'none'").sort_values(key).reset_index(drop=True)
        assert len(a) == len(b) > 0
        np.testing.assert_array_equal(a["prob_malignant"].to_numpy(), b["prob_malignant"].to_numpy())
    assert threads and set(threads) == {1}, threads


def test_workers_parameter_is_checked():
    assert ex.n_workers(ex.load_params({"workers": 3})) == 3
    assert ex.n_workers(ex.load_params({"train_mode": "finetune"})) == 1
    for bad in (0, -1, "many", 1.5):
        with pytest.raises(ex.ParamsError, match="workers"):
            ex.load_params({"workers": bad})


def test_unknown_parameters_are_refused(tmp_path):
    with pytest.raises(ex.ParamsError, match="epoch"):
        ex.load_params({"epoch": 3})
    with pytest.raises(ex.ParamsError, match="models"):
        ex.load_params({"models": ["resnet_magic"]})
    with pytest.raises(ex.ParamsError, match="profiles"):
        ex.load_params("no-such-profile")


def test_profiles_in_params_folder_are_valid():
    from mmlib.paths import PARAMS

    files = sorted(PARAMS.glob("*.yaml"))
    assert {"smoke", "default", "gpu", "breast-lesions-usg", "cdd-cesm"} <= {f.stem for f in files}
    for f in files:
        p = ex.load_params(f)
        assert p["profile"] == f.stem


@pytest.mark.slow
def test_report_tables(run):
    from mmlib import report

    _, _, res = run
    t = report.metrics_table(res)
    assert list(t["model"]) == ["AMW-CNN", "CNN-LSTM", "Age only (logistic regression)", "Ultrasound only"]
    auc = res.metric("amw_cnn", "auc")
    assert t.loc[0, "AUC"].startswith(f"{auc:.3f} (")
    f = report.fold_table(res)
    assert list(f.columns)[:3] == ["fold 1", "fold 2", "fold 3"]
    assert f.loc["AMW-CNN", "mean"] == pytest.approx(f.loc["AMW-CNN", ["fold 1", "fold 2", "fold 3"]].mean(), abs=1e-3)
    a = report.ablation_table(res)
    assert set(a["ablation"]) >= {"none", "no_clinical", "modality_dropout", "equal_weights"}
    assert (a.loc[a["ablation"] == "none", "change"] == 0).all()
    mt = report.missing_table(res)
    assert list(mt.columns)[0] == "all" and mt.shape[1] == 7
    assert not report.importance_table(res).empty
    assert len(report.pairwise_table(res)) == 6
    assert report.age_table(res)["patients malignant"].iloc[0] > 0
    assert len(report.cv_vs_test(res)) == 4
    assert len(report.checklist()) > 10


@pytest.mark.slow
def test_finetune_mode_runs_end_to_end_on_cpu(tmp_path, study_workspace):
    """The GPU profile's mode (encoders unfrozen, images in) through the whole engine, at tiny sizes."""
    params = _params(tmp_path, train_mode="finetune", encoder_weights="none", image_size=32, epochs=1, n_folds=2,
                     models=["amw_cnn"], baselines=[], ablations=False, scenarios=False, save_models=True, bs=8)
    res = ex.load_results(ex.run_experiment(params))
    assert set(res.predictions["split"]) == {"cv", "test"}
    assert np.isfinite(res.metric("amw_cnn", "auc"))
    # one fit uses every core: one unit at a time, in this process; the refit is saved from the training device
    assert (res.run["executor"], res.run["workers"], res.run["units"]["trained"]) == ("local", 1, 1)
    assert res.run["timings"]["training"]["peak_unit_memory_mb"] > 0
    assert (res.folder / "models" / "amw_cnn" / "model.safetensors").is_file()


def test_fingerprint_changes_when_an_image_changes(tiny_cohort, tmp_path):
    import shutil

    from mmlib.cohort import load_manifest

    src = tiny_cohort.manifest.parent
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    c = load_manifest(dst / "manifest.csv", decode_images=False)
    before = ex.cohort_fingerprint(c)
    assert before == ex.cohort_fingerprint(load_manifest(src / "manifest.csv", decode_images=False))  # a copy
    img = c.patients["ultrasound"].iloc[0][0]
    import os

    os.utime(img, ns=(1, 1))  # the same bytes at a new file time (copied or downloaded again): the same cohort
    assert ex.cohort_fingerprint(c) == before
    data = bytearray(img.read_bytes())
    data[-1] ^= 1  # one byte changed in place
    img.write_bytes(bytes(data))
    assert ex.cohort_fingerprint(c) != before


def _clustered_study(n_patients=50, seed=0):
    """Predictions of two models on a cohort whose patients give two units each (two breasts)."""
    from types import SimpleNamespace

    rng = np.random.default_rng(seed)
    y_pat = rng.integers(0, 2, n_patients)
    units = pd.DataFrame({"patient_id": [f"P{i}_{side}" for i in range(n_patients) for side in "LR"],
                          "group": np.repeat([f"P{i}" for i in range(n_patients)], 2),
                          "label": np.repeat(y_pat, 2)})
    units.loc[1, "label"] = 1 - units.loc[0, "label"]  # one patient with a benign and a malignant breast
    units["age"] = np.repeat(50 + 8 * y_pat + rng.normal(0, 5, n_patients), 2)
    preds = []
    for model, signal in (("a", 0.3), ("b", 0.1)):
        p = np.repeat(np.clip(0.5 + signal * (2 * y_pat - 1) + rng.normal(0, 0.2, n_patients), 0, 1), 2)
        preds.append(pd.DataFrame({"patient_id": units["patient_id"], "model": model, "ablation": "none",
                                   "scenario": "all", "split": "cv", "fold": 0, "prob_malignant": p,
                                   "label": units["label"], "threshold": 0.5}))
    study = ex.Study({}, Path("."), cohort=SimpleNamespace(patients=units),
                     splits=units[["patient_id", "group", "label"]].assign(split="dev", fold=0))
    return study, pd.concat(preds, ignore_index=True)


def test_clustered_cohort_statistics_resample_patients():
    study, preds = _clustered_study()
    stats = ex.comparison_stats(preds, study, n_boot=400, seed=0).set_index("test")
    assert list(ex.comparison_stats(preds, study, n_boot=10).columns) == ex.STATS_COLUMNS
    boot = stats.loc["bootstrap_auc_diff"]
    assert (boot["unit"], boot["n_units"], boot["n_clusters"]) == ("patient", 100, 50)
    assert (stats.loc["delong", "unit"], stats.loc["mcnemar_exact", "unit"]) == ("unit", "unit")
    assert boot["ci_low"] <= boot["statistic"] <= boot["ci_high"]
    flat = ex.comparison_stats(preds, None, n_boot=400, seed=0).set_index("test")
    assert flat.loc["bootstrap_auc_diff", "n_clusters"] == 100
    assert (boot["ci_high"] - boot["ci_low"]) > 1.2 * (flat.loc["bootstrap_auc_diff", "ci_high"]
                                                      - flat.loc["bootstrap_auc_diff", "ci_low"])
    age = stats.loc["cohens_d_age"]
    detail = json.loads(age["detail"])
    # one row per patient; the patient with a benign and a malignant breast counts once, as malignant
    assert (age["n_units"], age["n_clusters"]) == (100, 50)
    assert detail["n_a"] + detail["n_b"] == 50


def test_clustered_metrics_have_wider_intervals_and_say_so():
    study, preds = _clustered_study(seed=1)
    g = preds[preds["model"] == "a"]
    grouped = pd.DataFrame(ex._metric_rows(g, 500, 0, 10, ex.unit_groups(study, g["patient_id"]))).set_index("metric")
    flat = pd.DataFrame(ex._metric_rows(g, 500, 0, 10, ex.unit_groups(None, g["patient_id"]))).set_index("metric")
    assert grouped.loc["auc", "n_clusters"] == 50 and flat.loc["auc", "n_clusters"] == 100
    width = lambda t, m: t.loc[m, "ci_high"] - t.loc[m, "ci_low"]  # noqa: E731
    assert width(grouped, "auc") > 1.2 * width(flat, "auc")
    # ece_bins reaches the metrics (it was ignored)
    five = pd.DataFrame(ex._metric_rows(g, 50, 0, 5)).set_index("metric")
    from mmlib.metrics import expected_calibration_error

    assert five.loc["ece", "value"] == pytest.approx(expected_calibration_error(g["label"], g["prob_malignant"], n_bins=5))


@pytest.mark.slow
def test_the_saved_model_is_the_seed_average_the_metrics_describe(tmp_path, study_workspace):
    """With two seeds a study saves one model whose probability is the mean of both seeds' refits (the average its
    seed-averaged metrics describe); each seed's member stays in its unit's work folder and a rerun reuses it."""
    from mmlib.explain import explained_model, load_run_model
    from mmlib.learner import SeedEnsemble, load_model, predict_manifest

    params = _params(tmp_path, seeds=[0, 1], models=["amw_cnn"], baselines=[], ablations=False, scenarios=False,
                     save_models=True, epochs=1)
    res = ex.load_results(ex.run_experiment(params))
    folder = res.folder / "models" / "amw_cnn"
    model, meta = load_model(folder)
    assert isinstance(model, SeedEnsemble) and model.seeds == [0, 1] and model.tied_encoders
    members = [load_model(res.folder / "work" / f"amw_cnn__none__s{s}" / ex.MEMBER) for s in (0, 1)]
    assert [m["info"]["seed"] for _, m in members] == [0, 1]
    assert meta["threshold"] == pytest.approx(np.mean([m["threshold"] for _, m in members]))
    assert meta["info"]["seeds"] == [0, 1] and meta["ensemble"]["thresholds"] == [m["threshold"] for _, m in members]
    manifest = res.cohort().manifest
    both = [predict_manifest(res.folder / "work" / f"amw_cnn__none__s{s}" / ex.MEMBER, manifest) for s in (0, 1)]
    ens = predict_manifest(folder, manifest)
    np.testing.assert_allclose(ens["prob_malignant"], (both[0]["prob_malignant"] + both[1]["prob_malignant"]) / 2,
                               atol=1e-5)
    explained, emeta = load_run_model(res.folder, "amw_cnn")  # explanations read one member
    assert not isinstance(explained, SeedEnsemble) and emeta["explained_seed"] == 0 and emeta["ensemble_members"] == 2
    assert explained_model(emeta) == ("the first member (seed 0) of the saved model, which averages 2 seeds' refits "
                                      "on all development patients")
    assert explained_model(meta) == "the model trained on all development patients"
    # a unit whose member is gone is trained again, and the model assembled again
    import shutil

    shutil.rmtree(res.folder / "work" / "amw_cnn__none__s1" / ex.MEMBER)
    again = ex.load_results(ex.run_experiment(params))
    assert again.run["units"] == {"total": 2, "reused": 1, "trained": 1}
    np.testing.assert_allclose(predict_manifest(folder, manifest)["prob_malignant"], ens["prob_malignant"], atol=1e-5)


def test_assembling_a_model_without_its_members_names_them(tmp_path):
    study = ex.Study(_params(tmp_path, seeds=[0, 1], models=["amw_cnn"], baselines=[], ablations=False,
                             save_models=True), tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"amw_cnn lacks the members .*amw_cnn__none__s0/model"):
        ex.assemble_models(study)
