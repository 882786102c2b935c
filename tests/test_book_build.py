"""The book's build machinery: profiles, toc order, papermill execution, failure handling, offline HTML."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from mmlib import book, build
from mmlib.paths import ROOT

import pagecheck


def _notebook(path, *cells, params="x = 0"):
    """A tiny notebook: a title, a ``parameters`` cell, then ``cells`` (markdown when starting with '#' or '{')."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    body = [nbformat.v4.new_markdown_cell(c) if c.lstrip().startswith(("#", "Value")) else nbformat.v4.new_code_cell(c)
            for c in cells]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), p, *body]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def _tiny_repo(tmp_path, chapters: dict[str, list[str]], profile="tiny", params="epochs: 3\n"):
    """A repository in tmp_path: the real _config.yml and references, a toc of ``chapters`` (first = root)."""
    root = tmp_path / "repo"
    (root / "book").mkdir(parents=True)
    (root / "params").mkdir()
    (root / "params" / f"{profile}.yaml").write_text(params)
    shutil.copy(ROOT / "_config.yml", root / "_config.yml")
    shutil.copy(ROOT / "book" / "references.bib", root / "book" / "references.bib")
    shutil.copytree(ROOT / "book" / "_static", root / "book" / "_static")
    names = list(chapters)
    toc = {"format": "jb-book", "root": f"book/{names[0]}",
           "parts": [{"caption": "Chapters", "chapters": [{"file": f"book/{n}"} for n in names[1:]]}]}
    (root / "_toc.yml").write_text(json.dumps(toc))  # JSON is YAML
    for name, cells in chapters.items():
        _notebook(root / "book" / f"{name}.ipynb", *cells, params='profile = "x"\nresults_dir = "."\nn = 0')
    return root





def test_repository_book_skeleton_matches_the_toc():
    order = build.execution_order(ROOT)
    assert order[-1].name == "index.ipynb"
    assert [p.stem for p in order[:3]] == ["01_data", "02_cuf_mt", "03_amw_cnn"]
    assert len(order) == 14
    for nb_path in order:
        nb = nbformat.read(str(nb_path), as_version=4)
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), nb_path


def test_read_profile_validates_and_lists_profiles(tmp_path):
    from mmlib.params import ParamsError

    (tmp_path / "smoke.yaml").write_text("n_folds: 2\nmodels: [amw_cnn, cnn_lstm]\n")
    (tmp_path / "bad.yaml").write_text("profile: x\n")
    (tmp_path / "nested.yaml").write_text("training:\n  epochs: 3\n")
    p = build.read_profile("smoke", tmp_path)
    assert (p["n_folds"], p["models"], p["profile"]) == (2, ["amw_cnn", "cnn_lstm"], "smoke")
    assert p["epochs"] == 30  # the default, from mmlib.params
    with pytest.raises(ParamsError, match=r"no run profile 'gpu'.*profiles: bad, nested, smoke"):
        build.read_profile("gpu", tmp_path)
    with pytest.raises(ParamsError, match="set by the build"):
        build.read_profile("bad", tmp_path)
    with pytest.raises(ParamsError, match="flat"):
        build.read_profile("nested", tmp_path)


def test_execution_order_follows_toc_with_root_last_and_only_selects(tmp_path):
    root = _tiny_repo(tmp_path, {"index": [], "02_b": [], "01_a": []})
    order = build.execution_order(root)
    assert [p.stem for p in order] == ["02_b", "01_a", "index"]
    assert [p.stem for p in build.select_chapters(order, ["01"])] == ["01_a"]
    assert [p.stem for p in build.select_chapters(order, ["01_a", "02_b.ipynb"])] == ["02_b", "01_a"]
    with pytest.raises(ValueError, match="--only '05'"):
        build.select_chapters(order, ["05"])
    (root / "book" / "01_a.ipynb").unlink()
    with pytest.raises(FileNotFoundError, match="01_a"):
        build.execution_order(root)


