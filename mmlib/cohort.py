"""Loading and validating a cohort manifest (the format is described in :mod:`mmlib.schema`).

:func:`load_manifest` reads the whole manifest, checks every row, column and image, and either returns a
:class:`Cohort` or raises one :class:`ManifestError` listing *all* the problems found, each with the
spreadsheet row (header = row 1), the column and what was expected. Things that are allowed but worth
knowing (a missing age, a tiny image, a single class) are collected in :attr:`Cohort.warnings`.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from numbers import Number
from pathlib import Path

import numpy as np
import pandas as pd

from . import imaging
from .schema import (
    AGE_RANGE,
    CLINICAL_PREFIX,
    IMAGE_MODALITIES,
    LABELS,
    MODALITIES,
    PATH_SEPARATOR,
    REQUIRED_COLUMNS,
    SPLITS,
    bbox_column,
    mask_column,
    scenario_name,
)

#: Cell values read as "missing" in numeric columns (compared case-insensitively, after stripping).
MISSING_TOKENS: frozenset[str] = frozenset({"", "na", "n/a", "nan", "none", "null"})
#: Optional columns, in the order :func:`write_manifest` writes them after the required ones.
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "split",
    "group",
    *(mask_column(m) for m in IMAGE_MODALITIES),
    *(bbox_column(m) for m in IMAGE_MODALITIES),
)
#: Columns that :attr:`Cohort.patients` derives, so a manifest may not bring its own.
DERIVED_COLUMNS: tuple[str, ...] = ("label_name",)


@dataclass
class Issue:
    """One problem (or warning) in a manifest.

    Attributes:
        row: spreadsheet row number (header = 1, first patient = 2); None for whole-file problems.
        column: the column concerned, or None.
        message: what is wrong and what was expected.
        patient_id: the row's patient id, when known.
        manifest: the manifest's file name, shown at the start of the message.
    """

    row: int | None
    column: str | None
    message: str
    patient_id: str | None = None
    manifest: str | None = None

    def __str__(self) -> str:
        where = [self.manifest] if self.manifest else []
        if self.row is not None:
            where.append(f"row {self.row}" + (f" (patient {self.patient_id})" if self.patient_id else ""))
        text = " ".join(where)
        if self.column is not None:
            text += (", " if self.row is not None else " ") + f"column '{self.column}'"
        return f"{text}: {self.message}" if text else self.message


class ManifestError(ValueError):
    """A manifest that cannot be used; ``issues`` holds every problem found, ``path`` the manifest."""

    def __init__(self, path: str | Path, issues: list[Issue]):
        self.path = Path(path)
        self.issues = list(issues)
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        n = len(self.issues)
        super().__init__(f"{self.path}: {n} problem{'s' if n != 1 else ''} found\n{lines}")


# ----------------------------------------------------------------------------------------------- cohort


@dataclass(eq=False)
class Cohort:
    """A validated manifest.

    Attributes:
        manifest: absolute path of the manifest file.
        root: the manifest's folder (relative image paths start there).
        patients: one row per manifest row, in manifest order, with the normalised columns
            ``patient_id`` (str), ``label`` (int 0/1), ``label_name``, ``age`` (float, NaN = missing),
            ``mammography``/``ultrasound`` (list of absolute Paths, ``[]`` = missing), ``<modality>_mask``
            (list of Path or None, aligned with the images), ``<modality>_bbox`` (list of
            ``(x0, y0, x1, y1)`` or None), ``split`` (``dev``/``test``/``""``), ``group`` (str),
            every ``clinical_*`` column as float, then any other manifest column as text metadata.
        warnings: issues that do not stop the cohort from being used.
        source_rows: the spreadsheet row (header = 1) of each patient, for messages about a row.
    """

    manifest: Path
    root: Path
    patients: pd.DataFrame
    warnings: list[Issue] = field(default_factory=list)
    source_rows: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.patients)

    @property
    def labels(self) -> np.ndarray:
        """Targets, int ``(N,)`` (0 benign, 1 malignant)."""
        return self.patients["label"].to_numpy(dtype=np.int64)

    @property
    def clinical_columns(self) -> list[str]:
        """The clinical model inputs: ``["age", *clinical_* columns]``."""
        return ["age", *_clinical_names(self.patients.columns)]

    def presence(self) -> pd.DataFrame:
        """Which inputs each patient has: bool columns in :data:`mmlib.schema.MODALITIES` order.

        An image modality is present when it lists at least one image; ``clinical`` when any of
        :attr:`clinical_columns` has a value.
        """
        out = {m: self.patients[m].map(len).to_numpy() > 0 for m in IMAGE_MODALITIES}
        out["clinical"] = self.patients[self.clinical_columns].notna().any(axis=1).to_numpy()
        return pd.DataFrame(out, index=self.patients.index)[list(MODALITIES)]

    def subset(self, patient_ids) -> Cohort:
        """The cohort restricted to ``patient_ids``, in the order given.

        Per-patient warnings of the kept patients are kept; cohort-wide ones are recomputed.

        Raises:
            ValueError: an id that is not in the cohort, or an id given twice.
        """
        ids = [str(p) for p in patient_ids]
        seen, twice = set(), []
        for p in ids:
            (twice.append(p) if p in seen else seen.add(p))
        if twice:
            raise ValueError(f"patient_ids lists {sorted(set(twice))[:10]} more than once")
        position = {p: i for i, p in enumerate(self.patients["patient_id"])}
        unknown = [p for p in ids if p not in position]
        if unknown:
            raise ValueError(f"patient_ids not in {self.manifest.name}: {unknown[:10]}")
        patients = self.patients.iloc[[position[p] for p in ids]].reset_index(drop=True)
        kept = set(ids)
        warnings = [w for w in self.warnings if w.row is not None and w.patient_id in kept]
        warnings += _cohort_warnings(patients, self.manifest.name)
        rows = [self.source_rows[position[p]] for p in ids] if self.source_rows else []
        return Cohort(manifest=self.manifest, root=self.root, patients=patients, warnings=warnings, source_rows=rows)

    def summary(self) -> dict:
        """Descriptive numbers of the cohort (plain Python types, ready for JSON).

        Returns:
            dict with ``n_patients``, ``n_groups``, ``labels`` (count per label name), ``modalities``
            (patients with each input), ``modalities_by_label``, ``scenarios`` (patients per combination
            of present inputs, named by :func:`mmlib.schema.scenario_name`), ``age`` (``n``, ``mean``,
            ``sd``, ``missing`` for ``all`` and per label; None where undefined), ``views`` (per image
            modality: total ``images`` and ``per_patient`` = {number of images: patients}), ``splits``
            (``dev``, ``test``, ``unassigned``) and ``n_warnings``.
        """
        df = self.patients
        presence = self.presence()
        names = df["label_name"]
        out: dict = {
            "n_patients": int(len(df)),
            "n_groups": int(df["group"].nunique()),
            "labels": {name: int((names == name).sum()) for name in LABELS},
            "modalities": {m: int(presence[m].sum()) for m in MODALITIES},
            "modalities_by_label": {
                name: {m: int(presence.loc[(names == name).to_numpy(), m].sum()) for m in MODALITIES}
                for name in LABELS
            },
        }
        scenarios: dict[str, int] = {}
        for flags in presence.itertuples(index=False):
            present = [m for m, flag in zip(MODALITIES, flags) if flag]
            key = scenario_name(present) if present else "none"
            scenarios[key] = scenarios.get(key, 0) + 1
        out["scenarios"] = scenarios
        out["age"] = {"all": _age_stats(df["age"])}
        for name in LABELS:
            out["age"][name] = _age_stats(df.loc[names == name, "age"])
        out["views"] = {}
        for m in IMAGE_MODALITIES:
            counts = df[m].map(len)
            out["views"][m] = {
                "images": int(counts.sum()),
                "per_patient": {int(k): int(v) for k, v in sorted(counts.value_counts().items())},
            }
        split = df["split"]
        out["splits"] = {"dev": int((split == "dev").sum()), "test": int((split == "test").sum()),
                         "unassigned": int((split == "").sum())}
        out["n_warnings"] = len(self.warnings)
        return out


def _age_stats(age: pd.Series) -> dict:
    values = age.dropna().to_numpy(dtype=float)
    return {
        "n": int(values.size),
        "mean": float(values.mean()) if values.size else None,
        "sd": float(values.std(ddof=1)) if values.size > 1 else None,
        "missing": int(age.isna().sum()),
    }


def _clinical_names(columns) -> list[str]:
    return [c for c in columns if str(c).startswith(CLINICAL_PREFIX)]


def _cohort_warnings(patients: pd.DataFrame, manifest_name: str) -> list[Issue]:
    """Cohort-wide warnings: a single class, a partly filled split, a group on both sides of a fixed split."""
    out = []
    present = sorted(set(patients["label_name"]) - {""})  # "": unlabelled rows (prediction)
    if len(present) == 1:
        out.append(Issue(None, "label", f"only one class present: all {len(patients)} patients are "
                         f"'{present[0]}'; discrimination metrics need both classes", None, manifest_name))
    fixed = patients[patients["split"] != ""]
    if 0 < len(fixed) < len(patients):
        out.append(Issue(None, "split", f"'split' is filled for {len(fixed)} of {len(patients)} patients; fill it "
                         "for every patient or for none (the splitter refuses a partial one)", None, manifest_name))
    for group, parts in fixed.groupby("group", sort=True)["split"]:
        if parts.nunique() > 1:
            ids = list(fixed.loc[fixed["group"] == group, "patient_id"])
            msg = (f"group '{group}' has patients in both dev and test ({', '.join(ids[:10])}); "
                   "rows of one group must stay on one side of the split")
            out.append(Issue(None, "group", msg, None, manifest_name))
    return out


# ----------------------------------------------------------------------------------------------- loading


def _read_records(path: Path, issue) -> tuple[list[str], list[tuple[int, list[str]]]] | None:
    """Header and ``(spreadsheet row, cells)`` of every non-blank record; None when unreadable."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            records = list(csv.reader(f))
    except UnicodeDecodeError as e:
        issue(None, None, f"not a UTF-8 text CSV file ({e.reason} at byte {e.start}); save it as CSV UTF-8")
        return None
    except csv.Error as e:
        issue(None, None, f"not a readable CSV file ({e})")
        return None
    # A spreadsheet numbers every record, blank ones included, so row numbers count them too.
    numbered = [(i + 1, rec) for i, rec in enumerate(records) if any(cell.strip() for cell in rec)]
    if not numbered:
        issue(None, None, "the file is empty; expected a header line with the columns "
              + ", ".join(REQUIRED_COLUMNS) + " and one row per patient")
        return None
    (_, header), body = numbered[0], numbered[1:]
    return [h.strip() for h in header], body


