"""Run the study and render the book: papermill executes, Jupyter Book only renders.

Usage::

    python -m mmlib.build --profile smoke              # the study, then every chapter, then the HTML
    python -m mmlib.build --profile smoke --strict     # Sphinx warnings and stderr output are errors (CI)
    python -m mmlib.build --profile smoke --only 06 10 # re-execute two chapters from the existing results
    python -m mmlib.build --profile smoke --no-render  # the study and the chapters, no HTML
    python -m mmlib.build --profile smoke --fresh      # the study redoes finished work too

One chapter can also be executed by hand, with the parameters the build would inject::

    papermill book/06_cross_validation.ipynb _build/smoke/source/book/06_cross_validation.ipynb \\
        -f params/smoke.yaml -p profile smoke -p results_dir $PWD/results/smoke -k mmlib --cwd $PWD

Layout of one run (nothing here is committed)::

    _build/<profile>/source/          executed notebooks + copies of _config.yml, _toc.yml, book/*.md, ...
    _build/<profile>/_build/html/     the rendered book (index.html)
    results/<profile>/                what the study writes (tables, predictions, run.json); chapters only read it

The study (:func:`mmlib.experiment.run_experiment`, the same as ``mmlib run``) runs first, reusing finished
work whose reuse key is unchanged. Then the notebooks are executed in the order of ``_toc.yml``, the toc's
root (the front matter, which reads the results of the run) last. A failing notebook stops the build before
anything is rendered, so a half-executed book is never published.

This module is also a Sphinx extension (listed in ``_config.yml``): it ships the installed plotly.js
into the built site, so figures render offline without a CDN.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import paths

#: Name of the Jupyter kernel the build registers for the current interpreter.
KERNEL_NAME = "mmlib"
#: File name of plotly.js inside the built site's ``_static`` folder.
PLOTLY_JS = "plotly.min.js"
#: book/_static/plotly-dark.js: restyles the figures' background, text and grid in the theme's dark mode.
PLOTLY_DARK_JS = "plotly-dark.js"


class NotebookExecutionError(RuntimeError):
    """A notebook failed; carries the notebook, the failing cell's source and the error."""

    def __init__(self, notebook: Path, cell_source: str, error: str, cell_index: int | None = None):
        self.notebook = Path(notebook)
        self.cell_source = cell_source
        self.error = error
        self.cell_index = cell_index
        where = f"cell {cell_index}" if cell_index is not None else "a cell"
        super().__init__(
            f"notebook {self.notebook.name} failed in {where}:\n"
            f"---- cell source ----\n{cell_source}\n---- error ----\n{error}"
        )


class RenderError(RuntimeError):
    """Rendering exited non-zero (with ``strict``, any Sphinx warning)."""


class StrayOutputError(RenderError):
    """A strict build's notebook wrote to stderr or drew a progress bar, which no page may show."""


# ---------------------------------------------------------------------------------------------------
# Profiles and the table of contents


def list_profiles(params_dir: Path = paths.PARAMS) -> list[str]:
    """Names of the run profiles (``params/<name>.yaml``), sorted."""
    return sorted(p.stem for p in Path(params_dir).glob("*.yaml"))


def read_profile(profile: str, params_dir: Path = paths.PARAMS) -> dict:
    """The parameters of one run profile, checked and completed with the defaults (:mod:`mmlib.params`).

    Raises:
        ParamsError: no ``params/<profile>.yaml`` (the message lists the profiles there are), a file that is not
            a flat mapping, a parameter the build injects itself, an unknown key or a bad value.
    """
    from .params import load_params

    return load_params(profile, params_dir=Path(params_dir))