def test_execute_notebook_injects_parameters(tmp_path):
    src = _notebook(tmp_path / "p.ipynb", "print(f'{profile}:{n * 2}')", params='profile = "default"\nn = 1')
    dst = build.execute_notebook(src, tmp_path / "out" / "p.ipynb", {"profile": "tiny", "n": 21}, cwd=tmp_path)
    nb = nbformat.read(str(dst), as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and 'profile = "tiny"' in injected[0].source
    assert nb.cells[-1].outputs[0]["text"] == "tiny:42\n"
    # The page shows neither the overridden defaults nor the injected values (the colophon lists them).
    assert "remove-cell" in nb.cells[1].metadata["tags"] and "remove-cell" in injected[0].metadata["tags"]
    # The kernel runs on this interpreter.
    spec = json.loads((build.ensure_kernel() and _kernel_json()).read_text())
    assert spec["argv"][0] == __import__("sys").executable


def _kernel_json():
    from jupyter_client.kernelspec import KernelSpecManager

    return __import__("pathlib").Path(KernelSpecManager().get_kernel_spec(build.KERNEL_NAME).resource_dir) / "kernel.json"


def test_failing_notebook_stops_with_cell_and_error(tmp_path):
    src = _notebook(tmp_path / "bad.ipynb", "a = 1", "raise ValueError('cohort file missing')", "b = 2")
    with pytest.raises(build.NotebookExecutionError) as info:
        build.execute_notebook(src, tmp_path / "out" / "bad.ipynb", {}, cwd=tmp_path)
    err = info.value
    assert err.notebook.name == "bad.ipynb" and err.cell_index == 3
    assert err.cell_source == "raise ValueError('cohort file missing')"
    assert "ValueError: cohort file missing" in err.error and "\x1b[" not in err.error
    assert "bad.ipynb" in str(err) and "raise ValueError('cohort file missing')" in str(err)


def test_build_with_a_failing_chapter_renders_nothing(tmp_path, capsys):
    root = _tiny_repo(tmp_path, {"index": ["print('front')"], "01_ok": ["print('ok')"],
                                 "02_fails": ["1 / 0"], "03_after": ["print('never')"]})
    logs = []
    with pytest.raises(build.NotebookExecutionError, match="ZeroDivisionError"):
        build.build("tiny", root=root, results_root=tmp_path / "results", log=logs.append, study=False, jobs=1)
    source = root / "_build" / "tiny" / "source" / "book"
    assert (source / "01_ok.ipynb").is_file()
    assert not (source / "03_after.ipynb").exists() and not (source / "index.ipynb").exists()
    assert not (root / "_build" / "tiny" / "_build").exists()  # never rendered
    assert any("01_ok" in line and " s" in line for line in logs)


def test_chapters_run_side_by_side_in_the_books_order_and_the_first_failure_is_reported(tmp_path):
    """Two kernels at once: each chapter sleeps long enough that sequential execution would take twice as long;
    the executed copies come back in the book's order, and of two failures the earlier chapter's is raised."""
    import time

    root = _tiny_repo(tmp_path, {"index": ["print('front')"], **{f"0{i}_c": ["import time; time.sleep(2)"]
                                                                 for i in range(1, 5)}})
    notebooks = build.execution_order(root)
    source = root / "_build" / "tiny" / "source"
    kernel, logs, timings = build.ensure_kernel(), [], {}
    t0 = time.perf_counter()
    done = build.execute_chapters(notebooks, root, source, {"profile": "tiny"}, kernel=kernel, jobs=2,
                                  log=logs.append, timings=timings)
    wall = time.perf_counter() - t0
    assert [p.stem for p in done] == [nb.stem for nb in notebooks] and all(p.is_file() for p in done)
    assert set(timings) == {nb.stem for nb in notebooks}
    assert wall < sum(timings.values()) - 3  # they overlapped: four 2-second sleeps, two at a time
    _notebook(root / "book" / "02_c.ipynb", "raise KeyError('second')", params='profile = "x"')
    _notebook(root / "book" / "03_c.ipynb", "raise ValueError('third')", params='profile = "x"')
    with pytest.raises(build.NotebookExecutionError, match="KeyError"):
        build.execute_chapters(notebooks, root, source, {"profile": "tiny"}, kernel=kernel, jobs=2, log=logs.append)


def test_only_reexecutes_chapters_from_existing_results_and_says_when_there_are_none(tmp_path, monkeypatch):
    root = _tiny_repo(tmp_path, {"index": ["print('front')"], "01_a": ["print('a')"], "02_b": ["print('b')"]})
    with pytest.raises(FileNotFoundError, match=r"--only 02: no results of profile 'tiny'.*mmlib run --profile tiny"):
        build.build("tiny", root=root, results_root=tmp_path / "results", only=["02"], log=lambda s: None)
    ran = []
    monkeypatch.setattr("mmlib.experiment.run_experiment", lambda params, fresh=False: ran.append((params, fresh)))
    build.build("tiny", root=root, results_root=tmp_path / "results", render_html=False, log=lambda s: None,
                fresh=True)
    assert len(ran) == 1 and ran[0][1] is True
    assert ran[0][0]["epochs"] == 3 and ran[0][0]["results_dir"] == str((tmp_path / "results" / "tiny").resolve())
    (tmp_path / "results" / "tiny" / "run.json").write_text(json.dumps({"reuse_key": {"source": "older"}}))
    logs = []
    result = build.build("tiny", root=root, results_root=tmp_path / "results", only=["02"], render_html=False,
                         log=logs.append)
    assert [p.stem for p in result.executed] == ["02_b"] and len(ran) == 1  # the study did not run again
    assert any("made by other mmlib source (older" in line for line in logs)


def test_cli_reports_a_missing_profile(capsys):
    assert build.main(["--profile", "no_such_profile_xyz"]) == 1
    err = capsys.readouterr().err
    assert "no_such_profile_xyz" in err and "profiles:" in err


def test_glue_stores_numpy_numbers_as_plain_literals(monkeypatch):
    import numpy as np

    stored = {}
    monkeypatch.setattr("myst_nb.glue", lambda name, value, display: stored.update({name: (value, display)}))
    assert book.glue("auc_mean", np.float64(0.912345)) is None
    value, display = stored["auc_mean"]
    assert type(value) is float and repr(value) == "0.912345" and display is False
    book.glue("n_patients", np.int64(120), display=True)
    assert stored["n_patients"] == (120, True) and type(stored["n_patients"][0]) is int
    with pytest.raises(ValueError, match="finite"):
        book.glue("bad", float("nan"))
    with pytest.raises(ValueError, match="name"):
        book.glue("not a key", 1)


def test_colophon_lists_commit_versions_and_run_json(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"wall_time_s": 12.345, "device": "cpu", "folds": [1, 2],
                                                   "executor": "ray", "workers": 8, "gpu_peak_memory_mb": 2048.5}))
    table = book.colophon(tmp_path)
    assert list(table.columns) == ["section", "item", "value"]
    get = dict(zip(table["item"], table["value"]))
    import platform

    import torch

    assert get["python"] == platform.python_version() and get["torch"] == torch.__version__
    assert get["wall_time_s"] == "12.3" and get["device"] == "cpu" and "folds" not in get
    assert (get["executor"], get["workers"], get["gpu_peak_memory_mb"]) == ("ray", "8", "2048.5")
    assert len(get["git commit"]) == 40 or get["git commit"].startswith("unknown")
    assert get["profile"] == tmp_path.name and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", get["build date"])
    # no absolute path of the building machine: a folder outside the repository is named, not located
    assert get["results folder"] == f"<outside the repository>/{tmp_path.name}"
    assert not any(str(tmp_path) in v for v in table["value"])
    assert set(table["section"]) == {"source", "software", "device", "run"}