def _missing(text: str) -> bool:
    return text.strip().lower() in MISSING_TOKENS


def _number(text: str) -> float:
    """Parse a numeric cell: NaN when missing; ValueError with the message for a bad one."""
    if _missing(text):
        return math.nan
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"'{text}' is not a finite number")
    return value


def _items(text: str) -> list[str]:
    """``|``-separated items, stripped; an empty cell has none."""
    return [] if not text.strip() else [t.strip() for t in text.split(PATH_SEPARATOR)]


def _resolve(root: Path, item: str) -> Path:
    p = Path(item).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else root / p))


def load_manifest(path: str | Path, *, decode_images: bool = True, small_image_px: int = 64,
                  required: tuple[str, ...] = REQUIRED_COLUMNS, strict_masks: bool = False) -> Cohort:
    """Load and validate a cohort manifest.

    Every row and column is checked before anything is raised, so one run reports every problem: the file
    (missing, not a ``.csv``, unreadable, empty), missing required columns, duplicate patient ids, labels
    other than benign/malignant (any case, spaces ignored), ages that are not numbers or outside
    :data:`mmlib.schema.AGE_RANGE`, rows without any input, image files that are missing or cannot be read,
    masks and boxes that do not match the images, bad box text, split values other than dev/test, and
    non-numeric ``clinical_*`` values. Paths are relative to the manifest's folder (absolute ones are kept).

    Args:
        path: the manifest CSV.
        decode_images: fully decode every image and mask (:func:`mmlib.imaging.read_image`); with False
            only their headers are read (size, format), which is much faster on large cohorts.
        small_image_px: images whose shorter side is below this give a warning.
        required: the columns that must be present (default: all of :data:`mmlib.schema.REQUIRED_COLUMNS`).
            Prediction needs fewer: without ``label`` in it, a missing column or an empty cell makes the row
            unlabelled (``label`` -1, ``label_name`` ""); other absent columns read as empty cells.
        strict_masks: every listed mask is decoded and must hold a lesion and have its image's exact size
            (where masks are used as the expert's lesion); otherwise a mask of the image's aspect at another
            resolution is accepted and an empty one reads as "no lesion".

    Returns:
        the :class:`Cohort`; its ``warnings`` hold missing ages, small images, a single class and groups
        spanning dev and test.

    Raises:
        ManifestError: listing every problem with its row, column and what was expected.
    """
    manifest = Path(os.path.abspath(Path(path).expanduser()))
    root = manifest.parent
    name = manifest.name
    issues: list[Issue] = []
    warnings: list[Issue] = []

    def issue(row, column, message, pid=None):
        issues.append(Issue(row, column, message, pid, name))

    def warn(row, column, message, pid=None):
        warnings.append(Issue(row, column, message, pid, name))

    def refuse(message):
        raise ManifestError(manifest, [Issue(None, None, message, None, name)])

    if not manifest.exists():
        refuse("file not found")
    if not manifest.is_file():
        refuse("is a folder; expected a manifest .csv file")
    if manifest.suffix.lower() != ".csv":
        refuse(f"expected a .csv file, got a '{manifest.suffix}' file")
    read = _read_records(manifest, issue)
    if read is None:
        raise ManifestError(manifest, issues)
    header, body = read

    # ---------------------------------------------------------------- columns
    seen_cols: dict[str, int] = {}
    for i, col in enumerate(header):
        if col and col in seen_cols:
            issue(1, col, f"column name appears twice (columns {seen_cols[col] + 1} and {i + 1})")
        seen_cols.setdefault(col, i)
    missing_cols = [c for c in required if c not in seen_cols]
    if missing_cols:
        found = ", ".join(f"'{c}'" for c in header if c) or "none"
        msg = f"missing required column(s) {', '.join(repr(c) for c in missing_cols)}; found columns: {found}"
        lower = {c.lower(): c for c in header}
        hints = [f"'{lower[c]}'" for c in missing_cols if c in lower]
        if hints:
            msg += f" (column names are case-sensitive: rename {', '.join(hints)})"
        if len(header) == 1 and ";" in header[0]:
            msg += " (the header looks ';'-separated; a manifest is comma-separated)"
        issue(None, None, msg)
    for col in DERIVED_COLUMNS:
        if col in seen_cols:
            issue(1, col, f"'{col}' is computed from 'label'; rename this column")
    unnamed = [i for i, c in enumerate(header) if not c]
    if not body:
        issue(None, None, "no patient rows below the header")

    clinical_cols = _clinical_names(c for c in header if c)
    metadata_cols = [c for c in header if c and c not in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *clinical_cols)]
    has = seen_cols.__contains__

    # ---------------------------------------------------------------- rows
    rows_out: list[dict] = []
    first_row_of: dict[str, int] = {}
    for row, cells in body:
        if len(cells) > len(header) and any(c.strip() for c in cells[len(header):]):
            issue(row, None, f"{len(cells)} values but the header has {len(header)} columns")
        cells = cells + [""] * (len(header) - len(cells))
        for i in unnamed:
            if cells[i].strip():
                issue(row, None, f"value '{cells[i]}' in column {i + 1}, which has no name in the header")
        cell = {c: cells[i] for c, i in seen_cols.items() if c}
        get = lambda c: cell.get(c, "")  # noqa: E731

        pid = get("patient_id").strip()
        if has("patient_id"):
            if not pid:
                issue(row, "patient_id", "missing patient id")
            elif pid in first_row_of:
                issue(row, "patient_id", f"duplicate patient id '{pid}': rows {first_row_of[pid]} and {row}", pid)
            else:
                first_row_of[pid] = row
        p = pid or None
        out: dict = {"patient_id": pid}

        label_text = get("label")
        out["label"], out["label_name"] = -1, ""
        if has("label"):
            key = label_text.strip().lower()
            if key in LABELS:
                out["label"], out["label_name"] = LABELS.index(key), key
            elif not key and "label" not in required:
                pass  # unlabelled: allowed where labels are optional (prediction)
            else:
                what = "missing label" if not key else f"'{label_text}' is not a label"
                issue(row, "label", f"{what}; expected 'benign' or 'malignant' (any case)", p)

        age_ok = True
        out["age"] = math.nan
        if has("age"):
            try:
                out["age"] = _number(get("age"))
            except ValueError as e:
                age_ok = False
                issue(row, "age", str(e), p)
            else:
                lo, hi = AGE_RANGE
                if math.isnan(out["age"]):
                    warn(row, "age", "missing age", p)
                elif not lo <= out["age"] <= hi:
                    age_ok = False
                    issue(row, "age", f"age {out['age']:g} is outside the plausible range {lo:g}-{hi:g} years", p)

        clinical_ok = True
        for col in clinical_cols:
            try:
                out[col] = _number(get(col))
            except ValueError as e:
                clinical_ok = False
                out[col] = math.nan
                issue(row, col, str(e), p)

        n_listed = 0
        for m in IMAGE_MODALITIES:
            images, shapes = [], []
            items = _items(get(m))
            n_listed += len(items)
            for item in items:
                if not item:
                    issue(row, m, f"empty path between '{PATH_SEPARATOR}' separators", p)
                    continue
                file = _resolve(root, item)
                images.append(file)
                shapes.append(_check_image(file, item, decode_images, small_image_px, row, m, p, issue, warn))
            out[m] = images
            out[mask_column(m)] = _masks(get(mask_column(m)), images, shapes, root, decode_images, row, m, p, issue,
                                         strict=strict_masks)
            out[bbox_column(m)] = _bboxes(get(bbox_column(m)), images, shapes, row, m, p, issue)

        if (all(has(c) or c not in required for c in ("mammography", "ultrasound", "age")) and n_listed == 0
                and age_ok and clinical_ok and math.isnan(out["age"]) and all(math.isnan(out[c]) for c in clinical_cols)):
            issue(row, None, "no input at all: no mammography or ultrasound image, no age and no clinical value", p)

        split = get("split").strip().lower()
        if split and split not in SPLITS:
            issue(row, "split", f"'{get('split')}' is not a split; expected 'dev', 'test' or empty", p)
        out["split"] = split
        out["group"] = get("group").strip() or pid
        for col in metadata_cols:
            out[col] = get(col)
        rows_out.append(out)

    if issues:
        raise ManifestError(manifest, issues)

    columns = ["patient_id", "label", "label_name", "age", *IMAGE_MODALITIES,
               *(mask_column(m) for m in IMAGE_MODALITIES), *(bbox_column(m) for m in IMAGE_MODALITIES),
               "split", "group", *clinical_cols, *metadata_cols]
    patients = pd.DataFrame({c: pd.Series([r[c] for r in rows_out], dtype=object) for c in columns})
    patients["patient_id"] = patients["patient_id"].astype(str)
    patients["label"] = patients["label"].astype(np.int64)
    patients["label_name"] = patients["label_name"].astype(str)
    for col in ("age", *clinical_cols):
        patients[col] = patients[col].astype(float)
    for col in ("split", "group", *metadata_cols):
        patients[col] = patients[col].astype(str)
    warnings += _cohort_warnings(patients, name)
    return Cohort(manifest=manifest, root=root, patients=patients, warnings=warnings,
                  source_rows=[row for row, _ in body])


