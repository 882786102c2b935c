"""Helpers the book's notebooks call, so that the notebooks stay thin.

Each chapter starts with::

    from mmlib.book import setup_notebook
    setup_notebook(seed=0)

and writes every number that its prose quotes with :func:`glue`, which the markdown pastes with
``{glue:text}`auc_mean:.3f```, so no number is ever retyped.
"""

from __future__ import annotations

import html
import json
import numbers
import re
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from . import paths
from .params import ParamsError
from .params import load_params as _load_params
from .provenance import device_info, git_state, package_versions

#: Name of the plotly renderer :func:`setup_notebook` registers and selects.
PLOTLY_RENDERER = "mmlib"


def _offline_renderer():
    """A plotly renderer whose HTML needs no CDN: plotly.js and MathJax come from the page itself.

    The bundle carries two mime types: ``text/html`` (a div + ``Plotly.newPlot``, what myst-nb puts in
    the book, where the site's ``_static/plotly.min.js`` defines ``Plotly``) and plotly's own JSON mime
    type (what JupyterLab shows interactively).
    """
    import plotly.io as pio
    from plotly.io._base_renderers import MimetypeRenderer, PlotlyRenderer

    class OfflineHtmlRenderer(MimetypeRenderer):
        def __init__(self, config: dict | None = None):
            self.config = dict(config or {})
            self.json = PlotlyRenderer(config=self.config)

        def to_mimebundle(self, fig_dict):
            bundle = self.json.to_mimebundle(dict(fig_dict))
            bundle["text/html"] = pio.to_html(
                fig_dict,
                config=self.config,
                include_plotlyjs=False,
                include_mathjax=False,
                full_html=False,
                default_width="100%",
                default_height=480,
                validate=False,
            )
            return bundle

    return OfflineHtmlRenderer(config={"displaylogo": False, "responsive": True})


def setup_notebook(seed: int = 0) -> None:
    """The one call at the top of each chapter: plotly renderer, display options and seeds.

    Args:
        seed: seed for Python, NumPy and torch (CPU and CUDA); cuDNN is made deterministic.
    """
    if not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    import plotly.io as pio

    pio.renderers[PLOTLY_RENDERER] = _offline_renderer()
    pio.renderers.default = PLOTLY_RENDERER
    pio.templates.default = "plotly_white"

    # tqdm.auto (imported by timm's hub code) warns at import when ipywidgets is absent; the book shows no
    # progress bars, so the warning is noise on the page (stderr). Other warnings stay visible to the build.
    warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")
    # fastai (imported by mmlib.learner) decorates layers with torch.jit.script, which torch 2.14 deprecates:
    # a note to fastai's authors, not to a reader of the book.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

    pd.set_option("display.precision", 3)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.max_rows", 60)
    pd.set_option("display.width", 120)

    # What fastai's set_seed(seed, reproducible=True) does, without importing fastai (~10 s) in
    # chapters that only read results.
    import random

    import torch

    random.seed(int(seed))
    np.random.seed(int(seed))
    torch.manual_seed(int(seed))  # also seeds every CUDA device
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _plain(value):
    """numpy scalars -> Python numbers, so the glued ``text/plain`` is a literal myst-nb can format."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def glue(name: str, value, *, display: bool = False):
    """Store ``value`` under ``name`` for the markdown to paste (``{glue:text}`name:.3f```).

    Numbers are stored at full precision; the format spec in the markdown rounds them for display.

    Args:
        name: the key, unique within the book.
        value: a number, string, DataFrame or figure.
        display: also show the value in the notebook's output.

    Returns:
        None, so that a ``glue(...)`` ending a cell does not also print the value.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name: expected an identifier-like glue key, got {name!r}")
    from myst_nb import glue as nb_glue

    value = _plain(value)
    if isinstance(value, float) and not np.isfinite(value):
        raise ValueError(f"glue {name!r}: value is {value}; a number quoted in the text must be finite")
    nb_glue(name, value, display=display)


