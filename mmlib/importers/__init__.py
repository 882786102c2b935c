"""Importers: public breast-imaging collections to cohort manifests (:mod:`mmlib.schema`).

Each importer reads a collection as its publisher distributes it, from ``source_dir``, and writes one
manifest that references the images where they lie (paths relative to the manifest's folder; nothing is
copied). Beside the manifest it writes ``<stem>.import.json``: the kind, the source folder and the counts of
source rows read, used and left out by reason, so that no row is dropped silently.

Common conventions of every importer:

- the source's own ids are kept in ``source_id``; ``patient_id`` is unique; ``group`` ties units (e.g. two
  breasts) of one patient together, so the splitter never puts them on both sides of a split;
- ``label_source`` says how the label was established (``biopsy``, ``follow-up``, ...), as the source says;
- the radiologist's reading (BI-RADS category and descriptors) is kept only as ``ref_*`` metadata: it is a
  reading of the same images and would leak the answer as an input. The only clinical input is ``age``;
- a file the collection's layout promises but the folder lacks raises :class:`MissingSourceError`, naming
  the file, the collection and where to download it (:func:`collection_help`).

Usage::

    from mmlib.importers import import_cohort
    import_cohort("breast-lesions-usg", "../shared/data/breast-lesions-usg", "cohorts/brest.csv")
"""

from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from ..cohort import write_manifest
from ..schema import AGE_RANGE, IMAGE_MODALITIES, LABELS, PATH_SEPARATOR, REQUIRED_COLUMNS, mask_column

#: Importers by collection kind, filled by :func:`register_importer`.
IMPORTERS: dict[str, Callable[..., Path]] = {}
#: Download and citation facts by collection kind.
COLLECTIONS: dict[str, "Collection"] = {}

SIDECAR_SUFFIX = ".import.json"


@dataclass(frozen=True)
class Collection:
    """Where a public collection comes from and what its folder must hold.

    Args:
        kind: the importer's key, e.g. ``"bus-bra"``.
        title: the collection's name as its publisher gives it.
        citation: the data descriptor (authors, journal, DOI).
        doi: the DOI of the data collection itself.
        url: where to download it.
        license: its license.
        layout: the files and folders expected in ``source_dir``, one line each.
    """

    kind: str
    title: str
    citation: str
    doi: str
    url: str
    license: str
    layout: tuple[str, ...]


class MissingSourceError(FileNotFoundError):
    """The source folder lacks a file or folder that the collection's layout has."""


def register_importer(collection: Collection):
    """Decorator adding an importer function to :data:`IMPORTERS` under ``collection.kind``."""

    def add(fn: Callable[..., Path]) -> Callable[..., Path]:
        if collection.kind in IMPORTERS:
            raise ValueError(f"importer kind {collection.kind!r} is registered twice")
        IMPORTERS[collection.kind] = fn
        COLLECTIONS[collection.kind] = collection
        return fn

    return add


def _check_kind(kind: str) -> None:
    if kind not in IMPORTERS:
        raise ValueError(f"unknown collection kind {kind!r}; expected one of: {', '.join(sorted(IMPORTERS))}")


def collection_help(kind: str) -> str:
    """Plain-text download instructions for one collection and the command that imports it.

    Args:
        kind: a key of :data:`IMPORTERS`.

    Returns:
        Several lines: collection name, data descriptor, DOI, download address, license, expected layout of
        ``SOURCE_DIR`` and the ``mmlib cohort import`` command.
    """
    _check_kind(kind)
    c = COLLECTIONS[kind]
    lines = [
        f"{c.title} (importer kind: {kind})",
        f"  Cite:     {c.citation}",
        f"  Data:     doi:{c.doi}",
        f"  Download: {c.url}",
        f"  License:  {c.license}",
        "  Expected in SOURCE_DIR:",
        *(f"    {item}" for item in c.layout),
        "  Import:",
        f"    mmlib cohort import {kind} SOURCE_DIR --out MANIFEST",
    ]
    return "\n".join(lines)


