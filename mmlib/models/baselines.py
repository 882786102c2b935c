"""Baselines: age-only logistic regression, one input alone, and late fusion of per-input predictions.

A baseline reads only its own inputs; everything else in the batch is ignored. A network baseline gives a
patient who has none of its inputs logit 0 (probability 0.5): the model abstains rather than guessing from
padding.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..batch import CLINICAL, PRESENT, effective_views, modality_index
from . import ModelInfo, register_model
from .parts import MultimodalModel, create_head, masked_mean


@register_model("age_only")
class AgeOnly(ModelInfo):
    """Logistic regression (scikit-learn) on the clinical vector: age and its missing-value flag on the paper's
    cohorts. The clinical floor every multimodal model must beat.

    Args:
        C: inverse regularisation strength.
        max_iter: solver iterations.

    Shapes: ``fit(X (N, K), y (N,))``; ``predict_proba(X)`` -> ``(N,)`` probability of malignancy, with
    ``X`` the :class:`~mmlib.data.ClinicalScaler` vectors (a patient without clinical input has every value
    recorded as missing).
    """

    display_name = "Age only (logistic regression)"
    kind = "baseline"
    inputs = (CLINICAL,)
    table_order = 10
    tabular = True

    def __init__(self, *, C: float = 1.0, max_iter: int = 1000):
        from sklearn.linear_model import LogisticRegression

        if isinstance(C, bool) or not isinstance(C, (int, float)) or C <= 0:
            raise ValueError(f"C must be a number > 0, got {C!r}")
        self.classifier = LogisticRegression(C=float(C), max_iter=int(max_iter))

    def fit(self, X: np.ndarray, y: np.ndarray) -> "AgeOnly":
        self.classifier.fit(X, y)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.classifier.predict_proba(X)[:, 1]


class _ImagingOnly(MultimodalModel):
    """One imaging modality alone: projected maps, pooled per view and averaged over views, then the head.

    Args: those of :class:`~mmlib.models.parts.MultimodalModel` except ``modalities``.
    Shapes: ``forward(x)`` -> ``(B,)``; logit 0 where the patient has no view of the modality. No internals.
    """

    modality = ""
    kind = "baseline"
    fixed_kwargs = ("modalities",)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.inputs = (cls.modality,)
        cls.display_name = f"{cls.modality.capitalize()} only"

    def __init__(self, **kwargs):
        super().__init__(modalities=(self.modality,), **kwargs)
        self.spatial_grid = 1  # reads pooled vectors only
        del self._config["modalities"]
        self.head = create_head(self.dim, hidden=self.dim, dropout=self._config["dropout"])

    def _forward(self, x: dict) -> tuple[torch.Tensor, dict]:
        maps = self.encode(x)
        pooled = masked_mean(self.pooled_views(maps, self.modality), effective_views(x, self.modality))
        return self.head(pooled).squeeze(-1), {}


@register_model("ultrasound_only")
class UltrasoundOnly(_ImagingOnly):
    """Ultrasound alone (see :class:`_ImagingOnly`)."""

    modality = "ultrasound"
    table_order = 11


@register_model("mammography_only")
class MammographyOnly(_ImagingOnly):
    """Mammography alone (see :class:`_ImagingOnly`)."""

    modality = "mammography"
    table_order = 12


@register_model("clinical_only")
class ClinicalOnly(MultimodalModel):
    """Logistic regression on the clinical vector: one linear layer, ``(B, K) -> (B,)``.

    Args: those of :class:`~mmlib.models.parts.MultimodalModel` except ``modalities``; the encoder
        arguments are accepted (one config fits every model) and unused; ``clinical_features`` must be > 0.
    Shapes: ``forward(x)`` -> ``(B,)``; logit 0 where clinical input is absent. No internals.
    """

    display_name = "Clinical only"
    kind = "baseline"
    inputs = (CLINICAL,)
    table_order = 14
    in_default_run = False  # the age-only logistic regression plays its part in the default run
    clinical_mlp = False
    fixed_kwargs = ("modalities",)

    def __init__(self, **kwargs):
        if kwargs.get("clinical_features") == 0:
            raise ValueError("clinical_features must be > 0 for clinical_only (the model reads only clinical data)")
        super().__init__(modalities=(CLINICAL,), **kwargs)
        del self._config["modalities"]
        self.linear = nn.Linear(self.clinical_features, 1)

    def _forward(self, x: dict) -> tuple[torch.Tensor, dict]:
        present = x[PRESENT][:, modality_index(CLINICAL)]
        values = torch.where(present[:, None], x[CLINICAL].float(), 0.0)
        return self.linear(values).squeeze(-1), {}


@register_model("late_fusion")
class LateFusion(MultimodalModel):
    """Late fusion: one head per input, predictions averaged over the present inputs.

    Each imaging modality's pooled vector (mean over views) and the clinical embedding get their own head
    and logit ``l_m``. The prediction is the mean of the present inputs' probabilities,
    ``p = mean_m sigmoid(l_m)``, returned as its logit, computed stably as
    ``logsumexp(logsigmoid(l_m)) - logsumexp(logsigmoid(-l_m))`` over present ``m``. The per-input logits
    are :attr:`aux_logits` (mask :attr:`aux_mask`), so the learner trains every head on its own as well.

    Args:
        aux_weight: weight of the per-input losses added by the learner.
        **kwargs: those of :class:`~mmlib.models.parts.MultimodalModel`.

    Shapes: ``forward(x)`` -> ``(B,)``. Internals: ``input_logits`` ``(B, M)`` (columns in
        ``self.modalities`` order), ``input_mask`` ``(B, M)`` bool.
    """

    display_name = "Late fusion (average)"
    kind = "baseline"
    table_order = 13

    def __init__(self, *, aux_weight: float = 1.0, **kwargs):
        if isinstance(aux_weight, bool) or not isinstance(aux_weight, (int, float)) or aux_weight < 0:
            raise ValueError(f"aux_weight must be a number >= 0, got {aux_weight!r}")
        super().__init__(**kwargs)
        self.spatial_grid = 1  # reads pooled vectors only
        self._config["aux_weight"] = float(aux_weight)
        self.aux_weight = float(aux_weight)
        self.heads = nn.ModuleDict(
            {m: create_head(self.dim, hidden=self.dim, dropout=self._config["dropout"]) for m in self.modalities}
        )

    def _forward(self, x: dict) -> tuple[torch.Tensor, dict]:
        vectors = self.modality_vectors(x)
        present = self.presence(x)
        logits = torch.stack([self.heads[m](vectors[:, i]).squeeze(-1) for i, m in enumerate(self.modalities)], 1)
        self.aux_logits = {m: logits[:, i] for i, m in enumerate(self.modalities)}
        self.aux_mask = present
        fused = _masked_logsumexp(nn.functional.logsigmoid(logits), present) - _masked_logsumexp(
            nn.functional.logsigmoid(-logits), present
        )
        return fused, {"input_logits": logits, "input_mask": present}


def _masked_logsumexp(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logsumexp over dim 1 of the entries where ``mask`` is True; 0 for rows with none (no NaN)."""
    has_any = mask.any(dim=1, keepdim=True)
    filled = torch.where(mask, values, torch.full_like(values, float("-inf")))
    filled = torch.where(has_any, filled, torch.zeros_like(values))
    return torch.where(has_any[:, 0], torch.logsumexp(filled, dim=1), torch.zeros_like(values[:, 0]))
