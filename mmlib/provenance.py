"""What a result depends on, as hashes (the reuse key of finished work), and where it came from (the git commit,
package versions and device that ``run.json`` and the book's colophon record).

A unit of work (a model variant and seed, trained on every fold) is reused by a later run only when its key is
the same: the parameters results depend on (:func:`mmlib.params.result_keys`), the source of the ``mmlib``
package that produced it, the cohort on disk, the device and the numeric precision. Editing any ``.py`` file of
the package, or moving from CPU to GPU, retrains it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from .paths import ROOT

#: The folder of the ``mmlib`` package this process imported (its source is what the fingerprint covers).
PACKAGE = Path(__file__).resolve().parent


def stable_hash(obj) -> str:
    """Short SHA-256 of a JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_files(roots: tuple[str, ...] | None = None, package: Path = PACKAGE) -> list[Path]:
    """Every ``.py`` file of the package, sorted; or, with ``roots`` (module names such as ``"data"``), those
    modules and every package module they import, directly or not (``from .imaging import ...``)."""
    package = Path(package)
    every = sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)
    if roots is None:
        return every
    seen: set[Path] = set()
    todo = [_module_file(package, r) for r in roots]
    while todo:
        f = todo.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        todo.extend(_imported_modules(f, package))
    return sorted(seen)


def _module_file(package: Path, dotted: str) -> Path | None:
    base = package.joinpath(*dotted.split(".")) if dotted else package
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _imported_modules(f: Path, package: Path) -> list[Path | None]:
    """Package modules named by the relative imports of ``f`` (at any depth of the file: lazy imports too)."""
    here = f.parent.relative_to(package).parts
    out = []
    for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            parts = list(here[: len(here) - (node.level - 1)])
            mod = node.module.split(".") if node.module else []
            out.append(_module_file(package, ".".join(parts + mod)))
            for alias in node.names:  # from . import imaging
                out.append(_module_file(package, ".".join(parts + mod + [alias.name])))
    return out


@lru_cache(maxsize=None)
def source_fingerprint(roots: tuple[str, ...] | None = None, package: Path = PACKAGE) -> str:
    """Hash of the package's source (paths relative to the package, and contents); see :func:`source_files`.

    Computed once per process: a file edited while a study runs takes effect in the next run."""
    h = hashlib.sha256()
    for f in source_files(roots, package):
        h.update(f.relative_to(package).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def precision(params: dict, device: str) -> str:
    """The numeric precision training runs in: mixed fp16 only on a GPU (``mixed_precision``), else fp32."""
    return "fp16-mixed" if params.get("mixed_precision") and device.startswith("cuda") else "fp32"


#: Distributions whose versions a run records and the colophon lists.
PACKAGES: tuple[str, ...] = (
    "mmlib", "torch", "torchvision", "timm", "fastai", "scikit-learn", "statsmodels", "scipy", "numpy", "pandas",
    "pydicom", "plotly", "papermill", "jupyter-book", "myst-nb",
)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict:
    """``{"commit": sha or None, "dirty": bool or None}``; None where this is not a git checkout.

    ``dirty`` counts changes to tracked files only: outputs the build writes are ignored or untracked.
    """
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit or None, "dirty": None if status is None else bool(status)}


def package_versions(packages=PACKAGES) -> dict[str, str | None]:
    """Python and each distribution's version (None when not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in packages:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    if "torch" in out:
        import torch

        out["torch"] = torch.__version__  # carries its build (e.g. +cu130), which the wheel metadata drops
    return out


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_info() -> dict:
    """Platform, CPU model and logical cores, the CUDA device (None on a CPU run) and torch's CUDA build."""
    import torch

    return {"platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch_cuda_build": torch.version.cuda}
