"""The parameters of a run: one typed model, the only reader of run profiles and ``--set KEY=VALUE`` overrides.

A run profile is a flat YAML file under ``params/`` naming some of the fields of :class:`RunParams`; every other
field keeps its default, which is written here and nowhere else::

    from mmlib.params import load_params
    p = load_params("smoke", {"epochs": 3})            # a plain dict, as papermill injects it
    p = load_params("smoke", parse_overrides(["epochs=3", "models=[amw_cnn]"]))

An unknown key, a value of the wrong type or out of range stops the run at once with a :class:`ParamsError`
naming the key, the value, where it came from and what was expected (and the closest known key for a typo).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError, field_validator, model_validator

from .paths import PARAMS


class ParamsError(ValueError):
    """A run profile or override with an unknown or invalid parameter."""


#: Keys the build sets itself (from the profile's file name and the results folder): never in a profile file.
RESERVED_IN_PROFILE: tuple[str, ...] = ("profile", "results_dir")

#: Parameters whose value is a mapping of settings of one part (the lesion segmenter's).
GROUPED_PARAMETERS: tuple[str, ...] = ("segmenter",)

#: Fields that only say where results go, how progress is shown or how the work is scheduled: no result depends
#: on them, so they are left out of the reuse key (every other field is in it).
NOT_IN_RESULT_KEY: frozenset[str] = frozenset({
    "profile", "results_dir", "progress", "workers", "executor", "ray_address", "ray_num_cpus", "ray_num_gpus",
    "companion_studies",
})

class RunParams(BaseModel):
    """Every parameter of a run, with its default. A profile YAML overrides some of them."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=False)

    profile: str = "default"
    """Name of the run profile (results go to ``results/<profile>/``)."""
    results_dir: Union[str, None] = None
    """Results folder; empty: ``results/<profile>/``."""
    cohort: str = "synthetic"
    """``synthetic``, a public collection's name (``breast-lesions-usg``, ``cdd-cesm``, ...) or a manifest CSV path."""
    synthetic_patients: StrictInt = Field(300, ge=1)
    """Size of the synthetic cohort."""
    synthetic_seed: StrictInt = 0
    """Seed of the synthetic cohort."""
    seeds: list[StrictInt] = Field(default_factory=lambda: [0], min_length=1)
    """Training seeds (predictions are averaged over seeds)."""
    n_folds: StrictInt = Field(5, ge=2)
    """Patient-level cross-validation folds on the development part."""
    test_fraction: StrictFloat = Field(0.2, ge=0.0, lt=1.0)
    """Internal test share when the manifest has no split column."""
    split_seed: StrictInt = 0
    """Seed of the splits."""
    image_size: StrictInt = Field(224, ge=8)
    """Square input side in pixels."""
    roi: StrictBool = False
    """Crop around the lesion mask/box before resizing."""
    roi_margin: StrictFloat = Field(0.15, ge=0.0)
    """Margin of the ROI crop, as a fraction of the lesion size."""
    outline_features: StrictBool = False
    """Lesion-outline morphometry (from the masks) as part of each view's input."""
    lesion_source: Literal["expert", "predicted", "none"] = "expert"
    """Where ROI crops and outlines come from: ``expert`` (the manifest's masks/boxes), ``predicted`` (a lesion
    segmenter cross-fitted inside the training folds, ``mmlib.lesions``), ``none`` (whole images: roi and
    outline_features are then off)."""
    segmenter_crossfit: Literal["pairs", "halves"] = "pairs"
    """How the classifier's training rows get their predicted masks (``mmlib.lesions``): ``pairs``, from the
    segmenter fitted without the row's fold and the held-out fold (16 segmenters for 5 folds); ``halves``, two-fold
    cross-fitting inside the training folds (11 segmenters for 5 folds, the inner ones on about half the data)."""
    deployed_segmenter: Literal["refit", "folds"] = "refit"
    """The segmenter saved with the models and segmenting the internal test, for ``lesion_source: predicted``:
    ``refit``, one more fitted on all development patients; ``folds``, the mean of the cross-validation folds'
    segmenters' lesion probabilities (nnU-Net's deployment: no extra fit)."""
    segmenter: dict = Field(default_factory=dict)
    """Settings of the lesion segmenter for ``lesion_source: predicted`` (fields of
    ``mmlib.segmentation.SegmenterSettings``, e.g. ``{image_size: 192, epochs: 25}``); empty: its defaults."""
    encoder: str = "efficientnet_lite0"
    """timm image encoder."""
    encoder_weights: str = "imagenet"
    """``imagenet`` (offline for efficientnet_lite0), ``none``, or a weights file."""
    encoder_levels: Union[list[StrictInt], None] = None
    """Empty: the encoder's last feature map; or encoder blocks to concatenate, e.g. ``[3, 4, 5]``."""
    train_mode: Literal["frozen", "finetune"] = "frozen"
    """``frozen``: cached encoder features (the CPU fast path); ``finetune``: end to end."""
    n_augment: StrictInt = Field(2, ge=0)
    """Augmented copies per training image in the feature cache."""
    epochs: StrictInt = Field(30, ge=1)
    """Training epochs (one-cycle schedule)."""
    lr: StrictFloat = Field(3e-3, gt=0.0)
    """Learning rate."""
    wd: StrictFloat = Field(1e-2, ge=0.0)
    """Weight decay."""
    bs: StrictInt = Field(32, ge=1)
    """Batch size."""
    dim: StrictInt = Field(128, ge=1)
    """Width of the fusion parts."""
    inner_valid: StrictFloat = Field(0.15, ge=0.0, lt=1.0)
    """Share of training patients used for early stopping and the best epoch."""
    early_stopping: StrictInt = Field(8, ge=0)
    """Patience in epochs (0 = off)."""
    models: list[str] = Field(default_factory=lambda: _default_models("multimodal"))
    """The multimodal models of the study (registered names); default: every registered multimodal model."""
    baselines: list[str] = Field(default_factory=lambda: _default_models("baseline"))
    """Comparison models (registered names); default: the registered baselines of the default run."""
    ablations: StrictBool = True
    """The models' ablation switches, no clinical data, modality dropout."""
    modality_dropout: StrictFloat = Field(0.3, ge=0.0, lt=1.0)
    """Probability of dropping an input in the ``modality_dropout`` training variant."""
    scenarios: StrictBool = True
    """Evaluate every model on the 7 input subsets."""
    test_model: Literal["ensemble", "refit"] = "ensemble"
    """The internal test set is predicted by the fold models' ensemble, or by a refit on all development patients."""
    save_models: StrictBool = True
    """Refit ablation ``none`` of every model on all development patients and save it."""
    companion_studies: list[str] = Field(default_factory=list)
    """Other studies the book build runs before the chapters (reusing finished work), so that the book carries their
    results: run profiles (e.g. ``breast-lesions-usg``) and ``external`` (BrEaST-Lesions_USG to BUS-BRA); see
    :func:`mmlib.build.run_companion_studies`. Those whose public data is absent are skipped, and the chapters say
    which command fills them."""
    n_boot: StrictInt = Field(2000, ge=1)
    """Bootstrap replicates of the confidence intervals."""
    ece_bins: StrictInt = Field(10, ge=1)
    """Bins of the expected calibration error."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` (a GPU when there is one), ``cpu`` or ``cuda``."""
    mixed_precision: StrictBool = False
    """fp16 training on a GPU."""
    progress: StrictBool = True
    """Progress bars and per-unit lines in the terminal."""
    workers: Union[Literal["auto"], StrictInt] = "auto"
    """Training processes: ``auto`` = one per core on the frozen CPU path, one per GPU on a GPU."""
    executor: Literal["local", "ray"] = "local"
    """Where units of work run: ``local`` processes, or the tasks of a Ray cluster."""
    ray_address: Union[str, None] = None
    """Ray cluster to join (e.g. ``ray://head:10001``); empty: ``RAY_ADDRESS``, else a local cluster."""
    ray_num_cpus: StrictFloat = Field(1.0, gt=0.0)
    """CPUs Ray reserves per unit of work."""
    ray_num_gpus: StrictFloat = Field(0.0, ge=0.0)
    """GPUs Ray reserves per unit of work; a fraction (e.g. 0.25) lets several small fusion fits share one GPU."""

    @field_validator("seeds", "models", "baselines", mode="before")
    @classmethod
    def _one_as_list(cls, value):
        return [value] if isinstance(value, (int, str)) and not isinstance(value, bool) else value

    @field_validator("workers")
    @classmethod
    def _positive_workers(cls, value):
        if value != "auto" and value < 1:
            raise ValueError("expected 'auto' or a positive integer")
        return value

    @field_validator("models", "baselines")
    @classmethod
    def _registered(cls, value, info):
        from .models import list_models

        bad = [m for m in value if m not in list_models()]
        if bad:
            raise ValueError(f"unknown models {bad}; expected registered names {list_models()}")
        return value

    @field_validator("segmenter")
    @classmethod
    def _segmenter_settings(cls, value):
        from .segmentation import SegmenterSettings

        SegmenterSettings.from_dict(value)  # a ValueError names the unknown or invalid setting
        return value

    @model_validator(mode="after")
    def _no_lesion_no_crop(self):
        if self.lesion_source == "none":  # whole images: nothing to crop on, no outline to measure
            self.roi, self.outline_features = False, False
        return self

    @field_validator("encoder_levels")
    @classmethod
    def _encoder_levels_exist(cls, value, info):
        if value is not None and "encoder" in info.data:
            from .encoders import check_encoder_levels

            try:
                check_encoder_levels(info.data["encoder"], value)
            except ValueError as err:
                raise ValueError(f"expected empty (the encoder's last feature map) or encoder block indices such "
                                 f"as [3, 4, 5]: {err}") from None
        return value


