"""Images in, answer out: a saved model folder applied to new patients, and lesion masks for a cohort.

A model folder records where its lesion comes from (``model.json`` -> ``lesion``, set by
:func:`mmlib.experiment.train_model` from the run parameter ``lesion_source``):

- ``expert``: ROI crops and outline morphometry come from the manifest's ``<modality>_mask`` (crops also from
  ``<modality>_bbox``). Rows without them are refused with an error naming the rows and the column.
- ``predicted``: the folder holds a lesion segmenter per modality (``segmenter/``: safetensors + JSON, see
  :mod:`mmlib.segmentation`). Every image is segmented and the crop and outline come from the predicted mask;
  where nothing is found the whole image is used and the row says so (``lesion_found`` False and a ``note``);
  where the segmenter's refiner finds nothing in its crop, the whole-image network's outline is used and the
  ``note`` says so too.
  The manifest's masks and boxes are not read.
- ``none``: whole images; no mask or box is read.

Masks and boxes are never required otherwise, nor are labels (kept in the output when present). Everything is
written to a temporary name first and renamed when complete, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .cohort import Cohort, Issue, ManifestError, load_manifest
from .schema import IMAGE_MODALITIES, PATH_SEPARATOR, bbox_column, mask_column

#: Where the lesion of a view comes from (the run parameter ``lesion_source``).
LESION_SOURCES = ("expert", "predicted", "none")
#: The segmenter folder of a model folder (one per segmented modality; see :func:`segmenter_folder`).
SEGMENTER_FOLDER = "segmenter"
#: The record :func:`segment_manifest` writes beside its masks (also marks the folder as an mmlib output).
SEGMENT_RECORD = "segment.json"
NOT_FOUND_NOTE = "no lesion found in {view}: whole image used"
#: Where the segmenter's refiner found no lesion in its crop and the whole-image network's outline was used.
NOT_REFINED_NOTE = "the refiner found no lesion around the lesion found in {view}: the whole-image outline used"
#: Where the lesion was found with a score below the segmenter's ``uncertain_below``: its outline may be wrong.
UNCERTAIN_NOTE = ("the lesion outline in {view} is uncertain (segmenter score {score:.3f}, below {below:g}): check "
                  "its mask (mmlib segment)")
#: The columns of :func:`segment_cohort`'s table.
VIEW_COLUMNS = ["row", "patient_id", "modality", "view", "image", "mask", "lesion_found", "refined", "score",
                "uncertain"]


# ----------------------------------------------------------------------------------------------- writing safely
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _readable_as_usual(path: Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the permissions a plain new file or folder gets under
    the umask. Temporary files and folders are private (0600/0700; so are safetensors files): an output renamed
    from one would be unreadable to colleagues on a shared server."""
    allowed = ~_umask()
    items = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in items:
        if p.is_symlink():
            continue
        full = 0o777 if p.is_dir() else 0o666
        os.chmod(p, (p.stat().st_mode & 0o7777) | (full & allowed))


