"""Patient-level splits: a held-out internal test part and stratified K-fold cross-validation.

Splitting happens on patients (on *groups* of rows when a manifest ties several units, e.g. two breasts, to
one patient) and before anything else touches the images, so no augmentation, feature cache or scaler ever
sees a test patient while training. Folds are label-stratified and deterministic from a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from .schema import IMAGE_MODALITIES


class LeakageError(ValueError):
    """A patient, group or image file appears on both sides of a split."""


def _stratified_groups(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int):
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


def make_splits(cohort, *, n_folds: int = 5, test_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Assign every row of ``cohort`` to the internal test part or to one cross-validation fold.

    Args:
        cohort: a :class:`mmlib.cohort.Cohort`.
        n_folds: number of cross-validation folds on the development part (>= 2).
        test_fraction: share of patients held out as the internal test set when the manifest has no ``split``
            column filled in (0 = no internal test set). A manifest whose ``split`` column is filled for every
            row keeps it; a partly filled one is refused.
        seed: seed of the shuffling; the same seed gives the same splits.

    Returns:
        DataFrame with columns ``patient_id, group, label, split`` (``dev``/``test``) and ``fold`` (0..n_folds-1
        for development rows, -1 for test rows), in the cohort's row order.
    """
    if not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    df = cohort.patients
    labels = df["label"].to_numpy().astype(int)
    groups = df["group"].astype(str).to_numpy()
    given = df["split"].fillna("").astype(str).to_numpy() if "split" in df else np.array([""] * len(df))
    out = pd.DataFrame({"patient_id": df["patient_id"].astype(str).to_numpy(), "group": groups, "label": labels})

    if (given != "").all():
        split = given.copy()
    elif (given == "").all():
        split = np.array(["dev"] * len(df), dtype=object)
        if test_fraction > 0:
            n_parts = max(2, int(round(1.0 / float(test_fraction))))
            n_groups = len(np.unique(groups))
            if n_groups < n_parts:
                raise ValueError(f"test_fraction={test_fraction} needs at least {n_parts} patient groups, cohort has {n_groups}")
            _, test_idx = _stratified_groups(labels, groups, n_parts, seed + 7919)[0]
            split[test_idx] = "test"
    else:
        rows = [i + 2 for i in np.flatnonzero(given == "")][:10]
        raise ValueError(
            f"{cohort.manifest}: column 'split' is filled for some rows but empty for others (CSV lines {rows}...); "
            "fill it for every row or leave it empty everywhere"
        )
    out["split"] = split
    out["fold"] = -1
    dev = np.flatnonzero(split == "dev")
    if len(np.unique(groups[dev])) < n_folds:
        raise ValueError(f"n_folds={n_folds} is more than the {len(np.unique(groups[dev]))} development patient groups")
    for k, (_, val_idx) in enumerate(_stratified_groups(labels[dev], groups[dev], n_folds, seed)):
        out.loc[out.index[dev[val_idx]], "fold"] = k
    check_leakage(out, cohort)
    return out


@dataclass
class FoldSplit:
    """Row positions of one fold: ``train`` (other dev folds), ``valid`` (this fold)."""

    fold: int
    train: np.ndarray
    valid: np.ndarray


def iter_folds(splits: pd.DataFrame) -> list[FoldSplit]:
    """Train/validation row positions of each cross-validation fold."""
    folds = []
    dev = splits["split"].to_numpy() == "dev"
    fold = splits["fold"].to_numpy()
    for k in sorted(set(fold[dev])):
        folds.append(FoldSplit(int(k), np.flatnonzero(dev & (fold != k)), np.flatnonzero(dev & (fold == k))))
    return folds


def _files(cohort, rows: np.ndarray) -> set[str]:
    files: set[str] = set()
    for m in IMAGE_MODALITIES:
        for paths in cohort.patients[m].iloc[rows]:
            files.update(str(p) for p in paths)
    return files


def check_leakage(splits: pd.DataFrame, cohort=None) -> dict:
    """Check that no patient, group or image file is on both sides of the test split or of two folds.

    Returns a report ``{"patients": 0, "groups": 0, "files": 0, ...}`` of overlaps (all zero when clean) and
    raises :class:`LeakageError` naming the offenders otherwise.
    """
    dev = splits["split"] == "dev"
    test = splits["split"] == "test"
    report = {}
    for col in ("patient_id", "group"):
        both = sorted(set(splits.loc[dev, col]) & set(splits.loc[test, col]))
        report[f"{col}_dev_and_test"] = len(both)
        if both:
            raise LeakageError(f"{col} on both dev and test sides: {both[:10]}")
    fold_of_group = splits.loc[dev].groupby("group")["fold"].nunique()
    multi = sorted(fold_of_group[fold_of_group > 1].index)
    report["groups_in_two_folds"] = len(multi)
    if multi:
        raise LeakageError(f"groups split across folds: {multi[:10]}")
    if cohort is not None:
        dev_rows, test_rows = np.flatnonzero(dev.to_numpy()), np.flatnonzero(test.to_numpy())
        shared = sorted(_files(cohort, dev_rows) & _files(cohort, test_rows))
        report["files_dev_and_test"] = len(shared)
        if shared:
            raise LeakageError(f"image files used by dev and test patients: {shared[:5]}")
        fold = splits["fold"].to_numpy()
        seen: dict[str, int] = {}
        for k in sorted(set(fold[dev.to_numpy()])):
            for f in _files(cohort, np.flatnonzero(dev.to_numpy() & (fold == k))):
                if f in seen and seen[f] != k:
                    raise LeakageError(f"image file {f} used in folds {seen[f]} and {k}")
                seen[f] = k
        report["files_in_two_folds"] = 0
    return report


def split_table(splits: pd.DataFrame) -> pd.DataFrame:
    """Patients per fold (``test`` for the internal test part) and label: the table of the data chapter."""
    part = np.where(splits["split"] == "test", "test", "fold " + splits["fold"].astype(str))
    t = pd.crosstab(pd.Series(part, name="part"), splits["label"].map({0: "benign", 1: "malignant"}).rename("label"))
    t["total"] = t.sum(axis=1)
    return t