def test_show_table_html_has_caption_and_rounded_numbers():
    import pandas as pd

    df = pd.DataFrame({"model": ["a<b", "c"], "auc": [0.912345, 0.5], "AUC (95% CI)": ["0.912 (0.85–0.96)", "n/a"],
                       "p": ["< 0.001", "0.020"], "parameters": [3371008, 12]})
    out = book.show_table(df, "AUC per model & fold")
    html = out._repr_html_()
    # the caption sits outside the box the table scrolls in, so it stays in view on a phone
    assert re.search(r'<figure class="mmlib-table"><figcaption>AUC per model &amp; fold</figcaption>'
                     r'<div class="mmlib-scroll">.*<table [^>]*class="mmlib-table"', html, re.S)
    assert ">0.912</td>" in html and "0.9123" not in html and ">a&lt;b</td>" in html and ">3,371,008</td>" in html
    # numbers, formatted estimates and p-values are right-aligned; text is not
    right = set(re.findall(r"td\.col(\d) \{\s*text-align: right", html))
    assert right == {"1", "2", "3", "4"}
    with pytest.raises(ValueError, match="caption"):
        book.show_table(pd.DataFrame({"a": [1]}), "")


def test_show_figure_puts_the_caption_under_an_offline_figure():
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1]), layout={"title": "ROC curves (split cv)"})
    bundle = book.show_figure(fig, "ROC curves of <the> models.")._repr_mimebundle_()
    html = bundle["text/html"]
    assert html.startswith('<figure class="mmlib-figure">') and html.endswith(
        "<figcaption>ROC curves of &lt;the&gt; models.</figcaption></figure>")
    assert "plotly-graph-div" in html and "cdn" not in html.lower()
    # the caption replaces the title; the figure passed in is left as it was
    assert "ROC curves (split cv)" not in html and fig.layout.title.text == "ROC curves (split cv)"
    assert "application/vnd.plotly.v1+json" in bundle
    with pytest.raises(ValueError, match="caption"):
        book.show_figure(fig, " ")
    with pytest.raises(ValueError, match="plotly Figure"):
        book.show_figure({"data": []}, "caption")