def _check_image(file, item, decode, small_px, row, column, pid, issue, warn) -> tuple[int, int] | None:
    """Check one listed image; its ``(H, W)`` when readable."""
    if not file.is_file():
        issue(row, column, f"image file not found: '{item}' (looked for {file})", pid)
        return None
    try:
        shape = imaging.read_image(file).shape if decode else imaging.image_size(file)
    except imaging.ImageReadError as e:
        issue(row, column, f"cannot read image '{item}': {e}", pid)
        return None
    if min(shape) < small_px:
        warn(row, column, f"image '{item}' is only {shape[0]}x{shape[1]} pixels (under {small_px})", pid)
    return int(shape[0]), int(shape[1])


def _count_mismatch(kind: str, n_items: int, n_images: int, modality: str) -> str:
    return (f"{n_items} {kind} item(s) for {n_images} {modality} image(s); expected one per image, "
            f"'{PATH_SEPARATOR}'-separated in the order of the images (an empty item = none for that image)")


def _masks(text, images, shapes, root, decode, row, modality, pid, issue, strict=False) -> list[Path | None]:
    column = mask_column(modality)
    if not text.strip():
        return [None] * len(images)
    items = [t.strip() for t in text.split(PATH_SEPARATOR)]
    if len(items) != len(images):
        issue(row, column, _count_mismatch("mask", len(items), len(images), modality), pid)
        return [None] * len(images)
    out: list[Path | None] = []
    for item, shape in zip(items, shapes):
        if not item:
            out.append(None)
            continue
        file = _resolve(root, item)
        out.append(file)
        if not file.is_file():
            issue(row, column, f"mask file not found: '{item}' (looked for {file})", pid)
            continue
        try:
            pixels = imaging.read_mask(file) if decode or strict else None
            mask_shape = pixels.shape if pixels is not None else imaging.image_size(file)
        except imaging.ImageReadError as e:
            issue(row, column, f"cannot read mask '{item}': {e}", pid)
            continue
        if strict and not pixels.any():
            issue(row, column, f"mask '{item}' is empty (no lesion pixel, looked in {file}); expected the expert's "
                  "outline of the lesion", pid)
        if strict and shape is not None and tuple(mask_shape) != tuple(shape):
            issue(row, column, f"mask '{item}' is {mask_shape[0]}x{mask_shape[1]} pixels but its image is "
                  f"{shape[0]}x{shape[1]}; expected the same size", pid)
        elif shape is not None and imaging.aspect_mismatch(mask_shape, shape) > imaging.MASK_ASPECT_TOLERANCE:
            issue(row, column, f"mask '{item}' is {mask_shape[0]}x{mask_shape[1]} pixels but its image is "
                  f"{shape[0]}x{shape[1]}; expected the same height/width ratio", pid)
    return out