def load_params(profile: str) -> dict:
    """The parameters of one run profile (``params/<profile>.yaml``), as papermill would inject them.

    Adds ``profile`` and ``results_dir``, so a notebook opened by hand sees the same values as one the
    build executed.
    """
    return {**_load_params(profile), "results_dir": str(paths.results_dir(profile).resolve())}


def _shown_path(path: Path | str) -> str:
    """A path as a published page may show it: relative to the repository, never the building machine's."""
    path = Path(path).resolve()
    try:
        return path.relative_to(paths.ROOT).as_posix()
    except ValueError:
        return f"<outside the repository>/{path.name}"


def colophon(results_dir: Path | str, profile: str | None = None) -> pd.DataFrame:
    """What made this run: commit, parameters, package versions, device and wall time.

    Args:
        results_dir: the run's output folder; ``run.json`` there (written by the experiment engine)
            adds its scalar entries (e.g. ``wall_time_s``) when present.
        profile: the run profile, whose parameters are listed; default: the folder's name when a
            profile of that name exists.

    Returns:
        a DataFrame with columns ``section``, ``item``, ``value`` (all text).
    """
    results_dir = Path(results_dir)
    rows: list[tuple[str, str, str]] = []
    git = git_state()
    rows.append(("source", "git commit", git["commit"] or "unknown (not a git checkout)"))
    rows.append(("source", "uncommitted changes", "unknown" if git["dirty"] is None else ("yes" if git["dirty"] else "no")))
    profile = profile or results_dir.name
    rows.append(("source", "profile", profile))
    rows.append(("source", "build date", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")))

    try:
        params = load_params(profile)
    except ParamsError:
        params = {}
    params.pop("results_dir", None)  # the building machine's path; the run section names the folder
    for key, value in params.items():
        rows.append(("parameters", key, json.dumps(value) if not isinstance(value, str) else value))

    rows.extend(("software", dist, v or "not installed") for dist, v in package_versions().items())
    device = device_info()
    rows.append(("software", "torch CUDA build", device["torch_cuda_build"] or "none (CPU build)"))
    rows.append(("device", "platform", device["platform"]))
    rows.append(("device", "cpu", f"{device['cpu']} ({device['cpu_count']} logical cores)"))
    rows.append(("device", "cuda device", device["cuda_device"] or "none (CPU run)"))

    rows.append(("run", "results folder", _shown_path(results_dir)))
    run_json = results_dir / "run.json"
    if run_json.is_file():
        try:
            run = json.loads(run_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{run_json}: not valid JSON ({exc})") from exc
        if not isinstance(run, dict):
            raise ValueError(f"{run_json}: expected a JSON object")
        for key, value in run.items():
            if isinstance(value, (str, int, float, bool)) or value is None:
                shown = f"{value:.1f}" if key.endswith("_s") and isinstance(value, float) else str(value)
                rows.append(("run", key, shown))
    else:
        rows.append(("run", "run.json", f"not found in {_shown_path(results_dir)}"))
    return pd.DataFrame(rows, columns=["section", "item", "value"])


class _Table:
    """HTML for the book (myst-nb keeps ``text/html``) and plain text for terminals."""

    def __init__(self, html_text: str, plain: str):
        self._html, self._plain = html_text, plain

    def _repr_html_(self) -> str:
        return self._html

    def __repr__(self) -> str:
        return self._plain


#: A cell that reads as a number: a signed decimal, "< 0.001", an estimate with its interval, or n/a.
_NUMBER = re.compile(r"^\s*(?:[<>≤≥]\s*)?[−+-]?\d[\d,]*(?:\.\d+)?(?:\s*\(.*\))?(?:\s*±.*)?\s*$|^\s*(?:n/a|—)\s*$")


def _reads_as_number(column: pd.Series) -> bool:
    """Whether a column holds numbers, or text that reads as one (formatted estimates, p-values)."""
    if pd.api.types.is_bool_dtype(column):
        return False
    if pd.api.types.is_numeric_dtype(column):
        return True
    values = column.dropna().astype(str)
    return len(values) > 0 and bool(values.map(lambda v: bool(_NUMBER.match(v))).all())


def _digits(column: pd.Series, precision: int) -> int:
    """The fewest decimals, up to ``precision``, that show a float column as it was rounded (counts: none)."""
    values = column.dropna().to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    for digits in range(precision):
        if np.allclose(values, np.round(values, digits), rtol=0, atol=1e-9):
            return digits
    return precision


def show_table(df: pd.DataFrame, caption: str, *, precision: int = 3, index: bool = False):
    """A tidy table under its caption, as HTML: floats rounded to ``precision`` digits (fewer when a column
    was rounded to fewer, none for counts), numbers right-aligned.

    The caption sits above the table, outside the box the table scrolls in, so a table wider than a phone
    scrolls sideways while its caption stays in view (``book/_static/mmlib.css`` styles both).

    Args:
        df: the table; its column names are the headers.
        caption: one sentence saying what the table shows.
        precision: digits after the decimal point for float columns.
        index: show the DataFrame's index.

    Returns:
        an object that displays as the captioned HTML table (the notebook cell's output).
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"df: expected a pandas DataFrame, got {type(df).__name__}")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError("caption: expected a non-empty caption")
    styler = df.style.format(precision=precision, thousands=",", na_rep="—", escape="html")
    for i, column in enumerate(df.columns):
        if pd.api.types.is_float_dtype(df.iloc[:, i]):
            digits = _digits(df.iloc[:, i], precision)
            styler = styler.format(lambda v, d=digits: "—" if pd.isna(v) else f"{v:,.{d}f}", subset=[column])
    numbers = [i for i, column in enumerate(df.columns) if _reads_as_number(df.iloc[:, i])]
    styler = styler.set_table_styles(
        [{"selector": f"td.col{i}, th.col_heading.col{i}", "props": "text-align: right; white-space: nowrap;"}
         for i in numbers])
    styler = styler.set_table_attributes('class="mmlib-table"')
    if not index:
        styler = styler.hide(axis="index")
    table = styler.to_html()
    figure = (f'<figure class="mmlib-table"><figcaption>{html.escape(caption)}</figcaption>'
              f'<div class="mmlib-scroll">{table}</div></figure>')
    return _Table(figure, f"{caption}\n{df.to_string(index=index)}")


class _Figure:
    """A plotly figure with its caption: offline HTML for the book, plotly's JSON for JupyterLab."""

    def __init__(self, fig, caption: str):
        self.fig, self.caption = fig, caption

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        bundle = _offline_renderer().to_mimebundle(self.fig.to_plotly_json())
        bundle["text/html"] = (f'<figure class="mmlib-figure">{bundle["text/html"]}'
                               f'<figcaption>{html.escape(self.caption)}</figcaption></figure>')
        bundle["text/plain"] = self.caption
        return bundle

    def __repr__(self) -> str:
        return self.caption


def show_figure(fig, caption: str):
    """A plotly figure under a caption; the caption replaces the figure's own title.

    Args:
        fig: a ``plotly.graph_objects.Figure`` (from :mod:`mmlib.figures`).
        caption: one or two sentences saying what the figure shows.

    Returns:
        an object that displays as the captioned figure (the notebook cell's output).
    """
    import plotly.graph_objects as go

    if not isinstance(fig, go.Figure):
        raise ValueError(f"fig: expected a plotly Figure, got {type(fig).__name__}")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError("caption: expected a non-empty caption")
    shown = go.Figure(fig)
    # the legend takes the title's place above the plot, so on a phone it wraps instead of squeezing the axes
    shown.update_layout(title=None, margin={"t": 30}, legend={"orientation": "h", "x": 0, "xanchor": "left",
                                                              "y": 1.02, "yanchor": "bottom"})
    return _Figure(shown, caption)
