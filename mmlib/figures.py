"""The book's figures: each function takes tidy DataFrames (the results schema) and returns a plotly figure.

Results schema (written by the experiment engine into ``results/<profile>/``):

``predictions.csv``  patient_id, model, ablation, scenario, split (cv|test), fold, seed, prob_malignant, label
``metrics.csv``      model, ablation, scenario, split, metric, value, ci_low, ci_high
``stats.csv``        test, a, b, statistic, p_value, p_holm, detail

ROC and calibration numbers come from scikit-learn, so a figure shows exactly what the tables report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score, roc_curve

from .metrics import expected_calibration_error
from .schema import LABELS, MODALITIES, all_scenarios, scenario_name
from .stats import decision_curve

PREDICTION_COLUMNS = ("patient_id", "model", "ablation", "scenario", "split", "fold", "seed", "prob_malignant", "label")
METRIC_COLUMNS = ("model", "ablation", "scenario", "split", "metric", "value", "ci_low", "ci_high")
STATS_COLUMNS = ("test", "a", "b", "statistic", "p_value", "p_holm", "detail")
#: Display names of the metrics in metrics.csv.
METRIC_NAMES = {
    "auc": "AUC",
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "precision": "Precision",
    "mcc": "MCC",
    "f1": "F1",
    "brier": "Brier score",
    "ece": "ECE",
}
TEMPLATE = "plotly_white"
#: The 7 missing-modality scenarios in the order of :func:`mmlib.schema.all_scenarios` (``all`` first).
SCENARIOS: tuple[str, ...] = tuple(scenario_name(s) for s in all_scenarios())


def _require(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}; it has {list(df.columns)}")


def _select(df: pd.DataFrame, what: str, **filters) -> pd.DataFrame:
    """Rows matching every ``column=value`` filter (None = no filter); empty -> ValueError naming the choices."""
    out = df
    for column, value in filters.items():
        if value is None:
            continue
        kept = out[out[column] == value]
        if kept.empty:
            choices = sorted(map(str, out[column].dropna().unique()))
            raise ValueError(f"{what}: no rows with {column}={value!r}; available: {choices}")
        out = kept
    return out


def _binary_labels(labels: pd.Series, what: str) -> np.ndarray:
    """``label`` as 0/1: accepts the class names of :data:`mmlib.schema.LABELS` or 0/1."""
    if labels.dtype == object or pd.api.types.is_string_dtype(labels):
        mapping = {name: i for i, name in enumerate(LABELS)}
        bad = sorted(set(labels) - set(mapping))
        if bad:
            raise ValueError(f"{what}: label values {bad}; expected {list(LABELS)} or 0/1")
        return labels.map(mapping).to_numpy(dtype=int)
    values = labels.to_numpy()
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f"{what}: label values {sorted(set(values) - {0, 1})}; expected 0/1 or {list(LABELS)}")
    return values.astype(int)


def _predictions(predictions: pd.DataFrame, split, scenario, ablation) -> pd.DataFrame:
    _require(predictions, ("model", "split", "scenario", "ablation", "prob_malignant", "label"), "predictions")
    sel = _select(predictions, "predictions", split=split, scenario=scenario, ablation=ablation)
    if sel["prob_malignant"].isna().any():
        raise ValueError("predictions: prob_malignant has missing values")
    return sel


def _models(df: pd.DataFrame, column: str = "model") -> list[str]:
    """Model names in order of first appearance (the order the engine wrote them)."""
    return list(dict.fromkeys(df[column].astype(str)))


def _display(model: str) -> str:
    """A model's name as the tables print it (CUF-MT, Age only, ...); unknown names are shown as they are."""
    from .report import display_name

    return display_name(str(model))


def _filter_label(split, scenario, ablation) -> str:
    parts = [f"split {split}" if split else None, f"scenario {scenario}" if scenario else None,
             f"ablation {ablation}" if ablation and ablation != "none" else None]
    return ", ".join(p for p in parts if p)