def _bboxes(text, images, shapes, row, modality, pid, issue) -> list[tuple[int, int, int, int] | None]:
    column = bbox_column(modality)
    if not text.strip():
        return [None] * len(images)
    items = [t.strip() for t in text.split(PATH_SEPARATOR)]
    if len(items) != len(images):
        issue(row, column, _count_mismatch("bbox", len(items), len(images), modality), pid)
        return [None] * len(images)
    out: list[tuple[int, int, int, int] | None] = []
    for item, shape in zip(items, shapes):
        if not item:
            out.append(None)
            continue
        try:
            box = imaging.parse_bbox(item)
        except ValueError as e:
            issue(row, column, str(e), pid)
            out.append(None)
            continue
        if shape is not None and (box[0] >= shape[1] or box[1] >= shape[0]):
            issue(row, column, f"bbox '{item}' lies outside its {shape[0]}x{shape[1]} image "
                  "(expected pixel coordinates x0 y0 x1 y1 within the image)", pid)
        out.append(box)
    return out


# ----------------------------------------------------------------------------------------------- writing


def _is_box(value) -> bool:
    return (isinstance(value, (tuple, list, np.ndarray)) and len(value) == 4
            and all(isinstance(v, Number) for v in value))


def _rel(item, root: Path) -> str:
    if item is None:
        return ""
    text = str(item)
    if PATH_SEPARATOR in text:
        raise ValueError(f"path {text!r} contains '{PATH_SEPARATOR}', the manifest's list separator")
    p = Path(text)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return Path(os.path.relpath(p, root)).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return p.as_posix()


