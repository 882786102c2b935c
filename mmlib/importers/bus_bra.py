"""BUS-BRA: biopsy-proven breast ultrasound, several images per patient (Zenodo, doi:10.5281/zenodo.8231412).

Reads ``bus_data.csv`` (columns ID, Case, Histology, Pathology, BIRADS, Device, Width, Height, Side, BBOX),
images ``Images/<ID>.png`` and masks ``Masks/mask_<ID>.png``. The published release names masks after the ID
without its ``bus_`` prefix (``bus_0001-l`` -> ``mask_0001-l.png``); both names are looked for. Choices:

- One unit per ``Case`` (patient): all its images are ``ultrasound`` views, in CSV order, each with its mask
  (an empty item where none) and box. ``mammography`` and ``age`` are empty (BUS-BRA has neither).
- Label from ``Pathology`` (benign/malignant, all biopsy-proven: ``label_source`` = ``biopsy``). A case whose
  images disagree is split into one unit per (Case, Side), ``<case>_<side>``, grouped by the case, so the two
  breasts stay on one side of any split; a disagreement within one side is refused.
- ``BBOX`` is read as ``[x, y, width, height]`` in pixels (the release's format, e.g. ``[91, 24, 103, 79]``;
  any brackets, commas or spaces between the four numbers are accepted) and written as
  ``x0 y0 x1 y1`` = ``x y x+width y+height``. Pass ``bbox_format="xyxy"`` for a table that already holds
  corners. A box that leaves the image (Width x Height, 1 px tolerance) is refused, which also catches a
  wrong format.
- BI-RADS is kept as ``ref_birads`` (a reading, never an input); histology, device and side as metadata.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from . import Collection, ImportLog, _is_missing, finish_import, missing_source, register_importer, source_folder

KIND = "bus-bra"
CSV_NAME = "bus_data.csv"
COLUMNS = ("ID", "Case", "Pathology", "BBOX")
BBOX_FORMATS = ("xywh", "xyxy")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")

COLLECTION = Collection(
    kind=KIND,
    title="BUS-BRA: A Breast Ultrasound Dataset for Assessing Computer-aided Diagnosis Systems (Zenodo)",
    citation=(
        "Gómez-Flores W., Gregorio-Calas M. J., Coelho de Albuquerque Pereira W., BUS-BRA: a breast ultrasound "
        "dataset for assessing computer-aided diagnosis systems, Medical Physics 51(4):3110-3123 (2024), "
        "doi:10.1002/mp.16812"
    ),
    doi="10.5281/zenodo.8231412",
    url="https://zenodo.org/records/8231412",
    license="CC BY 4.0",
    layout=(
        f"{CSV_NAME}  (ID, Case, Histology, Pathology, BIRADS, Device, Width, Height, Side, BBOX)",
        "Images/<ID>.png  (e.g. Images/bus_0001-l.png)",
        "Masks/mask_<ID without bus_>.png  (optional lesion masks, e.g. Masks/mask_0001-l.png)",
    ),
)


def parse_bbox(cell, *, bbox_format: str = "xywh", where: str = "") -> tuple[float, float, float, float] | None:
    """A box cell as corners ``(x0, y0, x1, y1)``, or ``None`` for an empty cell.

    Args:
        cell: text holding four numbers, e.g. ``"[91, 24, 103, 79]"`` or ``"91 24 103 79"``.
        bbox_format: ``"xywh"`` (x, y, width, height) or ``"xyxy"`` (corners).
        where: file and row, for the error message.
    """
    if bbox_format not in BBOX_FORMATS:
        raise ValueError(f"bbox_format must be one of {BBOX_FORMATS}, got {bbox_format!r}")
    if _is_missing(cell):
        return None
    numbers = [float(n) for n in _NUMBER.findall(str(cell))]
    if len(numbers) != 4:
        raise ValueError(f"{where}: BBOX {cell!r} does not hold four numbers")
    a, b, c, d = numbers
    x0, y0, x1, y1 = (a, b, a + c, b + d) if bbox_format == "xywh" else (a, b, c, d)
    if not (x1 > x0 and y1 > y0 and x0 >= 0 and y0 >= 0):
        raise ValueError(f"{where}: BBOX {cell!r} read as {bbox_format} gives an empty or negative box")
    return x0, y0, x1, y1


def _box_text(box) -> str:
    return "" if box is None else " ".join(f"{v:g}" for v in box)


def _mask_for(masks: Path, image_id: str) -> Path | None:
    names = [f"mask_{image_id}.png"]
    if image_id.startswith("bus_"):
        names.insert(0, f"mask_{image_id[len('bus_'):]}.png")
    return next((masks / n for n in names if (masks / n).is_file()), None)


def _case_id(case) -> str:
    text = str(case).strip()
    return f"bus_{int(float(text)):04d}" if re.fullmatch(r"\d+(\.0+)?", text) else f"bus_{text}"


@register_importer(COLLECTION)
def import_bus_bra(source_dir: str | os.PathLike, out_manifest: str | os.PathLike, *, bbox_format: str = "xywh") -> Path:
    """Import BUS-BRA into a manifest (one unit per patient, all its images as ultrasound views).

    Args:
        source_dir: folder holding ``bus_data.csv``, ``Images/`` and (optionally) ``Masks/``.
        out_manifest: manifest to write (``.csv``).
        bbox_format: how ``BBOX`` is written in the CSV: ``"xywh"`` (the release) or ``"xyxy"``.

    Returns:
        The manifest path; ``<stem>.import.json`` lies beside it.
    """
    if bbox_format not in BBOX_FORMATS:
        raise ValueError(f"bbox_format must be one of {BBOX_FORMATS}, got {bbox_format!r}")
    source_dir = source_folder(KIND, source_dir)
    csv = source_dir / CSV_NAME
    if not csv.is_file():
        raise missing_source(KIND, source_dir, f"the table {CSV_NAME}")
    images, masks = source_dir / "Images", source_dir / "Masks"
    if not images.is_dir():
        raise missing_source(KIND, source_dir, "the folder Images/")
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{csv.name}: lacks columns {missing}; expected {list(COLUMNS)} among its columns")
    if table["ID"].duplicated().any():
        raise ValueError(f"{csv.name}: ID not unique: {sorted(table['ID'][table['ID'].duplicated()])[:10]}")

    log = ImportLog(KIND, source_dir, rows_read=len(table))
    log.notes.update(images_without_mask=0, masks_folder=masks.is_dir())
    views = []
    for i, rec in table.iterrows():
        image_id = rec["ID"].strip()
        where = f"{csv.name}, line {i + 2} (ID {image_id})"
        label = rec["Pathology"].strip().lower()
        if label not in ("benign", "malignant"):
            raise ValueError(f"{where}: Pathology {rec['Pathology']!r}; expected benign or malignant")
        image = images / f"{image_id}.png"
        if not image.is_file():
            raise missing_source(KIND, source_dir, f"Images/{image.name} (listed in {where})")
        box = parse_bbox(rec["BBOX"], bbox_format=bbox_format, where=where)
        if box is not None and rec.get("Width", "").strip() and rec.get("Height", "").strip():
            width, height = float(rec["Width"]), float(rec["Height"])
            if box[2] > width + 1 or box[3] > height + 1:
                raise ValueError(
                    f"{where}: BBOX {rec['BBOX']!r} read as {bbox_format} ends at ({box[2]:g}, {box[3]:g}), "
                    f"outside the {width:g} x {height:g} image; is bbox_format right?"
                )
        mask = _mask_for(masks, image_id) if masks.is_dir() else None
        log.notes["images_without_mask"] += mask is None
        views.append(
            {
                "id": image_id,
                "case": _case_id(rec["Case"]),
                "side": rec.get("Side", "").strip().lower(),
                "label": label,
                "image": image,
                "mask": mask,
                "box": _box_text(box),
                "histology": rec.get("Histology", ""),
                "birads": rec.get("BIRADS", ""),
                "device": rec.get("Device", ""),
            }
        )
        log.rows_used += 1

    units: dict[str, list[dict]] = {}
    for v in views:
        units.setdefault(v["case"], []).append(v)
    split_cases = []
    for case in [c for c, vs in units.items() if len({v["label"] for v in vs}) > 1]:
        split_cases.append(case)
        for v in units.pop(case):
            if not v["side"]:
                raise ValueError(f"{csv.name}: case {case} has both labels and image {v['id']} has no Side")
            units.setdefault(f"{case}_{v['side']}", []).append(v)
    rows = []
    for unit, vs in sorted(units.items(), key=lambda kv: (kv[1][0]["case"], kv[0])):
        labels = {v["label"] for v in vs}
        if len(labels) > 1:
            raise ValueError(f"{csv.name}: images {[v['id'] for v in vs]} of one breast ({unit}) have both labels")
        rows.append(
            {
                "patient_id": unit,
                "label": labels.pop(),
                "age": None,
                "mammography": "",
                "ultrasound": [v["image"] for v in vs],
                "group": vs[0]["case"],
                "ultrasound_mask": [v["mask"] for v in vs],
                "ultrasound_bbox": [v["box"] for v in vs],
                "source_id": [v["id"] for v in vs],
                "label_source": "biopsy",
                "side": [v["side"] for v in vs],
                "histology": [v["histology"] for v in vs],
                "device": [v["device"] for v in vs],
                "ref_birads": [v["birads"] for v in vs],
            }
        )
    log.notes["cases_split_by_side"] = sorted(split_cases)
    return finish_import(log, rows, out_manifest)