def write_csv_atomic(df: pd.DataFrame, path) -> Path:
    """Write ``df`` to ``path`` through a temporary file in the same folder, renamed when complete (with the
    permissions of a plain new file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        df.to_csv(tmp, index=False)
        _readable_as_usual(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def output_folder(out, *, marker: str):
    """Yield a temporary folder beside ``out`` that replaces ``out`` when the block ends without error (with the
    permissions of a plain new folder and files, not the temporary folder's private ones).

    Args:
        out: the folder to produce.
        marker: a file every folder of this kind holds; an existing non-empty ``out`` without it is refused
            (it is not an earlier output of the same command, and it will not be deleted).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).is_file())):
        raise FileExistsError(f"{out} exists and is not an earlier output of this command (no {marker} in it); "
                              "choose a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        _readable_as_usual(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- the lesion record
def lesion_record(meta: dict) -> dict:
    """Where a saved model's lesion comes from: ``{"source", "modalities", "segmenters"}``.

    Folders saved before the record existed read their masks from the manifest when they crop or measure
    outlines (``expert``), else nothing (``none``).
    """
    rec = meta.get("lesion")
    if rec:
        if rec.get("source") not in LESION_SOURCES:
            raise ValueError(f"model.json: lesion source {rec.get('source')!r}; expected one of {LESION_SOURCES}")
        return {"source": rec["source"], "modalities": list(rec.get("modalities", [])),
                "segmenters": dict(rec.get("segmenters", {}))}
    spec = meta["spec"]
    uses = bool(spec.images.roi) or spec.outline is not None
    return {"source": "expert" if uses else "none", "modalities": list(IMAGE_MODALITIES) if uses else [],
            "segmenters": {}}


def segmenter_folder(modality: str, modalities) -> str:
    """Sub-folder of a model folder holding ``modality``'s segmenter: ``segmenter`` when one modality is segmented,
    ``segmenter-<modality>`` otherwise."""
    return SEGMENTER_FOLDER if len(list(modalities)) == 1 else f"{SEGMENTER_FOLDER}-{modality}"


def load_segmenters(model_dir, rec: dict) -> dict:
    """The model folder's segmenters, by modality (:meth:`mmlib.segmentation.Segmenter.load`)."""
    from .segmentation import Segmenter

    out = {}
    for m, sub in rec["segmenters"].items():
        folder = Path(model_dir) / sub
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is missing: model.json says the {m} lesion comes from a segmenter "
                                    "saved there")
        out[m] = Segmenter.load(folder)
    return out


def required_columns(meta: dict) -> tuple[str, ...]:
    """Manifest columns a model cannot predict without: ``patient_id`` and ``age`` where it reads age."""
    spec = meta["spec"]
    return ("patient_id", "age") if spec.use_clinical and "age" in spec.clinical.columns else ("patient_id",)


def _row_text(cohort: Cohort, i: int) -> str:
    row = cohort.source_rows[i] if cohort.source_rows else i + 2
    return f"{row} ({cohort.patients['patient_id'].iloc[i]})"


def missing_expert_lesions(cohort: Cohort, meta: dict) -> list[Issue]:
    """One issue per column for rows whose views lack what an ``expert``-lesion model reads: a mask for outline
    morphometry, a mask or box for ROI crops. Empty when the model reads neither."""
    spec, rec = meta["spec"], lesion_record(meta)
    if rec["source"] != "expert":
        return []
    need_mask = spec.outline is not None
    need_any = bool(spec.images.roi)
    if not (need_mask or need_any):
        return []
    issues = []
    for m in rec["modalities"]:
        lacking = []
        for i in range(len(cohort.patients)):
            row = cohort.patients.iloc[i]
            images = row[m] if isinstance(row[m], list) else []
            masks, boxes = row[mask_column(m)], row[bbox_column(m)]
            for j in range(len(images)):
                mask, box = masks[j], boxes[j]
                if (need_mask and mask is None) or (need_any and mask is None and box is None):
                    lacking.append(i)
                    break
        if lacking:
            column = mask_column(m) if need_mask else f"{mask_column(m)}' or '{bbox_column(m)}"
            rows = ", ".join(_row_text(cohort, i) for i in lacking[:20]) + (" ..." if len(lacking) > 20 else "")
            what = "outline morphometry and ROI crops" if need_mask and need_any else \
                "outline morphometry" if need_mask else "ROI crops"
            issues.append(Issue(None, column, f"{len(lacking)} row(s) have {m} images without the expert's lesion "
                                f"that this model reads ({what}, lesion_source 'expert'): rows {rows}. Fill the "
                                f"column, draw the masks from `mmlib segment`, or use a model trained with "
                                f"lesion_source 'predicted'", None, cohort.manifest.name))
    return issues


# ----------------------------------------------------------------------------------------------- segmentation
def mask_file_names(images: list[Path]) -> list[str]:
    """``<image stem>_mask.png`` per image (``bus_0001-l.png`` -> ``bus_0001-l_mask.png``); a stem seen before
    gets ``-2``, ``-3``, ... so that no two images share a mask file."""
    seen: dict[str, int] = {}
    out = []
    for image in images:
        stem = Path(image).stem
        seen[stem] = seen.get(stem, 0) + 1
        out.append(f"{stem}_mask.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}_mask.png")
    return out