def missing_source(kind: str, source_dir: Path, what: str) -> MissingSourceError:
    """The error for a file or folder of the collection's layout that ``source_dir`` lacks."""
    c = COLLECTIONS[kind]
    return MissingSourceError(
        f"{source_dir}: expected {what}, part of the collection {c.title} (doi:{c.doi}); "
        f"download it from {c.url}, then run: mmlib cohort import {kind} SOURCE_DIR --out MANIFEST"
    )


def find_one(kind: str, source_dir: Path, pattern: str, what: str) -> Path:
    """The single file of ``source_dir`` matching the glob ``pattern``; none or several raise."""
    hits = sorted(source_dir.glob(pattern))
    if not hits:
        raise missing_source(kind, source_dir, what)
    if len(hits) > 1:
        raise ValueError(
            f"{source_dir}: several files match {pattern!r} ({', '.join(h.name for h in hits)}); "
            "keep one or pass the file explicitly"
        )
    return hits[0]


def import_cohort(kind: str, source_dir: str | os.PathLike, out_manifest: str | os.PathLike, **options) -> Path:
    """Import a public collection into a cohort manifest.

    Args:
        kind: one of :data:`IMPORTERS` (``breast-lesions-usg``, ``cdd-cesm``, ``bus-bra``, ``cbis-ddsm``).
        source_dir: the collection's folder, as downloaded.
        out_manifest: the manifest to write (``.csv``); its folder is created.
        **options: keyword options of that importer (see its docstring).

    Returns:
        The path of the written manifest. ``<stem>.import.json`` lies beside it.
    """
    _check_kind(kind)
    if Path(out_manifest).suffix.lower() != ".csv":
        raise ValueError(f"out_manifest must be a .csv file, got {out_manifest}")
    fn = IMPORTERS[kind]
    params = inspect.signature(fn).parameters
    accepted = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for kind {kind!r}; accepted: {accepted or 'none'}")
    return fn(source_dir, out_manifest, **options)


@dataclass
class ImportLog:
    """Counts of one import: every source row is either used or left out with a reason.

    Args:
        kind: the importer's key.
        source_dir: the folder read.
    """

    kind: str
    source_dir: Path
    rows_read: int = 0
    rows_used: int = 0
    left_out: dict[str, int] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)

    def leave_out(self, reason: str, n: int = 1) -> None:
        self.left_out[reason] = self.left_out.get(reason, 0) + n


def _is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def parse_age(value, *, where: str) -> float | None:
    """An age in years, or ``None`` for a missing one ("not available", empty); never zero for missing.

    Args:
        value: the cell.
        where: the file and row, for the error message.
    """
    if _is_missing(value) or (isinstance(value, str) and value.strip().lower() in {"not available", "n/a", "na"}):
        return None
    try:
        age = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: age {value!r} is neither a number nor 'not available'") from None
    if not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
        raise ValueError(f"{where}: age {age} is outside the plausible range {AGE_RANGE}")
    return age


def _cell_text(value, manifest_dir: Path) -> str:
    """A metadata cell: lists joined by ``|``, paths relative to the manifest, whole floats without ``.0``."""
    if _is_missing(value):
        return ""
    if isinstance(value, Path):
        return Path(os.path.relpath(value, manifest_dir)).as_posix()
    if isinstance(value, (list, tuple)):
        return PATH_SEPARATOR.join(_cell_text(v, manifest_dir) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _manifest_rows(rows: list[dict], path: Path) -> list[dict]:
    """Rows as :func:`mmlib.cohort.write_manifest` takes them: image and mask columns keep their paths
    (it writes them relative to the manifest), every other list is joined by ``|`` here."""
    for i, row in enumerate(rows):
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"{path}: row {i} ({row.get('patient_id')!r}) lacks required columns {missing}")
        if row["label"] not in LABELS:
            raise ValueError(f"{path}: row {i} ({row['patient_id']!r}) has label {row['label']!r}; expected {LABELS}")
    ids = pd.Series([str(r["patient_id"]) for r in rows])
    if ids.duplicated().any():
        raise ValueError(f"{path}: patient_id not unique: {sorted(set(ids[ids.duplicated()]))[:10]}")
    path_columns = {*IMAGE_MODALITIES, *(mask_column(m) for m in IMAGE_MODALITIES)}
    root = path.resolve().parent
    return [{k: _absolute(v) if k in path_columns else _cell_text(v, root) for k, v in row.items()} for row in rows]