def _default_models(kind: str) -> list[str]:
    from .models import default_models

    return default_models(kind)


def result_keys() -> list[str]:
    """The parameters results depend on: every field but :data:`NOT_IN_RESULT_KEY`."""
    return [k for k in RunParams.model_fields if k not in NOT_IN_RESULT_KEY]


def profile_path(profile: str | Path, params_dir: Path = PARAMS) -> Path:
    """``params/<profile>.yaml`` for a name, or the path itself for a YAML file."""
    path = Path(profile)
    if not path.suffix:
        path = Path(params_dir) / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(params_dir).glob("*.yaml"))
        raise ParamsError(f"no run profile {str(profile)!r}: {path} does not exist (profiles: {', '.join(known) or 'none'})")
    return path


def read_profile(profile: str | Path, params_dir: Path = PARAMS) -> dict:
    """The raw mapping of a profile file, checked for shape (flat, identifier keys, no reserved keys)."""
    path = profile_path(profile, params_dir)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({err})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of parameter names to values, got {type(data).__name__}")
    for key, value in data.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ParamsError(f"{path}: parameter name {key!r} is not a Python identifier")
        if isinstance(value, dict) and key not in GROUPED_PARAMETERS:
            raise ParamsError(f"{path}: parameter {key!r} is a mapping; profiles are flat (name: value), except "
                              f"{list(GROUPED_PARAMETERS)}")
    clash = sorted(set(data) & set(RESERVED_IN_PROFILE))
    if clash:
        raise ParamsError(f"{path}: parameters {clash} are set by the build itself (from the file name and the "
                          "results folder) and may not be in a profile")
    return data


