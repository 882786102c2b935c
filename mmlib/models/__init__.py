"""The multimodal models and baselines, behind a registry (as in timm).

``create_model(name, **kwargs)`` builds any registered model; ``list_models()`` names them. Each model
lives in its own file:

- :mod:`.cuf_mt`    CUF-MT, cross-modal unified fusion transformer
- :mod:`.amw_cnn`   AMW-CNN, adaptive modality weighting
- :mod:`.mm_abmil`  MM-ABMIL, multimodal attention-based multiple-instance learning
- :mod:`.cnn_lstm`  CNN-LSTM, the inputs read as a sequence
- :mod:`.baselines` single-input models and late fusion

:data:`ABLATIONS` lists, per model, the kwargs of each ablation studied in the book.
"""

from __future__ import annotations

import inspect

from torch import nn

__all__ = [
    "ABLATIONS",
    "BASELINES",
    "MULTIMODAL_MODELS",
    "MultimodalModel",
    "create_model",
    "list_models",
    "model_kwargs",
    "register_model",
]

_REGISTRY: dict[str, type[nn.Module]] = {}

#: The four multimodal models of the paper.
MULTIMODAL_MODELS: tuple[str, ...] = ("cuf_mt", "amw_cnn", "mm_abmil", "cnn_lstm")
#: Comparison models: one input each, and late fusion of per-input predictions.
BASELINES: tuple[str, ...] = ("ultrasound_only", "mammography_only", "clinical_only", "late_fusion")
#: model name -> ablation name -> kwargs that turn the ablation on.
ABLATIONS: dict[str, dict[str, dict]] = {
    "cuf_mt": {"no_cross_modal": {"cross_modal": False}, "no_aux": {"aux_weight": 0.0}},
    "amw_cnn": {"equal_weights": {"fusion": "equal"}, "concat": {"fusion": "concat"}},
    "mm_abmil": {"mean_pooling": {"pooling": "mean"}},
    "cnn_lstm": {"mean_reader": {"reader": "mean"}, "permuted_order": {"order": "permuted"}},
}


def register_model(name: str):
    """Class decorator: register a model class under ``name``."""

    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.model_name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def model_kwargs(name: str) -> dict[str, object]:
    """Keyword arguments accepted by model ``name`` with their defaults (``inspect.Parameter.empty`` if required)."""
    cls = _model_class(name)
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


def _model_class(name: str) -> type[nn.Module]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: one of :func:`list_models`.
        **kwargs: constructor arguments (see the model's docstring; all models take those of
            :class:`~mmlib.models.parts.MultimodalModel`).

    Raises:
        ValueError: unknown name (the message lists the registered ones).
        TypeError: a keyword the model does not take (the message lists those it takes).
    """
    cls = _model_class(name)
    accepted = model_kwargs(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"model {name!r} does not take {unknown}; it takes {sorted(accepted)}")
    return cls(**kwargs)


from .parts import MultimodalModel  # noqa: E402
from . import amw_cnn, baselines, cnn_lstm, cuf_mt, mm_abmil  # noqa: E402,F401