def _write_mask(mask: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255).save(path)


def segment_cohort(cohort: Cohort, segmenters: dict, folder, *, progress: bool = False) -> pd.DataFrame:
    """Segment every image of the segmented modalities and write each mask as a PNG into ``folder``.

    Args:
        cohort: the cohort whose images are segmented.
        segmenters: ``{modality: Segmenter}``.
        folder: where the masks go (``<image stem>_mask.png``, the image's size; all zero where nothing is found).
        progress: show the segmenter's progress.

    Returns:
        One row per image: ``row`` (position in the cohort), ``patient_id``, ``modality``, ``view`` (0-based),
        ``image``, ``mask`` (the written file), ``lesion_found``, ``refined`` (True: the refiner drew the outline;
        False: it found nothing in its crop and the whole-image network's outline was kept; None: no refiner, or
        no lesion), ``score``, ``uncertain`` (a lesion found with a score below the segmenter's
        ``uncertain_below``: see :class:`mmlib.segmentation.SegmenterSettings`).
    """
    from .imaging import image_size

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(i, m, j, Path(p)) for m in segmenters for i, paths in enumerate(cohort.patients[m])
            for j, p in enumerate(paths if isinstance(paths, list) else [])]
    names = mask_file_names([job[3] for job in jobs])
    records = []
    for m, seg in segmenters.items():
        mine = [(job, name) for job, name in zip(jobs, names) if job[1] == m]
        if not mine:
            continue
        predicted = seg.predict([job[3] for job, _ in mine], progress=progress)
        if len(predicted) != len(mine):
            raise RuntimeError(f"the {m} segmenter returned {len(predicted)} masks for {len(mine)} images")
        below = float(seg.settings.uncertain_below)
        for ((i, _, j, image), name), pm in zip(mine, predicted):
            shape = image_size(image)
            if tuple(pm.mask.shape) != tuple(shape):
                raise RuntimeError(f"the {m} segmenter returned a {pm.mask.shape} mask for {image} "
                                   f"({shape[0]}x{shape[1]} pixels); expected the image's size")
            _write_mask(pm.mask, folder / name)
            found = bool(pm.found and np.asarray(pm.mask).any())
            records.append({"row": i, "patient_id": str(cohort.patients["patient_id"].iloc[i]), "modality": m,
                            "view": j, "image": image, "mask": folder / name, "lesion_found": found,
                            "refined": pm.refined, "score": float(pm.score),
                            "uncertain": found and float(pm.score) < below})
    return pd.DataFrame(records, columns=VIEW_COLUMNS)


def with_predicted_lesions(cohort: Cohort, views: pd.DataFrame, *, keep_empty: bool = False) -> Cohort:
    """A copy of ``cohort`` whose ``<modality>_mask`` columns hold the predicted masks of ``views`` (from
    :func:`segment_cohort`) and no other mask or box, so crops and outlines come from the prediction alone (a
    modality without a segmenter is read whole). A view where nothing was found gets no mask (the whole image),
    unless ``keep_empty``."""
    patients = without_lesions(cohort).patients
    for m, rows in views.groupby("modality"):
        masks = [[None] * len(v) if isinstance(v, list) else [] for v in patients[m]]
        for r in rows.itertuples():
            masks[r.row][r.view] = Path(r.mask) if (r.lesion_found or keep_empty) else None
        patients[mask_column(m)] = pd.Series(masks, index=patients.index, dtype=object)
        patients[bbox_column(m)] = pd.Series([[None] * len(v) for v in masks], index=patients.index, dtype=object)
    return Cohort(manifest=cohort.manifest, root=cohort.root, patients=patients, warnings=list(cohort.warnings),
                  source_rows=list(cohort.source_rows))


