"""Where the study's lesions come from (run parameter ``lesion_source``): the expert, a segmenter, or nowhere.

``expert``     ROI crops and outline morphometry read the manifest's masks (and boxes), as drawn by the expert.
``predicted``  they read masks predicted by a lesion segmenter (:mod:`mmlib.segmentation`) that never saw the
               patient's expert mask: the deployable setting, where a new patient has no mask.
``none``       whole images; no mask or box is read (and no outline is measured).

**Cross-fitting.** In cross-validation the classifier of outer fold ``k`` is trained on folds ``j != k`` and
evaluated on fold ``k``. Its training rows must see the kind of mask its held-out rows get, so every mask comes
from a segmenter fitted without the row's own fold *and* without fold ``k`` (:func:`segmenter_left_out`):

- a held-out row of fold ``k``: the segmenter fitted on all folds but ``k``;
- a training row of fold ``j``, by the run parameter ``segmenter_crossfit``:
  ``pairs``: the segmenter fitted on all folds but ``j`` and ``k``;
  ``halves``: fold ``k``'s training folds are split in two halves (:func:`training_halves`, consecutive folds in
  cyclic order), and a row gets the segmenter fitted on the other half (two-fold cross-fitting inside the
  training folds);
- the refit on all development patients (saved models, ``test_model: refit``): a row of fold ``j`` gets the
  segmenter fitted on all folds but ``j``;
- internal-test rows: the segmenter saved with the models, chosen by the run parameter ``deployed_segmenter``:
  ``refit``, one more segmenter fitted on all development patients; ``folds``, the mean of the K cross-validation
  segmenters' lesion probabilities (each fitted without one fold), as nnU-Net deploys its fold models: no extra
  fit, and an average of K networks.

Under ``refit``, ``pairs`` is ``1 + K + K(K-1)/2`` fits (16 for K = 5), its inner segmenters on ``(K-2)/K`` of the
development patients; ``halves`` is ``1 + K + K`` fits for odd K (11 for K = 5; the same halves serve several outer
folds) and ``1 + K + 2K`` for even K (more than ``pairs`` for K = 4), its inner segmenters on about half the training
folds: for K = 5 cheaper, with training-row masks from smaller training sets; ``folds`` fits one fewer. On the CPU
with a frozen stem the fits run side by side, one thread each, in worker processes (:func:`segmenter_workers`).
Held-out patients' expert masks are read only to score the segmenter (``segmentation.csv``). Predicted masks are
written as PNG files under ``cache/lesions/``, in folders
named by the segmenter's training set and the masks' content, and each fold gets a view of the cohort whose
``<modality>_mask`` columns point to them, so cropping, morphometry and the feature cache work unchanged.
Where the segmenter finds no lesion the view falls back to the whole image and ``lesion_found`` says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .schema import IMAGE_MODALITIES, bbox_column, mask_column

#: Values of the run parameter ``lesion_source``.
LESION_SOURCES: tuple[str, ...] = ("expert", "predicted", "none")
#: Bumped when the way masks are predicted changes, so that no stored mask of another version is reused (3: the
#: study's segmenters fit on one thread each, their random weights drawn from the fit's seed).
MASKS_VERSION = 3


def check_lesion_source(value) -> str:
    """``value`` if it is one of :data:`LESION_SOURCES`; a ValueError naming the parameter otherwise."""
    if value not in LESION_SOURCES:
        raise ValueError(f"parameter 'lesion_source' must be one of {list(LESION_SOURCES)}, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------- the schedule
#: Values of the run parameter ``segmenter_crossfit``: how the training rows' segmenters are chosen.
CROSSFIT_SCHEMES: tuple[str, ...] = ("pairs", "halves")
#: Values of the run parameter ``deployed_segmenter``: the segmenter of the internal test and the saved models.
DEPLOYED_SEGMENTERS: tuple[str, ...] = ("refit", "folds")


def check_deployed_segmenter(value) -> str:
    """``value`` if it is one of :data:`DEPLOYED_SEGMENTERS`; a ValueError naming the parameter otherwise."""
    if value not in DEPLOYED_SEGMENTERS:
        raise ValueError(f"parameter 'deployed_segmenter' must be one of {list(DEPLOYED_SEGMENTERS)}, got {value!r}")
    return value


def training_halves(outer_fold: int, n_folds: int) -> tuple[frozenset[int], frozenset[int]]:
    """The two halves of outer fold ``outer_fold``'s training folds under ``segmenter_crossfit: halves``: the other
    folds in cyclic order from ``outer_fold + 1``, the first ``(n_folds - 1) // 2`` and the rest. Consecutive runs
    in a cycle: for K = 5 the ten halves of the five outer folds are five distinct sets of two folds."""
    if n_folds < 3:
        raise ValueError(f"segmenter_crossfit 'halves' needs n_folds >= 3 (two non-empty halves of the training "
                         f"folds), got {n_folds}")
    others = [(int(outer_fold) + 1 + i) % int(n_folds) for i in range(int(n_folds) - 1)]
    m = (int(n_folds) - 1) // 2
    return frozenset(others[:m]), frozenset(others[m:])


def segmenter_left_out(row_fold: int | None, outer_fold: int | None, n_folds: int | None = None,
                       scheme: str = "pairs") -> frozenset[int]:
    """The development folds left out of the segmenter whose mask a row gets.

    Args:
        row_fold: the row's cross-validation fold; None for an internal-test row.
        outer_fold: the fold held out by the classifier being trained or evaluated; None for the refit on all
            development patients.
        n_folds: the number of folds (needed by ``halves``).
        scheme: ``pairs`` or ``halves`` (the run parameter ``segmenter_crossfit``).
    """
    if scheme not in CROSSFIT_SCHEMES:
        raise ValueError(f"parameter 'segmenter_crossfit' must be one of {list(CROSSFIT_SCHEMES)}, got {scheme!r}")
    if row_fold is None or row_fold < 0:
        return frozenset()
    if outer_fold is None or row_fold == outer_fold:
        return frozenset({int(row_fold)})
    if scheme == "pairs":
        return frozenset({int(row_fold), int(outer_fold)})
    if n_folds is None:
        raise ValueError("segmenter_left_out: scheme 'halves' needs n_folds")
    first, second = training_halves(int(outer_fold), int(n_folds))
    trained_on = second if int(row_fold) in first else first
    return frozenset(range(int(n_folds))) - trained_on


def crossfit_plan(n_folds: int, scheme: str = "pairs", deployed: str = "refit") -> list[frozenset[int]]:
    """Every segmenter a study fits (as the folds each leaves out): all development patients (``deployed:
    refit`` only), then each fold left out, then the training rows' segmenters of ``scheme`` (for ``pairs``: each
    pair of folds)."""
    folds = range(int(n_folds))
    inner = {segmenter_left_out(j, k, int(n_folds), scheme) for k in folds for j in folds if j != k}
    refit = [frozenset()] if check_deployed_segmenter(deployed) == "refit" else []
    return [*refit, *(frozenset({k}) for k in folds), *sorted(inner, key=lambda s: (len(s), sorted(s)))]


def segmenter_rows(left_out: frozenset[int], row_folds: np.ndarray, n_folds: int | None = None,
                   scheme: str = "pairs") -> tuple[np.ndarray, np.ndarray]:
    """``(training rows, rows it segments)`` of the segmenter leaving out ``left_out`` (row fold -1: test). A
    training rows' segmenter segments the rows of the folds that get their masks from it."""
    row_folds = np.asarray(row_folds)
    dev = row_folds >= 0
    train = np.flatnonzero(dev & ~np.isin(row_folds, list(left_out)))
    if not left_out:
        return train, np.flatnonzero(~dev)
    if len(left_out) == 1:
        return train, np.flatnonzero(np.isin(row_folds, list(left_out)))
    n_folds = int(n_folds) if n_folds is not None else int(row_folds.max()) + 1
    served = {j for k in range(n_folds) for j in range(n_folds)
              if j != k and segmenter_left_out(j, k, n_folds, scheme) == left_out}
    return train, np.flatnonzero(np.isin(row_folds, sorted(served)))


