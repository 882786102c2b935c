"""The study: cross-validation, internal test, baselines, ablations and missing-modality scenarios.

:func:`run_experiment` takes the same flat parameter dict that papermill injects into the notebooks (one YAML
per run profile under ``params/``) and writes tidy results under ``results/<profile>/``:

``predictions.csv``  ``patient_id, model, ablation, scenario, split, fold, seed, prob_malignant, label,
                     threshold``; cross-validation rows are out-of-fold predictions; with ``lesion_source:
                     predicted`` also ``lesion_found`` and ``uncertain_outline`` (:func:`mmlib.lesions.with_lesion_found`)
``metrics.csv``      ``model, ablation, scenario, split, metric, value, ci_low, ci_high, n_units, n_clusters``
                     (bootstrap 95% CIs resampling patients: whole groups of units when a patient gives several,
                     stratified by label; metrics at the stated threshold, and ``<metric>@0.5`` at probability 0.5;
                     ``auc_delong`` with DeLong's CI, which treats units as independent)
                     and the spread over training seeds (``n_seeds, seed_mean, seed_sd, seed_min, seed_max``)
``seed_metrics.csv`` ``model, ablation, scenario, split, seed, metric, value``: each seed's own metrics
``fold_metrics.csv`` the same per cross-validation fold (no CI)
``inner_predictions.csv``  each fold model's (and the refit's, ``fold`` -1) predictions on its inner validation
                     patients, which set its decision threshold
``stats.csv``        :data:`STATS_COLUMNS`: paired patient-level bootstrap of AUC and accuracy differences + Holm,
                     DeLong + Holm and McNemar exact + Holm (units independent), Cohen's d / Welch / Mann-Whitney
                     for age (one row per patient); ``unit`` says what each test treats as independent
``missing_modalities.csv``  every model on the 7 input subsets: AUC, drop and ratio against all inputs, Brier
                     and ECE and their change
``run.json``         the record of the run: git commit, parameters, versions, device, wall time per stage,
                     thresholds, ``oracle_auc`` for a synthetic cohort
``models/<model>/``  the models of ablation ``none`` refitted on all development patients (safe folders), one
                     member per seed (a :class:`mmlib.learner.SeedEnsemble`: the seed average the metrics describe;
                     each member stays in its unit's ``work/<config>__s<seed>/model/``)
``logs/``            fastai CSV logs per model, ablation and fold

Protocol choices (the paper's abstract is silent on them; these are the field's best practice):
splits by patient before anything touches the images; early stopping and best-epoch selection on an
*inner* validation split of the training folds (never on the fold being predicted); the decision threshold
is chosen on training data only (Youden's J on each fold model's own inner validation predictions; the fold
ensemble predicting the test set uses the mean of its members' thresholds, a refitted model its own inner
validation; see :func:`assign_thresholds`); the internal test set is predicted once, by the fold ensemble (mean
probability) or a model refitted on all development patients (``test_model``).
A later run reuses finished work (per model, ablation and seed) only when its reuse key is the same: the
parameters results depend on, the source of the ``mmlib`` package, the cohort on disk, the device and the
precision (:func:`reuse_key_parts`, recorded in ``run.json``); ``fresh=True`` (``mmlib run --fresh``) redoes all.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import params as _params
from .params import ParamsError, result_keys, validate_params  # noqa: F401  (callers import them from here)
from .paths import COHORTS, ROOT, results_dir
from .provenance import device_info, git_state, package_versions, precision, source_fingerprint, stable_hash
from .schema import IMAGE_MODALITIES, MODALITIES, all_scenarios, bbox_column, mask_column, scenario_name
from .scheduling import available_cores

def load_params(profile: str | Path | dict | None = None, **overrides) -> dict:
    """Parameters of a run (:func:`mmlib.params.load_params`): defaults, a profile, then ``overrides``."""
    return _params.load_params(profile, overrides)


# ----------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class Config:
    """One trained variant: a model (or baseline) with an ablation."""

    model: str
    ablation: str = "none"
    model_kwargs: tuple = ()
    modality_dropout: float = 0.0
    use_clinical: bool = True

    @property
    def id(self) -> str:
        return f"{self.model}__{self.ablation}"

    @property
    def kwargs(self) -> dict:
        return dict(self.model_kwargs)


def experiment_configs(params: dict) -> list[Config]:
    """The trained variants of a run: models and baselines (ablation ``none``), then the ablations."""
    from .models import model_class

    configs = [Config(m) for m in params["models"]] + [Config(b) for b in params["baselines"]]
    if params["ablations"]:
        for m in params["models"]:
            for name, kw in model_class(m).ablations.items():
                configs.append(Config(m, name, tuple(sorted(kw.items()))))
            configs.append(Config(m, "no_clinical", use_clinical=False))
            if params["modality_dropout"] > 0:
                configs.append(Config(m, "modality_dropout", modality_dropout=float(params["modality_dropout"])))
    return configs


# ----------------------------------------------------------------------------------------------- helpers
def _device(params) -> str:
    import torch

    if params["device"] == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return params["device"]


def peak_memory_mb(children: bool = False) -> float:
    """Peak resident memory of this process (or of the largest finished child process: training workers)."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF).ru_maxrss / 1024.0


_hash = stable_hash

#: Parameters that choose which units of work a run has, or only shape its statistics. They stay out of a unit's
#: reuse key: the unit's own model variant and seed are in it, so adding a model or a seed retrains nothing else.
UNIT_SELECTION: frozenset[str] = frozenset({"seeds", "models", "baselines", "ablations", "modality_dropout",
                                            "n_boot", "ece_bins"})
#: The modules that turn images into cached features (with what they import): their source keys the cache.
FEATURE_SOURCES: tuple[str, ...] = ("data", "encoders", "cohort")


def reuse_key_parts(study: "Study") -> dict:
    """Everything a finished unit of work depends on besides its own model variant and seed."""
    p = study.params
    device = _device(p)
    parts = {"params": {k: p[k] for k in result_keys() if k not in UNIT_SELECTION},
             "source": source_fingerprint(), "cohort": cohort_fingerprint(study.cohort),
             "device": device, "precision": precision(p, device)}
    if getattr(study, "lesions", None) is not None:  # predicted masks: their files' content
        parts["lesions"] = study.lesions.fingerprint()
    return parts


def unit_key(parts: dict, config: "Config", seed: int) -> str:
    """The reuse key of one unit of work."""
    return _hash([parts, config.__dict__, seed])


# ----------------------------------------------------------------------------------------------- cohort
def prepare_cohort(params: dict):
    """Load the run's cohort (generating the synthetic one first when asked). Returns ``(cohort, info)``."""
    from .cohort import load_manifest

    info: dict = {}
    if params["cohort"] == "synthetic":
        from .synth import generate_cohort, load_cohort_info

        from .synth import GENERATOR_VERSION, SynthConfig

        config = SynthConfig(n_patients=int(params["synthetic_patients"]), seed=int(params["synthetic_seed"]))
        folder = COHORTS / f"synthetic-n{config.n_patients}-seed{config.seed}"
        manifest = folder / "manifest.csv"
        stale = True
        if manifest.is_file() and (folder / "cohort.json").is_file():
            old = load_cohort_info(folder)
            # a cohort written by another generator version or configuration is regenerated, never reused
            stale = (old.get("generator_version") != GENERATOR_VERSION
                     or json.dumps(old.get("config"), sort_keys=True) != json.dumps(json.loads(json.dumps(config.to_dict())), sort_keys=True))
        if stale:
            generate_cohort(folder, config)
        info = load_cohort_info(folder)
        info["synthetic"] = True
    elif params["cohort"] in _importer_kinds():
        manifest = import_real_cohort(params["cohort"])
        info["synthetic"] = False
        info["collection"] = params["cohort"]
    else:
        manifest = Path(params["cohort"])
        if not manifest.is_absolute():
            manifest = ROOT / manifest
        info["synthetic"] = False
    cohort = load_manifest(manifest, decode_images=False)
    info["manifest"] = str(manifest)
    def has_any(columns):  # lists of Path / box or None per row (see load_manifest)
        return any(c in cohort.patients and cohort.patients[c].map(lambda v: any(x is not None for x in v)).any()
                   for c in columns)

    masks = [mask_column(m) for m in IMAGE_MODALITIES]
    if params.get("outline_features") and not has_any(masks):
        raise ParamsError(f"parameter 'outline_features' needs lesion masks, and cohort {params['cohort']!r} "
                          f"({manifest}) has none (columns {masks}); set outline_features: false")
    boxes = [bbox_column(m) for m in IMAGE_MODALITIES]
    if params.get("roi") and not has_any(masks + boxes):
        raise ParamsError(f"parameter 'roi' crops around lesion masks or boxes, and cohort {params['cohort']!r} "
                          f"({manifest}) has none (columns {masks + boxes}); set roi: false, or import a release "
                          "with lesion annotations")
    return cohort, info