@pytest.mark.slow
def test_tiny_book_builds_and_renders_offline_in_chromium(tmp_path):
    chromium = pagecheck.find_chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    figure_cell = (
        "import numpy as np, pandas as pd\n"
        "from mmlib.figures import roc_curves\n"
        "from mmlib.book import glue, show_figure\n"
        "rng = np.random.default_rng(0)\n"
        "y = rng.integers(0, 2, 40)\n"
        "df = pd.DataFrame({'model': 'm', 'ablation': 'none', 'scenario': 'all', 'split': 'cv',\n"
        "                   'prob_malignant': np.clip(y * 0.5 + rng.uniform(0, 0.6, 40), 0, 1), 'label': y})\n"
        "fig = roc_curves(df)\n"
        "glue('auc_tiny', fig.data[0].meta['auc'])\n"
        "show_figure(fig, 'ROC curve of a tiny book')"
    )
    root = _tiny_repo(tmp_path, {
        "index": ["import time; print('nonce', time.time_ns())"],
        "01_fig": ["from mmlib.book import setup_notebook\nsetup_notebook(seed=0)", figure_cell,
                   "Value: {glue:text}`auc_tiny:.3f` for profile {glue:text}`profile_name`.",
                   "glue('profile_name', profile)"],
    })
    result = build.build("tiny", root=root, results_root=tmp_path / "results", strict=True, log=lambda s: None,
                         study=False)
    assert result.index_html.is_file()
    html_dir = result.index_html.parent
    executed = nbformat.read(str(result.source_dir / "book" / "01_fig.ipynb"), as_version=4)
    auc = next(o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "auc_tiny" in json.dumps(o.get("metadata", {})))
    auc_value = float(next(v for k, v in auc["data"].items() if k.endswith("text/plain")))

    # Jupyter Book did not execute again: the page shows papermill's nonce.
    index_nb = nbformat.read(str(result.source_dir / "book" / "index.ipynb"), as_version=4)
    nonce = index_nb.cells[-1].outputs[0]["text"].split()[1]
    assert nonce in (html_dir / "book" / "index.html").read_text()
    assert (html_dir / "_static" / build.PLOTLY_JS).stat().st_size > 1_000_000
    chapter = (html_dir / "book" / "01_fig.html").read_text()
    sources = re.findall(r'<script[^>]*\ssrc="([^"]+)"', chapter)
    assert "../_static/plotly.min.js" in sources
    assert not [s for s in sources if "://" in s or "mathjax" in s.lower()], sources
    assert "_static/plotly.min.js" not in (html_dir / "book" / "index.html").read_text()

    with sync_api.sync_playwright() as p:
        browser = pagecheck.launch(p, chromium)
        reports = [pagecheck.check_page(browser, html_dir, page, width=1280, screenshot_dir=tmp_path / "shots")
                   for page in ("book/index.html", "book/01_fig.html")]
        browser.close()
    for r in reports:
        assert r.ok, (r.page, r.errors, r.layout, r.uncaptioned, r.figures, r.figures_drawn)
    fig_page = reports[1]
    assert fig_page.figures == 1 and fig_page.figures_drawn == 1
    # the build injects the profile's name (the chapters read its other parameters themselves)
    assert f"Value: {auc_value:.3f} for profile tiny." in fig_page.text
    for r in reports:
        with Image.open(r.screenshot) as shot:
            assert shot.format == "PNG" and shot.size[0] == 1280
    with Image.open(reports[1].screenshot) as shot:
        assert shot.size[1] > 900  # the whole page, figure included, not just the first screen


