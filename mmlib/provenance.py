"""What a result depends on, as hashes: the reuse key of finished work.

A unit of work (a model variant and seed, trained on every fold) is reused by a later run only when its key is
the same: the parameters results depend on (:func:`mmlib.params.result_keys`), the source of the ``mmlib``
package that produced it, the cohort on disk, the device and the numeric precision. Editing any ``.py`` file of
the package, or moving from CPU to GPU, retrains it.
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import lru_cache
from pathlib import Path

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