def roc_curves(predictions: pd.DataFrame, *, split: str | None = "cv", scenario: str | None = "all",
               ablation: str | None = "none") -> go.Figure:
    """ROC curves, one per model, from the pooled out-of-fold (or test) predictions.

    Args:
        predictions: rows of ``predictions.csv``.
        split, scenario, ablation: which rows to plot (None = no filter).

    Returns:
        a figure with one ``Scatter`` per model named ``"<display name> (AUC 0.912)"`` (sklearn's
        ``roc_auc_score``), then the chance diagonal.
    """
    sel = _predictions(predictions, split, scenario, ablation)
    fig = go.Figure()
    for model in _models(sel):
        rows = sel[sel["model"].astype(str) == model]
        y = _binary_labels(rows["label"], f"predictions (model {model})")
        if len(set(y)) < 2:
            raise ValueError(f"predictions: model {model!r} has one class only; an ROC curve needs both")
        fpr, tpr, thr = roc_curve(y, rows["prob_malignant"].to_numpy())
        auc = roc_auc_score(y, rows["prob_malignant"].to_numpy())
        fig.add_trace(go.Scatter(
            x=fpr, y=tpr, mode="lines", name=f"{_display(model)} (AUC {auc:.3f})",
            customdata=np.minimum(thr, 1.0), meta={"model": model, "auc": float(auc)},
            hovertemplate="FPR %{x:.3f}<br>TPR %{y:.3f}<br>threshold %{customdata:.3f}<extra>" + _display(model) + "</extra>",
        ))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                             line={"dash": "dash", "color": "grey"}, hoverinfo="skip"))
    fig.update_layout(
        title=f"ROC curves ({_filter_label(split, scenario, ablation)})", template=TEMPLATE,
        xaxis_title="False positive rate (1 − specificity)", yaxis_title="True positive rate (sensitivity)",
        legend_title_text="Model",
    )
    fig.update_xaxes(range=[0, 1], constrain="domain")
    fig.update_yaxes(range=[0, 1], scaleanchor="x", scaleratio=1)
    return fig


def metric_forest(metrics: pd.DataFrame, metric: str = "auc", *, split: str | None = "cv",
                  scenario: str | None = "all", ablation: str | None = "none",
                  baselines: Iterable[str] | None = None) -> go.Figure:
    """Forest plot: one metric's point estimate and confidence interval per model.

    Args:
        metrics: rows of ``metrics.csv``.
        metric: which metric (``auc``, ``accuracy``, ...).
        split, scenario, ablation: which rows (None = no filter).
        baselines: models drawn as baselines (open grey markers); default: names starting with
            ``baseline``.

    Returns:
        a figure with a ``Scatter`` named ``proposed`` and one named ``baseline`` (when there are
        any), x = value with asymmetric error bars to ``ci_low``/``ci_high``, y = model (display name).
    """
    _require(metrics, METRIC_COLUMNS, "metrics")
    sel = _select(metrics, "metrics", metric=metric, split=split, scenario=scenario, ablation=ablation)
    dup = sel["model"].duplicated()
    if dup.any():
        raise ValueError(f"metrics: several {metric} rows for models {sorted(set(sel['model'][dup]))}; "
                         "filter split/scenario/ablation to one row per model")
    base = set(baselines) if baselines is not None else {m for m in sel["model"].astype(str) if m.startswith("baseline")}
    fig = go.Figure()
    for group, style in (("proposed", {"symbol": "circle", "color": "#1f77b4", "size": 10}),
                         ("baseline", {"symbol": "circle-open", "color": "grey", "size": 10})):
        rows = sel[sel["model"].astype(str).isin(base) == (group == "baseline")]
        if rows.empty:
            continue
        value = rows["value"].to_numpy(dtype=float)
        fig.add_trace(go.Scatter(
            x=value, y=rows["model"].astype(str).map(_display), mode="markers", name=group, marker=style,
            error_x={"type": "data", "symmetric": False,
                     "array": rows["ci_high"].to_numpy(dtype=float) - value,
                     "arrayminus": value - rows["ci_low"].to_numpy(dtype=float)},
            customdata=rows[["ci_low", "ci_high"]].to_numpy(dtype=float),
            hovertemplate="%{y}: %{x:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]<extra></extra>",
        ))
    name = METRIC_NAMES.get(metric, metric)
    fig.update_layout(title=f"{name} with 95% confidence intervals ({_filter_label(split, scenario, ablation)})",
                      template=TEMPLATE, xaxis_title=name, yaxis_title="Model", legend_title_text="")
    fig.update_yaxes(categoryorder="array", categoryarray=[_display(m) for m in reversed(_models(sel))])
    return fig