@pytest.mark.slow
def test_render_fails_by_exit_status_and_names_the_warning(tmp_path):
    """A Sphinx warning fails a strict render (sphinx-build's exit status, not a search of its output); the
    same book renders when warnings are allowed."""
    src = tmp_path / "src"
    (src / "book").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", src / "_config.yml")
    shutil.copy(ROOT / "book" / "references.bib", src / "book" / "references.bib")
    shutil.copytree(ROOT / "book" / "_static", src / "book" / "_static")
    (src / "_toc.yml").write_text("format: jb-book\nroot: book/index\n")
    (src / "book" / "index.md").write_text("# Title\n\nAs shown by {cite:p}`no_such_key`.\n")
    with pytest.raises(build.RenderError, match=r"(?s)sphinx-build .*exit 1.*no_such_key"):
        build.render(src, tmp_path / "strict", strict=True)
    stale = tmp_path / "lenient" / "_build" / "html" / "book" / "removed_chapter.html"
    stale.parent.mkdir(parents=True)
    stale.write_text("an earlier build's page")
    index = build.render(src, tmp_path / "lenient", strict=False)
    assert index == tmp_path / "lenient" / "_build" / "html" / "index.html" and index.is_file()
    assert not stale.exists()  # the site holds this build's files only
    assert not (index.parent / "_sources").exists()  # executed sources (with local paths) are not published
    (src / "_toc.yml").write_text("format: jb-book\nroot: book/absent\n")
    with pytest.raises(build.RenderError, match="exit"):
        build.render(src, tmp_path / "broken", strict=False)


def test_a_strict_build_stops_at_a_notebook_that_wrote_to_stderr(tmp_path):
    root = _tiny_repo(tmp_path, {"index": ["print('front')"],
                                 "01_noisy": ["import sys\nprint('RuntimeWarning: careful', file=sys.stderr)"]})
    with pytest.raises(build.StrayOutputError, match=r"(?s)01_noisy.ipynb.*cell 3: stderr: RuntimeWarning: careful"):
        build.build("tiny", root=root, results_root=tmp_path / "results", strict=True, render_html=False,
                    log=lambda s: None)
    logs = []
    build.build("tiny", root=root, results_root=tmp_path / "results", render_html=False, log=logs.append)
    assert any("WARNING" in line and "careful" in line for line in logs)
    assert build.stray_outputs(root / "_build" / "tiny" / "source" / "book" / "index.ipynb") == []


