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
    try:
        params = load_params(profile)
    except ParamsError:
        params = {}
    for key, value in params.items():
        rows.append(("parameters", key, json.dumps(value) if not isinstance(value, str) else value))

    rows.extend(("software", dist, v or "not installed") for dist, v in package_versions().items())
    device = device_info()
    rows.append(("software", "torch CUDA build", device["torch_cuda_build"] or "none (CPU build)"))
    rows.append(("device", "platform", device["platform"]))
    rows.append(("device", "cpu", f"{device['cpu']} ({device['cpu_count']} logical cores)"))
    rows.append(("device", "cuda device", device["cuda_device"] or "none (CPU run)"))

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
        rows.append(("run", "run.json", f"not found in {results_dir}"))
    return pd.DataFrame(rows, columns=["section", "item", "value"])


class _Table:
    """HTML for the book (myst-nb keeps ``text/html``) and plain text for terminals."""

    def __init__(self, html_text: str, plain: str):
        self._html, self._plain = html_text, plain

    def _repr_html_(self) -> str:
        return self._html

    def __repr__(self) -> str:
        return self._plain


def show_table(df: pd.DataFrame, caption: str, *, precision: int = 3, index: bool = False):
    """A tidy table with a caption, as HTML (pandas Styler), floats rounded to ``precision`` digits.

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
    styler = df.style.format(precision=precision, na_rep="—", escape="html").set_caption(html.escape(caption))
    styler = styler.set_table_attributes('class="mmlib-table"')
    if not index:
        styler = styler.hide(axis="index")
    return _Table(styler.to_html(), f"{caption}\n{df.to_string(index=index)}")