def reliability_diagram(predictions: pd.DataFrame, *, split: str | None = "cv", scenario: str | None = "all",
                        ablation: str | None = "none", n_bins: int = 10) -> go.Figure:
    """Reliability diagram: observed malignancy rate against mean predicted probability, per model.

    Args:
        predictions: rows of ``predictions.csv``.
        split, scenario, ablation: which rows (None = no filter).
        n_bins: equal-width probability bins (``sklearn.calibration.calibration_curve``).

    Returns:
        one ``Scatter`` per model named ``"<display name> (ECE 0.041)"`` (x = mean predicted, y = observed,
        non-empty bins only), then the diagonal ``perfect calibration``.
    """
    if not isinstance(n_bins, int) or n_bins < 2:
        raise ValueError(f"n_bins: expected an integer >= 2, got {n_bins!r}")
    sel = _predictions(predictions, split, scenario, ablation)
    fig = go.Figure()
    for model in _models(sel):
        rows = sel[sel["model"].astype(str) == model]
        y = _binary_labels(rows["label"], f"predictions (model {model})")
        p = rows["prob_malignant"].to_numpy(dtype=float)
        observed, predicted = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
        ece = expected_calibration_error(y, p, n_bins=n_bins)
        fig.add_trace(go.Scatter(x=predicted, y=observed, mode="lines+markers", name=f"{_display(model)} (ECE {ece:.3f})",
                                 meta={"model": model, "ece": ece}))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line={"dash": "dash", "color": "grey"}, hoverinfo="skip"))
    fig.update_layout(title=f"Reliability diagram ({_filter_label(split, scenario, ablation)})", template=TEMPLATE,
                      xaxis_title="Mean predicted probability of malignancy", yaxis_title="Observed fraction malignant",
                      legend_title_text="Model")
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1])
    return fig


def decision_curves(predictions: pd.DataFrame, *, split: str | None = "cv", scenario: str | None = "all",
                    ablation: str | None = "none", thresholds: Sequence[float] | None = None) -> go.Figure:
    """Decision curves (Vickers & Elkin 2006): net benefit over threshold probabilities, per model.

    Args:
        predictions: rows of ``predictions.csv``.
        split, scenario, ablation: which rows (None = no filter).
        thresholds: threshold probabilities in (0, 1); default 0.01, 0.02, ..., 0.99.

    Returns:
        one ``Scatter`` per model, then ``treat all`` and ``treat none`` (net benefit 0).
    """
    t = np.round(np.arange(1, 100) / 100, 2) if thresholds is None else np.asarray(thresholds, dtype=float)
    if t.ndim != 1 or t.size == 0 or (t <= 0).any() or (t >= 1).any():
        raise ValueError("thresholds: expected a non-empty 1-D sequence of probabilities strictly between 0 and 1")
    sel = _predictions(predictions, split, scenario, ablation)
    fig = go.Figure()
    prevalence = None
    for model in _models(sel):
        rows = sel[sel["model"].astype(str) == model]
        y = _binary_labels(rows["label"], f"predictions (model {model})")
        benefit = decision_curve(y, rows["prob_malignant"].to_numpy(dtype=float), thresholds=t)["net_benefit"].to_numpy()
        fig.add_trace(go.Scatter(x=t, y=benefit, mode="lines", name=_display(model)))
        prevalence = y.mean() if prevalence is None else prevalence
    treat_all = prevalence - (1 - prevalence) * t / (1 - t)
    fig.add_trace(go.Scatter(x=t, y=treat_all, mode="lines", name="treat all", line={"dash": "dot", "color": "grey"}))
    fig.add_trace(go.Scatter(x=t, y=np.zeros_like(t), mode="lines", name="treat none",
                             line={"dash": "dash", "color": "black"}))
    fig.update_layout(title=f"Decision curves ({_filter_label(split, scenario, ablation)})", template=TEMPLATE,
                      xaxis_title="Threshold probability of malignancy", yaxis_title="Net benefit",
                      legend_title_text="Strategy")
    # treat-all plunges towards −∞ as t → 1; keep the informative range in view.
    fig.update_yaxes(range=[min(-0.05, -0.1 * prevalence), max(prevalence, 0.05) * 1.1])
    return fig