def test_every_table_and_figure_a_chapter_makes_is_shown():
    """show_table / show_figure only display as a cell's last expression (or inside display()); one that is
    followed by another statement draws nothing on the page."""
    import ast

    hidden = []
    for nb_path in build.execution_order(ROOT):
        nb = nbformat.read(str(nb_path), as_version=4)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            tree = ast.parse(cell.source)
            shown = set()
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                shown.add(id(tree.body[-1].value))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "display":
                    shown.update(id(a) for a in node.args)
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("show_table", "show_figure")
                        and id(node) not in shown):
                    hidden.append(f"{nb_path.name} cell {index}: {ast.get_source_segment(cell.source, node)[:60]}")
    assert not hidden, hidden


def test_companion_studies_run_before_the_chapters_and_absent_data_is_skipped(tmp_path, monkeypatch):
    import mmlib.experiment

    params_dir = tmp_path / "params"
    params_dir.mkdir()
    (params_dir / "real.yaml").write_text("n_folds: 3\n")
    ran = []

    def fake_run(params):
        ran.append((params["profile"], params["results_dir"], params["n_folds"]))
        if params["profile"] == "absent":
            raise FileNotFoundError("the absent collection is not at ../shared/data/absent\n\nhow to download")

    (params_dir / "absent.yaml").write_text("n_folds: 2\n")
    monkeypatch.setattr(mmlib.experiment, "run_experiment", fake_run)
    logs = []
    done = build.run_companion_studies(["real", "absent"], tmp_path / "results", params_dir=params_dir, log=logs.append)
    assert ran == [("real", str(tmp_path / "results" / "real"), 3), ("absent", str(tmp_path / "results" / "absent"), 2)]
    assert done["real"] == "ran" and done["absent"].startswith("skipped: the absent collection")
    assert any("companion study 'absent': skipped" in line for line in logs)
    p = build.read_profile("paper")
    assert p["companion_studies"] == ["breast-lesions-usg", "cdd-cesm", "external"]
    from mmlib.params import result_keys

    assert "companion_studies" not in result_keys()  # the synthetic study's finished work stays reusable


def test_external_companion_evaluates_the_breast_study_model(tmp_path, monkeypatch):
    import mmlib.external
    import mmlib.importers

    data = tmp_path / "data"
    for name in ("breast-lesions-usg", "bus-bra"):
        (data / name).mkdir(parents=True)
    monkeypatch.setattr(build.paths, "SHARED_DATA", data)
    monkeypatch.setattr(build.paths, "COHORTS", tmp_path / "cohorts")
    monkeypatch.setattr(mmlib.importers, "import_cohort", lambda kind, src, out: Path(out))
    calls, timed = [], []
    monkeypatch.setattr(mmlib.external, "external_study", lambda *a, **k: calls.append(k) or a[2])
    monkeypatch.setattr(mmlib.external, "time_predict", lambda model, manifest, out, n: timed.append((model, n)) or 9.0)
    monkeypatch.setattr(mmlib.external, "record_predict_time", lambda out, s, source: timed.append((s, source)))
    results = tmp_path / "results"
    build._external_study(results)  # the BrEaST study has not saved its model: every source is trained
    assert calls[-1]["models"] is None and calls[-1]["retrain"] is False and not timed  # no model saved at all
    model = results / "breast-lesions-usg" / "models" / "amw_cnn"
    model.mkdir(parents=True)
    (model / "model.json").write_text("{}")
    build._external_study(results)
    assert calls[-1]["models"] == {"predicted": model}
    assert timed == [(model, 100), (9.0, "predicted")]  # mmlib predict timed with the images-only model
    # Once the study has finished and saved the paper's four models, they are evaluated side by side too.
    side = []
    monkeypatch.setattr(mmlib.external, "external_models", lambda study, manifest, out: side.append((study, out)))
    build._external_study(results)
    assert side == []  # no run.json yet, only the AMW-CNN saved
    (results / "breast-lesions-usg" / "run.json").write_text("{}")
    for m in mmlib.external.STUDY_MODELS:
        (results / "breast-lesions-usg" / "models" / m).mkdir(parents=True, exist_ok=True)
        (results / "breast-lesions-usg" / "models" / m / "model.json").write_text("{}")
    build._external_study(results)
    assert side == [(results / "breast-lesions-usg", results / "external-bus-bra")]
