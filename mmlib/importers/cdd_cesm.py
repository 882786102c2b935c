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
  follow-up without saying which. BI-RADS per view is kept as ``ref_birads`` (a reading, never an input).
- Lesion boxes: where the release's hand-drawn segmentations (``Radiology_hand_drawn_segmentations_v2.csv``, a
  VGG Image Annotator export: ``#filename`` and a JSON ``region_shape_attributes`` per region: polygon, polyline,
  rect, circle or ellipse) lie beside the workbook, each view gets the box around all of its regions as
  ``mammography_bbox`` (``x0 y0 x1 y1`` in whole pixels, rounded outwards), so ``roi: true`` crops the lesion;
  views without a region keep the whole image. Point regions have no extent and are left out (counted in the
  sidecar's notes). The coordinates are the original images' pixels: a region reaching past its image (a resized
  mirror, for instance) is refused with the file and sizes, since scaling it would be a guess.
  ``segmentations=False`` skips the file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from . import Collection, ImportLog, find_one, finish_import, missing_source, parse_age, register_importer, source_folder

KIND = "cdd-cesm"
IMAGES_FOLDER = "Subtracted images of CDD-CESM"
WORKBOOK_PATTERN = "Radiology*manual*annotations*.xlsx"
SEGMENTATIONS_PATTERN = "Radiology*hand*drawn*segmentations*.csv"
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
        "Radiology_hand_drawn_segmentations_v2.csv  (optional: lesion outlines, giving ROI boxes)",
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


def region_box(shape: dict, *, where: str = "") -> tuple[float, float, float, float] | None:
    """Box ``(x0, y0, x1, y1)`` around one VGG Image Annotator region (``region_shape_attributes``); None for a
    point or an empty region. ValueError, naming ``where``, for an unknown shape or missing coordinates."""
    name = str(shape.get("name", "")).lower() if shape else ""
    try:
        if not name or name == "point":
            return None
        if name in ("polygon", "polyline"):
            xs, ys = [float(v) for v in shape["all_points_x"]], [float(v) for v in shape["all_points_y"]]
            if not xs or len(xs) != len(ys):
                raise ValueError(f"{len(xs)} x and {len(ys)} y points")
            return min(xs), min(ys), max(xs), max(ys)
        if name == "rect":
            x, y = float(shape["x"]), float(shape["y"])
            return x, y, x + float(shape["width"]), y + float(shape["height"])
        if name == "circle":
            cx, cy, r = float(shape["cx"]), float(shape["cy"]), float(shape["r"])
            return cx - r, cy - r, cx + r, cy + r
        if name == "ellipse":  # the box of an ellipse with radii rx, ry turned by theta (radians)
            cx, cy, rx, ry = (float(shape[k]) for k in ("cx", "cy", "rx", "ry"))
            c, s = math.cos(float(shape.get("theta") or 0)), math.sin(float(shape.get("theta") or 0))
            hx, hy = math.hypot(rx * c, ry * s), math.hypot(rx * s, ry * c)
            return cx - hx, cy - hy, cx + hx, cy + hy
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: region {shape!r} lacks usable coordinates ({err})") from None
    raise ValueError(f"{where}: region shape {name!r}; expected polygon, polyline, rect, circle, ellipse or point")


def read_segmentations(csv: Path, log: ImportLog | None = None) -> dict[str, tuple[float, float, float, float]]:
    """Image stem -> box around all of that image's regions, from the release's segmentation CSV."""
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"{csv.name}: cannot read the segmentation table ({err})") from err
    needed = ("#filename", "region_shape_attributes")
    if any(c not in table.columns for c in needed):
        raise ValueError(f"{csv.name}: lacks columns {[c for c in needed if c not in table.columns]}; expected a VGG "
                         f"Image Annotator export with {list(needed)}")
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for i, rec in table.iterrows():
        where = f"{csv.name}, line {i + 2} ({rec['#filename'].strip()})"
        text = rec["region_shape_attributes"].strip()
        try:
            shape = json.loads(text) if text else {}
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: region_shape_attributes is not JSON ({err.msg}): {text[:80]!r}") from None
        box = region_box(shape, where=where)
        if box is None:
            if log is not None and shape:
                log.notes["segmentation_points_left_out"] = log.notes.get("segmentation_points_left_out", 0) + 1
            continue
        stem = Path(rec["#filename"].strip()).stem.strip()
        if stem in boxes:
            a = boxes[stem]
            box = min(a[0], box[0]), min(a[1], box[1]), max(a[2], box[2]), max(a[3], box[3])
        boxes[stem] = box
    return boxes


def _check_box(box, image: Path, *, where: str) -> tuple[float, float, float, float]:
    from PIL import Image

    with Image.open(image) as im:
        width, height = im.size
    tol = 0.01 * max(width, height) + 1
    if box[0] < -tol or box[1] < -tol or box[2] > width + tol or box[3] > height + tol:
        raise ValueError(
            f"{where}: the lesion regions of {image.name} span ({box[0]:g}, {box[1]:g})-({box[2]:g}, {box[3]:g}), "
            f"outside the {width} x {height} image: the segmentations are in the original release's pixels and "
            "these images look resized; use the original images or import with segmentations=False"
        )
    return max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3])


def _box_text(box) -> str:
    if box is None:
        return ""
    return " ".join(str(v) for v in (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])))


def _view_key(view: str) -> tuple:
    return (VIEW_ORDER.index(view) if view in VIEW_ORDER else len(VIEW_ORDER), view)


@register_importer(COLLECTION)
def import_cdd_cesm(
    source_dir: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    images_folder: str = IMAGES_FOLDER,
    segmentations: bool = True,
) -> Path:
    """Import the subtracted CESM views of CDD-CESM into a manifest (one unit per breast).

    Args:
        source_dir: folder holding ``Radiology-manual-annotations.xlsx`` and the images folder.
        out_manifest: manifest to write (``.csv``).
        images_folder: the subfolder of subtracted views.
        segmentations: read the hand-drawn segmentation CSV into lesion boxes where it lies beside the workbook.

    Returns:
        The manifest path; ``<stem>.import.json`` lies beside it.
    """
    if not isinstance(segmentations, bool):
        raise ValueError(f"option segmentations must be true or false, got {segmentations!r}")
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
    seg_files = sorted(source_dir.glob(SEGMENTATIONS_PATTERN)) if segmentations else []
    if len(seg_files) > 1:
        raise ValueError(f"{source_dir}: several segmentation tables {[f.name for f in seg_files]}; keep one")
    boxes = read_segmentations(seg_files[0], log) if seg_files else {}
    log.notes["segmentations"] = seg_files[0].name if seg_files else None
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
            "box": _check_box(boxes[stem], images[stem], where=f"{seg_files[0].name}") if stem in boxes else None,
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
                **({"mammography_bbox": [_box_text(v["box"]) for _, v in items]} if boxes else {}),
            }
        )
    log.notes["views_written"] = len(views)
    if boxes:
        log.notes["views_with_lesion_box"] = sum(v["box"] is not None for v in views.values())
    log.notes["patients_with_both_labels"] = int(
        pd.DataFrame(rows).groupby("group")["label"].nunique().gt(1).sum() if rows else 0
    )
    return finish_import(log, rows, out_manifest)
