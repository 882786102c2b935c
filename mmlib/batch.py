"""The sample format every model takes, shared by the data layer and the models.

One sample (one patient) is ``(x, y)`` with ``y`` a float tensor (0. benign, 1. malignant) and ``x`` a
flat ``dict`` of tensors (flat, so fastai's batch-size and device helpers work on it):

``"mammography"``        float ``(V_m, 3, H, W)`` normalised images, or ``(V_m, C, h, w)`` cached encoder
                         feature maps when the model reads features (``input_kind == "features"``)
``"mammography_views"``  bool ``(V_m,)``: which view slots hold a real image (the rest is zero padding)
``"ultrasound"``         as for mammography, ``(V_u, ...)``
``"ultrasound_views"``   bool ``(V_u,)``
``"ultrasound_outline"`` float ``(V_u, 11)`` (likewise ``"mammography_outline"``), only for models built with
                         ``outline_features``: standardised lesion-outline descriptors of each view (see
                         :mod:`mmlib.morphometry`), all zero for a view without an outline
``"clinical"``           float ``(K,)``: scaled clinical values, each followed by its missing indicator
``"present"``            bool ``(3,)``: presence of (mammography, ultrasound, clinical), in
                         :data:`mmlib.schema.MODALITIES` order

A batch stacks these with a leading batch dimension ``B``. A modality that is absent has
``present[:, m] == False``, all its view flags False, and whatever pixels are there must not change the
output: models mask, they never read a filled-in image.
"""

from __future__ import annotations

import torch

from .schema import IMAGE_MODALITIES, MODALITIES

PRESENT = "present"
CLINICAL = "clinical"


def views_key(modality: str) -> str:
    return f"{modality}_views"


def outline_key(modality: str) -> str:
    return f"{modality}_outline"


def modality_index(modality: str) -> int:
    return MODALITIES.index(modality)


def with_presence(x: dict, keep: tuple[str, ...] | list[str]) -> dict:
    """A copy of batch ``x`` in which only the inputs in ``keep`` are present (a missing-modality scenario).

    Modalities already absent stay absent; nothing else is altered.
    """
    unknown = set(keep) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; expected a subset of {MODALITIES}")
    out = dict(x)
    present = x[PRESENT].clone()
    for i, m in enumerate(MODALITIES):
        if m not in keep:
            present[..., i] = False
    out[PRESENT] = present
    for m in IMAGE_MODALITIES:
        if m not in keep and views_key(m) in x:
            out[views_key(m)] = torch.zeros_like(x[views_key(m)])
    return out


def effective_views(x: dict, modality: str) -> torch.Tensor:
    """View flags of ``modality`` combined with its presence flag: ``(B, V)`` bool."""
    return x[views_key(modality)] & x[PRESENT][..., modality_index(modality), None]
