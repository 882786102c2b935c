"""CBIS-DDSM: curated screening mammograms with ROI masks (TCIA, doi:10.7937/K9/TCIA.2016.7O02S9CY).

Reads the mass and calcification description CSVs (``mass_case_description_train_set.csv`` and its test and
``calc_`` siblings; one row per abnormality) and the DICOM files they name. Choices:

- One unit per (patient, breast): ``patient_id`` ``P_00001_LEFT``, ``group`` ``P_00001``. Label malignant if any
  abnormality of that breast is ``MALIGNANT``; ``BENIGN`` and ``BENIGN_WITHOUT_CALLBACK`` count as benign.
  ``label_source`` is ``pathology``, or ``benign without callback`` when every abnormality of the breast is
  (those were not worked up further).
- ``mammography`` = the breast's full-mammogram DICOM views (CC, then MLO). The mass and calcification releases
  hold separate copies of the same mammogram; one file per view is kept (the first listed; mass CSVs are read
  first), the others are counted in the sidecar notes.
- ``mammography_mask``: per view, the ROI mask of the abnormality that decides the label (a malignant one
  first, then the lowest abnormality id) among the abnormalities drawn on the kept file. The CSV's "ROI mask"
  and "cropped image" columns are known to be swapped in some rows, so the mask is the candidate DICOM whose
  size equals the full mammogram's (the crop is smaller). A view without such a file gets an empty item.
- Paths are resolved as written in the CSV (below ``source_dir`` or ``source_dir/CBIS-DDSM``); when the
  download has the NBIA layout instead (``<folder>/<date-study>/<series>/1-1.dcm``), the file is found in the
  CSV's top folder by its SeriesInstanceUID (the second-last part of the CSV path).
- The CSV's train/test split is kept in ``source_split`` (metadata; the project's ``split`` column stays
  empty). ``age`` is empty (CBIS-DDSM has none). Assessment (BI-RADS) and breast density are ``ref_*``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pydicom

from . import Collection, ImportLog, _is_missing, finish_import, missing_source, register_importer, source_folder

KIND = "cbis-ddsm"
CSV_PATTERN = "*case_description*.csv"
CSV_NAMES = (
    "mass_case_description_train_set.csv",
    "mass_case_description_test_set.csv",
    "calc_case_description_train_set.csv",
    "calc_case_description_test_set.csv",
)
REQUIRED = ("patient id", "left or right breast", "image view", "abnormality id", "abnormality type", "pathology", "image file path")
PATHOLOGY = {"MALIGNANT": "malignant", "BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign"}
VIEW_ORDER = ("CC", "MLO")

COLLECTION = Collection(
    kind=KIND,
    title="CBIS-DDSM: Curated Breast Imaging Subset of DDSM (The Cancer Imaging Archive)",
    citation=(
        "Lee R. S. et al., A curated mammography data set for use in computer-aided detection and diagnosis "
        "research, Scientific Data 4:170177 (2017), doi:10.1038/sdata.2017.177"
    ),
    doi="10.7937/K9/TCIA.2016.7O02S9CY",
    url="https://www.cancerimagingarchive.net/collection/cbis-ddsm/",
    license="CC BY 3.0",
    layout=(
        *(f"{name}  (description CSV; at least one)" for name in CSV_NAMES),
        "CBIS-DDSM/<Mass|Calc>-<Training|Test>_P_xxxxx_<LEFT|RIGHT>_<CC|MLO>[_n]/...dcm  (DICOM, as downloaded)",
    ),
)


def _clean(path_cell) -> str:
    return str(path_cell).strip().strip('"').strip().replace("\\", "/")


class _DicomFinder:
    """Finds the DICOM files a CSV path names, in the CSV's own layout or the NBIA download layout."""

    def __init__(self, source_dir: Path):
        self.roots = [r for r in (source_dir, source_dir / "CBIS-DDSM") if r.is_dir()]
        self._headers: dict[Path, pydicom.Dataset] = {}

    def header(self, path: Path) -> pydicom.Dataset:
        if path not in self._headers:
            self._headers[path] = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "Rows", "Columns"]
            )
        return self._headers[path]

    def size(self, path: Path) -> tuple[int, int]:
        h = self.header(path)
        return int(h.get("Rows", 0) or 0), int(h.get("Columns", 0) or 0)

    def candidates(self, csv_path: str) -> list[Path]:
        if _is_missing(csv_path):
            return []
        parts = csv_path.split("/")
        for root in self.roots:
            if (root / csv_path).is_file():
                return [root / csv_path]
        for root in self.roots:
            folder = root / parts[0]
            if len(parts) > 1 and folder.is_dir():
                files = sorted(folder.rglob("*.dcm"))
                if len(parts) >= 3:
                    same_series = [f for f in files if str(self.header(f).get("SeriesInstanceUID", "")) == parts[-2]]
                    files = same_series or files
                return files
        return []


def _read_csvs(files: list[Path]) -> list[tuple[Path, pd.DataFrame]]:
    out = []
    for f in files:
        table = pd.read_csv(f, dtype=str, keep_default_na=False)
        table.columns = [c.strip().lower().replace("_", " ") for c in table.columns]
        missing = [c for c in REQUIRED if c not in table.columns]
        if missing:
            raise ValueError(f"{f.name}: lacks columns {missing}; expected {list(REQUIRED)} among its columns")
        out.append((f, table))
    return out


def _split_of(csv: Path, image_path: str) -> str:
    for name in (csv.name.lower(), image_path.split("/")[0].lower()):
        if "train" in name:
            return "train"
        if "test" in name:
            return "test"
    return ""