def toc_files(toc_path: Path) -> list[str]:
    """Every file of a ``jb-book`` table of contents, in reading order, root first (no suffix)."""
    toc = yaml.safe_load(Path(toc_path).read_text(encoding="utf-8"))
    if not isinstance(toc, dict) or "root" not in toc:
        raise ValueError(f"{toc_path}: expected a jb-book table of contents with a 'root' key")
    out = [str(toc["root"])]

    def walk(entries: Iterable[dict]) -> None:
        for entry in entries or []:
            if "file" in entry:
                out.append(str(entry["file"]))
            walk(entry.get("sections", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    walk(toc.get("chapters", []))
    return out


def execution_order(root: Path = paths.ROOT) -> list[Path]:
    """The notebooks of the book, in the order the build executes them: toc order, the toc's root last.

    The root (front matter) reads what the chapters wrote, hence last.
    """
    root = Path(root)
    entries = toc_files(root / "_toc.yml")
    notebooks = [root / f"{e}.ipynb" for e in entries if (root / f"{e}.ipynb").is_file()]
    missing = [e for e in entries if not any((root / f"{e}{s}").is_file() for s in (".ipynb", ".md"))]
    if missing:
        raise FileNotFoundError(f"{root / '_toc.yml'} lists files that do not exist: {missing}")
    first = root / f"{entries[0]}.ipynb"
    if first in notebooks:
        notebooks.remove(first)
        notebooks.append(first)
    return notebooks


def select_chapters(notebooks: Sequence[Path], only: Sequence[str]) -> list[Path]:
    """The notebooks named by ``only``: a stem (``06_cross_validation``), a number prefix (``06``) or a file name."""
    chosen = []
    for name in only:
        stem = Path(name).stem
        hits = [nb for nb in notebooks if nb.stem == stem or nb.stem.split("_", 1)[0] == stem]
        if len(hits) != 1:
            names = ", ".join(nb.stem for nb in notebooks)
            raise ValueError(f"--only {name!r}: expected one chapter matching it, found {len(hits)} (chapters: {names})")
        chosen.extend(h for h in hits if h not in chosen)
    return [nb for nb in notebooks if nb in chosen]


# ---------------------------------------------------------------------------------------------------
# Notebooks


def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """Register a Jupyter kernel for this interpreter in its prefix (idempotent); returns its name.

    Papermill then runs the notebooks with the same Python (and venv) as the build, whatever ``python``
    is on ``PATH``.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
        if spec.argv and Path(spec.argv[0]) == Path(sys.executable):
            return name
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=name, display_name=f"Python ({name})", prefix=sys.prefix)
    return name


def _failing_cell(src: Path, dst: Path) -> tuple[str, int | None]:
    """Source of the cell papermill marked as failed in ``dst``, and its index in the source notebook ``src``.

    The index is the source's (papermill adds an error banner and the injected-parameters cell to ``dst``).
    """
    import nbformat

    try:
        executed = nbformat.read(str(dst), as_version=4)
        original = nbformat.read(str(src), as_version=4)
    except Exception:  # an unreadable output notebook must not hide the original error
        return "", None
    for cell in executed.cells:
        if cell.cell_type == "code" and any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            ids = [c.get("id") for c in original.cells]
            index = ids.index(cell.get("id")) if cell.get("id") in ids else None
            return cell.source, index
    return "", None


def execute_notebook(
    src: Path,
    dst: Path,
    params: dict,
    *,
    kernel_name: str | None = None,
    cwd: Path = paths.ROOT,
    progress_bar: bool = False,
) -> Path:
    """Execute one notebook with papermill, parameters injected after its ``parameters`` cell.

    Args:
        src: the notebook source.
        dst: where the executed notebook is written (its folder is created).
        params: the parameters to inject (the profile plus ``profile`` and ``results_dir``).
        kernel_name: Jupyter kernel; default: :func:`ensure_kernel` (this interpreter).
        cwd: working directory of the kernel (the repository root, so relative paths mean the same
            in every chapter).
        progress_bar: papermill's per-cell progress bar.

    Returns:
        ``dst``.

    Raises:
        NotebookExecutionError: a cell raised; the message has the cell's source and the error.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"notebook {src} does not exist")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(
            str(src),
            str(dst),
            parameters=dict(params),
            kernel_name=kernel_name or ensure_kernel(),
            cwd=str(cwd),
            progress_bar=progress_bar,
            log_output=False,
        )
    except PapermillExecutionError as exc:
        source, index = _failing_cell(src, dst)
        error = f"{exc.ename}: {exc.evalue}\n" + "\n".join(exc.traceback)
        raise NotebookExecutionError(src, source or str(exc), _strip_ansi(error), index) from exc
    _tag_parameter_cells(dst)
    return dst


def _tag_parameter_cells(path: Path) -> None:
    """In the book, drop the parameter cells: the defaults were overridden, and the colophon lists the values."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if ("parameters" in tags or "injected-parameters" in tags) and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(nb, str(path))


def stray_outputs(path: Path) -> list[str]:
    """What an executed notebook wrote that is no part of a page: stderr streams and progress bars.

    Returns:
        one line per output, ``cell <index>: <first line>``; empty when the notebook is clean.
    """
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    found = []
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = _strip_ansi(out.get("text", "")).strip().splitlines() or [""]
                found.append(f"cell {index}: stderr: {text[0][:200]}")
            elif "<progress" in str(out.get("data", {}).get("text/html", "")):
                found.append(f"cell {index}: a progress bar")
    return found


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


# ---------------------------------------------------------------------------------------------------
# Rendering


def jupyter_book_command() -> list[str]:
    """The ``jupyter-book`` of this interpreter's environment."""
    beside = Path(sys.executable).parent / "jupyter-book"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("jupyter-book")
    if found is None:
        raise FileNotFoundError("jupyter-book not found: install mmlib with its 'book' extra")
    return [found]


def render(source_dir: Path, out_dir: Path, strict: bool = False) -> Path:
    """Render an executed book: Jupyter Book's configuration, Sphinx's HTML builder (nothing is executed).

    ``jupyter-book config sphinx`` turns ``_config.yml`` into a ``conf.py`` in ``source_dir``; ``sphinx-build``
    then renders, and its exit status says whether it succeeded (``jupyter-book build`` can print a
    traceback and still exit 0).

    Args:
        source_dir: folder holding ``_config.yml``, ``_toc.yml`` and the executed notebooks.
        out_dir: the HTML lands in ``out_dir/_build/html`` (doctrees in ``out_dir/_build/.doctrees``).
        strict: Sphinx warnings are errors (``-W --keep-going``: every warning is reported, then it fails).

    Returns:
        the path of ``index.html``.

    Raises:
        RenderError: either step exited non-zero; the message holds the warnings and errors it printed.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    for name in ("_config.yml", "_toc.yml"):
        if not (source_dir / name).is_file():
            raise FileNotFoundError(f"source_dir {source_dir}: {name} is missing")
    html_dir = out_dir / "_build" / "html"
    # Sphinx never deletes what an earlier build wrote; the site must hold this build's files only
    shutil.rmtree(html_dir, ignore_errors=True)
    steps = {
        "jupyter-book config sphinx": [*jupyter_book_command(), "config", "sphinx", str(source_dir)],
        "sphinx-build": [sys.executable, "-m", "sphinx", "-b", "html", "-d", str(out_dir / "_build" / ".doctrees"),
                         *(["-W", "--keep-going"] if strict else []), str(source_dir), str(html_dir)],
    }
    for step, cmd in steps.items():
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            text = _strip_ansi(proc.stdout + proc.stderr)
            causes = [line for line in text.splitlines() if "WARNING" in line or "ERROR" in line or "Error" in line]
            tail = "\n".join(text.strip().splitlines()[-3:])
            raise RenderError(f"{step} {source_dir} failed (exit {proc.returncode}):\n" + "\n".join(causes[-20:]) + f"\n...\n{tail}")
    index = html_dir / "index.html"
    if not index.is_file():
        raise RenderError(f"sphinx-build exited 0 but wrote no {index}")
    return index


def stage_source(root: Path, source_dir: Path) -> None:
    """Copy what Jupyter Book reads besides the executed notebooks into ``source_dir``."""
    root, source_dir = Path(root), Path(source_dir)
    (source_dir / "book").mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, source_dir / name)
    book = root / "book"
    for path in list(book.glob("*.md")) + list(book.glob("*.bib")):
        shutil.copy2(path, source_dir / "book" / path.name)
    for folder in ("_static", "figures", "images"):
        if (book / folder).is_dir():
            shutil.copytree(book / folder, source_dir / "book" / folder, dirs_exist_ok=True)


@dataclass
class BuildResult:
    """What :func:`build` did: executed notebooks, the rendered index (or None) and stage timings (s)."""

    source_dir: Path
    executed: list[Path]
    index_html: Path | None
    timings: dict[str, float] = field(default_factory=dict)


#: The companion study that is not a run profile: BrEaST-Lesions_USG to BUS-BRA (:func:`mmlib.external.external_study`).
EXTERNAL_STUDY = "external"


def run_companion_studies(names: Sequence[str], results_root: Path, *, params_dir: Path = paths.PARAMS,
                          log: Callable[[str], None] = print) -> dict[str, str]:
    """Run the studies a profile's book carries besides its own (``companion_studies``), before the chapters.

    A run profile's study goes to ``results_root/<name>/`` (:func:`mmlib.experiment.run_experiment`, reusing finished
    work); ``external`` trains the BrEaST-Lesions_USG model once per lesion source where it has not been trained and
    evaluates it on BUS-BRA (``results_root/external-bus-bra/``). A study whose public data is absent is skipped with
    a message: its chapter section then names the command that fills it.

    Returns:
        ``{name: "ran" | "skipped: <why>"}``.
    """
    from .experiment import run_experiment

    done = {}
    for name in names:
        t0 = time.perf_counter()
        log(f"[mmlib.build] companion study {name!r} ...")
        try:
            if name == EXTERNAL_STUDY:
                _external_study(results_root)
            else:
                run_experiment(dict(read_profile(name, params_dir), results_dir=str(results_root / name)))
            done[name] = "ran"
        except FileNotFoundError as err:  # the public collection is not beside the checkout
            done[name] = f"skipped: {str(err).splitlines()[0]}"
        log(f"[mmlib.build] companion study {name!r}: {done[name]} ({time.perf_counter() - t0:.1f} s)")
    return done


def _external_study(results_root: Path) -> Path:
    from .external import EXTERNAL_RESULTS, STUDY_MODELS, external_models, external_study
    from .importers import import_cohort

    sources = {k: paths.SHARED_DATA / k for k in ("breast-lesions-usg", "bus-bra")}
    absent = [str(p) for p in sources.values() if not p.is_dir()]
    if absent:
        raise FileNotFoundError(f"public data not found at {absent}")
    manifests = {k: import_cohort(k, p, paths.COHORTS / "external" / f"{k}.csv") for k, p in sources.items()}
    # The BrEaST study of this build (run before, as a companion) saved the very model the 'predicted' row needs:
    # an AMW-CNN on the development patients with the profile's cross-fitted lesions. Evaluate it, not a second copy.
    study_model = results_root / "breast-lesions-usg" / "models" / "amw_cnn"
    models = {"predicted": study_model} if (study_model / "model.json").is_file() else None
    out = external_study(manifests["breast-lesions-usg"], manifests["bus-bra"], results_root / EXTERNAL_RESULTS,
                         retrain=False, models=models)
    # The chapter quotes how long `mmlib predict` takes on 100 new patients with the images-only model.
    source = "predicted" if models else "none"
    model_dir = models["predicted"] if models else out / "models" / "none"
    if (model_dir / "model.json").is_file():
        from .external import record_predict_time, time_predict

        record_predict_time(out, time_predict(model_dir, manifests["bus-bra"], out, n=100), source)
    study = results_root / "breast-lesions-usg"
    if (study / "run.json").is_file() and all((study / "models" / m / "model.json").is_file() for m in STUDY_MODELS):
        external_models(study, manifests["bus-bra"], out)  # the four models side by side, the CV-chosen one first
    return out


def build(
    profile: str,
    *,
    root: Path = paths.ROOT,
    results_root: Path | None = None,
    strict: bool = False,
    only: Sequence[str] | None = None,
    render_html: bool = True,
    kernel_name: str | None = None,
    log: Callable[[str], None] = print,
    study: bool = True,
    fresh: bool = False,
    jobs: int | None = None,
) -> BuildResult:
    """Run the study of one run profile, execute the book's notebooks (which only read its results), render them.

    Args:
        profile: name of ``params/<profile>.yaml``.
        root: repository root (``_config.yml``, ``_toc.yml``, ``book/``, ``params/``).
        results_root: parent of ``results_dir``; default :data:`mmlib.paths.RESULTS`.
        strict: render with Sphinx warnings as errors, and stop at a notebook that wrote to stderr.
        only: re-execute these chapters only (stems or number prefixes), from the existing results (the
            study is not run; its results must exist); the others keep the outputs of the last full build.
        render_html: render after executing.
        kernel_name: Jupyter kernel; default the one registered for this interpreter.
        log: where progress and timings go.
        study: run the study first (:func:`mmlib.experiment.run_experiment`, reusing finished work); False
            executes the notebooks on whatever results there are.
        fresh: the study ignores finished work and cached features.
        jobs: chapters executed at once (each in its own kernel; they only read results); default: the cores
            available, at most :data:`CHAPTER_JOBS`.

    Returns:
        a :class:`BuildResult`.

    Raises:
        FileNotFoundError: ``only`` without results of the profile.
        NotebookExecutionError: a notebook failed; nothing was rendered.
        StrayOutputError: with ``strict``, a notebook wrote to stderr or drew a progress bar.
    """
    t_build = time.perf_counter()
    root = Path(root).resolve()
    run_params = read_profile(profile, root / "params")  # fail early: a missing profile, an unknown key, a bad value
    results_dir = (Path(results_root) if results_root else paths.RESULTS).resolve() / profile
    # The notebooks read the profile's other parameters themselves (mmlib.experiment.load_params), so only
    # these two are injected: papermill would warn about every profile key a chapter does not declare.
    params = {"profile": profile, "results_dir": str(results_dir)}
    out_dir = root / "_build" / profile
    source_dir = out_dir / "source"
    timings: dict[str, float] = {}

    notebooks = execution_order(root)
    todo = select_chapters(notebooks, only) if only else notebooks
    if only and not (results_dir / "run.json").is_file():
        raise FileNotFoundError(
            f"--only {' '.join(only)}: no results of profile {profile!r} in {results_dir} (run.json missing); run the "
            f"study first: `mmlib run --profile {profile}`, or the whole build without --only")
    if only:
        _note_stale_results(results_dir, profile, log)
    kernel = kernel_name or ensure_kernel()
    results_dir.mkdir(parents=True, exist_ok=True)
    if study and not only:
        from .experiment import run_experiment

        log(f"[mmlib.build] study of profile {profile!r} -> {results_dir} ...")
        t0 = time.perf_counter()
        run_experiment(dict(run_params, results_dir=str(results_dir)), fresh=fresh)
        timings["study"] = time.perf_counter() - t0
        log(f"[mmlib.build] study: {timings['study']:.1f} s")
    if run_params.get("companion_studies") and not only:
        t0 = time.perf_counter()
        run_companion_studies(run_params["companion_studies"], results_dir.parent, params_dir=root / "params", log=log)
        timings["companion_studies"] = time.perf_counter() - t0
    stage_source(root, source_dir)

    executed = execute_chapters(todo, root, source_dir, params, kernel=kernel, strict=strict, jobs=jobs,
                                log=log, timings=timings)

    index_html = None
    if render_html:
        absent = [nb.relative_to(root) for nb in notebooks if not (source_dir / nb.relative_to(root)).is_file()]
        if absent:
            raise FileNotFoundError(
                f"cannot render: {[str(a) for a in absent]} were never executed for profile {profile!r}; "
                "run the full build once before using --only"
            )
        log(f"[mmlib.build] rendering {source_dir} ...")
        t0 = time.perf_counter()
        index_html = render(source_dir, out_dir, strict=strict)
        timings["render"] = time.perf_counter() - t0
        log(f"[mmlib.build] render: {timings['render']:.1f} s -> {index_html}")
    total = time.perf_counter() - t_build  # chapters run side by side: their times overlap, the wall clock does not
    log("[mmlib.build] stage timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + f"; total {total:.1f} s")
    return BuildResult(source_dir=source_dir, executed=executed, index_html=index_html, timings=timings)


#: At most this many chapters execute at once: a chapter's kernel spends most of its time starting and importing,
#: and the chapters only read the study's results, so two side by side fill two cores.
CHAPTER_JOBS = 4


def execute_chapters(notebooks: Sequence[Path], root: Path, source_dir: Path, params: dict, *, kernel: str,
                     strict: bool = False, jobs: int | None = None, log: Callable[[str], None] = print,
                     timings: dict | None = None) -> list[Path]:
    """Execute ``notebooks`` into ``source_dir``, ``jobs`` at a time, each in its own kernel.

    Returns the executed copies in the book's order. A failing chapter stops the others not yet started and is
    raised (the first in the book's order, if several failed); with ``strict``, so is a chapter that wrote output
    no page shows (:class:`StrayOutputError`).
    """
    from concurrent.futures import ThreadPoolExecutor

    from .scheduling import available_cores

    jobs = max(1, int(jobs)) if jobs else max(1, min(CHAPTER_JOBS, available_cores()))
    timings = {} if timings is None else timings

    def one(nb: Path) -> Path:
        dst = source_dir / nb.relative_to(root)
        log(f"[mmlib.build] executing {nb.relative_to(root)} ...")
        t0 = time.perf_counter()
        execute_notebook(nb, dst, params, kernel_name=kernel, cwd=root)
        stray = stray_outputs(dst)
        if stray:
            message = f"{nb.relative_to(root)} wrote outputs no page shows:\n  " + "\n  ".join(stray)
            if strict:
                raise StrayOutputError(message)
            log(f"[mmlib.build] WARNING: {message}")
        timings[nb.stem] = time.perf_counter() - t0
        log(f"[mmlib.build] {nb.stem}: {timings[nb.stem]:.1f} s")
        return dst

    if jobs == 1 or len(notebooks) < 2:
        return [one(nb) for nb in notebooks]
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="chapter") as pool:
        futures = [pool.submit(one, nb) for nb in notebooks]
        for f in futures:  # in the book's order: the first failure is the one reported
            if f.exception() is not None:
                for g in futures:
                    g.cancel()
                raise f.exception()
        return [f.result() for f in futures]


def _note_stale_results(results_dir: Path, profile: str, log: Callable[[str], None]) -> None:
    """Say so when the results --only reads were made by other mmlib source than this checkout's."""
    from .provenance import source_fingerprint

    try:
        made_by = json.loads((results_dir / "run.json").read_text()).get("reuse_key", {}).get("source")
    except (OSError, ValueError):
        return
    if made_by and made_by != source_fingerprint():
        log(f"[mmlib.build] note: the results in {results_dir} were made by other mmlib source ({made_by}, now "
            f"{source_fingerprint()}); the chapters show them as they are: `mmlib run --profile {profile}` refreshes "
            "them")


# ---------------------------------------------------------------------------------------------------
# Sphinx extension: plotly.js served from the site itself


def _add_plotly_js(app, pagename, templatename, context, doctree) -> None:
    # Only pages that hold a figure load the 4 MB library; the priority puts it before any
    # require.js (500) a page may get, so plotly never registers as an anonymous AMD module.
    if "plotly-graph-div" in context.get("body", ""):
        app.add_js_file(PLOTLY_JS, priority=200)
        app.add_js_file(PLOTLY_DARK_JS, priority=201)
    # Sphinx 7 registers an inline script added at env-before-read-docs twice (filename None and
    # ''), so sphinx-thebe's `const THEBE_JS_URL` is declared twice: a SyntaxError on every page.
    scripts = context.get("script_files")
    if isinstance(scripts, list):
        seen, unique = set(), []
        for js in scripts:
            key = (getattr(js, "filename", js) or "", getattr(js, "priority", 0),
                   tuple(sorted(getattr(js, "attributes", {}).items())))
            if key not in seen:
                seen.add(key)
                unique.append(js)
        context["script_files"] = unique


def _copy_plotly_js(app, exception) -> None:
    if exception is not None or app.builder is None or app.builder.format != "html":
        return
    from plotly.offline import get_plotlyjs

    static = Path(app.builder.outdir) / "_static"
    static.mkdir(parents=True, exist_ok=True)
    (static / PLOTLY_JS).write_text(get_plotlyjs(), encoding="utf-8")


def setup(app) -> dict:
    """Sphinx entry point (``sphinx: extra_extensions: [mmlib.build]`` in ``_config.yml``)."""
    app.connect("html-page-context", _add_plotly_js)
    app.connect("build-finished", _copy_plotly_js)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


# ---------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmlib.build",
        description="Execute the book's notebooks with papermill for one run profile, then render it.",
    )
    parser.add_argument("--profile", required=True, help="run profile: params/<PROFILE>.yaml")
    parser.add_argument("--strict", action="store_true", help="Sphinx warnings and stderr output are errors")
    parser.add_argument("--only", nargs="+", metavar="CHAPTER",
                        help="re-execute these chapters only (e.g. 06), from the existing results")
    parser.add_argument("--fresh", action="store_true", help="the study ignores finished work and cached features")
    parser.add_argument("--no-render", action="store_true", help="execute only, do not render")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help=f"chapters executed at once (default: the cores available, at most {CHAPTER_JOBS})")
    args = parser.parse_args(argv)
    try:
        result = build(args.profile, strict=args.strict, only=args.only, render_html=not args.no_render,
                       fresh=args.fresh, jobs=args.jobs)
    except NotebookExecutionError as exc:
        print(f"[mmlib.build] FAILED: {exc}", file=sys.stderr)
        print("[mmlib.build] nothing was rendered.", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, RenderError) as exc:
        print(f"[mmlib.build] FAILED: {exc}", file=sys.stderr)
        return 1
    if result.index_html is not None:
        print(f"[mmlib.build] book: {result.index_html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
