"""The multimodal models and baselines, behind a registry (as in timm).

``create_model(name, **kwargs)`` builds any registered model; ``list_models()`` names them. A model is one
file in this folder: every module here is imported when the package is, and ``@register_model("name")`` on a
class enters it, with the metadata the class carries (:class:`ModelInfo` lists the attributes). Nothing
else names a model: the default run, the book's display names and the ablations studied all come from here.

- :mod:`.cuf_mt`    CUF-MT, cross-modal unified fusion transformer
- :mod:`.amw_cnn`   AMW-CNN, adaptive modality weighting
- :mod:`.mm_abmil`  MM-ABMIL, multimodal attention-based multiple-instance learning
- :mod:`.cnn_lstm`  CNN-LSTM, the inputs read as a sequence
- :mod:`.baselines` age-only logistic regression, single-input models and late fusion
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from ..schema import MODALITIES

__all__ = [
    "ABLATIONS",
    "BASELINES",
    "KINDS",
    "MULTIMODAL_MODELS",
    "ModelInfo",
    "MultimodalModel",
    "create_model",
    "default_models",
    "list_models",
    "model_class",
    "model_kwargs",
    "register_model",
]

#: ``multimodal``: a model of the paper (ablated, compared, given a chapter); ``baseline``: a comparison model.
KINDS: tuple[str, ...] = ("multimodal", "baseline")

_REGISTRY: dict[str, type] = {}


class ModelInfo:
    """The metadata every registered model class carries (defaults shown; a model overrides what differs).

    Attributes:
        model_name: registry name, set by :func:`register_model`.
        display_name: the name in the paper's words, used by every table and figure.
        kind: one of :data:`KINDS`.
        inputs: the inputs the model reads, from ``("mammography", "ultrasound", "clinical")``.
        ablations: ablation name -> constructor kwargs that turn it on (studied for ``kind="multimodal"``).
        table_order: position in the book's tables and in the default run (the paper's order); ties by name.
        in_default_run: whether the default run trains it.
        tabular: fitted on the clinical table by scikit-learn style ``fit(X, y)`` / ``predict_proba(X)`` rather
            than trained by the fastai learner (no images, nothing saved as a model folder).
    """

    model_name: str = ""
    display_name: str = ""
    kind: str = "multimodal"
    inputs: tuple[str, ...] = MODALITIES
    ablations: dict[str, dict] = {}
    table_order: int = 1000
    in_default_run: bool = True
    tabular: bool = False


def register_model(name: str):
    """Class decorator: register a model class under ``name`` (its metadata is checked here)."""

    def deco(cls):
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"model name {name!r} is already registered by {_REGISTRY[name].__name__}")
        kind = getattr(cls, "kind", "multimodal")
        if kind not in KINDS:
            raise ValueError(f"model {name!r}: kind must be one of {KINDS}, got {kind!r}")
        inputs = tuple(getattr(cls, "inputs", MODALITIES))
        if not inputs or any(m not in MODALITIES for m in inputs):
            raise ValueError(f"model {name!r}: inputs must be names from {MODALITIES}, got {inputs!r}")
        cls.model_name = name
        cls.display_name = cls.__dict__.get("display_name") or name
        cls.inputs = inputs
        _REGISTRY[name] = cls
        accepted = model_kwargs(name)
        for ablation, kwargs in getattr(cls, "ablations", {}).items():
            unknown = sorted(set(kwargs) - set(accepted))
            if ablation in ("none", "no_clinical", "modality_dropout") or unknown:
                del _REGISTRY[name]
                raise ValueError(f"model {name!r}: ablation {ablation!r} must have a new name and take only "
                                 f"constructor kwargs {sorted(accepted)}; got {kwargs!r}")
        return cls

    return deco


def list_models(kind: str | None = None) -> list[str]:
    """Registered model names (of one kind when given), in the book's order."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    names = [n for n, cls in _REGISTRY.items() if kind is None or cls.kind == kind]
    return sorted(names, key=lambda n: (_REGISTRY[n].table_order, n))


def default_models(kind: str) -> list[str]:
    """The models of ``kind`` that the default run trains."""
    return [n for n in list_models(kind) if _REGISTRY[n].in_default_run]


def model_class(name: str) -> type:
    """The class registered as ``name``, with its metadata (:class:`ModelInfo`)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_kwargs(name: str) -> dict[str, object]:
    """Keyword arguments accepted by model ``name`` with their defaults (``inspect.Parameter.empty`` if required)."""
    cls = model_class(name)
    out: dict[str, object] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        for p in params:
            if p.kind is p.KEYWORD_ONLY:
                out.setdefault(p.name, p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    for fixed in getattr(cls, "fixed_kwargs", ()):
        out.pop(fixed, None)
    return out


def create_model(name: str, **kwargs):
    """Build the registered model ``name``.

    Args:
        name: one of :func:`list_models`.
        **kwargs: constructor arguments (see the model's docstring; the networks take those of
            :class:`~mmlib.models.parts.MultimodalModel`).

    Raises:
        ValueError: unknown name (the message lists the registered ones).
        TypeError: a keyword the model does not take (the message lists those it takes).
    """
    cls = model_class(name)
    accepted = model_kwargs(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"model {name!r} does not take {unknown}; it takes {sorted(accepted)}")
    return cls(**kwargs)


from .parts import MultimodalModel  # noqa: E402

# One file per model: every module of this package is imported, so a new file is all a new model needs.
for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

#: The multimodal models of the paper (registry order), and the comparison models. Read at import time: use
#: :func:`list_models` to see models registered later.
MULTIMODAL_MODELS: tuple[str, ...] = tuple(list_models("multimodal"))
BASELINES: tuple[str, ...] = tuple(list_models("baseline"))
#: model name -> ablation name -> kwargs that turn the ablation on.
ABLATIONS: dict[str, dict[str, dict]] = {n: dict(model_class(n).ablations) for n in MULTIMODAL_MODELS}