def parse_overrides(items: list[str] | None) -> dict:
    """``["epochs=3", "models=[amw_cnn, cnn_lstm]", "roi=true"]`` -> a dict of values read as YAML scalars/lists."""
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"--set {item!r}: expected KEY=VALUE (e.g. --set epochs=3)")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


def load_params(profile: str | Path | dict | None = None, overrides: dict | None = None, *,
                params_dir: Path = PARAMS, overrides_from: str = "overrides") -> dict:
    """Parameters of a run as a plain dict: the defaults, updated by a profile, then by ``overrides``.

    Args:
        profile: a profile name in ``params_dir``, a YAML path, a dict of parameters, or None (defaults only).
        overrides: values that win over the profile (``--set``, papermill, tests); ``segmenter.<setting>`` changes
            one setting of the grouped parameter and keeps the profile's others.
        params_dir: where profile names are looked up.
        overrides_from: how error messages name the overrides (``--set`` on the command line).

    Raises:
        ParamsError: a missing profile, an unknown key, or a value of the wrong type or range.
    """
    given: dict[str, Any] = {}
    source = {}
    if isinstance(profile, dict):
        given.update(profile)
        source = {k: "parameters" for k in profile}
    elif profile is not None:
        path = profile_path(profile, params_dir)
        data = read_profile(path, params_dir)
        given.update(data)
        source = {k: str(path) for k in data}
        given["profile"] = path.stem
    for k, v in (overrides or {}).items():
        top, dot, sub = k.partition(".")
        if dot:  # one setting of a grouped parameter: --set segmenter.refine_size=0
            if top not in GROUPED_PARAMETERS or not sub:
                raise ParamsError(f"{overrides_from} {k!r}: a dotted key names one setting of "
                                  f"{' or '.join(GROUPED_PARAMETERS)} (e.g. segmenter.epochs=4), got {top!r}")
            given[top] = {**dict(given.get(top) or {}), sub: v}
            source[top] = overrides_from
            continue
        given[k] = v
        source[k] = overrides_from
    try:
        return RunParams(**given).model_dump()
    except ValidationError as err:
        raise ParamsError(_readable(err, given, source)) from None


def validate_params(params: dict) -> dict:
    """A complete or partial parameter dict checked and completed with the defaults."""
    return load_params(dict(params))


def _readable(err: ValidationError, given: dict, source: dict) -> str:
    """One line per bad key: the key, its value, where it came from and what was expected."""
    known = list(RunParams.model_fields)
    by_key: dict[str, list[str]] = {}
    for e in err.errors():
        key = str(e["loc"][0]) if e["loc"] else ""
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            by_key.setdefault(key, []).append(f"unknown parameter{hint}; known parameters: {', '.join(known)}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        msg = msg.replace("Input should be", "expected")
        msg = msg.replace("expected a valid boolean", "expected true or false")
        for kind, article in (("integer", "an"), ("number", "a"), ("string", "a"), ("list", "a")):
            msg = msg.replace(f"expected a valid {kind}", f"expected {article} {kind}")
        inner = ".".join(str(x) for x in e["loc"][1:] if not str(x).startswith(("literal[", "int", "str")))
        by_key.setdefault(key, []).append(f"{msg}" + (f" (item {inner})" if inner else ""))
    lines = []
    for key, msgs in by_key.items():
        where = {"parameters": "", "--set": " (from --set)", "overrides": " (override)"}.get(
            source.get(key, "parameters"), f" in {source.get(key)}")
        if key in given:
            head = f"parameter {key!r} = {given[key]!r}{where}"
        else:
            head = "parameters"
        lines.append(f"{head}: " + " or ".join(m.removeprefix("expected ") if i else m
                                               for i, m in enumerate(dict.fromkeys(msgs))))
    return "invalid run parameters:\n  " + "\n  ".join(lines) if len(lines) > 1 else lines[0]