def _importer_kinds() -> set[str]:
    from .importers import IMPORTERS

    return set(IMPORTERS)


def import_real_cohort(kind: str, source_dir: str | Path | None = None) -> Path:
    """Manifest of a public collection read from ``../shared/data/<kind>`` (imported into ``cohorts/``, again when a
    table of the source changes).

    Where the collection is absent, stops at once with where to download it and the command that imports it.
    """
    from .importers import collection_help, import_cohort
    from .paths import SHARED_DATA

    source = Path(source_dir) if source_dir else SHARED_DATA / kind
    manifest = COHORTS / kind / "manifest.csv"
    if manifest.is_file() and (not source.is_dir() or all(f.stat().st_mtime <= manifest.stat().st_mtime
                                                          for f in source.iterdir() if f.is_file())):
        return manifest  # imported before, and no table of the source (workbook, CSV) changed since
    if not source.is_dir():
        raise FileNotFoundError(f"the {kind} collection is not at {source}.\n\n{collection_help(kind)}")
    return import_cohort(kind, source, manifest)


# ----------------------------------------------------------------------------------------------- study
@dataclass
class Study:
    """State of one run: cohort, splits, encoder feature cache and the output folder."""

    params: dict
    out: Path
    cohort: object = None
    cohort_info: dict = field(default_factory=dict)
    splits: pd.DataFrame | None = None
    cache: object = None
    timings: dict = field(default_factory=dict)
    encoder_spec: dict = field(default_factory=dict)
    fresh: bool = False
    key_parts: dict = field(default_factory=dict)
    units: dict = field(default_factory=dict)
    lesions: object = None  # mmlib.lesions.StudyLesions: predicted or no lesions; None: the expert's
    executor: dict = field(default_factory=dict)
    worker_peaks: list = field(default_factory=list)

    def log(self, msg: str):
        if self.params.get("progress", True):
            print(msg, flush=True)


