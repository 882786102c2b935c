"""CDD-CESM: subtracted contrast-enhanced mammography views with age (TCIA, doi:10.7937/29kw-ae92).

Reads sheet ``all`` of ``Radiology-manual-annotations.xlsx`` (one row per image of the full release, low-energy
``DM`` and subtracted ``CESM``) and keeps the subtracted CESM views whose image lies in
``Subtracted images of CDD-CESM/``. Choices:

- One unit per BREAST: ``patient_id`` is ``P<id>_<L|R>``, ``group`` is the patient ``P<id>``. The label is the
  breast's "Pathology Classification/ Follow up"; a patient can have a benign breast and a malignant one, so
  one group may hold both labels. The splitter keeps groups together, so both breasts of a patient always
  fall on the same side of every split.
- ``mammography`` = all views (CC, then MLO) of that breast, ``|``-separated; ``ultrasound`` empty; ``age``
  from the sheet (the only clinical input). Views of one breast with different labels or ages are refused.
- Image names are matched by stem, with surrounding spaces stripped on both sides (sheet cells and even
  file names may carry trailing spaces; the extension differs between releases: ``.jpg`` at TCIA, ``.png`` in
  resized mirrors).
- Left out and counted: low-energy ``DM`` rows, ``Normal`` rows (views without a finding), rows whose image
  is not in the folder, and repeated rows of the same image.
- ``label_source`` is ``pathology/follow-up``: the sheet gives one class per image from pathology or from
  follow-up without saying which. BI-RADS per view is kept as ``ref_birads`` (a reading, never an input). The
  release's hand-drawn segmentations (polygon CSV) are not masks on disk and are not imported.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from . import Collection, ImportLog, find_one, finish_import, missing_source, parse_age, register_importer, source_folder

KIND = "cdd-cesm"
IMAGES_FOLDER = "Subtracted images of CDD-CESM"
WORKBOOK_PATTERN = "Radiology*manual*annotations*.xlsx"
SHEET = "all"
LABEL_COLUMN = "Pathology Classification/ Follow up"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")
VIEW_ORDER = ("CC", "MLO")

COLLECTION = Collection(
    kind=KIND,
    title="CDD-CESM: Categorized Digital Database for Low energy and Subtracted Contrast Enhanced Spectral "
    "Mammography images (The Cancer Imaging Archive)",
    citation=(
        "Khaled R. et al., Categorized contrast enhanced mammography dataset for diagnostic and artificial "
        "intelligence research, Scientific Data 9:122 (2022), doi:10.1038/s41597-022-01238-0"
    ),
    doi="10.7937/29kw-ae92",
    url="https://www.cancerimagingarchive.net/collection/cdd-cesm/",
    license="CC BY 4.0",
    layout=(
        "Radiology-manual-annotations.xlsx  (sheet 'all': one row per image)",
        f"{IMAGES_FOLDER}/P<id>_<L|R>_CM_<CC|MLO>.<jpg|png>  (subtracted CESM views)",
    ),
)

COLUMNS = ("Image_name", "Patient_ID", "Side", "Type", "Age", "View", LABEL_COLUMN)


def _index_images(folder: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stem = f.stem.strip()
        if stem in index:
            raise ValueError(f"{folder}: two images with the name {stem!r}: {index[stem].name!r} and {f.name!r}")
        index[stem] = f
    return index


def _view_key(view: str) -> tuple:
    return (VIEW_ORDER.index(view) if view in VIEW_ORDER else len(VIEW_ORDER), view)


@register_importer(COLLECTION)
def import_cdd_cesm(
    source_dir: str | os.PathLike, out_manifest: str | os.PathLike, *, images_folder: str = IMAGES_FOLDER
) -> Path:
    """Import the subtracted CESM views of CDD-CESM into a manifest (one unit per breast).

    Args:
        source_dir: folder holding ``Radiology-manual-annotations.xlsx`` and the images folder.
        out_manifest: manifest to write (``.csv``).
        images_folder: the subfolder of subtracted views.

    Returns:
        The manifest path; ``<stem>.import.json`` lies beside it.
    """
    source_dir = source_folder(KIND, source_dir)
    book = find_one(KIND, source_dir, WORKBOOK_PATTERN, "the workbook Radiology-manual-annotations.xlsx")
    folder = source_dir / images_folder
    if not folder.is_dir():
        raise missing_source(KIND, source_dir, f"the folder {images_folder}/")
    try:
        table = pd.read_excel(book, sheet_name=SHEET)
    except ValueError as err:
        raise ValueError(f"{book.name}: cannot read sheet {SHEET!r} ({err})") from err
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{book.name}, sheet {SHEET!r}: lacks columns {missing}; expected {list(COLUMNS)}")
    images = _index_images(folder)

    log = ImportLog(KIND, source_dir, rows_read=len(table))
    views: dict[str, dict] = {}  # image stem -> view record
    for i, rec in table.iterrows():
        where = f"{book.name}, sheet {SHEET!r}, row {i + 2}"
        stem = str(rec["Image_name"]).strip()
        label = str(rec[LABEL_COLUMN]).strip().lower()
        if str(rec["Type"]).strip().upper() != "CESM":
            log.leave_out("low-energy (DM) view, not a subtracted CESM view")
            continue
        if label == "normal":
            log.leave_out("normal (no finding)")
            continue
        if label not in ("benign", "malignant"):
            raise ValueError(f"{where} ({stem}): {LABEL_COLUMN!r} is {rec[LABEL_COLUMN]!r}; expected Benign, Malignant or Normal")
        if stem not in images:
            log.leave_out(f"image not in {images_folder}/")
            continue
        age = parse_age(rec["Age"], where=where)
        side = str(rec["Side"]).strip().upper()
        if side not in ("L", "R"):
            raise ValueError(f"{where} ({stem}): Side {rec['Side']!r}; expected L or R")
        record = {
            "patient": f"P{int(rec['Patient_ID'])}",
            "side": side,
            "view": str(rec["View"]).strip().upper(),
            "label": label,
            "age": age,
            "birads": rec.get("BIRADS"),
            "path": images[stem],
        }
        if stem in views:
            first = views[stem]
            if (first["label"], first["age"]) != (label, age):
                raise ValueError(f"{where}: image {stem} is listed twice with different label or age")
            log.leave_out("repeated row of the same image")
            continue
        views[stem] = record
        log.rows_used += 1

    breasts: dict[str, list[tuple[str, dict]]] = {}
    for stem, v in views.items():
        breasts.setdefault(f"{v['patient']}_{v['side']}", []).append((stem, v))
    rows = []
    for unit, items in sorted(breasts.items(), key=lambda kv: (int(kv[0][1:].split("_")[0]), kv[0])):
        items.sort(key=lambda sv: _view_key(sv[1]["view"]))
        for key in ("label", "age"):
            values = {v[key] for _, v in items}
            if len(values) > 1:
                raise ValueError(
                    f"{book.name}: the views of breast {unit} ({', '.join(s for s, _ in items)}) disagree on {key}: "
                    f"{sorted(values, key=str)}"
                )
        first = items[0][1]
        rows.append(
            {
                "patient_id": unit,
                "label": first["label"],
                "age": first["age"],
                "mammography": [v["path"] for _, v in items],
                "ultrasound": "",
                "group": first["patient"],
                "source_id": [s for s, _ in items],
                "label_source": "pathology/follow-up",
                "views": [v["view"] for _, v in items],
                "ref_birads": [v["birads"] for _, v in items],
            }
        )
    log.notes["views_written"] = len(views)
    log.notes["patients_with_both_labels"] = int(
        pd.DataFrame(rows).groupby("group")["label"].nunique().gt(1).sum() if rows else 0
    )
    return finish_import(log, rows, out_manifest)
