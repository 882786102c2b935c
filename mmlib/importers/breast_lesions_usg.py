"""BrEaST-Lesions_USG: one B-mode ultrasound scan per patient, with age (TCIA, doi:10.7937/9WKK-Q141).

One manifest row per case (patient): ``ultrasound`` = the case image, ``ultrasound_mask`` = its tumour mask,
``mammography`` empty for every row (the collection has none). Choices:

- Label from ``Classification``; the ``normal`` cases (no lesion) are left out and counted in the sidecar.
- ``label_source`` from ``Verification``: ``biopsy`` or ``follow-up`` (the words of the workbook without
  "confirmed by" / "care"; any other value is kept as written).
- Age "not available" is written empty (missing), never zero. Age is the only clinical input.
- Mask cells may hold several file names joined by ``&``: the tumour mask is the name containing ``tumor``
  (the first one if several); masks of other findings (``Mask_other_filename``) are not lesion masks and are
  ignored (their count is in the sidecar notes).
- BI-RADS category, descriptors (shape, margin, echogenicity, ...), the reader's interpretation and the tissue
  composition seen at the examination are readings of the image: kept only as ``ref_*`` metadata. Signs,
  symptoms (clinical history) and the histological diagnosis are kept as plain metadata, never as inputs:
  the signs/symptoms cells are free lists with many "not available" entries, and encoding them would be a
  modelling choice for the study, not for the importer.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from . import (
    Collection,
    ImportLog,
    _is_missing,
    find_one,
    finish_import,
    missing_source,
    parse_age,
    register_importer,
    source_folder,
)

KIND = "breast-lesions-usg"
IMAGES_FOLDER = "BrEaST-Lesions_USG-images_and_masks"
WORKBOOK_PATTERN = "BrEaST-Lesions-USG-clinical-data*.xlsx"

COLLECTION = Collection(
    kind=KIND,
    title="BrEaST-Lesions_USG (The Cancer Imaging Archive)",
    citation=(
        "Pawłowska A. et al., Curated benchmark dataset for ultrasound based breast lesion analysis, "
        "Scientific Data 11:148 (2024), doi:10.1038/s41597-024-02984-z"
    ),
    doi="10.7937/9WKK-Q141",
    url="https://www.cancerimagingarchive.net/collection/breast-lesions-usg/",
    license="CC BY 4.0",
    layout=(
        "BrEaST-Lesions-USG-clinical-data-<date>.xlsx  (clinical workbook, first sheet)",
        f"{IMAGES_FOLDER}/caseNNN.png, caseNNN_tumor.png  (scans and tumour masks)",
    ),
)

COLUMNS = ("CaseID", "Image_filename", "Mask_tumor_filename", "Age", "Verification", "Classification")
#: Radiologist's readings kept as ``ref_<lower-case name>`` metadata.
REFERENCE_COLUMNS = (
    "BIRADS",
    "Shape",
    "Margin",
    "Echogenicity",
    "Posterior_features",
    "Halo",
    "Calcifications",
    "Skin_thickening",
    "Interpretation",
    "Tissue_composition",
)
METADATA_COLUMNS = {"Signs": "signs", "Symptoms": "symptoms", "Diagnosis": "diagnosis", "Pixel_size": "pixel_size_cm"}


def _names(cell) -> list[str]:
    return [] if _is_missing(cell) else [n.strip() for n in str(cell).split("&") if n.strip()]


def _label_source(verification) -> str:
    text = "" if _is_missing(verification) else str(verification).strip().lower()
    text = text.removeprefix("confirmed by ").removesuffix(" care").strip()
    return text


def tumour_mask_name(cell) -> str | None:
    """The tumour mask's file name in a mask cell (names joined by ``&``), or ``None`` when there is none."""
    names = _names(cell)
    tumour = [n for n in names if "tumor" in n.lower() or "tumour" in n.lower()]
    return (tumour or names or [None])[0]


@register_importer(COLLECTION)
def import_breast_lesions_usg(
    source_dir: str | os.PathLike, out_manifest: str | os.PathLike, *, workbook: str | os.PathLike | None = None
) -> Path:
    """Import BrEaST-Lesions_USG into a manifest (one row per benign or malignant case).

    Args:
        source_dir: folder holding the clinical workbook and ``BrEaST-Lesions_USG-images_and_masks/``.
        out_manifest: manifest to write (``.csv``).
        workbook: the clinical workbook, when ``source_dir`` holds several versions.

    Returns:
        The manifest path; ``<stem>.import.json`` lies beside it.
    """
    source_dir = source_folder(KIND, source_dir)
    book = Path(workbook) if workbook else find_one(KIND, source_dir, WORKBOOK_PATTERN, "the clinical workbook " + WORKBOOK_PATTERN)
    if not book.is_file():
        raise missing_source(KIND, source_dir, f"the clinical workbook {book}")
    images = source_dir / IMAGES_FOLDER
    if not images.is_dir():
        raise missing_source(KIND, source_dir, f"the folder {IMAGES_FOLDER}/")
    # The first sheet holds the cases; the second one is the data dictionary.
    table = pd.read_excel(book, sheet_name=0)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{book.name}: first sheet lacks columns {missing}; expected {list(COLUMNS)}")

    log = ImportLog(KIND, source_dir, rows_read=len(table))
    log.notes["other_masks_ignored"] = 0
    log.notes["age_missing_read"] = 0
    rows = []
    for i, rec in table.iterrows():
        where = f"{book.name}, sheet row {i + 2} (CaseID {rec['CaseID']})"
        label = str(rec["Classification"]).strip().lower()
        age = parse_age(rec["Age"], where=where)
        log.notes["age_missing_read"] += age is None
        if label == "normal":
            log.leave_out("normal (no lesion)")
            continue
        if label not in ("benign", "malignant"):
            raise ValueError(f"{where}: Classification {rec['Classification']!r}; expected benign, malignant or normal")
        image_names = _names(rec["Image_filename"])
        if len(image_names) != 1:
            raise ValueError(f"{where}: Image_filename {rec['Image_filename']!r}; expected one file name")
        image = images / image_names[0]
        mask_name = tumour_mask_name(rec["Mask_tumor_filename"])
        mask = images / mask_name if mask_name else None
        for f in (image, mask):
            if f is not None and not f.is_file():
                raise missing_source(KIND, source_dir, f"{IMAGES_FOLDER}/{f.name} (listed in {where})")
        log.notes["other_masks_ignored"] += len(_names(rec.get("Mask_other_filename")))
        row = {
            "patient_id": Path(image_names[0]).stem,
            "label": label,
            "age": age,
            "mammography": "",
            "ultrasound": [image],
            "ultrasound_mask": [mask],
            "source_id": int(rec["CaseID"]),
            "label_source": _label_source(rec["Verification"]),
        }
        for col, name in METADATA_COLUMNS.items():
            if col in table.columns:
                row[name] = rec[col]
        for col in REFERENCE_COLUMNS:
            if col in table.columns:
                row["ref_" + col.lower()] = rec[col]
        rows.append(row)
        log.rows_used += 1
    return finish_import(log, rows, out_manifest)