def _format_value(column: str, value, root: Path) -> str:
    if column in IMAGE_MODALITIES or column in (mask_column(m) for m in IMAGE_MODALITIES):
        if value is None or (isinstance(value, str) and not value):
            return ""
        items = value if isinstance(value, (list, tuple)) else [value]
        return PATH_SEPARATOR.join(_rel(v, root) for v in items)
    if column in (bbox_column(m) for m in IMAGE_MODALITIES):
        if value is None or isinstance(value, str):
            return value or ""
        items = [value] if _is_box(value) else list(value)
        return PATH_SEPARATOR.join(
            "" if b is None else b if isinstance(b, str) else " ".join(str(int(v)) for v in b) for b in items
        )
    if column == "label" and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value not in (0, 1):
            raise ValueError(f"label {value!r}: expected 0, 1, 'benign' or 'malignant'")
        return LABELS[int(value)]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


def write_manifest(rows: list[dict], path: str | Path) -> Path:
    """Write a manifest CSV that :func:`load_manifest` reads back.

    Columns come in schema order (required, then ``split``, ``group``, masks, boxes, ``clinical_*``),
    then any other key in first-seen order. Image and mask values may be one path or a list (None = no
    mask for that image); absolute paths are written relative to the manifest's folder, relative ones
    are taken as already relative to it. Boxes may be one ``(x0, y0, x1, y1)``, a list of them (None = no
    box) or text. ``label`` may be 0/1 or a name; None and NaN are written as empty cells.

    Args:
        rows: one dict per patient.
        path: the manifest file to write (its folder is created).

    Returns:
        ``path``.

    Raises:
        ValueError: no rows, a row that is not a dict or lacks ``patient_id``/``label``, a path
            containing ``|``, a numeric label other than 0/1.
    """
    path = Path(path)
    if not rows:
        raise ValueError("rows is empty; a manifest needs at least one patient")
    keys: list[str] = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"rows[{i}] must be a dict, got {type(r).__name__}")
        for k in ("patient_id", "label"):
            if r.get(k) is None or (isinstance(r.get(k), str) and not r[k].strip()):
                raise ValueError(f"rows[{i}] has no '{k}'")
        keys += [k for k in r if k not in keys]
    clinical = [k for k in keys if k.startswith(CLINICAL_PREFIX)]
    columns = [*REQUIRED_COLUMNS, *(c for c in OPTIONAL_COLUMNS if c in keys), *clinical]
    columns += [k for k in keys if k not in columns]
    root = Path(os.path.abspath(path)).parent
    root.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_format_value(c, r.get(c), root) for c in columns])
    return path