def pairwise_matrix(stats: pd.DataFrame, test: str = "mcnemar") -> go.Figure:
    """Heatmap of Holm-adjusted p-values of one pairwise test between models (symmetric, blank diagonal).

    Args:
        stats: rows of ``stats.csv``.
        test: the ``test`` column's value (``mcnemar``, ``delong``, ...).

    Returns:
        a figure with one ``Heatmap``; ``z[i][j]`` is ``p_holm`` of the pair (models in order of first
        appearance in ``a``/``b``), NaN on the diagonal and for untested pairs.
    """
    _require(stats, ("test", "a", "b", "p_holm"), "stats")
    sel = _select(stats, "stats", test=test)
    models = list(dict.fromkeys(pd.concat([sel["a"], sel["b"]]).astype(str)))
    index = {m: i for i, m in enumerate(models)}
    z = np.full((len(models), len(models)), np.nan)
    for a, b, p in zip(sel["a"].astype(str), sel["b"].astype(str), sel["p_holm"].astype(float)):
        if a == b:
            raise ValueError(f"stats: test {test!r} compares model {a!r} with itself")
        z[index[a], index[b]] = z[index[b], index[a]] = p
    text = [["" if np.isnan(v) else f"{v:.3g}" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(
        z=z, x=[_display(m) for m in models], y=[_display(m) for m in models], text=text, texttemplate="%{text}",
        zmin=0, zmax=1,
        colorscale="RdBu", colorbar={"title": "Holm p"},
        hovertemplate="%{y} vs %{x}: p (Holm) = %{z:.4f}<extra></extra>",
    ))
    fig.update_layout(title=f"Pairwise {test} tests, Holm-adjusted p-values", template=TEMPLATE,
                      xaxis_title="Model", yaxis_title="Model")
    fig.update_yaxes(autorange="reversed")
    return fig


def missing_modality_heatmap(metrics: pd.DataFrame, metric: str = "auc", *, split: str | None = "cv",
                             ablation: str | None = "none") -> go.Figure:
    """A metric for each model (rows) under each of the 7 missing-modality scenarios (columns).

    Returns:
        one ``Heatmap``, columns in :data:`SCENARIOS` order, NaN where a model was not evaluated.
    """
    _require(metrics, METRIC_COLUMNS, "metrics")
    sel = _select(metrics, "metrics", metric=metric, split=split, ablation=ablation)
    unknown = sorted(set(sel["scenario"].astype(str)) - set(SCENARIOS))
    if unknown:
        raise ValueError(f"metrics: unknown scenarios {unknown}; expected {list(SCENARIOS)}")
    table = sel.pivot_table(index="model", columns="scenario", values="value", aggfunc="first", sort=False)
    table = table.reindex(index=_models(sel), columns=list(SCENARIOS))
    z = table.to_numpy(dtype=float)
    name = METRIC_NAMES.get(metric, metric)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(SCENARIOS), y=[_display(m) for m in table.index], colorscale="Viridis", colorbar={"title": name},
        text=[["" if np.isnan(v) else f"{v:.3f}" for v in row] for row in z], texttemplate="%{text}",
        hovertemplate="%{y}, inputs %{x}: %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(title=f"{name} with missing modalities ({_filter_label(split, None, ablation)})",
                      template=TEMPLATE, xaxis_title="Inputs present", yaxis_title="Model")
    fig.update_yaxes(autorange="reversed")
    return fig


def age_distribution(patients: pd.DataFrame, *, nbins: int = 20) -> go.Figure:
    """Histogram of age by label (overlaid), patients with a missing age left out.

    Returns:
        one ``Histogram`` per label present, in :data:`mmlib.schema.LABELS` order, named by the label.
    """
    _require(patients, ("age", "label"), "patients")
    rows = patients.dropna(subset=["age"])
    y = _binary_labels(rows["label"], "patients")
    fig = go.Figure()
    for i, name in enumerate(LABELS):
        ages = rows["age"].to_numpy(dtype=float)[y == i]
        if ages.size:
            fig.add_trace(go.Histogram(x=ages, name=f"{name} (n={ages.size})", nbinsx=nbins, opacity=0.6))
    fig.update_layout(title="Age at examination by label", template=TEMPLATE, barmode="overlay",
                      xaxis_title="Age (years)", yaxis_title="Patients", legend_title_text="Label")
    return fig


def modality_weights(weights_df: pd.DataFrame) -> go.Figure:
    """Per-patient adaptive modality weights as stacked bars (one bar per patient, one colour per input).

    Args:
        weights_df: tidy rows ``patient_id, modality, weight``.

    Returns:
        one ``Bar`` per modality (in :data:`mmlib.schema.MODALITIES` order), stacked.
    """
    _require(weights_df, ("patient_id", "modality", "weight"), "weights_df")
    unknown = sorted(set(weights_df["modality"]) - set(MODALITIES))
    if unknown:
        raise ValueError(f"weights_df: unknown modalities {unknown}; expected {list(MODALITIES)}")
    wide = weights_df.pivot_table(index="patient_id", columns="modality", values="weight", aggfunc="first", sort=False)
    wide = wide.reindex(index=list(dict.fromkeys(weights_df["patient_id"])))
    fig = go.Figure()
    for modality in MODALITIES:
        if modality in wide.columns:
            fig.add_trace(go.Bar(x=wide.index.astype(str), y=wide[modality].fillna(0.0), name=modality))
    fig.update_layout(title="Adaptive modality weights per patient", template=TEMPLATE, barmode="stack",
                      xaxis_title="Patient", yaxis_title="Weight", legend_title_text="Input")
    return fig