def _name(left_out: frozenset[int]) -> str:
    return "all-dev" if not left_out else "without-" + "-".join(str(k) for k in sorted(left_out))


# ----------------------------------------------------------------------------------------------- the masks
@dataclass
class StudyLesions:
    """The lesion masks of a study: per segmenter (folds left out), modality and row, one mask path or None per
    view (None: nothing found, the whole image is used), and whether each view's lesion was found."""

    source: str
    row_folds: np.ndarray
    #: the run parameters ``n_folds`` and ``segmenter_crossfit`` (:func:`segmenter_left_out`)
    n_folds: int = 0
    crossfit: str = "pairs"
    masks: dict = field(default_factory=dict)
    #: segmenters the study needed and how many of them it reused from a cache (``run.json``: ``segmenters``)
    fits: dict = field(default_factory=lambda: {"total": 0, "reused": 0, "resegmented": 0})
    found: dict = field(default_factory=dict)
    #: like ``found``: the segmenter's score of each view's outline (mean lesion probability inside the mask)
    outline_scores: dict = field(default_factory=dict)
    #: the run's ``segmenter.uncertain_below``: a found outline scoring below it is uncertain (0: never)
    uncertain_below: float = 0.0
    #: modality -> folder of the segmenter saved with the models (and segmenting the internal test): fitted on all
    #: development patients, or the ensemble of the fold segmenters (run parameter ``deployed_segmenter``)
    segmenters: dict = field(default_factory=dict)
    _views: dict = field(default_factory=dict, repr=False)

    def __getstate__(self):  # the cohort views are rebuilt where needed, not shipped to worker processes
        state = dict(self.__dict__)
        state["_views"] = {}
        return state

    def left_out(self, row_fold: int, outer_fold: int | None) -> frozenset[int]:
        """The folds left out of the segmenter whose mask a row of ``row_fold`` gets under ``outer_fold``."""
        n_folds = self.n_folds or int(np.max(self.row_folds, initial=-1)) + 1
        return segmenter_left_out(row_fold, outer_fold, n_folds, self.crossfit)

    def cohort_view(self, cohort, outer_fold: int | None):
        """``cohort`` with the masks seen by the classifier holding out ``outer_fold`` (None: the refit)."""
        if outer_fold in self._views:
            return self._views[outer_fold]
        patients = cohort.patients.copy()
        for m in IMAGE_MODALITIES:
            n_views = [len(v) if isinstance(v, list) else 0 for v in patients[m]]
            masks = [[None] * n for n in n_views]
            if self.source == "predicted":
                for r, row_fold in enumerate(self.row_folds):
                    stored = self.masks.get(self.left_out(int(row_fold), outer_fold), {}).get(m, {}).get(r)
                    if stored is not None:
                        masks[r] = [None if p is None else Path(p) for p in stored]
            patients[mask_column(m)] = pd.Series(masks, index=patients.index, dtype=object)
            patients[bbox_column(m)] = pd.Series([[None] * n for n in n_views], index=patients.index, dtype=object)
        view = dataclasses.replace(cohort, patients=patients)
        self._views[outer_fold] = view
        return view

    def lesion_found(self, rows, outer_fold: int | None) -> np.ndarray:
        """Per row: every segmented view of it had a lesion (with the masks of ``outer_fold``'s classifier)."""
        out = []
        for r in np.asarray(rows, dtype=int):
            left = self.left_out(int(self.row_folds[r]), outer_fold)
            flags = [f for m in IMAGE_MODALITIES for f in self.found.get(left, {}).get(m, {}).get(int(r), [])]
            out.append(all(flags))
        return np.asarray(out, dtype=bool)

    def uncertain_outline(self, rows, outer_fold: int | None) -> np.ndarray:
        """Per row: a view's lesion was found with a score below :attr:`uncertain_below` (with the masks of
        ``outer_fold``'s classifier), as ``mmlib predict`` flags it in the row's note."""
        below = float(self.uncertain_below)
        out = []
        for r in np.asarray(rows, dtype=int):
            left = self.left_out(int(self.row_folds[r]), outer_fold)
            flags = [found and score < below for m in IMAGE_MODALITIES
                     for found, score in zip(self.found.get(left, {}).get(m, {}).get(int(r), []),
                                             self.outline_scores.get(left, {}).get(m, {}).get(int(r), []))]
            out.append(below > 0 and any(flags))
        return np.asarray(out, dtype=bool)

    def fingerprint(self) -> str:
        """Hash of every mask path (each folder is named by its masks' content)."""
        items = sorted((_name(k), m, r, str(v)) for k, by_m in self.masks.items() for m, by_r in by_m.items()
                       for r, v in by_r.items())
        return hashlib.sha256(json.dumps([self.source, items]).encode()).hexdigest()[:16]


