"""The figure functions on small synthetic results: traces, names and the numbers they show."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

from mmlib import figures
from mmlib.report import display_name
from mmlib.schema import MODALITIES


@pytest.fixture(scope="module")
def predictions() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 60
    y = rng.integers(0, 2, n)
    rows = []
    for model, signal in (("cuf_mt", 1.0), ("baseline_clinical", 0.3)):
        for split in ("cv", "test"):
            logits = signal * (2 * y - 1) + rng.normal(0, 1, n)
            prob = 1 / (1 + np.exp(-logits))
            for i in range(n):
                rows.append({"patient_id": f"P{i:03d}", "model": model, "ablation": "none", "scenario": "all",
                             "split": split, "fold": i % 3, "seed": 0, "prob_malignant": prob[i],
                             "label": ("benign", "malignant")[y[i]]})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def metrics() -> pd.DataFrame:
    rows = []
    for k, model in enumerate(("cuf_mt", "amw_cnn", "baseline_us")):
        for j, scenario in enumerate(figures.SCENARIOS):
            if model == "baseline_us" and scenario == "clinical":
                continue  # a model not evaluated in one scenario
            value = 0.9 - 0.05 * k - 0.01 * j
            rows.append({"model": model, "ablation": "none", "scenario": scenario, "split": "cv", "metric": "auc",
                         "value": value, "ci_low": value - 0.04, "ci_high": value + 0.03})
    return pd.DataFrame(rows)


def _cv(df):
    return df[(df["split"] == "cv") & (df["scenario"] == "all")]


def test_roc_curves_one_curve_per_model_with_sklearn_auc(predictions):
    fig = figures.roc_curves(predictions)
    assert isinstance(fig, go.Figure)
    assert [t.name.split(" (")[0] for t in fig.data] == ["CUF-MT", "baseline_clinical", "chance"]
    cv = _cv(predictions)
    for trace in fig.data[:2]:
        rows = cv[cv["model"] == trace.meta["model"]]
        auc = roc_auc_score(rows["label"] == "malignant", rows["prob_malignant"])
        assert trace.name == f"{display_name(trace.meta['model'])} (AUC {auc:.3f})"
        assert trace.meta["auc"] == pytest.approx(auc)
        assert (trace.x[0], trace.y[0]) == (0.0, 0.0)
        assert (trace.x[-1], trace.y[-1]) == (1.0, 1.0)
        assert np.all(np.diff(trace.x) >= 0) and np.all(np.diff(trace.y) >= 0)
        # Trapezoidal area under the drawn curve is the AUC in the legend.
        assert np.trapezoid(trace.y, trace.x) == pytest.approx(auc)
    assert fig.layout.xaxis.title.text.startswith("False positive rate")


def test_roc_curves_filters_and_rejects_unknown_values(predictions):
    test_fig = figures.roc_curves(predictions, split="test")
    cv_fig = figures.roc_curves(predictions, split="cv")
    test_rows = predictions[(predictions["split"] == "test") & (predictions["model"] == "cuf_mt")]
    expected = roc_auc_score(test_rows["label"] == "malignant", test_rows["prob_malignant"])
    assert test_fig.data[0].meta["auc"] == pytest.approx(expected)
    assert test_fig.data[0].meta["auc"] != cv_fig.data[0].meta["auc"]
    with pytest.raises(ValueError, match=r"split='internal'.*available: \['cv', 'test'\]"):
        figures.roc_curves(predictions, split="internal")
    bad = predictions.assign(label="unsure")
    with pytest.raises(ValueError, match="label values"):
        figures.roc_curves(bad)
    with pytest.raises(ValueError, match="missing columns"):
        figures.roc_curves(predictions.drop(columns="prob_malignant"))


def test_roc_curves_accepts_numeric_labels(predictions):
    numeric = predictions.assign(label=(predictions["label"] == "malignant").astype(int))
    a, b = figures.roc_curves(numeric), figures.roc_curves(predictions)
    assert [t.name for t in a.data] == [t.name for t in b.data]


def test_metric_forest_points_intervals_and_baseline_style(metrics):
    fig = figures.metric_forest(metrics, "auc")
    assert [t.name for t in fig.data] == ["proposed", "baseline"]
    proposed, baseline = fig.data
    assert list(proposed.y) == ["CUF-MT", "AMW-CNN"] and list(baseline.y) == ["baseline_us"]
    np.testing.assert_allclose(proposed.x, [0.9, 0.85])
    np.testing.assert_allclose(proposed.error_x.array, [0.03, 0.03])
    np.testing.assert_allclose(proposed.error_x.arrayminus, [0.04, 0.04])
    assert proposed.marker.symbol != baseline.marker.symbol
    assert "AUC" in fig.layout.title.text and fig.layout.xaxis.title.text == "AUC"
    explicit = figures.metric_forest(metrics, "auc", baselines=["amw_cnn"])
    assert list(explicit.data[1].y) == ["AMW-CNN"]
    with pytest.raises(ValueError, match="several auc rows"):
        figures.metric_forest(metrics, "auc", scenario=None)


def test_reliability_diagram_matches_sklearn_and_ece(predictions):
    fig = figures.reliability_diagram(predictions, n_bins=5)
    assert len(fig.data) == 3 and fig.data[-1].name == "perfect calibration"
    cv = _cv(predictions)
    for trace in fig.data[:2]:
        rows = cv[cv["model"] == trace.meta["model"]]
        y, p = (rows["label"] == "malignant").to_numpy(int), rows["prob_malignant"].to_numpy()
        observed, predicted = calibration_curve(y, p, n_bins=5)
        np.testing.assert_allclose(trace.x, predicted)
        np.testing.assert_allclose(trace.y, observed)
        # ECE, second implementation: weights from the bin counts.
        counts = np.bincount(np.minimum((p * 5).astype(int), 4), minlength=5)
        ece = np.sum(counts[counts > 0] / len(p) * np.abs(observed - predicted))
        assert trace.meta["ece"] == pytest.approx(ece)
        assert trace.name.endswith(f"(ECE {ece:.3f})")


def test_decision_curves_net_benefit_known_answer():
    df = pd.DataFrame({"model": "m", "ablation": "none", "scenario": "all", "split": "cv",
                       "prob_malignant": [0.9, 0.6, 0.4, 0.1], "label": [1, 1, 0, 0]})
    fig = figures.decision_curves(df, thresholds=[0.2, 0.5])
    assert [t.name for t in fig.data] == ["m", "treat all", "treat none"]
    # t=0.2: treat 3 (TP 2, FP 1) -> 2/4 - 1/4 * 0.25; t=0.5: TP 2, FP 0 -> 0.5.
    np.testing.assert_allclose(fig.data[0].y, [0.5 - 0.25 * 0.25, 0.5])
    np.testing.assert_allclose(fig.data[1].y, [0.5 - 0.5 * 0.25, 0.5 - 0.5 * 1.0])
    np.testing.assert_allclose(fig.data[2].y, [0.0, 0.0])
    with pytest.raises(ValueError, match="thresholds"):
        figures.decision_curves(df, thresholds=[0.0, 0.5])


def test_pairwise_matrix_symmetric_holm_p_values():
    stats = pd.DataFrame({"test": ["mcnemar", "mcnemar", "mcnemar", "delong"], "a": ["x", "x", "y", "x"],
                          "b": ["y", "z", "z", "y"], "statistic": [1.0, 2.0, 3.0, 4.0],
                          "p_value": [0.01, 0.2, 0.5, 0.03], "p_holm": [0.03, 0.4, 0.5, 0.03], "detail": ""})
    fig = figures.pairwise_matrix(stats, "mcnemar")
    assert len(fig.data) == 1 and isinstance(fig.data[0], go.Heatmap)
    z = np.array(fig.data[0].z, dtype=float)
    assert list(fig.data[0].x) == ["x", "y", "z"]
    np.testing.assert_array_equal(np.isnan(np.diag(z)), True)
    np.testing.assert_allclose(z, z.T, equal_nan=True)
    assert z[0, 1] == 0.03 and z[0, 2] == 0.4 and z[2, 1] == 0.5
    assert "Holm" in fig.layout.title.text
    # models are labelled as the tables name them
    named = figures.pairwise_matrix(stats.replace({"x": "cuf_mt", "y": "age_only"}), "mcnemar")
    assert list(named.data[0].x) == ["CUF-MT", "Age only (logistic regression)", "z"]
    with pytest.raises(ValueError, match=r"test='bootstrap'"):
        figures.pairwise_matrix(stats, "bootstrap")


def test_missing_modality_heatmap_models_by_seven_scenarios(metrics):
    fig = figures.missing_modality_heatmap(metrics)
    heat = fig.data[0]
    assert list(heat.x) == list(figures.SCENARIOS) and len(heat.x) == 7 and heat.x[0] == "all"
    assert list(heat.y) == ["CUF-MT", "AMW-CNN", "baseline_us"]
    z = np.array(heat.z, dtype=float)
    assert z.shape == (3, 7)
    j = list(heat.x).index("clinical")
    assert np.isnan(z[2, j]) and np.isfinite(np.delete(z, j, axis=1)).all()
    assert z[1, 0] == pytest.approx(0.85) and z[0, 6] == pytest.approx(0.84)
    with pytest.raises(ValueError, match="unknown scenarios"):
        figures.missing_modality_heatmap(metrics.assign(scenario="mammo-only"))


def test_age_distribution_by_label_drops_missing_ages():
    patients = pd.DataFrame({"age": [40, 52, np.nan, 61, 70, 45], "label": ["benign", "benign", "benign",
                                                                           "malignant", "malignant", "benign"]})
    fig = figures.age_distribution(patients)
    assert [t.name for t in fig.data] == ["benign (n=3)", "malignant (n=2)"]
    np.testing.assert_allclose(sorted(fig.data[0].x), [40, 45, 52])
    assert fig.layout.xaxis.title.text == "Age (years)"


def test_modality_weights_stacked_per_patient():
    w = pd.DataFrame({"patient_id": ["P2", "P2", "P2", "P1", "P1", "P1"],
                      "modality": ["mammography", "ultrasound", "clinical"] * 2,
                      "weight": [0.5, 0.3, 0.2, 0.1, 0.6, 0.3]})
    fig = figures.modality_weights(w)
    assert [t.name for t in fig.data] == list(MODALITIES)
    assert fig.layout.barmode == "stack"
    assert list(fig.data[0].x) == ["P2", "P1"]
    np.testing.assert_allclose(np.sum([t.y for t in fig.data], axis=0), [1.0, 1.0])
    np.testing.assert_allclose(fig.data[1].y, [0.3, 0.6])
    with pytest.raises(ValueError, match="unknown modalities"):
        figures.modality_weights(w.assign(modality="mri"))


def test_attention_overlay_resizes_map_onto_image():
    image = np.linspace(0, 1, 32 * 48).reshape(32, 48)
    att = np.zeros((4, 6))
    att[1, 4] = 1.0
    fig = figures.attention_overlay(image, att)
    assert [type(t).__name__ for t in fig.data] == ["Image", "Heatmap"]
    rgb = np.asarray(fig.data[0].z)
    assert rgb.shape == (32, 48, 3) and rgb.min() == 0 and rgb.max() == 255
    heat = np.asarray(fig.data[1].z, dtype=float)
    assert heat.shape == (32, 48)
    r, c = np.unravel_index(heat.argmax(), heat.shape)
    assert 8 <= r < 16 and 32 <= c < 40  # the cell (1, 4) of the 4 x 6 grid, 8 px per cell
    with pytest.raises(ValueError, match="attention_map"):
        figures.attention_overlay(image, np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="image"):
        figures.attention_overlay(np.zeros((4, 4, 2)), att)


def test_training_curves_fastai_csv_logger_columns():
    log = pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [0.9, 0.6, 0.4], "valid_loss": ["#na#", 0.7, 0.5],
                        "roc_auc_score": [0.6, 0.7, 0.8], "accuracy": [0.55, 0.6, 0.7],
                        "time": ["00:01", "00:01", "00:02"]})
    fig = figures.training_curves(log)
    assert [t.name for t in fig.data] == ["train_loss", "valid_loss", "roc_auc_score", "accuracy"]
    assert [t.xaxis for t in fig.data] == ["x", "x", "x2", "x2"]
    assert np.isnan(fig.data[1].y[0]) and fig.data[1].y[2] == 0.5
    assert [a.text for a in fig.layout.annotations] == ["Loss", "Validation metrics"]


def test_example_images_grid_with_titles():
    images = {f"P{i} mammography": np.full((8, 10), float(i)) + np.eye(8, 10) for i in range(5)}
    images["P9 ultrasound"] = np.zeros((8, 10, 3), dtype=np.uint8)
    fig = figures.example_images(images, cols=4)
    assert len(fig.data) == 6 and all(isinstance(t, go.Image) for t in fig.data)
    assert [a.text for a in fig.layout.annotations] == list(images)
    first = np.asarray(fig.data[0].z)
    assert first.shape == (8, 10, 3) and first.max() == 255 and first.min() == 0
    assert fig.data[5].xaxis == "x6"  # second row, second column
    with pytest.raises(ValueError, match="non-empty mapping"):
        figures.example_images({})