def _to_uint8_rgb(image: np.ndarray, what: str) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) of any range -> (H, W, 3) uint8 (min-max scaled unless uint8)."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"{what}: expected an (H, W) or (H, W, 3) image, got shape {np.asarray(image).shape}")
    if img.dtype == np.uint8:
        return img
    img = img.astype(float)
    lo, hi = np.nanmin(img), np.nanmax(img)
    scaled = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return np.round(scaled * 255).astype(np.uint8)


def attention_overlay(image: np.ndarray, attention_map: np.ndarray, *, opacity: float = 0.45,
                      title: str = "Attention over the image") -> go.Figure:
    """An image with an attention (or saliency) map laid over it as a translucent heatmap.

    Args:
        image: ``(H, W)`` grayscale or ``(H, W, 3)`` RGB.
        attention_map: ``(h, w)``, any non-negative scale; bilinearly resized to ``(H, W)``.
        opacity: of the heatmap, in (0, 1].

    Returns:
        a figure with an ``Image`` trace and a ``Heatmap`` trace of shape ``(H, W)``.
    """
    from PIL import Image

    if not 0 < opacity <= 1:
        raise ValueError(f"opacity: expected a value in (0, 1], got {opacity}")
    rgb = _to_uint8_rgb(image, "image")
    att = np.asarray(attention_map, dtype=np.float32)
    if att.ndim != 2:
        raise ValueError(f"attention_map: expected a 2-D (h, w) map, got shape {att.shape}")
    h, w = rgb.shape[:2]
    resized = np.asarray(Image.fromarray(att, mode="F").resize((w, h), Image.BILINEAR), dtype=float)
    fig = go.Figure([
        go.Image(z=rgb, name="image"),
        go.Heatmap(z=resized, name="attention", colorscale="Inferno", opacity=opacity, colorbar={"title": "Attention"}),
    ])
    fig.update_layout(title=title, template=TEMPLATE, xaxis_title="x (pixels)", yaxis_title="y (pixels)")
    fig.update_yaxes(autorange="reversed", scaleanchor="x")
    return fig


def training_curves(log_df: pd.DataFrame) -> go.Figure:
    """Losses and metrics per epoch from fastai's ``CSVLogger`` (columns epoch, train_loss, valid_loss, metrics...).

    Returns:
        two panels: left ``train_loss`` and ``valid_loss``; right one line per numeric metric column
        (``time`` and non-numeric columns are skipped).
    """
    _require(log_df, ("epoch", "train_loss"), "log_df")
    numeric = log_df.apply(pd.to_numeric, errors="coerce")  # fastai writes '#na#' for absent values
    losses = [c for c in ("train_loss", "valid_loss") if c in log_df.columns]
    metrics = [c for c in log_df.columns if c not in (*losses, "epoch", "time") and numeric[c].notna().any()]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Validation metrics"))
    for c in losses:
        fig.add_trace(go.Scatter(x=numeric["epoch"], y=numeric[c], mode="lines+markers", name=c), row=1, col=1)
    for c in metrics:
        fig.add_trace(go.Scatter(x=numeric["epoch"], y=numeric[c], mode="lines+markers", name=c), row=1, col=2)
    fig.update_layout(title="Training curves", template=TEMPLATE, legend_title_text="Series")
    fig.update_xaxes(title_text="Epoch")
    fig.update_yaxes(title_text="Loss", row=1, col=1)
    fig.update_yaxes(title_text="Metric", row=1, col=2)
    return fig


def example_images(images: Mapping[str, np.ndarray], *, cols: int = 4, title: str = "Example images") -> go.Figure:
    """A grid of images, each titled by its key (e.g. ``"P001 mammography (malignant)"``).

    Args:
        images: title -> ``(H, W)`` or ``(H, W, 3)`` array.
        cols: images per row.

    Returns:
        one ``Image`` trace per image, in the mapping's order.
    """
    if not isinstance(images, Mapping) or not images:
        raise ValueError("images: expected a non-empty mapping of title -> image array")
    if not isinstance(cols, int) or cols < 1:
        raise ValueError(f"cols: expected a positive integer, got {cols!r}")
    n = len(images)
    ncols = min(cols, n)
    nrows = -(-n // ncols)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=list(images))
    for k, (name, img) in enumerate(images.items()):
        fig.add_trace(go.Image(z=_to_uint8_rgb(img, f"images[{name!r}]"), name=name), row=k // ncols + 1, col=k % ncols + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(title=title, template=TEMPLATE, height=260 * nrows + 80)
    return fig