def _inner_split(study: Study, rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training rows -> (fit rows, inner validation rows) for early stopping, stratified by label, by group."""
    from sklearn.model_selection import StratifiedGroupKFold

    frac = float(study.params["inner_valid"])
    if frac <= 0:
        return rows, rows[:0]
    pats = study.cohort.patients.iloc[rows]
    n = max(2, int(round(1 / frac)))
    splitter = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed + 104729)
    fit_idx, val_idx = next(splitter.split(np.zeros(len(rows)), pats["label"].to_numpy(), pats["group"].astype(str)))
    return rows[fit_idx], rows[val_idx]


def threshold_rows(study: Study, train_rows: np.ndarray, seed: int) -> np.ndarray:
    """The training rows whose predictions choose a model's decision threshold: the inner validation split that
    :func:`fit_config` holds out of fitting (the same rows it uses for early stopping), or, with
    ``inner_valid: 0``, the same tenth of the training rows it then watches (in-sample, said in the docs)."""
    fit_rows, val_rows = _inner_split(study, train_rows, seed)
    return val_rows if len(val_rows) else fit_rows[: max(1, len(fit_rows) // 10)]


def _spec(study: Study, rows: np.ndarray, use_clinical: bool):
    from .data import ClinicalScaler, ImageSettings, SampleSpec, max_views

    cols = list(study.cohort.clinical_columns)
    scaler = ClinicalScaler.fit(study.cohort.patients.iloc[rows], cols)
    images = ImageSettings(size=int(study.params["image_size"]), roi=bool(study.params["roi"]),
                           roi_margin=float(study.params["roi_margin"]),
                           mean=study.encoder_spec.get("mean", (0.485, 0.456, 0.406)),
                           std=study.encoder_spec.get("std", (0.229, 0.224, 0.225)))
    outline = None
    if study.params["outline_features"]:
        from .data import OutlineScaler

        try:
            outline = OutlineScaler.fit(study.cohort.patients.iloc[rows])
        except ValueError as err:
            raise ParamsError(f"parameter 'outline_features': {err}; set it to false for cohort "
                              f"{study.params['cohort']!r}") from None
    return SampleSpec(scaler, images, max_views(study.cohort.patients), use_clinical, outline)


def _datasets(study: Study, spec, fit_rows, val_rows, seed, grid=None):
    from .data import FeatureDataset, MultimodalDataset

    if study.params["train_mode"] == "frozen":
        return (FeatureDataset(study.cohort, fit_rows, spec, study.cache, train=True, seed=seed, grid=grid),
                FeatureDataset(study.cohort, val_rows, spec, study.cache, train=False, seed=seed, grid=grid))
    return (MultimodalDataset(study.cohort, fit_rows, spec, train=True, seed=seed),
            MultimodalDataset(study.cohort, val_rows, spec, train=False, seed=seed))


def _eval_dataset(study: Study, spec, rows, seed, grid=None):
    from .data import FeatureDataset, MultimodalDataset

    if study.params["train_mode"] == "frozen":
        return FeatureDataset(study.cohort, rows, spec, study.cache, train=False, seed=seed, grid=grid)
    return MultimodalDataset(study.cohort, rows, spec, train=False, seed=seed)


def _scenarios(study: Study) -> list[tuple[str, ...]]:
    return all_scenarios() if study.params["scenarios"] else [tuple(MODALITIES)]


def fit_config(study: Study, config: Config, train_rows: np.ndarray, seed: int, log_path: Path | None = None):
    """Train ``config`` on ``train_rows`` (inner split for early stopping). Returns ``(predict, model, spec)``
    where ``predict(rows, keep) -> probabilities``."""
    from .learner import multimodal_learner, predict_proba, set_seed
    from .models import create_model, model_class

    p = study.params
    spec = _spec(study, train_rows, config.use_clinical)
    if model_class(config.model).tabular:  # fitted without its inner validation rows, like every model: they set its threshold
        return _fit_tabular(study, spec, _inner_split(study, train_rows, seed)[0], create_model(config.model, **config.kwargs))
    fit_rows, val_rows = _inner_split(study, train_rows, seed)
    if len(val_rows) == 0:
        val_rows = fit_rows[: max(1, len(fit_rows) // 10)]
    from .data import make_dataloaders
    from .morphometry import OUTLINE_FEATURES

    frozen = p["train_mode"] == "frozen"
    kwargs = dict(encoder=p["encoder"], encoder_weights=p["encoder_weights"] if not frozen else "none",
                  encoder_levels=p["encoder_levels"],
                  outline_features=0 if spec.outline is None else len(OUTLINE_FEATURES),
                  dim=int(p["dim"]), **config.kwargs)
    set_seed(seed)
    model = create_model(config.model, clinical_features=spec.clinical.n_features,
                         input_kind="features" if frozen else "images", **kwargs)
    grid = model.spatial_grid if frozen else None
    train_ds, valid_ds = _datasets(study, spec, fit_rows, val_rows, seed, grid)
    dls = make_dataloaders(train_ds, valid_ds, bs=int(p["bs"]), seed=seed, device=_device(p))
    learn = multimodal_learner(dls, config.model, model=model, lr=float(p["lr"]), wd=float(p["wd"]),
                               modality_dropout=config.modality_dropout,
                               early_stopping=int(p["early_stopping"]) or None, save_best=True,
                               csv_log="history.csv" if log_path else None, frozen=frozen, seed=seed,
                               path=log_path.parent if log_path else None)
    if frozen and study.cache is not None:
        _load_frozen_encoder(learn.model, study)
    if not p["progress"]:
        learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == "ProgressCallback"])
    if p["mixed_precision"] and _device(p) == "cuda":
        learn = learn.to_fp16()
    with _quiet(not p["progress"]), _torch_threads(1 if frozen else None):
        if frozen:
            learn.fit_one_cycle(int(p["epochs"]), float(p["lr"]))
        else:
            learn.fine_tune(int(p["epochs"]), base_lr=float(p["lr"]), freeze_epochs=1)
    if log_path is not None and (log_path.parent / "history.csv").exists():
        (log_path.parent / "history.csv").replace(log_path)
    for f in (log_path.parent if log_path else Path(learn.path)).glob("best.pth"):
        f.unlink()
    device = _device(p)
    model = learn.model.eval().to(device)  # predictions on the device the model trained on

    datasets: dict = {}

    def predict(rows, keep):
        key = tuple(np.asarray(rows).tolist())
        if key not in datasets:  # built once per set of rows, reused for every scenario
            datasets[key] = _eval_dataset(study, spec, rows, seed, grid)
        # as many threads as training: a worker process has one, and the same sums in the same order give
        # bit-identical probabilities whether the unit ran in this process or in a worker
        with _torch_threads(1 if frozen else None):
            return predict_proba(model, datasets[key], keep=keep, device=device, bs=256 if device == "cuda" else 64)

    return predict, model, spec


class _torch_threads:
    """Run a block with ``n`` torch threads. The fusion parts trained on cached features are tiny: one thread is
    as fast as several, and far faster when other processes share the cores (threads spin-waiting for a core)."""

    def __init__(self, n: int | None):
        self.n = n

    def __enter__(self):
        import torch

        self.old = torch.get_num_threads()
        if self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.old)


class _quiet:
    """Silence fastai's progress output (for tests and non-interactive runs)."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        if self.on:
            import contextlib
            import io

            self._ctx = contextlib.redirect_stdout(io.StringIO())
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self.on:
            self._ctx.__exit__(*exc)


def _load_frozen_encoder(model, study: Study):
    """Give the model the encoder weights the cache was computed with (so saved models read images)."""
    enc = study.cache.encoder
    state = enc.state_dict()
    for e in {id(v): v for v in model.encoders.values()}.values():
        e.load_state_dict(state)
        for prm in e.parameters():
            prm.requires_grad_(False)


def _fit_tabular(study: Study, spec, train_rows, model):
    """Fit a tabular model (``fit(X, y)``, ``predict_proba(X)``, e.g. scikit-learn) on the clinical vectors."""
    pats = study.cohort.patients
    model.fit(spec.clinical.transform(pats.iloc[train_rows]), pats["label"].to_numpy()[train_rows])

    def predict(rows, keep):
        table = pats.iloc[rows]
        if "clinical" not in keep:  # the clinical input removed: every value recorded as missing
            table = table.assign(**{c: np.nan for c in spec.clinical.columns})
        return model.predict_proba(spec.clinical.transform(table))

    return predict, model, spec


# ----------------------------------------------------------------------------------------------- run
def build_feature_cache(study: Study, *, write: bool = True, fresh: bool = False, stored: dict | None = None):
    """Encode every image once (and the augmented copies of development images) with the frozen encoder.

    The features are stored under ``cache/`` in the results folder and reused by every later run of the same
    cohort, image settings and source of the modules that compute features (:data:`FEATURE_SOURCES`);
    ``write=False`` reads that file without rewriting it (training workers); ``fresh=True`` ignores it;
    ``stored`` gives the maps themselves (a worker's copy, from :func:`study_payload`)."""
    from .data import AUGMENTATION_SEEDING, DEFAULT_AUGMENTATION, FeatureCache, ImageSettings
    from .encoders import create_encoder

    p = study.params
    encoder = create_encoder(p["encoder"], weights=p["encoder_weights"], levels=p["encoder_levels"])
    study.encoder_spec = {"mean": list(encoder.mean), "std": list(encoder.std), "num_features": encoder.num_features}
    settings = ImageSettings(size=int(p["image_size"]), roi=bool(p["roi"]), roi_margin=float(p["roi_margin"]),
                             mean=encoder.mean, std=encoder.std)
    cache = FeatureCache(encoder, settings, n_augment=int(p["n_augment"]), augment=DEFAULT_AUGMENTATION,
                         seed=int(p["split_seed"]), device=_device(p), progress=bool(p["progress"]))
    key = [p["encoder"], p["encoder_weights"], settings.to_dict(), p["n_augment"], p["split_seed"],
           None if encoder.levels is None else list(encoder.levels), AUGMENTATION_SEEDING,
           cohort_fingerprint(study.cohort), source_fingerprint(FEATURE_SOURCES), _device(p)]
    if study.lesions is not None:  # the masks' paths name their content, so new masks never reuse old features
        key.append(study.lesions.fingerprint())
    cache_file = study.out / "cache" / f"features-{_hash(key)}.safetensors"
    if stored is not None:
        cache.maps = dict(stored)
    elif cache_file.is_file() and not fresh:
        cache.load(cache_file)
    from .lesions import feature_jobs

    for cohort, rows, augment_rows in feature_jobs(study):
        cache.build(cohort, rows, augment_rows=augment_rows)
    if write:
        cache.save(cache_file)
    study.cache = cache
    return cache


def cohort_fingerprint(cohort) -> str:
    """Hash of the manifest's content and of the content of every image and expert-mask file: cached features,
    segmenters and finished work are reused only for the very same cohort (a mask redrawn in place changes the
    crops, the outline features and the segmenters, so it changes the key), and still reused when the same files
    are copied, unpacked or downloaded again (new modification times, same bytes). Each file is read once per
    process while its size and modification time stay (about a second per 300 MB)."""
    from .schema import IMAGE_MODALITIES, mask_column

    h = hashlib.sha256(Path(cohort.manifest).read_bytes())
    for m in IMAGE_MODALITIES:
        columns = [m] + ([mask_column(m)] if mask_column(m) in cohort.patients.columns else [])
        for column in columns:
            for i, paths in enumerate(cohort.patients[column]):
                for j, f in enumerate(paths or ()):
                    if f is not None:
                        h.update(f"{column}|{i}|{j}|{file_digest(f)}".encode())
    return h.hexdigest()[:16]


_DIGESTS: dict[tuple, str] = {}


def file_digest(path) -> str:
    """SHA-256 of a file's bytes, remembered in this process for as long as its size and modification time stay."""
    path = Path(path)
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if memo not in _DIGESTS:
        with open(path, "rb") as fh:
            _DIGESTS[memo] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _DIGESTS[memo]


def run_experiment(params: dict | str | None = None, *, out_dir: str | Path | None = None,
                   fresh: bool = False) -> Path:
    """Run the whole study of a parameter set and write the tidy results. Returns the results folder.

    Args:
        params: a parameter dict (as papermill injects), a profile name or a YAML path.
        out_dir: results folder (default ``results/<profile>/`` or ``params["results_dir"]``).
        fresh: ignore finished work and cached features (train and encode everything again).
    """
    from .splits import make_splits

    p = load_params(params)
    out = Path(out_dir or p.get("results_dir") or results_dir(p["profile"]))
    out.mkdir(parents=True, exist_ok=True)
    study = Study(p, out, fresh=fresh)
    t0 = time.perf_counter()
    say = _stderr_line
    say(f"study of profile {p['profile']!r} -> {out}")

    def stage(name, t):
        study.timings[name] = {"seconds": round(time.perf_counter() - t, 2), "peak_memory_mb": round(peak_memory_mb(), 1)}
        if peak_memory_mb(children=True) > 0:  # local training workers are child processes
            study.timings[name]["peak_child_memory_mb"] = round(peak_memory_mb(children=True), 1)
        import torch

        if torch.cuda.is_available():  # the GPU profile records its device memory in the colophon
            study.timings[name]["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        say(f"{name}: {study.timings[name]['seconds']} s, peak memory {study.timings[name]['peak_memory_mb']} MB "
            f"| elapsed {time.perf_counter() - t0:.0f} s")

    t = time.perf_counter()
    say("cohort: loading and splitting ...")
    study.cohort, study.cohort_info = prepare_cohort(p)
    study.splits = make_splits(study.cohort, n_folds=int(p["n_folds"]), test_fraction=float(p["test_fraction"]),
                               seed=int(p["split_seed"]))
    study.splits.to_csv(out / "splits.csv", index=False)
    stage("cohort", t)

    if p["lesion_source"] != "expert":
        from .lesions import prepare_lesions

        t = time.perf_counter()
        with _torch_threads(available_cores()):  # one fit at a time, on every core (OMP_NUM_THREADS is for workers)
            prepare_lesions(study, fresh=fresh)
        stage("segmentation", t)

    study.key_parts = reuse_key_parts(study)
    if p["train_mode"] == "frozen":
        t = time.perf_counter()
        say("feature_cache: encoding images with the frozen encoder (or reading the cache) ...")
        with _torch_threads(available_cores()):
            build_feature_cache(study, fresh=fresh)
        stage("feature_cache", t)
    else:
        from .encoders import create_encoder

        enc = create_encoder(p["encoder"], weights="none", levels=p["encoder_levels"])
        study.encoder_spec = {"mean": list(enc.mean), "std": list(enc.std), "num_features": enc.num_features}

    t = time.perf_counter()
    preds = train_and_predict(study)
    if p["save_models"]:
        assemble_models(study)
    stage("training", t)
    peaks = study.worker_peaks  # per unit, measured where it ran (a worker process or a Ray node)
    if peaks:
        study.timings["training"]["peak_unit_memory_mb"] = max(x["peak_memory_mb"] for x in peaks)
        gpu = [x["gpu_peak_memory_mb"] for x in peaks if x["gpu_peak_memory_mb"] is not None]
        if gpu:
            study.timings["training"]["gpu_peak_memory_mb"] = max(
                gpu + [study.timings["training"].get("gpu_peak_memory_mb", 0.0)])

    t = time.perf_counter()
    say("statistics: metrics, confidence intervals and tests ...")
    tables = summarise(study, preds)
    stage("statistics", t)

    gpu_peaks = [v["gpu_peak_memory_mb"] for v in study.timings.values() if v.get("gpu_peak_memory_mb") is not None]
    record = {
        "profile": p["profile"],
        "params": {k: v for k, v in p.items() if not k.startswith("_")},
        "reuse_key": {"key": _hash(study.key_parts), **{k: (_hash(v) if k == "params" else v)
                                                          for k, v in study.key_parts.items()}},
        "units": study.units,
        "executor": study.executor.get("executor", p["executor"]),
        "workers": study.executor.get("workers", 0),
        "git": git_state(),
        "versions": package_versions(),
        "device": device_info(),
        "timings": study.timings,
        "wall_time_seconds": round(time.perf_counter() - t0, 1),
        "cohort": {**study.cohort_info, "summary": _summary(study)},
        "thresholds": tables["thresholds"],
        "threshold_fallbacks": tables["threshold_fallbacks"],
        "synthetic": bool(study.cohort_info.get("synthetic")),
    }
    lesions = getattr(study, "lesions", None)
    if lesions is not None and lesions.source == "predicted":  # a build that reused them did not pay for them
        record["segmenters"] = dict(lesions.fits)
    if gpu_peaks:  # the colophon shows it
        record["gpu_peak_memory_mb"] = max(gpu_peaks)
    if "oracle_auc" in study.cohort_info:
        record["oracle_auc"] = study.cohort_info["oracle_auc"]
        # cross-validation covers the development patients only: their oracle is the fair ceiling of CV AUCs
        by_split = study.cohort_info.get("oracle_auc_by_split", {})
        if "dev" in by_split and (study.splits["split"] == "test").any() and "split" in study.cohort.patients:
            record["oracle_auc_dev"] = by_split["dev"]
    (out / "run.json").write_text(json.dumps(record, indent=2, default=str))
    return out


def _stderr_line(text: str) -> None:
    import sys

    print(f"[mmlib] {text}", file=sys.stderr, flush=True)


def _summary(study: Study) -> dict:
    s = study.cohort.summary()
    return json.loads(json.dumps(s, default=str))


def n_workers(params: dict) -> int:
    """Worker processes for training (:func:`mmlib.scheduling.n_workers`)."""
    from .scheduling import n_workers as workers

    return workers(params)


def train_and_predict(study: Study) -> pd.DataFrame:
    """Train every config on every fold (and the test model) and return all predictions.

    Each (config, seed) is one unit of work (:func:`compute_unit`), stored under ``work/<config>__s<seed>/`` as
    it finishes and reused by a later run with the same reuse key (:func:`reuse_key_parts`: parameters, package
    source, cohort, device, precision). The units run on the executor of the parameters
    (:mod:`mmlib.scheduling`: local processes or Ray); each fit is seeded and single-threaded, so the results do
    not depend on the executor or the number of workers.
    """
    from .scheduling import StudyProgress, Unit, make_executor, run_units

    p = study.params
    parts = study.key_parts or reuse_key_parts(study)
    units = [Unit(i, config, seed) for i, (seed, config) in
             enumerate((seed, config) for seed in p["seeds"] for config in experiment_configs(p))]
    frames: dict[int, pd.DataFrame] = {}
    pending = []
    for unit in units:
        work = study.out / "work" / f"{unit.config.id}__s{unit.seed}"
        marker = work / "done.json"
        if (not study.fresh and marker.is_file() and (work / "predictions.csv").is_file()
                and (not saves_member(p, unit.config) or (work / MEMBER / "model.json").is_file())
                and json.loads(marker.read_text()).get("hash") == unit_key(parts, unit.config, unit.seed)):
            frames[unit.index] = pd.read_csv(work / "predictions.csv", dtype={"patient_id": str})
        else:
            pending.append(unit)
    study.units = {"total": len(units), "reused": len(units) - len(pending), "trained": len(pending)}
    progress = StudyProgress("training", len(units), done=len(units) - len(pending))
    study.worker_peaks = []
    if pending:
        executor = make_executor(study, lambda: study_payload(study), compute_unit, len(pending))
        progress.line(f"training: {len(pending)} of {len(units)} units of work to run ({len(units) - len(pending)} "
                      f"reused) on {executor.name} executor, {executor.workers} worker(s)")
        study.executor = {"executor": executor.name, "workers": executor.workers}

        def store(unit, result):
            frames[unit.index] = store_unit(study, unit.config, unit.seed, unit_key(parts, unit.config, unit.seed),
                                            result)
            study.worker_peaks.append({k: result[k] for k in ("peak_memory_mb", "gpu_peak_memory_mb")})
            nodes.add(result.get("node"))
            progress.update(unit, result["seconds"])

        nodes: set = set()
        run_units(executor, pending, store, progress=progress)
        if None not in nodes:  # Ray says where each unit ran
            study.executor["nodes"] = len(nodes)
    else:
        progress.line(f"training: all {len(units)} units of work reused")
    return pd.concat([frames[i] for i in range(len(units))], ignore_index=True)


def compute_unit(study: Study, config: Config, seed: int) -> dict:
    """One unit of work as a pure function: ``config`` trained with ``seed`` on every fold, the test predictions
    and the refit, in a scratch folder. Returns its files (``{path relative to the results folder: bytes}``),
    seconds and peak memory of the process (and of the GPU); :func:`store_unit` writes them."""
    import resource
    import tempfile

    import torch

    gpu = _device(study.params) == "cuda" and torch.cuda.is_available()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="mmlib-unit-") as tmp:
        root = Path(tmp)
        secs = _train_unit(study, config, seed, root)
        files = {f.relative_to(root).as_posix(): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}
    return {"files": files, "seconds": secs,
            "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
            "gpu_peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if gpu else None}


def store_unit(study: Study, config: Config, seed: int, h: str, result: dict) -> pd.DataFrame:
    """Write a unit's files under the results folder, then its ``done.json`` marker (last, so a stopped run never
    marks half-written work as finished). Returns its predictions as a rerun would read them."""
    for rel, data in result["files"].items():
        f = study.out / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    work = study.out / "work" / f"{config.id}__s{seed}"
    parts = {k: (_hash(v) if k == "params" else v) for k, v in study.key_parts.items()}
    (work / "done.json").write_text(json.dumps({"hash": h, "key_parts": parts, "seconds": round(result["seconds"], 1)}))
    return pd.read_csv(work / "predictions.csv", dtype={"patient_id": str})


#: A unit's refitted model, in its work folder (``work/<config>__s<seed>/model/``): one seed's member of the
#: model :func:`assemble_models` saves under ``models/<model>/``.
MEMBER = "model"


def saves_member(params: dict, config: Config) -> bool:
    """Whether the units of ``config`` refit and keep a member of a saved model (``save_models``: every seed of
    each network model and baseline, ablation ``none``)."""
    from .models import model_class

    return bool(params["save_models"]) and config.ablation == "none" and not model_class(config.model).tabular


def assemble_models(study: Study) -> list[Path]:
    """Save ``models/<model>/`` for every network model and baseline of the run: the members its units refitted
    on all development patients, one per seed of ``seeds``, as one :class:`mmlib.learner.SeedEnsemble` (a single
    model with one seed), with the mean of the members' thresholds and, for predicted lesions, the segmenter
    fitted on all development patients. The saved model is the seed average the study's metrics describe.

    Raises:
        FileNotFoundError: a unit's member is missing (naming its folder); nothing of that model is replaced.
    """
    from .deploy import output_folder
    from .learner import SeedEnsemble, ensemble_threshold, load_model, save_model
    from .lesions import model_lesion

    p = study.params
    saved = []
    for config in experiment_configs(p):
        if not saves_member(p, config):
            continue
        folders = [study.out / "work" / f"{config.id}__s{seed}" / MEMBER for seed in p["seeds"]]
        missing = [str(f) for f in folders if not (f / "model.json").is_file()]
        if missing:
            raise FileNotFoundError(f"assemble_models: {config.model} lacks the members {missing}; run the study "
                                    f"again with fresh=True to refit them")
        loaded = [load_model(f) for f in folders]
        metas = [meta for _, meta in loaded]
        thresholds = [meta.get("threshold") for meta in metas]
        model = loaded[0][0] if len(loaded) == 1 else SeedEnsemble([m for m, _ in loaded], p["seeds"], thresholds)
        info = {k: v for k, v in metas[0]["info"].items() if k != "seed"}
        info["seeds"] = [int(s) for s in p["seeds"]]
        target = study.out / "models" / config.model
        with output_folder(target, marker="model.json") as tmp:
            save_model(model, tmp, name=config.model, spec=metas[0]["spec"], threshold=ensemble_threshold(thresholds),
                       info=info, lesion=model_lesion(study, tmp))
        saved.append(target)
    return saved


def _train_unit(study: Study, config: Config, seed: int, root: Path) -> float:
    """Every fold of one config and seed, the test predictions, the refit and saved model, written under
    ``root`` (``work/``, ``logs/``, ``models/``). Returns the seconds it took."""
    from .learner import save_model
    from .lesions import study_view
    from .splits import iter_folds

    p = study.params
    pats = study.cohort.patients
    test_rows = np.flatnonzero(study.splits["split"].to_numpy() == "test")
    dev_rows = np.flatnonzero(study.splits["split"].to_numpy() == "dev")
    scenarios = _scenarios(study)
    work = root / "work" / f"{config.id}__s{seed}"
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    rows = []
    test_probs = []
    for fold in iter_folds(study.splits):
        log = root / "logs" / config.id / f"seed{seed}_fold{fold.fold}.csv"
        log.parent.mkdir(parents=True, exist_ok=True)
        predict, _, _ = fit_config(study_view(study, fold.fold), config, fold.train, seed, log_path=log)
        inner = threshold_rows(study, fold.train, seed)
        for keep in scenarios:
            sc = scenario_name(keep)
            rows.append(_rows(pats, fold.valid, predict(fold.valid, keep), config, sc, "cv", fold.fold, seed))
            rows.append(_rows(pats, inner, predict(inner, keep), config, sc, "inner", fold.fold, seed))
            if len(test_rows) and p["test_model"] == "ensemble":
                test_probs.append((sc, fold.fold, predict(test_rows, keep)))
    if len(test_rows) and p["test_model"] == "ensemble":
        for sc in dict.fromkeys(s for s, _, _ in test_probs):
            mean = np.mean([pr for s, _, pr in test_probs if s == sc], axis=0)
            rows.append(_rows(pats, test_rows, mean, config, sc, "test", -1, seed))
    refit = saves_member(p, config) or (p["test_model"] == "refit" and len(test_rows))
    if refit:
        log = root / "logs" / config.id / f"seed{seed}_refit.csv"
        predict, model, spec = fit_config(study_view(study, None), config, dev_rows, seed, log_path=log)
        inner = threshold_rows(study, dev_rows, seed)
        for keep in scenarios:
            rows.append(_rows(pats, inner, predict(inner, keep), config, scenario_name(keep), "inner", -1, seed))
        if p["test_model"] == "refit" and len(test_rows):
            for keep in scenarios:
                rows.append(_rows(pats, test_rows, predict(test_rows, keep), config, scenario_name(keep), "test", -1, seed))
        if saves_member(p, config):  # this seed's member of the saved model (assemble_models joins them)
            from .metrics import youden_threshold

            labels = pats["label"].to_numpy()[inner]
            save_model(model.cpu(), work / MEMBER, name=config.model, spec=spec,
                       threshold=(youden_threshold(labels, predict(inner, MODALITIES)) if len(np.unique(labels)) == 2
                                  else None),
                       info={"cohort": study.cohort_info.get("manifest"), "trained_on_patients": int(len(dev_rows)),
                             "summary": _summary(study), "seed": seed,
                             "params": {k: p[k] for k in result_keys() if k not in UNIT_SELECTION}})
    pd.concat(rows, ignore_index=True).to_csv(work / "predictions.csv", index=False)
    return time.perf_counter() - t


def study_payload(study: Study) -> dict:
    """What a worker needs to rebuild the study without re-encoding an image: parameters, cohort, splits, the
    encoder's normalisation, the reuse key and the feature maps (:mod:`mmlib.scheduling` ships them once)."""
    payload = {"params": study.params, "out": str(study.out), "cohort": study.cohort,
               "cohort_info": study.cohort_info, "splits": study.splits, "encoder_spec": study.encoder_spec,
               "key_parts": study.key_parts, "lesions": study.lesions}
    if study.params["executor"] == "ray" and study.cache is not None:
        payload["cache_maps"] = study.cache.maps
    return payload


def study_from_payload(payload: dict) -> Study:
    """The study of :func:`study_payload`, in a worker process (its feature cache from the maps it carries, else
    from the file the parent wrote)."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)
    if payload["params"]["train_mode"] == "frozen":
        torch.set_num_threads(1)
    p = dict(payload["params"], progress=False)
    study = Study(p, Path(payload["out"]), cohort=payload["cohort"], cohort_info=payload["cohort_info"],
                  splits=payload["splits"], encoder_spec=payload["encoder_spec"], key_parts=payload["key_parts"],
                  lesions=payload.get("lesions"))
    if p["train_mode"] == "frozen":
        build_feature_cache(study, write=False, stored=payload.get("cache_maps"))
    return study


def _rows(pats, rows, prob, config: Config, scenario, split, fold, seed) -> pd.DataFrame:
    return pd.DataFrame({
        "patient_id": pats["patient_id"].iloc[rows].astype(str).to_numpy(),
        "model": config.model, "ablation": config.ablation, "scenario": scenario, "split": split,
        "fold": fold, "seed": seed, "prob_malignant": np.asarray(prob, dtype=float),
        "label": pats["label"].iloc[rows].to_numpy().astype(int),
    })


# ----------------------------------------------------------------------------------------------- statistics
GROUP = ["model", "ablation", "scenario"]


def assign_thresholds(preds: pd.DataFrame, inner: pd.DataFrame | None = None, *,
                      test_model: str = "ensemble") -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Each prediction's decision threshold, chosen on training data only, then the mean over seeds.

    - Fold ``k`` of cross-validation: Youden's J on the *inner validation* predictions of fold ``k``'s own model
      (training patients of fold ``k`` it did not fit on; see :func:`_inner_split`), never on predictions of
      another fold's model, which was trained on fold ``k``.
    - Internal test, fold ensemble: the mean of the fold models' thresholds. The ensemble's probability is the
      mean of its members', so it predicts malignant when the members' mean margin ``p_k - t_k`` is positive;
      no development prediction of the ensemble itself is free of its own training data.
    - Internal test, refitted model: Youden on the refit's own inner validation predictions.
    - A prediction averaged over seeds takes the mean of the seeds' thresholds (the same margin rule).
    - An inner validation set with a single class gives no Youden threshold: 0.5 is used and counted in the
      summary (``threshold_fallbacks``).

    Args:
        preds: ``cv`` and ``test`` predictions, one row per unit, model, ablation, scenario, fold and seed.
        inner: the inner validation predictions (``split == "inner"``, ``fold`` -1 for the refit).
        test_model: ``ensemble`` or ``refit`` (the run's parameter).

    Returns:
        ``(averaged, per_seed, summary)``: the predictions averaged over seeds with their ``threshold``; the
        per-seed predictions with theirs; ``{"test": {model: threshold}, "threshold_fallbacks": n}``.
    """
    from .metrics import youden_threshold

    preds = preds[preds["split"] != "inner"].copy()
    if inner is None or inner.empty:
        raise ValueError("assign_thresholds needs the inner validation predictions (split 'inner')")
    fallbacks = 0

    def youden(g):
        nonlocal fallbacks
        if g["label"].nunique() < 2:
            fallbacks += 1
            return 0.5
        return youden_threshold(g["label"].to_numpy(), g["prob_malignant"].to_numpy())

    keys = GROUP + ["seed", "fold"]
    fold_t = inner.groupby(keys, sort=False).apply(youden, include_groups=False).rename("threshold").reset_index()
    cv_t = fold_t[fold_t["fold"] >= 0]
    cv = preds[preds["split"] == "cv"].merge(cv_t, on=keys, how="left")
    test = preds[preds["split"] == "test"]
    if test_model == "refit":
        test_t = fold_t[fold_t["fold"] == -1].drop(columns="fold")
    else:
        test_t = cv_t.groupby(GROUP + ["seed"], as_index=False, sort=False)["threshold"].mean()
    test = test.merge(test_t, on=GROUP + ["seed"], how="left")
    per_seed = pd.concat([cv, test], ignore_index=True)
    if per_seed["threshold"].isna().any():
        bad = per_seed[per_seed["threshold"].isna()].iloc[0]
        raise ValueError(f"no inner validation predictions for {bad['model']}/{bad['ablation']}/{bad['scenario']} "
                         f"split {bad['split']} fold {bad['fold']} seed {bad['seed']}")
    avg = per_seed.groupby(GROUP + ["split", "fold", "patient_id", "label"], as_index=False, sort=False)[
        ["prob_malignant", "threshold"]].mean()
    summary = {"test": {}, "threshold_fallbacks": fallbacks}
    t = avg[(avg["split"] == "test") & (avg["ablation"] == "none") & (avg["scenario"] == "all")]
    for model, g in t.groupby("model", sort=False):
        summary["test"][model] = round(float(g["threshold"].iloc[0]), 4)
    return avg, per_seed, summary


def unit_groups(study: Study | None, patient_ids) -> np.ndarray:
    """The patient (group) of each unit: the manifest's ``group`` column, or the unit itself when a patient gives one
    unit. Every cohort takes this one path, so an ungrouped cohort gives exactly the unit-level statistics."""
    ids = pd.Series(patient_ids, dtype=str)
    if study is None or study.splits is None or "group" not in study.splits:
        return ids.to_numpy()
    mapping = study.splits.assign(patient_id=study.splits["patient_id"].astype(str)).set_index("patient_id")["group"]
    groups = ids.map(mapping.astype(str))
    if groups.isna().any():
        raise ValueError(f"predictions name units absent from the splits: {ids[groups.isna()].unique()[:5].tolist()}")
    return groups.to_numpy()


def _metric_rows(g: pd.DataFrame, n_boot: int, seed: int, ece_bins: int, groups=None) -> list[dict]:
    """Metrics with bootstrap CIs that resample patients (whole groups of units), and DeLong's AUC interval."""
    from .stats import bootstrap_ci, cluster_counts, delong_ci

    y, p, t = g["label"].to_numpy(), g["prob_malignant"].to_numpy(), g["threshold"].to_numpy()
    shifted = np.clip(p - t + 0.5, 0.0, 1.0)  # p >= t  <=>  shifted >= 0.5: per-fold thresholds in one call
    rows = []
    if len(np.unique(y)) < 2:
        return rows
    n_units, n_clusters = cluster_counts(len(y), groups)
    at_t = bootstrap_ci(y, shifted, threshold=0.5, n_boot=n_boot, seed=seed, groups=groups, ece_bins=ece_bins,
                        metrics=("accuracy", "sensitivity", "specificity", "precision", "mcc", "f1"))
    raw = bootstrap_ci(y, p, threshold=0.5, n_boot=n_boot, seed=seed, groups=groups, ece_bins=ece_bins)
    for _, r in at_t.iterrows():
        rows.append({"metric": r["metric"], "value": r["value"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]})
    for _, r in raw.iterrows():
        name = r["metric"] if r["metric"] in ("auc", "brier", "ece") else f"{r['metric']}@0.5"
        rows.append({"metric": name, "value": r["value"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]})
    a, lo, hi = delong_ci(y, p)  # DeLong's variance treats units as independent (see n_clusters)
    rows.append({"metric": "auc_delong", "value": a, "ci_low": lo, "ci_high": hi})
    return [{**r, "n_units": n_units, "n_clusters": n_clusters} for r in rows]


def summarise(study: Study, preds: pd.DataFrame) -> dict:
    """Write predictions, metrics (with the spread over seeds), fold metrics, statistics and the missing-modality
    table."""
    from .metrics import binary_metrics

    p, out = study.params, study.out
    inner = preds[preds["split"] == "inner"]
    preds, per_seed, thresholds = assign_thresholds(preds, inner, test_model=p["test_model"])
    inner.to_csv(out / "inner_predictions.csv", index=False)
    preds["seed"] = "mean" if len(p["seeds"]) > 1 else p["seeds"][0]
    preds = preds[["patient_id", "model", "ablation", "scenario", "split", "fold", "seed", "prob_malignant", "label", "threshold"]]
    from .lesions import with_lesion_found

    preds = with_lesion_found(study, preds)
    preds.to_csv(out / "predictions.csv", index=False)

    metric_rows, fold_rows = [], []
    for (model, ablation, scenario, split), g in preds.groupby(GROUP + ["split"], sort=False):
        boot = int(p["n_boot"]) if (ablation == "none" or scenario == "all") else max(200, int(p["n_boot"]) // 10)
        for r in _metric_rows(g, boot, int(p["split_seed"]), int(p["ece_bins"]), unit_groups(study, g["patient_id"])):
            metric_rows.append({"model": model, "ablation": ablation, "scenario": scenario, "split": split, **r})
        if split == "cv":
            for k, gf in g.groupby("fold"):
                if gf["label"].nunique() < 2:
                    continue
                m = binary_metrics(gf["label"].to_numpy(), gf["prob_malignant"].to_numpy(),
                                   threshold=float(gf["threshold"].iloc[0]), ece_bins=int(p["ece_bins"]))
                fold_rows += [{"model": model, "ablation": ablation, "scenario": scenario, "fold": int(k),
                               "metric": n, "value": v} for n, v in m.items()]
    seeds = seed_metrics(per_seed, ece_bins=int(p["ece_bins"]))
    seeds.to_csv(out / "seed_metrics.csv", index=False)
    metrics = with_seed_spread(pd.DataFrame(metric_rows), seeds)
    metrics.to_csv(out / "metrics.csv", index=False)
    pd.DataFrame(fold_rows).to_csv(out / "fold_metrics.csv", index=False)
    stats = comparison_stats(preds, study, n_boot=int(p["n_boot"]), seed=int(p["split_seed"]))
    oracle = None
    if study.cohort_info.get("synthetic"):
        oracle, oracle_stats = oracle_comparisons(preds, study, n_boot=int(p["n_boot"]), seed=int(p["split_seed"]))
        stats = pd.concat([stats, oracle_stats], ignore_index=True)
    stats.to_csv(out / "stats.csv", index=False)
    missing = missing_modality_table(metrics, oracle=oracle)
    missing.to_csv(out / "missing_modalities.csv", index=False)
    return {"thresholds": thresholds["test"], "threshold_fallbacks": thresholds["threshold_fallbacks"],
            "metrics": metrics, "stats": stats}


#: Metrics whose spread over training seeds ``metrics.csv`` carries.
SEED_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "precision", "mcc", "f1", "brier", "ece")


def seed_metrics(per_seed: pd.DataFrame, *, ece_bins: int = 10) -> pd.DataFrame:
    """Each seed's metrics on its own predictions and thresholds (pooled out-of-fold for ``cv``).

    Returns:
        ``model, ablation, scenario, split, seed, metric, value``; threshold metrics at each row's threshold.
    """
    from .metrics import binary_metrics

    rows = []
    for (model, ablation, scenario, split, seed), g in per_seed.groupby(GROUP + ["split", "seed"], sort=False):
        y = g["label"].to_numpy()
        if len(np.unique(y)) < 2:
            continue
        p = g["prob_malignant"].to_numpy()
        shifted = np.clip(p - g["threshold"].to_numpy() + 0.5, 0.0, 1.0)
        at_t = binary_metrics(y, shifted, threshold=0.5, ece_bins=ece_bins)
        raw = binary_metrics(y, p, threshold=0.5, ece_bins=ece_bins)
        for m in SEED_METRICS:
            rows.append({"model": model, "ablation": ablation, "scenario": scenario, "split": split, "seed": seed,
                         "metric": m, "value": raw[m] if m in ("auc", "brier", "ece") else at_t[m]})
    return pd.DataFrame(rows, columns=[*GROUP, "split", "seed", "metric", "value"])


def with_seed_spread(metrics: pd.DataFrame, seeds: pd.DataFrame) -> pd.DataFrame:
    """``metrics.csv`` rows with the spread of each metric over training seeds: ``n_seeds``, ``seed_mean``,
    ``seed_sd`` (ddof 1; NaN for one seed), ``seed_min``, ``seed_max``. ``value`` and its CI stay those of the
    seed-averaged predictions; the seed columns say how much a single training run moves."""
    cols = ["n_seeds", "seed_mean", "seed_sd", "seed_min", "seed_max"]
    if seeds.empty:
        return metrics.assign(**{c: np.nan for c in cols})
    spread = seeds.groupby([*GROUP, "split", "metric"], sort=False)["value"].agg(
        n_seeds="count", seed_mean="mean", seed_sd="std", seed_min="min", seed_max="max").reset_index()
    return metrics.merge(spread, on=[*GROUP, "split", "metric"], how="left")


#: Columns of ``stats.csv``. ``unit`` says what a test treats as independent: ``patient`` (a cluster bootstrap or
#: one row per patient) or ``unit`` (DeLong, McNemar: valid only when each patient gives one unit, i.e. when
#: ``n_clusters == n_units``).
STATS_COLUMNS = ["test", "split", "a", "b", "statistic", "p_value", "p_holm", "ci_low", "ci_high", "unit", "n_units",
                 "n_clusters", "detail"]


def comparison_stats(preds: pd.DataFrame, study: Study | None = None, *, n_boot: int = 2000,
                     seed: int = 0) -> pd.DataFrame:
    """Paired comparisons of the models on the same patients, and age by label, one row per test.

    - ``bootstrap_auc_diff`` / ``bootstrap_accuracy_diff``: paired bootstrap of the AUC (accuracy at each model's
      threshold) difference ``a - b`` resampling whole patients (:func:`mmlib.stats.paired_bootstrap_diff`), so
      a patient's several units stay together; the cluster-aware tests, Holm-corrected across pairs.
    - ``delong`` and ``mcnemar_exact`` (Holm): the classical tests, which treat units as independent; where a
      patient gives several units (``n_clusters < n_units``) read the bootstrap rows instead.
    - Age (Cohen's d, Welch, Mann-Whitney): one row per patient, malignant when any unit is malignant
      (:func:`mmlib.stats.one_row_per_patient`).
    """
    from statsmodels.stats.multitest import multipletests

    from .stats import (cluster_counts, compare_groups, delong_test, mcnemar_exact, one_row_per_patient,
                        paired_bootstrap_diff)

    rows = []
    base = preds[(preds["ablation"] == "none") & (preds["scenario"] == "all")]
    for split, g in base.groupby("split", sort=False):
        wide_p = g.pivot_table(index="patient_id", columns="model", values="prob_malignant")
        wide_t = g.pivot_table(index="patient_id", columns="model", values="threshold")
        y = g.drop_duplicates("patient_id").set_index("patient_id")["label"].reindex(wide_p.index).to_numpy()
        groups = unit_groups(study, wide_p.index)
        names = list(wide_p.columns)
        pair_rows = []
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                pa, pb = wide_p[a].to_numpy(), wide_p[b].to_numpy()
                ok = np.isfinite(pa) & np.isfinite(pb)
                ya, ga = y[ok], groups[ok]
                ta, tb = wide_t[a].to_numpy()[ok], wide_t[b].to_numpy()[ok]
                mc = mcnemar_exact(ya, (pa[ok] >= ta).astype(int), (pb[ok] >= tb).astype(int))
                dl = delong_test(ya, pa[ok], pb[ok])
                boot = {m: paired_bootstrap_diff(ya, pa[ok], pb[ok], metric=m, threshold_a=ta, threshold_b=tb,
                                                 groups=ga, n_boot=n_boot, seed=seed) for m in ("auc", "accuracy")}
                pair_rows.append((a, b, mc, dl, boot, cluster_counts(int(ok.sum()), ga)))
        if not pair_rows:
            continue
        holm = {name: multipletests(vals, method="holm")[1] for name, vals in {
            "mcnemar": [r[2]["p_value"] for r in pair_rows], "delong": [r[3]["p_value"] for r in pair_rows],
            "auc": [r[4]["auc"]["p_value"] for r in pair_rows],
            "accuracy": [r[4]["accuracy"]["p_value"] for r in pair_rows]}.items()}
        for i, (a, b, mc, dl, boot, (n_units, n_clusters)) in enumerate(pair_rows):
            common = {"split": split, "a": a, "b": b, "n_units": n_units, "n_clusters": n_clusters}
            for m in ("auc", "accuracy"):
                r = boot[m]
                rows.append({"test": f"bootstrap_{m}_diff", **common, "statistic": r["diff"], "p_value": r["p_value"],
                             "p_holm": holm[m][i], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "unit": "patient",
                             "detail": json.dumps({f"{m}_a": r["value_a"], f"{m}_b": r["value_b"],
                                                   "n_boot": int(n_boot), "n_valid": r["n_valid"]})})
            rows.append({"test": "delong", **common, "statistic": dl["z"], "p_value": dl["p_value"],
                         "p_holm": holm["delong"][i], "ci_low": dl["diff"] - 1.959963984540054 * dl["se"],
                         "ci_high": dl["diff"] + 1.959963984540054 * dl["se"], "unit": "unit",
                         "detail": json.dumps({"auc_a": dl["auc1"], "auc_b": dl["auc2"], "diff": dl["diff"]})})
            rows.append({"test": "mcnemar_exact", **common, "statistic": mc["statistic"], "p_value": mc["p_value"],
                         "p_holm": holm["mcnemar"][i], "ci_low": np.nan, "ci_high": np.nan, "unit": "unit",
                         "detail": json.dumps({"b": int(mc["b"]), "c": int(mc["c"])})})
    if study is not None:
        pats = study.cohort.patients
        age, label = one_row_per_patient(pd.to_numeric(pats["age"], errors="coerce").to_numpy(),
                                         pats["label"].to_numpy(), unit_groups(study, pats["patient_id"]))
        res = compare_groups(age[label == 1], age[label == 0])
        common = {"split": "all", "a": "malignant", "b": "benign", "p_holm": np.nan, "unit": "patient",
                  "n_units": int(len(pats)), "n_clusters": int(len(age))}
        rows.append({"test": "cohens_d_age", **common, "statistic": res["d"], "p_value": np.nan,
                     "ci_low": res["d_ci_low"], "ci_high": res["d_ci_high"],
                     "detail": json.dumps({**res, "patient_label": "malignant if any unit is malignant"}, default=float)})
        rows.append({"test": "welch_t_age", **common, "statistic": res["welch_t"], "p_value": res["welch_p"],
                     "detail": ""})
        rows.append({"test": "mann_whitney_age", **common, "statistic": res["mannwhitney_u"],
                     "p_value": res["mannwhitney_p"], "detail": ""})
    return pd.DataFrame(rows, columns=STATS_COLUMNS)


def oracle_comparisons(preds: pd.DataFrame, study: Study, *, n_boot: int = 2000,
                       seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A synthetic cohort's ceilings: the oracle AUC of every input subset (:func:`mmlib.synth.scenario_oracle`) on
    the patients each split predicts, and each model's AUC minus the oracle's (ablation ``none``, all inputs) by a
    paired patient-level bootstrap (``test == "bootstrap_auc_vs_oracle"``, ``b == "oracle"``).

    Returns:
        ``(oracle, stats)``: ``scenario, split, oracle_auc``; rows of :data:`STATS_COLUMNS`.
    """
    from sklearn.metrics import roc_auc_score

    from .stats import paired_bootstrap_diff
    from .synth import scenario_oracle

    folder = Path(study.cohort_info["manifest"]).parent
    aucs, rows, prob = [], [], {}
    for sc in preds["scenario"].unique():
        keep = tuple(sc.split("+")) if sc != "all" else tuple(MODALITIES)
        o = scenario_oracle(folder, keep).set_index("patient_id")["oracle_prob"]
        prob[sc] = o
        for split, g in preds[preds["scenario"] == sc].groupby("split", sort=False):
            ids = g["patient_id"].drop_duplicates()
            y = g.drop_duplicates("patient_id")["label"].to_numpy()
            if len(np.unique(y)) == 2:
                aucs.append({"scenario": sc, "split": split, "oracle_auc": float(roc_auc_score(y, o.loc[ids]))})
    base = preds[(preds["ablation"] == "none") & (preds["scenario"] == "all")]
    for (split, model), g in base.groupby(["split", "model"], sort=False):
        if g["label"].nunique() < 2:
            continue
        groups = unit_groups(study, g["patient_id"])
        r = paired_bootstrap_diff(g["label"].to_numpy(), g["prob_malignant"].to_numpy(),
                                  prob["all"].loc[g["patient_id"]].to_numpy(), groups=groups, n_boot=n_boot, seed=seed)
        rows.append({"test": "bootstrap_auc_vs_oracle", "split": split, "a": model, "b": "oracle",
                     "statistic": r["diff"], "p_value": r["p_value"], "p_holm": np.nan, "ci_low": r["ci_low"],
                     "ci_high": r["ci_high"], "unit": "patient", "n_units": r["n_units"], "n_clusters": r["n_clusters"],
                     "detail": json.dumps({"auc_a": r["value_a"], "auc_oracle": r["value_b"], "n_boot": int(n_boot)})})
    return pd.DataFrame(aucs, columns=["scenario", "split", "oracle_auc"]), pd.DataFrame(rows, columns=STATS_COLUMNS)


def missing_modality_table(metrics: pd.DataFrame, split: str = "cv", oracle: pd.DataFrame | None = None) -> pd.DataFrame:
    """AUC, Brier and ECE of every model on each input subset, with the drop/ratio against all inputs; with
    ``oracle`` (synthetic cohorts, :func:`oracle_comparisons`) also the subset's oracle AUC and the gap to it."""
    m = metrics[(metrics["split"] == split) & metrics["metric"].isin(["auc", "brier", "ece"])]
    wide = m.pivot_table(index=["model", "ablation", "scenario"], columns="metric", values="value").reset_index()
    full = wide[wide["scenario"] == "all"].set_index(["model", "ablation"])
    ceiling = {} if oracle is None else oracle[oracle["split"] == split].set_index("scenario")["oracle_auc"].to_dict()
    out = []
    for _, r in wide.iterrows():
        key = (r["model"], r["ablation"])
        if key not in full.index:
            continue
        f = full.loc[key]
        row = {"model": r["model"], "ablation": r["ablation"], "scenario": r["scenario"],
               "auc": r.get("auc"), "auc_drop": f["auc"] - r.get("auc"), "auc_ratio": r.get("auc") / f["auc"],
               "brier": r.get("brier"), "brier_change": r.get("brier") - f["brier"],
               "ece": r.get("ece"), "ece_change": r.get("ece") - f["ece"]}
        if oracle is not None:
            row["oracle_auc"] = ceiling.get(r["scenario"], np.nan)
            row["gap_to_oracle"] = row["oracle_auc"] - row["auc"]
        out.append(row)
    return pd.DataFrame(out)


def modality_importance(missing: pd.DataFrame, *, ablation: str = "modality_dropout") -> pd.DataFrame:
    """AUC lost when one input is removed from the full set, per model (higher = the input matters more)."""
    rows = []
    sub = missing[missing["ablation"] == ablation]
    for model, g in sub.groupby("model"):
        for m in MODALITIES:
            rest = scenario_name([x for x in MODALITIES if x != m])
            hit = g[g["scenario"] == rest]
            if len(hit):
                rows.append({"model": model, "removed": m, "auc_drop": float(hit["auc_drop"].iloc[0]),
                             "brier_change": float(hit["brier_change"].iloc[0]), "ece_change": float(hit["ece_change"].iloc[0])})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- results
@dataclass
class Results:
    """The tidy outputs of one run, as DataFrames."""

    folder: Path
    predictions: pd.DataFrame
    metrics: pd.DataFrame
    fold_metrics: pd.DataFrame
    stats: pd.DataFrame
    missing: pd.DataFrame
    run: dict
    splits: pd.DataFrame
    seed_metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    inner: pd.DataFrame = field(default_factory=pd.DataFrame)

    def cohort(self):
        """The cohort of the run (regenerated deterministically when it is the synthetic one)."""
        return prepare_cohort(load_params(dict(self.run["params"])))[0]

    def metric(self, model, metric="auc", *, split="cv", ablation="none", scenario="all") -> float:
        m = self.metrics
        hit = m[(m["model"] == model) & (m["metric"] == metric) & (m["split"] == split) & (m["ablation"] == ablation)
                & (m["scenario"] == scenario)]
        if hit.empty:
            raise KeyError(f"no {metric} for model={model} split={split} ablation={ablation} scenario={scenario}")
        return float(hit["value"].iloc[0])


def load_results(folder) -> Results:
    """Read the results of a run folder (``results/<profile>/``)."""
    folder = Path(folder)
    if not (folder / "run.json").is_file():
        raise FileNotFoundError(f"{folder} holds no finished run (run.json missing): run the study first")

    def csv(name):
        f = folder / name
        return pd.read_csv(f, dtype={"patient_id": str}) if f.is_file() and f.stat().st_size > 1 else pd.DataFrame()

    return Results(folder, csv("predictions.csv"), csv("metrics.csv"), csv("fold_metrics.csv"), csv("stats.csv"),
                   csv("missing_modalities.csv"), json.loads((folder / "run.json").read_text()), csv("splits.csv"),
                   csv("seed_metrics.csv"), csv("inner_predictions.csv"))


# ----------------------------------------------------------------------------------------------- single model
def train_model(manifest, model: str, out_dir, params: dict | str | None = None, **overrides) -> Path:
    """Train one registered model on a manifest's development patients and save it as a safe model folder.

    One member is trained per seed of the profile's ``seeds`` (the study averages its seeds' predictions, so its
    metrics describe that average): with two or more the folder holds a :class:`mmlib.learner.SeedEnsemble`,
    whose probability is the mean of its members'. The decision threshold saved with it is Youden's J on each
    member's inner validation patients (training data only; :func:`threshold_rows`), averaged over the members.
    With ``lesion_source: predicted`` the folder also holds the lesion segmenter (``segmenter/``), fitted on the
    development patients' expert masks (or the mean of the cross-fitting folds' segmenters, with
    ``deployed_segmenter: folds``), and the model is trained on cross-fitted predicted masks
    (:func:`mmlib.deploy.crossfit_lesions`), so that it needs only images; ``none`` trains on whole images.
    Returns the model folder (written under a temporary name, renamed when complete).
    """
    from .cohort import load_manifest
    from .deploy import crossfit_lesions, lesion_modalities, output_folder, segmenter_folder
    from .learner import MODEL_CONFIG, SeedEnsemble, ensemble_threshold, save_model
    from .metrics import youden_threshold
    from .splits import make_splits

    from .models import list_models, model_class

    if model_class(model).tabular:
        raise ParamsError(f"{model} is fitted by scikit-learn inside the study, not a savable network; choose one of "
                          f"{[m for m in list_models() if not model_class(m).tabular]}")
    p = load_params(params, **{"cohort": str(manifest), **overrides})
    source = p["lesion_source"]
    if source == "none":
        p["roi"], p["outline_features"] = False, False
    study = Study(p, Path(out_dir).parent / (Path(out_dir).name + ".work"))
    # Images decoded up front, so an unreadable one is named with its row; masks that give the lesion must hold one.
    study.cohort = load_manifest(manifest, decode_images=True,
                                 strict_masks=source == "predicted" or bool(p["roi"] or p["outline_features"]))
    study.cohort_info = {"manifest": str(manifest), "synthetic": False}
    study.splits = make_splits(study.cohort, n_folds=int(p["n_folds"]), test_fraction=float(p["test_fraction"]),
                               seed=int(p["split_seed"]))
    dev_rows = np.flatnonzero(study.splits["split"].to_numpy() == "dev")
    seed = int(p["seeds"][0])
    lesion = {"source": source, "modalities": [], "segmenters": {}}
    segmenters, crossfit = {}, None
    if source == "expert" and (p["roi"] or p["outline_features"]):
        lesion["modalities"] = lesion_modalities(study.cohort, dev_rows)
    elif source == "predicted":
        study.log(f"lesion segmenter: cross-fitted masks of {len(dev_rows)} development patients")
        with _torch_threads(available_cores()):
            study.cohort, segmenters, crossfit = crossfit_lesions(
                study.cohort, dev_rows, study.out / "masks", n_folds=int(p["n_folds"]), settings=p.get("segmenter"),
                seed=seed, progress=bool(p["progress"]), deployed=p["deployed_segmenter"])
        lesion["modalities"] = list(segmenters)
        lesion["segmenters"] = {m: segmenter_folder(m, segmenters) for m in segmenters}
    if p["train_mode"] == "frozen":
        with _torch_threads(available_cores()):
            build_feature_cache(study)
    else:
        from .encoders import create_encoder

        enc = create_encoder(p["encoder"], weights="none", levels=p["encoder_levels"])
        study.encoder_spec = {"mean": list(enc.mean), "std": list(enc.std)}
    config = Config(model)
    members, thresholds = [], []
    labels = study.cohort.patients["label"].to_numpy()
    for s in p["seeds"]:  # one member per seed: the model the study's seed-averaged metrics describe
        if len(p["seeds"]) > 1:
            study.log(f"{model}: seed {s} ({len(members) + 1} of {len(p['seeds'])})")
        predict, fitted, spec = fit_config(study, config, dev_rows, int(s))
        val_rows = threshold_rows(study, dev_rows, int(s))
        thresholds.append(youden_threshold(labels[val_rows], predict(val_rows, MODALITIES))
                          if len(np.unique(labels[val_rows])) == 2 else None)
        members.append(fitted.cpu())
    if len(members) > 1:
        fitted = SeedEnsemble(members, p["seeds"], thresholds)
    threshold = ensemble_threshold(thresholds)
    info = {"cohort": str(manifest), "trained_on_patients": int(len(dev_rows)), "summary": _summary(study),
            "seeds": [int(s) for s in p["seeds"]],
            "params": {k: v for k, v in p.items() if not k.startswith("_")}}
    if crossfit is not None:
        info["crossfit_segmentation"] = {
            m: {"images": int(len(v)), "lesion_found": int(v["lesion_found"].sum()),
                "dice_mean": float(v["dice"].mean()), "iou_mean": float(v["iou"].mean())}
            for m, v in crossfit.groupby("modality")}
    import shutil

    try:
        with output_folder(out_dir, marker=MODEL_CONFIG) as tmp:
            save_model(fitted.cpu(), tmp, name=model, spec=spec, threshold=threshold, info=info, lesion=lesion)
            for m, seg in segmenters.items():
                seg.save(tmp / lesion["segmenters"][m])
    finally:
        shutil.rmtree(study.out, ignore_errors=True)
    return Path(out_dir)