def without_lesions(cohort: Cohort) -> Cohort:
    """A copy of ``cohort`` without masks or boxes (``lesion_source: none``)."""
    patients = cohort.patients.copy()
    for m in IMAGE_MODALITIES:
        empty = [[None] * len(v) if isinstance(v, list) else [] for v in patients[m]]
        patients[mask_column(m)] = pd.Series(empty, index=patients.index, dtype=object)
        patients[bbox_column(m)] = pd.Series([list(e) for e in empty], index=patients.index, dtype=object)
    return Cohort(manifest=cohort.manifest, root=cohort.root, patients=patients, warnings=list(cohort.warnings),
                  source_rows=list(cohort.source_rows))


def _notes(cohort: Cohort, views: pd.DataFrame, segmenters: dict) -> tuple[np.ndarray, list[str]]:
    below_of = {m: float(seg.settings.uncertain_below) for m, seg in segmenters.items()}
    found = np.ones(len(cohort.patients), dtype=bool)
    notes = [[] for _ in range(len(cohort.patients))]
    for r in views.itertuples():
        view = f"{r.modality} view {r.view + 1} ({Path(r.image).name})"
        if not r.lesion_found:
            found[r.row] = False
            notes[r.row].append(NOT_FOUND_NOTE.format(view=view))
        elif r.refined is False:
            notes[r.row].append(NOT_REFINED_NOTE.format(view=view))
        if r.lesion_found and r.uncertain:
            # the score cut to 3 decimals, never rounded up to the cut-off it is below
            notes[r.row].append(UNCERTAIN_NOTE.format(view=view, score=np.floor(r.score * 1000) / 1000,
                                                      below=below_of[r.modality]))
    return found, ["; ".join(n) for n in notes]


# ----------------------------------------------------------------------------------------------- prediction
def load_cohort_for(meta: dict, manifest, *, labels_required: bool = False, strict_masks: bool | None = None) -> Cohort:
    """Load ``manifest`` with what the model needs: images decoded (an unreadable one is named with its row and
    column), the columns of :func:`required_columns`, and for an ``expert``-lesion model every view's lesion, its
    masks holding a lesion at their image's size (``strict_masks``: check the masks so whatever the model; None:
    where the model reads them)."""
    rec = lesion_record(meta)
    required = required_columns(meta) + (("label",) if labels_required else ())
    if strict_masks is None:
        strict_masks = rec["source"] == "expert" and bool(rec["modalities"])
    cohort = load_manifest(manifest, decode_images=True, required=required, strict_masks=strict_masks)
    issues = missing_expert_lesions(cohort, meta)
    if issues:
        raise ManifestError(cohort.manifest, issues)
    return cohort