def study_view(study, outer_fold: int | None):
    """The study as the classifier holding out ``outer_fold`` sees it (None: the refit on all development
    patients): the same study for expert lesions, else one whose cohort carries that fold's masks."""
    lesions = getattr(study, "lesions", None)
    if lesions is None:
        return study
    return dataclasses.replace(study, cohort=lesions.cohort_view(study.cohort, outer_fold))


def feature_jobs(study) -> list[tuple[object, np.ndarray, np.ndarray]]:
    """``(cohort view, rows to encode, rows whose augmented copies are encoded)`` for the feature cache: one per
    outer fold and one for the refit with predicted lesions; the cohort itself otherwise."""
    split = study.splits["split"].to_numpy()
    all_rows, dev_rows = np.arange(len(study.cohort.patients)), np.flatnonzero(split == "dev")
    lesions = getattr(study, "lesions", None)
    if lesions is None or lesions.source == "none":
        return [(study_view(study, None).cohort, all_rows, dev_rows)]
    folds = sorted(set(study.splits["fold"].to_numpy()[dev_rows].tolist()))
    jobs = [(study_view(study, k).cohort, all_rows, dev_rows[lesions.row_folds[dev_rows] != k]) for k in folds]
    return jobs + [(study_view(study, None).cohort, all_rows, dev_rows)]


def prepare_lesions(study, *, fresh: bool = False) -> StudyLesions | None:
    """Set ``study.lesions`` from the run parameter ``lesion_source`` (call after the splits are made). With
    ``predicted``, fits the cross-fitted segmenters (or reuses them unless ``fresh``), writes their masks and
    ``segmentation.csv``."""
    p = study.params
    source = check_lesion_source(p.get("lesion_source", "expert"))
    row_folds = _row_folds(study)
    if source == "expert":
        study.lesions = None
        return None
    from .segmentation import SegmenterSettings

    lesions = StudyLesions(source, row_folds, n_folds=int(p["n_folds"]),
                           crossfit=p.get("segmenter_crossfit", "pairs"),
                           uncertain_below=float(SegmenterSettings.from_dict(p.get("segmenter")).uncertain_below))
    if source == "predicted":
        _predict_masks(study, lesions, fresh=fresh)
    study.lesions = lesions
    return lesions


def model_lesion(study, model_dir) -> dict | None:
    """The lesion record of a saved model folder (see :mod:`mmlib.deploy`); with predicted lesions, copies the
    segmenter fitted on all development patients into it, so that the folder needs only images."""
    lesions = getattr(study, "lesions", None)
    if lesions is None:
        return None
    if lesions.source == "none":
        return {"source": "none", "modalities": [], "segmenters": {}}
    from .deploy import segmenter_folder
    from .segmentation import POST_PROCESSING, SegmenterSettings, set_post_processing

    settings = SegmenterSettings.from_dict(study.params.get("segmenter"))
    model_dir = Path(model_dir)
    modalities = sorted(lesions.segmenters)
    record = {"source": "predicted", "modalities": modalities, "segmenters": {}}
    for m in modalities:
        sub = segmenter_folder(m, modalities)
        if (model_dir / sub).exists():
            shutil.rmtree(model_dir / sub)
        shutil.copytree(lesions.segmenters[m], model_dir / sub)
        # a segmenter reused from the cache keeps its masks; what the run says about them is the run's
        set_post_processing(model_dir / sub, **{k: getattr(settings, k) for k in POST_PROCESSING})
        record["segmenters"][m] = sub
    return record


def _row_folds(study) -> np.ndarray:
    split = study.splits["split"].to_numpy()
    return np.where(split == "dev", study.splits["fold"].to_numpy(dtype=int), -1)


def _expert_views(cohort, rows, modality) -> list[tuple[int, int, Path, Path | None]]:
    out = []
    for r in np.asarray(rows, dtype=int):
        row = cohort.patients.iloc[r]
        images = row[modality] if isinstance(row[modality], list) else []
        masks = row.get(mask_column(modality))
        masks = masks if isinstance(masks, list) else [None] * len(images)
        out += [(int(r), j, Path(image), masks[j] if j < len(masks) else None) for j, image in enumerate(images)]
    return out


def _segmented_modalities(cohort, dev_rows) -> list[str]:
    return [m for m in IMAGE_MODALITIES if any(mask is not None for *_, mask in _expert_views(cohort, dev_rows, m))]


