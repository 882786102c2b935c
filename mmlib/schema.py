"""The cohort manifest: the one input format of the project, and the modality names.

A cohort is a CSV manifest with one row per patient (or per *unit*, e.g. one breast, when a
``group`` column ties several units to one patient). Paths are relative to the manifest's folder.

Required columns
    ``patient_id``   unique id of the row (text)
    ``label``        ``benign`` or ``malignant``
    ``age``          age in years; empty = missing
    ``mammography``  zero or more image paths separated by ``|``; empty = modality missing
    ``ultrasound``   zero or more image paths separated by ``|``; empty = modality missing

Optional columns
    ``split``                     ``dev`` or ``test`` (internal test patients); empty = decided by the splitter
    ``group``                     patients sharing a group are never split apart (default: ``patient_id``)
    ``mammography_mask``, ``ultrasound_mask``
                                  lesion mask per image, ``|``-separated in the order of the images
                                  (an empty item = no mask for that image)
    ``mammography_bbox``, ``ultrasound_bbox``
                                  lesion box per image as ``x0 y0 x1 y1`` in pixels, ``|``-separated
    ``clinical_<name>``           further numeric clinical inputs (empty = missing); only columns with
                                  this prefix (and ``age``) are ever model inputs
    anything else                 kept as metadata (source ids, label provenance, BI-RADS as a reference
                                  reader), never a model input
"""

from __future__ import annotations

#: Imaging modalities, in the order every model reads them.
IMAGE_MODALITIES: tuple[str, ...] = ("mammography", "ultrasound")
#: All inputs, in order: the presence mask of a sample follows this order.
MODALITIES: tuple[str, ...] = ("mammography", "ultrasound", "clinical")
#: Class names; index = target value.
LABELS: tuple[str, ...] = ("benign", "malignant")
#: Values of the optional ``split`` column.
SPLITS: tuple[str, ...] = ("dev", "test")

REQUIRED_COLUMNS: tuple[str, ...] = ("patient_id", "label", "age", "mammography", "ultrasound")
CLINICAL_PREFIX = "clinical_"
PATH_SEPARATOR = "|"
#: Plausible adult age range for a breast-lesion cohort (years); outside it an age is refused.
AGE_RANGE: tuple[float, float] = (10.0, 110.0)


def mask_column(modality: str) -> str:
    return f"{modality}_mask"


def bbox_column(modality: str) -> str:
    return f"{modality}_bbox"


def scenario_name(present: tuple[str, ...] | list[str]) -> str:
    """Name of a missing-modality scenario: ``all`` or the present inputs joined by ``+``."""
    present = [m for m in MODALITIES if m in present]
    if not present:
        raise ValueError("a scenario needs at least one of " + ", ".join(MODALITIES))
    return "all" if len(present) == len(MODALITIES) else "+".join(present)


def all_scenarios() -> list[tuple[str, ...]]:
    """The 7 non-empty subsets of {mammography, ultrasound, clinical}, full set first."""
    from itertools import combinations

    out = []
    for k in range(len(MODALITIES), 0, -1):
        out.extend(combinations(MODALITIES, k))
    return out