def predict_cohort(model, meta: dict, cohort: Cohort, *, model_dir=None, bs: int = 32, device="cpu",
                   progress: bool = False, workdir=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Probabilities of malignancy for every patient of ``cohort`` with a loaded model.

    Args:
        model, meta: from :func:`mmlib.learner.load_model`.
        cohort: from :func:`load_cohort_for`.
        model_dir: the model folder (its segmenters, for ``predicted`` lesions).
        workdir: where predicted masks are written (a temporary folder, removed afterwards, when None).

    Returns:
        ``(predictions, views)``: one row per patient (see :func:`predict_manifest`) and, for ``predicted``
        lesions, one row per segmented image (:func:`segment_cohort`; empty otherwise).
    """
    from .data import MultimodalDataset, SampleSpec, max_views
    from .learner import predict_proba

    rec = lesion_record(meta)
    spec: SampleSpec = meta["spec"]
    views = pd.DataFrame(columns=VIEW_COLUMNS)
    with contextlib.ExitStack() as stack:
        if rec["source"] == "predicted":
            if workdir is None:
                workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="mmlib-masks-"))
            segmenters = load_segmenters(model_dir, rec)
            views = segment_cohort(cohort, segmenters, workdir, progress=progress)
            used = with_predicted_lesions(cohort, views)
        elif rec["source"] == "none":
            used = without_lesions(cohort)
        else:
            used = cohort
        patients = used.patients
        for c in spec.clinical.columns:
            if c not in patients.columns:
                patients[c] = np.nan  # recorded as missing: the model was trained to expect that
        slots = {m: max(spec.views[m], v) for m, v in max_views(patients).items()}
        spec = SampleSpec(spec.clinical, spec.images, slots, spec.use_clinical, spec.outline)
        ds = MultimodalDataset(used, np.arange(len(patients)), spec, train=False)
        prob = predict_proba(model, ds, bs=bs, device=device, progress=progress)
    out = pd.DataFrame({"patient_id": ds.patient_ids, "prob_malignant": prob})
    threshold = meta.get("threshold")
    if threshold is not None:
        out["predicted"] = np.where(prob >= threshold, "malignant", "benign")
        out["threshold"] = float(threshold)
    names = cohort.patients["label_name"].to_numpy()
    if (names != "").any():
        out["label"] = names
    out["lesion_source"] = rec["source"]
    if rec["source"] == "predicted":
        out["lesion_found"], out["note"] = _notes(cohort, views, segmenters)
    else:
        out["note"] = ""
    return out, views


def predict_manifest(model_dir, manifest, *, bs: int = 32, device="cpu", progress: bool = False) -> pd.DataFrame:
    """Apply a saved model folder to every patient of a manifest (any subset of modalities; labels optional).

    Returns:
        One row per patient: ``patient_id``, ``prob_malignant``, ``predicted`` and ``threshold`` (where the model
        carries a threshold), ``label`` (where the manifest has labels), ``lesion_source``, ``lesion_found``
        (``predicted`` lesions: False where the segmenter found nothing in a view and the whole image was used)
        and ``note`` (what was done instead, or empty).

    Raises:
        ManifestError: an unreadable image, a missing required column, an ``expert``-lesion model given rows
            without lesions or with empty or wrongly sized masks, each named with its row and column.
    """
    from .learner import load_model

    model, meta = load_model(model_dir, device=device)
    cohort = load_cohort_for(meta, manifest)
    return predict_cohort(model, meta, cohort, model_dir=model_dir, bs=bs, device=device, progress=progress)[0]


def segment_manifest(model_dir, manifest, out, *, progress: bool = False) -> Path:
    """Segment every image of a manifest with the segmenter(s) of a model folder (or a segmenter folder).

    Writes into ``out``: one mask PNG per image, named after it (``bus_0001-l.png`` -> ``bus_0001-l_mask.png``),
    the image's size, all zero where nothing was found; a copy of the manifest (same name) whose
    ``<modality>_mask`` columns list those masks and whose paths are relative to the copy, with
    ``<modality>_lesion_found`` (``true``/``false`` per image); and ``segment.json`` (counts and sources). Correct
    the masks by hand where needed, then predict with an ``expert``-lesion model.

    Returns:
        The path of the manifest copy.
    """
    model_dir = Path(model_dir)
    cohort = load_manifest(manifest, decode_images=True, required=("patient_id",))
    if (model_dir / "segmenter.json").is_file():
        from .segmentation import Segmenter

        segmenter = Segmenter.load(model_dir)
        segmenters = {_segmented_modality(segmenter, cohort, model_dir): segmenter}
    else:
        from .learner import MODEL_CONFIG

        if not (model_dir / MODEL_CONFIG).is_file():
            raise FileNotFoundError(f"{model_dir} is neither a model folder ({MODEL_CONFIG}) nor a segmenter folder "
                                    "(segmenter.json)")
        meta = json.loads((model_dir / MODEL_CONFIG).read_text())
        rec = meta.get("lesion") or {}
        if not rec.get("segmenters"):
            raise ValueError(f"{model_dir}: this model has no segmenter (lesion_source "
                             f"{rec.get('source', 'expert')!r}); train one with lesion_source 'predicted'")
        segmenters = load_segmenters(model_dir, {"segmenters": rec["segmenters"]})
    table = pd.read_csv(cohort.manifest, dtype=str, keep_default_na=False)
    with output_folder(out, marker=SEGMENT_RECORD) as tmp:
        views = segment_cohort(cohort, segmenters, tmp, progress=progress)
        final = Path(out)
        copy = _manifest_copy(table, cohort, views, final)
        write_csv_atomic(copy, tmp / cohort.manifest.name)
        record = {"manifest": str(cohort.manifest), "model": str(model_dir.resolve()), "images": len(views),
                  "lesion_found": int(views["lesion_found"].sum()),
                  "refined": int((views["refined"] == True).sum()),  # noqa: E712 (None, True or False)
                  "refiner_found_nothing": int((views["refined"] == False).sum()),  # noqa: E712
                  "uncertain_outline": int(views["uncertain"].sum()),
                  "modalities": sorted(segmenters)}
        (tmp / SEGMENT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return Path(out) / cohort.manifest.name


def _segmented_modality(segmenter, cohort: Cohort, folder: Path) -> str:
    """The modality a bare segmenter folder segments: the one it records, else the manifest's only imaging one."""
    recorded = getattr(segmenter, "modality", None)
    if recorded:
        return recorded
    present = [m for m in IMAGE_MODALITIES if cohort.patients[m].map(len).sum() > 0]
    if len(present) != 1:
        raise ValueError(f"{folder}: the segmenter does not say which modality it segments and the manifest has "
                         f"images of {present or 'no modality'}; pass the model folder it belongs to")
    return present[0]


def _manifest_copy(table: pd.DataFrame, cohort: Cohort, views: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """The manifest's text with its paths relative to ``folder`` and the predicted masks filled in."""
    table = table.copy()
    root = cohort.root

    def rel(item: str) -> str:
        if not item:
            return ""
        p = Path(item)
        return Path(os.path.relpath(p if p.is_absolute() else root / p, folder.resolve())).as_posix()

    for col in [c for c in table.columns if c in IMAGE_MODALITIES or c in {mask_column(m) for m in IMAGE_MODALITIES}]:
        table[col] = table[col].map(lambda cell: PATH_SEPARATOR.join(rel(t.strip()) for t in cell.split(PATH_SEPARATOR))
                                    if cell.strip() else "")
    ids = table["patient_id"].str.strip()
    for m, rows in views.groupby("modality"):
        masks = [[""] * len(v) for v in cohort.patients[m]]
        found = [[""] * len(v) for v in cohort.patients[m]]
        for r in rows.itertuples():
            masks[r.row][r.view] = Path(r.mask).name
            found[r.row][r.view] = "true" if r.lesion_found else "false"
        pids = cohort.patients["patient_id"]
        table[mask_column(m)] = ids.map(dict(zip(pids, (PATH_SEPARATOR.join(v) for v in masks)))).fillna("")
        table[f"{m}_lesion_found"] = ids.map(dict(zip(pids, (PATH_SEPARATOR.join(v) for v in found)))).fillna("")
    return table


# ----------------------------------------------------------------------------------------------- training
def lesion_modalities(cohort: Cohort, rows) -> list[str]:
    """Imaging modalities with at least one expert mask among ``rows``."""
    pats = cohort.patients.iloc[np.asarray(rows, dtype=int)]
    return [m for m in IMAGE_MODALITIES
            if any(mask is not None for masks in pats[mask_column(m)] if isinstance(masks, list) for mask in masks)]


def _group_folds(cohort: Cohort, rows: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """A fold number per row; the rows of one group share a fold."""
    groups = cohort.patients["group"].iloc[rows].astype(str).to_numpy()
    unique = np.array(sorted(set(groups)))
    np.random.default_rng(seed).shuffle(unique)
    fold_of = {g: k % n_folds for k, g in enumerate(unique)}
    return np.array([fold_of[g] for g in groups])


def _expert_pairs(cohort: Cohort, rows, modality: str) -> tuple[list[Path], list[Path]]:
    images, masks = [], []
    for r in rows:
        row = cohort.patients.iloc[int(r)]
        for image, mask in zip(row[modality], row[mask_column(modality)]):
            if mask is not None:
                images.append(Path(image))
                masks.append(Path(mask))
    return images, masks


def _shared_stem_cache(fit_segmenter, settings, seed: int) -> dict:
    """``{"stem_cache": ...}`` when the segmenter caches its frozen blocks: the folds' fits then encode each image
    once, not once per fold."""
    import inspect

    if "stem_cache" not in inspect.signature(fit_segmenter).parameters:
        return {}
    from .segmentation import SegmenterSettings, StemCache

    st = settings if isinstance(settings, SegmenterSettings) else SegmenterSettings.from_dict(settings)
    return {"stem_cache": StemCache(st, seed=seed)} if st.train_mode == "frozen" else {}


def crossfit_lesions(cohort: Cohort, rows, folder, *, n_folds: int = 5, settings=None, seed: int = 0,
                     progress: bool = True, deployed: str = "refit") -> tuple[Cohort, dict, pd.DataFrame]:
    """Segmenters for a model trained with ``lesion_source: predicted``, and the masks its training rows get.

    Training rows must see the kind of mask a new patient will get, not the expert's: the rows are split into
    ``n_folds`` folds by group, and each fold's images are segmented by a segmenter fitted on the other folds'
    expert masks (cross-fitting). The segmenter kept with the model is, by ``deployed`` (the run parameter
    ``deployed_segmenter``), fitted on all rows' masks (``refit``) or the mean of the folds' segmenters (``folds``).

    Args:
        cohort: the training cohort (expert masks in ``<modality>_mask``).
        rows: the training rows.
        folder: where the cross-fitted masks are written.
        n_folds: cross-fitting folds (at least 2).
        settings: segmenter settings (:func:`mmlib.segmentation.fit_segmenter`).
        deployed: ``refit`` or ``folds`` (:func:`mmlib.segmentation.ensemble_segmenters`).

    Returns:
        ``(cohort with the cross-fitted masks of rows and no boxes, {modality: Segmenter}, views)``; ``views`` has
        one row per segmented image (:func:`segment_cohort`) plus ``dice`` and ``iou`` against the expert's mask.
    """
    from .imaging import read_mask
    from .lesions import check_deployed_segmenter
    from .segmentation import dice_iou, fit_segmenter

    check_deployed_segmenter(deployed)
    rows = np.asarray(rows, dtype=int)
    modalities = lesion_modalities(cohort, rows)
    if not modalities:
        raise ValueError(f"{cohort.manifest.name}: lesion_source 'predicted' trains a segmenter on the expert's "
                         "lesion masks, but no training row has one (columns '<modality>_mask')")
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2 for cross-fitting, got {n_folds}")
    folds = _group_folds(cohort, rows, n_folds, seed)
    folder = Path(folder)
    tables, segmenters = [], {}
    for m in modalities:
        shared = _shared_stem_cache(fit_segmenter, settings, seed)
        fold_segmenters = []
        for k in range(n_folds):
            held = rows[folds == k]
            if not len(held):
                continue
            images, masks = _expert_pairs(cohort, rows[folds != k], m)
            seg = fit_segmenter(images, masks, settings=settings, seed=seed, progress=progress, **shared)
            fold_segmenters.append(seg)
            part = segment_cohort(cohort.subset(cohort.patients["patient_id"].iloc[held]), {m: seg},
                                  folder / f"{m}-fold{k}")
            part["row"] = held[part["row"].to_numpy(dtype=int)]
            tables.append(part)
        if deployed == "folds":
            from .segmentation import ensemble_segmenters

            segmenters[m] = ensemble_segmenters(fold_segmenters, info={"deployed_segmenter": "folds"})
        else:
            images, masks = _expert_pairs(cohort, rows, m)
            segmenters[m] = fit_segmenter(images, masks, settings=settings, seed=seed, progress=progress, **shared)
    views = pd.concat(tables, ignore_index=True)
    scores = []
    for r in views.itertuples():
        truth = cohort.patients[mask_column(r.modality)].iloc[r.row][r.view]
        scores.append(dice_iou(read_mask(r.mask), read_mask(truth)) if truth is not None else (np.nan, np.nan))
    views["dice"], views["iou"] = [s[0] for s in scores], [s[1] for s in scores]
    return with_predicted_lesions(cohort, views), segmenters, views