def _predict_masks(study, lesions: StudyLesions, *, fresh: bool = False) -> None:
    from .segmentation import SegmenterSettings

    p, cohort = study.params, study.cohort
    settings = SegmenterSettings.from_dict(p.get("segmenter") or {})
    if settings.train_mode == "frozen" and p.get("train_mode") == "finetune":
        settings = dataclasses.replace(settings, train_mode="finetune")
    seed = int(p["seeds"][0])
    dev_rows = np.flatnonzero(lesions.row_folds >= 0)
    modalities = _segmented_modalities(cohort, dev_rows)
    if not modalities:
        raise ValueError(f"lesion_source 'predicted' trains a lesion segmenter on the expert's masks, and no "
                         f"development patient of {cohort.manifest} has one (columns "
                         f"{[mask_column(m) for m in IMAGE_MODALITIES]}); use lesion_source 'expert' or 'none'")
    from .experiment import cohort_fingerprint

    base_key = [MASKS_VERSION, settings.key_dict(), seed, cohort_fingerprint(cohort)]
    # The network's own key: the same, with the settings that only change prediction at their defaults, so that a
    # segmenter cached before they were set (or with other values) segments again instead of being refitted.
    network_key = [MASKS_VERSION, settings.network_settings().key_dict(), seed, cohort_fingerprint(cohort)]
    n_folds, scheme = int(p["n_folds"]), lesions.crossfit
    if n_folds < 3:
        raise ValueError(f"lesion_source 'predicted' cross-fits segmenters inside the training folds and needs "
                         f"parameter 'n_folds' >= 3, got {n_folds}")
    deployed = check_deployed_segmenter(p.get("deployed_segmenter", "refit"))
    plan = crossfit_plan(n_folds, scheme, deployed)
    folder = study.out / "cache" / "lesions"
    keys: dict[tuple[str, frozenset], str] = {}
    jobs = []
    for m, left_out in itertools.product(modalities, plan):
        train_rows, target_rows = segmenter_rows(left_out, lesions.row_folds, n_folds, scheme)
        pairs = [(image, mask) for _, _, image, mask in _expert_views(cohort, train_rows, m) if mask is not None]
        patients = sorted(cohort.patients["patient_id"].iloc[train_rows])
        key, net_key = (hashlib.sha256(json.dumps([*k, m, patients], default=str).encode()).hexdigest()[:12]
                        for k in (base_key, network_key))
        keys[m, left_out] = key
        record = network = None
        if not fresh:
            record = _stored(folder, m, left_out, key, elsewhere=_sibling_caches(study.out))
            if record is None:
                network = _stored_network(folder, m, left_out, net_key, elsewhere=_sibling_caches(study.out))
        jobs.append(_SegmenterJob(m, left_out, key, pairs, _expert_views(cohort, target_rows, m), record, net_key,
                                  network))
    resegment = [job for job in jobs if job.record is None and job.network is not None]
    fitted = {**_resegment(study, resegment, settings, folder, lesions.row_folds),
              **_fit_segmenters(study, [job for job in jobs if job.record is None and job.network is None], settings,
                                seed, folder, lesions.row_folds)}
    scores = []
    for i, job in enumerate(jobs):
        m, left_out, key, targets = job.m, job.left_out, job.key, job.targets
        home = folder / f"{m}-{_name(left_out)}-{key}"
        t = time.perf_counter()
        record = job.record if job.record is not None else fitted[m, left_out]["record"]
        lesions.fits["total"] += 1
        lesions.fits["reused"] += job.record is not None
        lesions.fits["resegmented"] += job.network is not None
        outline = _outline_scores(home, targets)
        _register(lesions, cohort, m, left_out, record, outline)
        if not left_out:
            lesions.segmenters[m] = str(home / "segmenter")
        # Every mask is scored against the expert's: the held-out fold's and the internal test's (what the study
        # reports), and the training rows' from the inner segmenters ('crossfit': how close the masks the classifier
        # trains on come to the masks it is evaluated on).
        scores += _score(targets, record, m, left_out, lesions.row_folds, outline, lesions.uncertain_below)
        if len(left_out) == 1 and int(settings.refine_size):
            scores += _whole_image_scores(home, targets, m, lesions.row_folds)
        if job.record is not None:
            study.log(f"({i + 1}/{len(jobs)}) {m} segmenter {_name(left_out)}: reused, {len(targets)} images "
                      f"segmented ({sum(not ok for *_, ok in record)} without a lesion), "
                      f"{time.perf_counter() - t:.1f} s")
    if deployed == "folds":
        for m in modalities:
            scores += _fold_ensemble(study, lesions, m, folder, [keys[m, frozenset({k})] for k in range(n_folds)],
                                     base_key, fresh=fresh)
    write_segmentation_table(study, pd.DataFrame(scores), lesions)


@dataclass
class _SegmenterJob:
    """One segmenter of the study's plan: its training pairs, the views it segments, and its stored masks (None:
    to fit)."""

    m: str
    left_out: frozenset
    key: str
    pairs: list
    targets: list
    record: list | None = None
    network_key: str | None = None
    network: Path | None = None  # a cached segmenter of the same network, to segment the targets again