# ----------------------------------------------------------------------------------------------- text


def format_summary(cohort: Cohort, *, max_warnings: int = 10) -> str:
    """The text ``mmlib cohort validate`` prints: patients per label, inputs, age, splits, warnings."""
    s = cohort.summary()
    n = s["n_patients"]
    lines = [f"{cohort.manifest}: {n} patients ({s['n_groups']} groups)"]
    lines.append("  labels:      " + ", ".join(f"{k} {v}" for k, v in s["labels"].items()))
    lines.append("  inputs:      " + ", ".join(
        f"{m} {s['modalities'][m]} ({100 * s['modalities'][m] / n:.0f}%)" for m in MODALITIES))
    for name in LABELS:
        by_label = s["modalities_by_label"][name]
        lines.append(f"    {name + ':':11s}" + ", ".join(f"{m} {by_label[m]}" for m in MODALITIES))
    lines.append("  input sets:  " + ", ".join(f"{k} {v}" for k, v in s["scenarios"].items()))
    views = []
    for m, v in s["views"].items():
        per = ", ".join(f"{k} view{'s' if k != 1 else ''}: {c}" for k, c in v["per_patient"].items())
        views.append(f"{m} {v['images']} ({per})")
    lines.append("  images:      " + ", ".join(views))
    lines.append("  age:")
    for key in ("all", *LABELS):
        a = s["age"][key]
        mean = "n/a" if a["mean"] is None else f"{a['mean']:.1f}"
        sd = "n/a" if a["sd"] is None else f"{a['sd']:.1f}"
        lines.append(f"    {key + ':':11s}mean {mean}, sd {sd}, missing {a['missing']}")
    sp = s["splits"]
    lines.append(f"  splits:      dev {sp['dev']}, test {sp['test']}, not fixed {sp['unassigned']}")
    lines.append(f"  warnings:    {len(cohort.warnings)}")
    for w in cohort.warnings[:max_warnings]:
        lines.append(f"    - {w}")
    if len(cohort.warnings) > max_warnings:
        lines.append(f"    ... and {len(cohort.warnings) - max_warnings} more")
    return "\n".join(lines)