def _joined(values) -> list[str]:
    return sorted({str(v).strip() for v in values if not _is_missing(v)})


@register_importer(COLLECTION)
def import_cbis_ddsm(
    source_dir: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    csv_files: list[str | os.PathLike] | None = None,
) -> Path:
    """Import CBIS-DDSM into a manifest (one unit per breast, full mammograms as views, ROI masks).

    Args:
        source_dir: folder holding the description CSVs and the DICOM folders (or ``CBIS-DDSM/`` with them).
        out_manifest: manifest to write (``.csv``).
        csv_files: the description CSVs to read; default: every ``*case_description*.csv`` of ``source_dir``,
            mass files first.

    Returns:
        The manifest path; ``<stem>.import.json`` lies beside it.
    """
    source_dir = source_folder(KIND, source_dir)
    if csv_files is None:
        found = sorted(source_dir.glob(CSV_PATTERN), key=lambda p: (not p.name.lower().startswith("mass"), p.name))
        if not found:
            raise missing_source(KIND, source_dir, "description CSVs such as " + ", ".join(CSV_NAMES))
        csv_files = found
    files = [Path(f) if Path(f).is_absolute() else source_dir / f for f in csv_files]
    for f in files:
        if not f.is_file():
            raise missing_source(KIND, source_dir, f"the description CSV {f.name}")
    finder = _DicomFinder(source_dir)

    log = ImportLog(KIND, source_dir)
    log.notes.update(csv_files=[f.name for f in files], duplicate_view_files=0, views_without_mask=0)
    breasts: dict[tuple[str, str], list[dict]] = {}
    for csv, table in _read_csvs(files):
        log.rows_read += len(table)
        for i, rec in table.iterrows():
            where = f"{csv.name}, line {i + 2}"
            pathology = rec["pathology"].strip().upper()
            if pathology not in PATHOLOGY:
                raise ValueError(f"{where}: pathology {rec['pathology']!r}; expected one of {sorted(PATHOLOGY)}")
            image_path = _clean(rec["image file path"])
            side = rec["left or right breast"].strip().upper()
            if side not in ("LEFT", "RIGHT"):
                raise ValueError(f"{where}: 'left or right breast' is {side!r}; expected LEFT or RIGHT")
            breasts.setdefault((rec["patient id"].strip(), side), []).append(
                {
                    "view": rec["image view"].strip().upper(),
                    "abnormality": (rec["abnormality type"].strip().lower(), int(float(rec["abnormality id"]))),
                    "pathology": pathology,
                    "label": PATHOLOGY[pathology],
                    "image_path": image_path,
                    "roi_path": _clean(rec.get("roi mask file path", "")),
                    "crop_path": _clean(rec.get("cropped image file path", "")),
                    "split": _split_of(csv, image_path),
                    "assessment": rec.get("assessment", ""),
                    "density": rec.get("breast density", ""),
                    "where": where,
                }
            )
            log.rows_used += 1

    rows = []
    for (patient, side), abnormalities in sorted(breasts.items()):
        kept: dict[str, str] = {}  # view -> CSV path of the one full-mammogram file kept for it
        for a in abnormalities:
            if a["view"] not in kept:
                kept[a["view"]] = a["image_path"]
        log.notes["duplicate_view_files"] += len({a["image_path"] for a in abnormalities}) - len(kept)
        views = sorted(kept, key=lambda v: (VIEW_ORDER.index(v) if v in VIEW_ORDER else len(VIEW_ORDER), v))
        images, masks = [], []
        for view in views:
            on_file = [a for a in abnormalities if a["image_path"] == kept[view]]
            full = finder.candidates(kept[view])
            if len(full) != 1:
                what = "no file" if not full else f"{len(full)} candidate files"
                raise missing_source(KIND, source_dir, f"the full mammogram {kept[view]} ({on_file[0]['where']}; found {what})")
            images.append(full[0])
            masks.append(_pick_mask(finder, full[0], on_file))
            log.notes["views_without_mask"] += masks[-1] is None
        labels = {a["label"] for a in abnormalities}
        pathologies = {a["pathology"] for a in abnormalities}
        rows.append(
            {
                "patient_id": f"{patient}_{side}",
                "label": "malignant" if "malignant" in labels else "benign",
                "age": None,
                "mammography": images,
                "ultrasound": "",
                "group": patient,
                "mammography_mask": masks,
                "source_id": [kept[v].split("/")[0] for v in views],
                "label_source": "benign without callback" if pathologies == {"BENIGN_WITHOUT_CALLBACK"} else "pathology",
                "source_split": _joined(a["split"] for a in abnormalities),
                "views": views,
                "abnormality_types": _joined(a["abnormality"][0] for a in abnormalities),
                "n_abnormalities": len(abnormalities),
                "source_pathology": sorted(pathologies),
                "ref_assessment": _joined(a["assessment"] for a in abnormalities),
                "ref_breast_density": _joined(a["density"] for a in abnormalities),
            }
        )
    return finish_import(log, rows, out_manifest)


def _pick_mask(finder: _DicomFinder, full: Path, abnormalities: list[dict]) -> Path | None:
    """The ROI mask of the deciding abnormality: the DICOM among its ROI/crop files as large as the mammogram."""
    size = finder.size(full)
    ordered = sorted(abnormalities, key=lambda a: (a["label"] != "malignant", a["abnormality"]))
    for a in ordered:
        candidates = finder.candidates(a["roi_path"]) + finder.candidates(a["crop_path"])
        for c in dict.fromkeys(candidates):
            if c != full and finder.size(c) == size:
                return c
    return None