def _absolute(value):
    """Path values made absolute (from the working directory), so the manifest writer can make them
    relative to the manifest's folder; text and empty items pass unchanged."""
    if isinstance(value, Path):
        return Path(os.path.abspath(value))
    if isinstance(value, (list, tuple)):
        return [_absolute(v) for v in value]
    return value


def finish_import(log: ImportLog, rows: list[dict], out_manifest: str | os.PathLike) -> Path:
    """Write the manifest and its ``.import.json`` sidecar; check that every source row is accounted for.

    Args:
        log: the counts of the import.
        rows: one dict per unit; ``Path`` values, lists (joined by ``|``; ``None`` = empty item) or scalars.
        out_manifest: the manifest path (``.csv``).

    Returns:
        The manifest path.
    """
    out_manifest = Path(out_manifest)
    if out_manifest.suffix.lower() != ".csv":
        raise ValueError(f"out_manifest must be a .csv file, got {out_manifest}")
    if log.rows_used + sum(log.left_out.values()) != log.rows_read:
        # An importer bug, not a data problem: a row neither used nor counted as left out.
        raise RuntimeError(
            f"{log.kind}: {log.rows_read} rows read but {log.rows_used} used + {sum(log.left_out.values())} left out"
        )
    path = write_manifest(_manifest_rows(rows, out_manifest), out_manifest)
    labels = pd.Series([r["label"] for r in rows]).value_counts()
    groups = {str(r.get("group", r["patient_id"])) for r in rows}
    sidecar = {
        "kind": log.kind,
        "collection": COLLECTIONS[log.kind].title,
        "doi": COLLECTIONS[log.kind].doi,
        "source_dir": str(Path(log.source_dir).resolve()),
        "manifest": path.name,
        "rows_read": log.rows_read,
        "rows_used": log.rows_used,
        "rows_left_out": dict(sorted(log.left_out.items())),
        "units_written": len(rows),
        "groups_written": len(groups),
        "labels": {lab: int(labels.get(lab, 0)) for lab in LABELS},
        "age_missing": sum(_is_missing(r["age"]) for r in rows),
        "notes": log.notes,
    }
    sidecar_path(path).write_text(json.dumps(sidecar, indent=2, default=str) + "\n")
    return path


def sidecar_path(manifest: str | os.PathLike) -> Path:
    """``<manifest stem>.import.json`` beside the manifest."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.stem + SIDECAR_SUFFIX)


def source_folder(kind: str, source_dir: str | os.PathLike) -> Path:
    """``source_dir`` as an absolute Path; a missing folder raises :class:`MissingSourceError` with download help.

    Absolute, because :func:`mmlib.cohort.write_manifest` takes a relative path as already relative to the
    manifest's folder; a source given relative to the working directory would then point nowhere.
    """
    source_dir = Path(os.path.abspath(Path(source_dir).expanduser()))
    if not source_dir.is_dir():
        raise missing_source(kind, source_dir, "the collection's folder (it does not exist)")
    return source_dir


# The importer modules register themselves with the helpers above, so they are imported last.
from . import breast_lesions_usg, cdd_cesm, bus_bra, cbis_ddsm  # noqa: E402,F401,I001
from .breast_lesions_usg import import_breast_lesions_usg  # noqa: E402
from .bus_bra import import_bus_bra  # noqa: E402
from .cbis_ddsm import import_cbis_ddsm  # noqa: E402
from .cdd_cesm import import_cdd_cesm  # noqa: E402

__all__ = [
    "IMPORTERS",
    "COLLECTIONS",
    "Collection",
    "MissingSourceError",
    "import_cohort",
    "collection_help",
    "sidecar_path",
    "import_breast_lesions_usg",
    "import_cdd_cesm",
    "import_bus_bra",
    "import_cbis_ddsm",
]