def _stored_network(folder: Path, modality: str, left_out, network_key: str, elsewhere=()) -> Path | None:
    """A cached segmenter (its ``segmenter`` folder) whose network this study's would be: the same network key
    (``done.json``'s ``network``; a home cached before the field existed counts by its ``key`` when its settings
    that change prediction only are at their defaults), here or in a study beside this one. None if there is none."""
    from .segmentation import SegmenterSettings

    for where in (folder, *elsewhere):
        for home in sorted(Path(where).glob(f"{modality}-{_name(left_out)}-*")):
            try:
                record = json.loads((home / "done.json").read_text())
                meta = json.loads((home / "segmenter" / "segmenter.json").read_text())
                own = SegmenterSettings.from_dict(meta["settings"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a finished segmenter of ours
            net = record.get("network", record.get("key") if own == own.network_settings() else None)
            if net == network_key and int(meta.get("members", 1)) == 1:
                return home / "segmenter"
    return None


def _resegment(study, todo: list[_SegmenterJob], settings, folder: Path, row_folds) -> dict:
    """Segment the targets of ``todo`` again with their cached networks under this run's prediction settings
    (:data:`mmlib.segmentation.INFERENCE`); no fit. Returns what :func:`_fit_segmenters` returns."""
    from .segmentation import Segmenter

    out = {}
    for n, job in enumerate(todo, start=1):
        t = time.perf_counter()
        cached = Segmenter.load(job.network)
        segmenter = dataclasses.replace(cached, settings=settings, info={**cached.info, "resegmented_from":
                                                                          str(job.network)})
        result = _segment_and_write(job, segmenter, folder, row_folds)
        out[job.m, job.left_out] = {**result, "images": len(job.pairs), "seconds": time.perf_counter() - t}
        study.log(f"({n}/{len(todo)}) {job.m} segmenter {_name(job.left_out)}: network reused from "
                  f"{job.network.parent.name}, {len(job.targets)} images segmented again with this run's "
                  f"prediction settings ({sum(not ok for *_, ok in result['record'])} without a lesion), "
                  f"{time.perf_counter() - t:.1f} s")
    return out


def segmenter_workers(params: dict, n_fits: int) -> int:
    """Worker processes fitting a study's frozen-stem segmenters on the CPU: the run's ``workers`` (as for
    training: ``auto`` is one per core, at most 4), at most one per fit. (On a GPU, or end to end, they are fitted
    one after the other in the study's process.)"""
    from .scheduling import n_workers

    return max(1, min(n_workers(params, "cpu"), int(n_fits)))


def _fit_segmenters(study, todo: list[_SegmenterJob], settings, seed: int, folder: Path, row_folds) -> dict:
    """Fit the segmenters of ``todo`` and write their masks (and outline and whole-image scores) beside them.

    With a frozen stem on the CPU the stem outputs are computed once, here, for every fit; each fit then runs on one
    thread, in ``segmenter_workers`` spawned processes when there are several (the largest fits first), so a
    segmenter is the same whatever the number of workers. Returns ``{(modality, left out): {"record", ...}}``.
    """
    from .experiment import _torch_threads
    from .segmentation import StemCache

    if not todo:
        return {}
    frozen = settings.train_mode == "frozen"
    device = _device(study.params)
    single = frozen and device == "cpu"  # one thread per fit, in worker processes where there are several
    stems: dict = {}
    if frozen:
        for m in dict.fromkeys(job.m for job in todo):
            pairs = list(dict.fromkeys(pair for job in todo if job.m == m for pair in job.pairs))
            stem = StemCache(settings, seed=seed)
            stem.build([a for a, _ in pairs], [b for _, b in pairs], progress=study.params.get("progress", True))
            if int(settings.refine_size):
                stem.crop_cache().build([a for a, _ in pairs], [b for _, b in pairs],
                                        progress=study.params.get("progress", True))
            stems[m] = stem
    workers = segmenter_workers(study.params, len(todo)) if single else 1
    out, failed = {}, []
    order = sorted(todo, key=lambda job: -len(job.pairs))  # the longest first: the workers finish together

    def done(job, result):
        out[job.m, job.left_out] = result
        kept = result["kept"]
        kept = f"; {kept} with the whole-image outline, the refiner finding nothing in its crop" if kept else ""
        study.log(f"({len(out) + len(failed)}/{len(todo)}) {job.m} segmenter {_name(job.left_out)}: fitted on "
                  f"{result['images']} images, {len(job.targets)} images segmented "
                  f"({sum(not ok for *_, ok in result['record'])} without a lesion{kept}), {result['seconds']:.1f} s")

    if workers == 1:
        with _torch_threads(1 if single else None):
            for job in order:
                done(job, _fit_one(job, settings, seed, device, folder, row_folds, stems.get(job.m)))
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    folder.mkdir(parents=True, exist_ok=True)
    files = {m: stem.save(folder / f".stems-{m}-{os.getpid()}.safetensors") for m, stem in stems.items()}
    stems.clear()  # the workers read the files; this process needs the stem outputs no more
    study.log(f"fitting {len(todo)} segmenters in {workers} worker processes, one thread each")
    try:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_segmenter_worker_init,
                                 initargs=(files, settings)) as pool:
            futures = {pool.submit(_fit_in_worker, job, settings, seed, folder, row_folds): job for job in order}
            for fut in as_completed(futures):
                job = futures[fut]
                if fut.exception() is not None:
                    failed.append((job, fut.exception()))
                    continue
                done(job, fut.result())
    finally:
        for f in files.values():
            f.unlink(missing_ok=True)
    if failed:
        names = "\n".join(f"  {job.m} segmenter {_name(job.left_out)}: {type(e).__name__}: {e}" for job, e in failed)
        raise RuntimeError(f"{len(failed)} segmenter fit(s) failed (the {len(out)} finished are kept; a rerun fits "
                           f"only these):\n{names}") from failed[0][1]
    return out


def _fit_one(job: _SegmenterJob, settings, seed: int, device: str, folder: Path, row_folds, stem_cache) -> dict:
    """Fit one segmenter, segment its targets and write what the study reads: masks, outline scores and (a held-out
    segmenter with a refiner) the whole-image network's scores."""
    from .segmentation import fit_segmenter

    t = time.perf_counter()
    segmenter = fit_segmenter([a for a, _ in job.pairs], [b for _, b in job.pairs], settings=settings, seed=seed,
                              progress=False, stem_cache=stem_cache, device=device)
    return {**_segment_and_write(job, segmenter, folder, row_folds), "images": len(job.pairs),
            "seconds": time.perf_counter() - t}


def _segment_and_write(job: _SegmenterJob, segmenter, folder: Path, row_folds) -> dict:
    """Segment the job's targets and write its masks, outline scores and (a held-out segmenter with a refiner) the
    whole-image network's scores beside the segmenter."""
    predicted = segmenter.predict([image for _, _, image, _ in job.targets], whole_image=True)
    record = _write_masks(folder, job.m, job.left_out, job.key, job.targets, predicted, segmenter,
                          network_key=job.network_key)
    home = folder / f"{job.m}-{_name(job.left_out)}-{job.key}"
    _outline_scores(home, job.targets, predicted)
    if len(job.left_out) == 1 and int(segmenter.settings.refine_size):
        _whole_image_scores(home, job.targets, job.m, row_folds, predicted)
    return {"record": record, "kept": sum(pm.refined is False for pm in predicted)}


_WORKER: dict = {}


def _segmenter_worker_init(files: dict, settings) -> None:
    import torch

    from .segmentation import StemCache

    torch.set_num_threads(1)
    _WORKER["stems"] = {m: StemCache.load(path, settings) for m, path in files.items()}


def _fit_in_worker(job: _SegmenterJob, settings, seed: int, folder: Path, row_folds) -> dict:
    return _fit_one(job, settings, seed, "cpu", folder, row_folds, _WORKER["stems"].get(job.m))


#: The folder name part of the fold segmenters' ensemble (``deployed_segmenter: folds``).
FOLD_ENSEMBLE = "fold-ensemble"


def _register(lesions: StudyLesions, cohort, m: str, left_out: frozenset, record, outline) -> None:
    masks, found = lesions.masks.setdefault(left_out, {}).setdefault(m, {}), \
        lesions.found.setdefault(left_out, {}).setdefault(m, {})
    scored = lesions.outline_scores.setdefault(left_out, {}).setdefault(m, {})
    for (r, j, mask, ok), score in zip(record, outline, strict=True):
        n = len(cohort.patients[m].iloc[r])
        masks.setdefault(r, [None] * n)[j] = mask
        found.setdefault(r, [True] * n)[j] = ok
        scored.setdefault(r, [float("nan")] * n)[j] = score


#: Beside each cached segmenter: the score of each outline it drew (``PredictedMask.score``).
OUTLINE_SCORES = "outline_scores.csv"


def _outline_scores(home: Path, targets, predicted=None) -> list[float]:
    """The segmenter's score of each target view's outline, kept in :data:`OUTLINE_SCORES` beside it: from the
    fit's own prediction (``predicted``), or, for a segmenter cached without the table, by running it again once
    (prediction only; the masks stored are not touched)."""
    from .segmentation import Segmenter

    stored = home / OUTLINE_SCORES
    keys = [(int(r), int(j)) for r, j, *_ in targets]
    if stored.is_file():
        table = pd.read_csv(stored)
        by = {(int(t.row), int(t.view)): float(t.score) for t in table.itertuples()}
        if all(k in by for k in keys):
            return [by[k] for k in keys]
    if predicted is None:
        predicted = Segmenter.load(home / "segmenter").predict([image for _, _, image, _ in targets])
    table = pd.DataFrame([{"row": r, "view": j, "score": float(pm.score)} for (r, j), pm in zip(keys, predicted)],
                         columns=["row", "view", "score"])
    tmp = stored.with_name(stored.name + ".tmp")  # whole or not at all
    table.to_csv(tmp, index=False)
    tmp.replace(stored)
    return table["score"].tolist()


def _fold_ensemble(study, lesions: StudyLesions, m: str, folder: Path, member_keys: list[str], base_key,
                   *, fresh: bool = False) -> list[dict]:
    """``deployed_segmenter: folds``: the mean of the fold segmenters (``without-<k>``, keys ``member_keys`` in fold
    order) segments the internal test and is the segmenter saved with the models. Its masks are stored and reused
    like a fitted segmenter's, keyed by its members'. Returns the internal test's scores."""
    from .segmentation import Segmenter, ensemble_segmenters

    key = hashlib.sha256(json.dumps([*base_key, m, FOLD_ENSEMBLE, member_keys], default=str).encode()).hexdigest()[:12]
    name = f"{m}-{FOLD_ENSEMBLE}-{key}"
    _, target_rows = segmenter_rows(frozenset(), lesions.row_folds)
    targets = _expert_views(study.cohort, target_rows, m)
    t = time.perf_counter()
    record = None if fresh else _stored(folder, m, frozenset(), key, elsewhere=_sibling_caches(study.out),
                                       home_name=name)
    what, predicted = "reused", None
    if record is None:
        members = [Segmenter.load(folder / f"{m}-{_name(frozenset({k}))}-{mk}" / "segmenter")
                   for k, mk in enumerate(member_keys)]
        ensemble = ensemble_segmenters(members, info={"deployed_segmenter": "folds",
                                                      "member_folds_left_out": list(range(len(members)))})
        predicted = ensemble.predict([image for _, _, image, _ in targets])
        record = _write_masks(folder, m, frozenset(), key, targets, predicted, ensemble, home_name=name)
        what = f"the mean of the {len(members)} fold segmenters"
    outline = _outline_scores(folder / name, targets, predicted)
    _register(lesions, study.cohort, m, frozenset(), record, outline)
    lesions.segmenters[m] = str(folder / name / "segmenter")
    study.log(f"{m} segmenter saved with the models: {what}, {len(targets)} internal-test images segmented "
              f"({sum(not ok for *_, ok in record)} without a lesion), {time.perf_counter() - t:.1f} s")
    return _score(targets, record, m, frozenset(), lesions.row_folds, outline, lesions.uncertain_below)


def _device(p) -> str:
    import torch

    d = p.get("device", "auto")
    return ("cuda" if torch.cuda.is_available() else "cpu") if d == "auto" else d


def study_segmenter_home(results, left_out, modality: str = "ultrasound") -> Path:
    """The folder (``cache/lesions/<modality>-<left out>-<key>``) of the newest segmenter a study in ``results``
    fitted leaving out exactly the folds ``left_out`` (the newest, should the settings have changed between runs);
    a FileNotFoundError that says what to run where there is none."""
    prefix = f"{modality}-{_name(frozenset(left_out))}-"  # then the key: "without-0-" must not match "without-0-3-4-"
    folder = Path(results) / "cache" / "lesions"
    homes = sorted((p.parent for p in folder.glob(f"{prefix}*/done.json") if "-" not in p.parent.name[len(prefix):]),
                   key=lambda p: (p / "done.json").stat().st_mtime)
    if not homes:
        raise FileNotFoundError(f"no {modality} segmenter fitted without folds {sorted(left_out)} under {folder}: "
                                f"run the study with lesion_source predicted first")
    return homes[-1]


def held_out_images(results, k: int, cohort, modality: str = "ultrasound"):
    """The segmenter a study in ``results`` fitted without development fold ``k`` (:func:`study_segmenter_home`) and
    the fold's images it segmented: ``(segmenter, rows, images, expert masks)``, one entry per view in the lists."""
    from .segmentation import Segmenter

    home = study_segmenter_home(results, {k}, modality)
    views = json.loads((home / "done.json").read_text())["views"]
    rows = [int(r) for r, *_ in views]
    images = [cohort.patients[modality].iloc[r][v] for r, v, *_ in views]
    masks = [cohort.patients[mask_column(modality)].iloc[r][v] for r, v, *_ in views]
    return Segmenter.load(home / "segmenter"), rows, images, masks


def _sibling_caches(out: Path) -> list[Path]:
    """The lesion caches of the other studies beside ``out`` (a profile's tuning variants, its reference run)."""
    parent, found = Path(out).parent, []
    try:
        for d in sorted(parent.iterdir()):
            try:
                if d.resolve() != Path(out).resolve() and (d / "cache" / "lesions").is_dir():
                    found.append(d / "cache" / "lesions")
            except OSError:  # a folder we may not read is not a study of ours
                continue
    except OSError:
        return []
    return found


def _stored(folder: Path, modality: str, left_out, key: str, elsewhere=(), home_name: str | None = None):
    """The stored masks of one segmenter (``[(row, view, mask path or None, found)]``), or None. A segmenter
    fitted by another study beside this one (the same key: settings, seed, cohort on disk, modality and training
    patients) is copied into ``folder`` and reused: a tuning variant of a profile does not fit its 16 segmenters
    again. ``home_name``: the folder's name where it is not ``<modality>-<left out>-<key>``."""
    name = home_name or f"{modality}-{_name(left_out)}-{key}"
    record = _read_done(folder / name, key)
    if record is not None:
        return record
    for other in elsewhere:
        if _read_done(Path(other) / name, key) is None:
            continue
        home, tmp = folder / name, folder / (name + ".copy")
        for stale in (home, tmp):
            if stale.exists():
                shutil.rmtree(stale)
        shutil.copytree(Path(other) / name, tmp)
        done = json.loads((tmp / "done.json").read_text())
        prefix = str(Path(other) / name)
        for v in done["views"]:  # mask paths now point into this study's copy
            if v[2] is not None:
                v[2] = str(home) + v[2][len(prefix):] if v[2].startswith(prefix) else v[2]
        (tmp / "done.json").write_text(json.dumps(done))
        tmp.rename(home)
        return _read_done(home, key)
    return None


def _read_done(home: Path, key: str):
    done = home / "done.json"
    if not done.is_file():
        return None
    record = json.loads(done.read_text())
    if record.get("key") != key or not all(mask is None or Path(mask).is_file() for *_, mask, _ in record["views"]):
        return None
    return [tuple(v) for v in record["views"]]


def _write_masks(folder: Path, modality, left_out, key, targets, predicted, segmenter,
                 home_name: str | None = None, network_key: str | None = None):
    """Write the found masks under ``<modality>-<segmenter>-<key>/masks-<content hash>/`` (or ``home_name``); returns
    ``[(row, view, mask path or None, found)]`` and records it in ``done.json``."""
    from PIL import Image

    home = folder / (home_name or f"{modality}-{_name(left_out)}-{key}")
    if home.exists():
        shutil.rmtree(home)
    tmp = home / "masks.tmp"
    tmp.mkdir(parents=True)
    h = hashlib.sha256()
    names = []
    for (r, j, image, _), pm in zip(targets, predicted):
        name = f"row{r:05d}-view{j}-{image.stem}_mask.png" if pm.found else None
        if name:
            Image.fromarray(pm.mask.astype(np.uint8) * 255).save(tmp / name)
            h.update(name.encode() + np.packbits(pm.mask).tobytes())
        names.append(name)
    final = home / f"masks-{h.hexdigest()[:12]}"
    tmp.rename(final)
    views = [(r, j, None if name is None else str(final / name), bool(pm.found))
             for (r, j, _, _), name, pm in zip(targets, names, predicted)]
    segmenter.save(home / "segmenter")
    done = {"key": key, "left_out": sorted(left_out), "views": views}
    if network_key is not None:
        done["network"] = network_key
    (home / "done.json").write_text(json.dumps(done))
    return views


def _score(targets, record, modality, left_out, row_folds, outline, uncertain_below: float = 0.0) -> list[dict]:
    """Dice and IoU of each target view's mask against the expert's, with the outline's score and whether it is
    uncertain (a found outline scoring below ``uncertain_below``)."""
    from .imaging import read_mask
    from .segmentation import dice_iou

    out = []
    for (r, j, image, truth), (_, _, mask, found), score in zip(targets, record, outline, strict=True):
        if truth is None:
            continue
        expert = read_mask(truth)
        pred = read_mask(mask) if mask is not None else np.zeros_like(expert)
        if pred.shape != expert.shape:
            from .imaging import resize_mask

            expert = resize_mask(expert, pred.shape)
        dice, iou = dice_iou(pred, expert)
        split = {0: "test", 1: "cv"}.get(len(left_out), "crossfit")
        out.append({"row": r, "view": j, "modality": modality, "split": split,
                    "fold": -1 if not left_out else int(row_folds[r]), "dice": dice, "iou": iou, "found": found,
                    "score": float(score), "uncertain": bool(found and score < float(uncertain_below))})
    return out


#: ``segmentation.csv`` split of the held-out masks the whole-image network drew before a refiner redrew them.
WHOLE_IMAGE_SPLIT = "cv_whole_image"


def _whole_image_scores(home: Path, targets, modality, row_folds, predicted=None) -> list[dict]:
    """Held-out Dice of a refined segmenter's whole-image network alone (split :data:`WHOLE_IMAGE_SPLIT`): what the
    refiner adds, on the same images. Kept in ``whole_image.csv`` beside the segmenter, computed once: from the
    whole-image answers the fit's own prediction carried (``predicted``, one per target), or, for a segmenter
    cached without the table, by running its whole-image network again."""
    from .imaging import read_mask, resize_mask
    from .segmentation import Segmenter, dice_iou

    stored = home / "whole_image.csv"
    if not stored.is_file():
        keep = [i for i, t in enumerate(targets) if t[3] is not None]
        scored = [targets[i] for i in keep]
        if predicted is not None:
            predicted = [predicted[i].whole_image for i in keep]
        if predicted is None or any(pm is None for pm in predicted):
            predicted = Segmenter.load(home / "segmenter").predict([image for _, _, image, _ in scored],
                                                                   refine=False)
        rows = []
        for (r, j, _, truth), pm in zip(scored, predicted):
            expert = read_mask(truth)
            dice, iou = dice_iou(pm.mask, resize_mask(expert, pm.mask.shape))
            rows.append({"row": int(r), "view": int(j), "dice": dice, "iou": iou, "found": bool(pm.found)})
        tmp = stored.with_name(stored.name + ".tmp")  # whole or not at all: a stopped run leaves no half table
        pd.DataFrame(rows, columns=["row", "view", "dice", "iou", "found"]).to_csv(tmp, index=False)
        tmp.replace(stored)
    table = pd.read_csv(stored)
    return [{"row": int(t.row), "view": int(t.view), "modality": modality, "split": WHOLE_IMAGE_SPLIT,
             "fold": int(row_folds[int(t.row)]), "dice": float(t.dice), "iou": float(t.iou), "found": bool(t.found)}
            for t in table.itertuples()]


def refiner_gain(images: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> dict | None:
    """What a refiner adds to held-out Dice: ``segmentation_images.csv``'s split ``cv`` (refined) against
    :data:`WHOLE_IMAGE_SPLIT` (the whole-image network alone) on the same images, with a 95% CI from a bootstrap
    of patients (``group``). None where the study has no refiner."""
    cv = images[images["split"] == "cv"]
    whole = images[images["split"] == WHOLE_IMAGE_SPLIT]
    if cv.empty or whole.empty:
        return None
    both = cv.merge(whole, on=["row", "view", "modality"], suffixes=("", "_whole"))
    gain = paired_dice_gain(both["dice"], both["dice_whole"], both["group"], n_boot=n_boot, seed=seed)
    return {"dice": float(both["dice"].mean()), "dice_whole_image": float(both["dice_whole"].mean()),
            "diff": gain["diff"], "ci_low": gain["ci_low"], "ci_high": gain["ci_high"], "n_images": len(both),
            "n_patients": gain["n_patients"]}


def paired_dice_gain(a, b, groups, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean per-image Dice of ``a`` minus ``b`` (the same images, two segmenters or two settings) with a 95% CI
    from a bootstrap that draws whole patients (``groups``): ``diff``, ``ci_low``, ``ci_high``, ``n_patients``."""
    d = pd.Series(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))
    diff = d.groupby(np.asarray(groups)).agg(["sum", "count"])
    draws = np.random.default_rng(seed).integers(0, len(diff), (int(n_boot), len(diff)))
    boot = diff["sum"].to_numpy()[draws].sum(1) / diff["count"].to_numpy()[draws].sum(1)
    return {"diff": float(d.mean()), "ci_low": float(np.quantile(boot, 0.025)),
            "ci_high": float(np.quantile(boot, 0.975)), "n_patients": len(diff)}


def segmentation_summary(views: pd.DataFrame, groups: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per fold (cross-validation, held-out patients), all folds together and the internal test: mean Dice and
    IoU per patient with percentile bootstrap 95% CIs resampling patients (whole groups). Split ``crossfit`` scores
    the masks the classifiers' training rows get (from the segmenters that leave out the row's fold and the outer
    fold; each development patient's masks from every such segmenter that gives it one averaged), all folds
    together.

    Args:
        views: one row per scored image: ``row, modality, split, fold, dice, iou, found``.
        groups: the group (patient) of every cohort row.
    """
    columns = ["modality", "split", "fold", "n_patients", "n_images", "dice", "dice_ci_low", "dice_ci_high", "iou",
               "iou_ci_low", "iou_ci_high", "lesion_found"]
    if views.empty:
        return pd.DataFrame(columns=columns)
    views = views.assign(group=np.asarray(groups)[views["row"].to_numpy(dtype=int)])
    parts = []
    for (m, split), g in views.groupby(["modality", "split"], sort=False):
        if split == "cv":
            parts += [(m, split, str(k), gf) for k, gf in g.groupby("fold")]
            parts.append((m, split, "all", g))
        else:
            parts.append((m, split, "all", g))
    rng = np.random.default_rng(seed)
    rows = []
    for m, split, fold, g in parts:
        per = g.groupby("group")[["dice", "iou"]].mean()
        row = {"modality": m, "split": split, "fold": fold, "n_patients": len(per), "n_images": len(g),
               "lesion_found": float(g["found"].mean())}
        for metric in ("dice", "iou"):
            v = per[metric].to_numpy()
            boot = v[rng.integers(0, len(v), size=(int(n_boot), len(v)))].mean(1)
            row[metric], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = \
                float(v.mean()), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def write_segmentation_table(study, views: pd.DataFrame, lesions: StudyLesions) -> Path:
    """``segmentation.csv`` in the results folder (see :func:`segmentation_summary`)."""
    groups = study.cohort.patients["group"].astype(str).to_numpy()
    table = segmentation_summary(views, groups, n_boot=int(study.params.get("n_boot", 2000)),
                                 seed=int(study.params.get("split_seed", 0)))
    path = study.out / "segmentation.csv"
    table.to_csv(path, index=False)
    pats = study.cohort.patients
    if not views.empty:  # per image: which images the segmenter missed, and paired comparisons
        rows = views["row"].to_numpy(dtype=int)
        views.assign(patient_id=pats["patient_id"].astype(str).to_numpy()[rows], group=groups[rows]).to_csv(
            study.out / "segmentation_images.csv", index=False)
    what = {"cv": "held-out patients", "crossfit": "training rows' cross-fitted masks", "test": "internal test",
            WHOLE_IMAGE_SPLIT: "held-out patients, whole-image network alone (before the refiner)"}
    for r in table[table["fold"] == "all"].itertuples():
        study.log(f"segmenter ({r.modality}), {what.get(r.split, r.split)}: Dice {r.dice:.3f} ({r.dice_ci_low:.3f}-"
                  f"{r.dice_ci_high:.3f}), IoU {r.iou:.3f}, a lesion found in {found_count(r.lesion_found, r.n_images)} "
                  f"images")
    return path


def found_count(share: float, n_images: int) -> str:
    """``segmentation.csv``'s ``lesion_found`` share as a count, e.g. ``201 of 202``: a percentage rounds one image
    without a lesion in 202 up to 100%."""
    return f"{int(round(float(share) * int(n_images)))} of {int(n_images)}"


def with_lesion_found(study, preds: pd.DataFrame) -> pd.DataFrame:
    """Add ``lesion_found`` and ``uncertain_outline`` to prediction rows (predicted lesions only): ``lesion_found``
    False where a view of the patient was read whole because its segmenter found no lesion; ``uncertain_outline``
    True where a view's lesion was found with a score below the run's ``segmenter.uncertain_below`` (what
    ``mmlib predict`` says in such a row's note)."""
    lesions = getattr(study, "lesions", None)
    if lesions is None or lesions.source != "predicted":
        return preds
    row_of = {pid: i for i, pid in enumerate(study.cohort.patients["patient_id"].astype(str))}
    rows = preds["patient_id"].astype(str).map(row_of).to_numpy(dtype=int)
    found, uncertain = np.ones(len(preds), dtype=bool), np.zeros(len(preds), dtype=bool)
    for fold, idx in preds.groupby("fold").indices.items():
        outer = None if int(fold) < 0 else int(fold)
        found[idx] = lesions.lesion_found(rows[idx], outer)
        uncertain[idx] = lesions.uncertain_outline(rows[idx], outer)
    return preds.assign(lesion_found=found, uncertain_outline=uncertain)
