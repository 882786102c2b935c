"""Shared parts of the multimodal models: the base class, masked pooling, heads.

Every model is, as in TorchMultimodal, ``encoders`` (a ``ModuleDict`` keyed by modality) + per-modality
projections to a common width ``dim`` + a clinical encoder + a fusion part + a head. The base class
:class:`MultimodalModel` owns the first three and the masking rules; each model file adds its fusion.

Masking rules (every model):

- an imaging view counts only where ``x["<modality>_views"]`` and ``x["present"]`` are both True
  (:func:`mmlib.batch.effective_views`); absent views are never run through the encoder, and their
  (cached) maps are replaced by zeros before anything reads them;
- an absent modality (no effective view, or its presence flag False) gets zero weight in every fusion;
- a patient with none of the model's inputs gets logit 0 (probability 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..batch import CLINICAL, PRESENT, effective_views, modality_index, outline_key, views_key
from ..encoders import DEFAULT_ENCODER, WEIGHT_CHOICES, WEIGHT_SUFFIXES, create_encoder
from ..schema import IMAGE_MODALITIES, MODALITIES
from . import ModelInfo

__all__ = [
    "INPUT_KINDS",
    "MultimodalModel",
    "check_choice",
    "create_head",
    "masked_mean",
    "masked_softmax",
    "perfect_square_side",
]

INPUT_KINDS: tuple[str, ...] = ("images", "features")
SHARED = "shared"


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the entries where ``mask`` is True; masked entries get exactly 0.

    A row with no True entry gives all zeros (not NaN), and so do its gradients.

    Args:
        scores: real scores, any shape.
        mask: bool, same shape as ``scores``.
        dim: dimension to normalise over.

    Returns:
        weights of the shape of ``scores``, summing to 1 along ``dim`` on rows with a True entry.
    """
    has_any = mask.any(dim=dim, keepdim=True)
    scores = scores.masked_fill(~mask, float("-inf"))
    # An all-masked row would give softmax(-inf, ..., -inf) = NaN; give it finite scores, then zero them.
    scores = torch.where(has_any, scores, torch.zeros_like(scores))
    return scores.softmax(dim=dim) * mask


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the items where ``mask`` is True (zeros where there is none).

    Args:
        values: ``(B, N, D)``.
        mask: ``(B, N)`` bool.

    Returns:
        ``(B, D)``.
    """
    weights = masked_softmax(torch.zeros(mask.shape, dtype=values.dtype, device=values.device), mask)
    return (torch.where(mask[..., None], values, 0) * weights[..., None]).sum(dim=1)


def create_head(in_features: int, *, hidden: int, dropout: float) -> nn.Sequential:
    """The classification head: ``LayerNorm -> Dropout -> Linear -> GELU -> Dropout -> Linear(1)``.

    Args:
        in_features: width of the fused representation.
        hidden: width of the hidden layer.
        dropout: dropout probability.

    Returns:
        a module mapping ``(B, in_features)`` to ``(B, 1)``.
    """
    return nn.Sequential(
        nn.LayerNorm(in_features),
        nn.Dropout(dropout),
        nn.Linear(in_features, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, 1),
    )


def check_choice(name: str, value, choices: Sequence) -> None:
    """Raise ``ValueError`` naming argument ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def perfect_square_side(name: str, value) -> int:
    """Side ``g`` of a square grid of ``value = g * g`` cells; ``ValueError`` naming ``name`` otherwise."""
    _check_int(name, value, 1)
    side = math.isqrt(value)
    if side * side != value:
        raise ValueError(f"{name} must be a perfect square (1, 4, 9, 16, ...), got {value!r}")
    return side


class MultimodalModel(ModelInfo, nn.Module):
    """Base of every model: encoders, projections, clinical encoder, masking.

    Args:
        encoder: timm name of the CNN image encoder.
        encoder_weights: ``"imagenet"``, ``"none"`` or a weights file (see :func:`mmlib.encoders.create_encoder`).
        encoder_levels: None (the encoder's last feature map) or the encoder blocks whose maps are concatenated
            (see :class:`mmlib.encoders.ImageEncoder`).
        shared_encoder: one encoder for both imaging modalities (key ``"shared"`` in :attr:`encoders`);
            False = one per modality (keys ``"mammography"``, ``"ultrasound"``).
        clinical_features: length ``K`` of the clinical vector; 0 disables the clinical input.
        modalities: the inputs this model reads, a subset of :data:`mmlib.schema.MODALITIES`.
        dim: common width of every modality's representation.
        dropout: dropout probability.
        input_kind: ``"images"`` (the model runs its encoders) or ``"features"`` (it reads cached encoder
            maps; the encoders are still built, frozen, so that a saved model reads images too).
        outline_features: length of each view's lesion-outline vector (``x[m + "_outline"]``, see
            :mod:`mmlib.morphometry`); 0 (default) = not an input. A linear map of it is added to every cell of
            the view's projected map, so each fusion reads it where it reads the image.

    Inputs (see :mod:`mmlib.batch`):
        ``x[m]`` ``(B, V, 3, H, W)`` images or ``(B, V, C, h, w)`` maps, ``x[m + "_views"]`` ``(B, V)``,
        ``x["clinical"]`` ``(B, K)``, ``x["present"]`` ``(B, 3)``.

    Outputs:
        :meth:`forward` ``(B,)`` logits of malignancy; :meth:`forward_with_internals` also a dict of the
        model's interpretable quantities. :attr:`aux_logits` (dict modality -> ``(B,)``) and
        :attr:`aux_mask` (``(B, len(aux_logits))`` bool, columns in the order of ``aux_logits``) are set by
        models with auxiliary per-modality heads, else None.
    """

    #: whether the base builds the clinical MLP (the logistic-regression baseline does not).
    clinical_mlp: bool = True
    #: base-class kwargs a subclass fixes itself (not accepted by ``create_model``).
    fixed_kwargs: tuple[str, ...] = ()

    #: Side of the grid the fusion reads from each view's map (1 = the pooled vector; None = every cell).
    #: Maps are average-pooled to it before the projection (exactly equivalent, much cheaper).
    spatial_grid: int | None = None

    def __init__(
        self,
        *,
        encoder: str = DEFAULT_ENCODER,
        encoder_weights: str = "imagenet",
        encoder_levels: Sequence[int] | None = None,
        shared_encoder: bool = True,
        clinical_features: int,
        modalities: Sequence[str] = MODALITIES,
        dim: int = 128,
        dropout: float = 0.1,
        input_kind: str = "images",
        outline_features: int = 0,
    ):
        super().__init__()
        if not isinstance(encoder, str) or not encoder:
            raise ValueError(f"encoder must be a timm model name, got {encoder!r}")
        if not isinstance(encoder_weights, (str, Path)) or (
            str(encoder_weights) not in WEIGHT_CHOICES and Path(encoder_weights).suffix not in WEIGHT_SUFFIXES
        ):
            raise ValueError(
                f"encoder_weights must be one of {WEIGHT_CHOICES} or a {'/'.join(WEIGHT_SUFFIXES)} file, "
                f"got {encoder_weights!r}"
            )
        if not isinstance(shared_encoder, bool):
            raise ValueError(f"shared_encoder must be True or False, got {shared_encoder!r}")
        _check_int("clinical_features", clinical_features, 0)
        if isinstance(modalities, str) or not modalities:
            raise ValueError(f"modalities must be a non-empty sequence from {MODALITIES}, got {modalities!r}")
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be distinct names from {MODALITIES}, got {tuple(modalities)!r}")
        _check_int("dim", dim, 1)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        check_choice("input_kind", input_kind, INPUT_KINDS)
        _check_int("outline_features", outline_features, 0)

        self._config = {
            "encoder": encoder,
            "encoder_weights": str(encoder_weights),
            "encoder_levels": None if encoder_levels is None else list(encoder_levels),
            "shared_encoder": shared_encoder,
            "clinical_features": clinical_features,
            "modalities": [m for m in MODALITIES if m in modalities],
            "dim": dim,
            "dropout": float(dropout),
            "input_kind": input_kind,
            "outline_features": int(outline_features),
        }
        # clinical_features=0 switches the clinical input off even where `modalities` names it.
        self.modalities: tuple[str, ...] = tuple(
            m for m in MODALITIES if m in modalities and (m != CLINICAL or clinical_features > 0)
        )
        if not self.modalities:
            raise ValueError(
                f"modalities {tuple(modalities)!r} with clinical_features={clinical_features} leave no input"
            )
        self.image_modalities: tuple[str, ...] = tuple(m for m in IMAGE_MODALITIES if m in self.modalities)
        self.encoder_name = encoder
        self.clinical_features = clinical_features
        self.dim = dim
        self.input_kind = input_kind
        self.outline_features = int(outline_features)
        self.aux_weight = 0.0
        self.aux_logits: dict[str, torch.Tensor] | None = None
        self.aux_mask: torch.Tensor | None = None

        self.encoders = nn.ModuleDict()
        self.projections = nn.ModuleDict()
        self.num_features = 0
        if self.image_modalities:
            keys = [SHARED] if shared_encoder else list(self.image_modalities)
            for key in keys:
                self.encoders[key] = create_encoder(encoder, weights=str(encoder_weights), levels=encoder_levels)
            self.num_features = next(iter(self.encoders.values())).num_features
            for m in self.image_modalities:
                # A 1x1 convolution: the same linear map as projecting the pooled vector, kept per cell so
                # token-based models can read spatial maps.
                self.projections[m] = nn.Conv2d(self.num_features, dim, kernel_size=1)
            if self.outline_features:
                self.outline_projections = nn.ModuleDict(
                    {m: nn.Linear(self.outline_features, dim) for m in self.image_modalities})
            if input_kind == "features":
                # Encoders are not run on cached maps; frozen, they stay as the saved model's image path.
                for p in self.encoders.parameters():
                    p.requires_grad_(False)
        self.clinical_encoder = None
        if CLINICAL in self.modalities and self.clinical_mlp:
            self.clinical_encoder = nn.Sequential(
                nn.Linear(clinical_features, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim)
            )
        self._map_sizes: dict[tuple, tuple[int, int]] = {}

    # ------------------------------------------------------------------ configuration and parameter groups
    def config(self) -> dict:
        """Constructor kwargs (JSON-serialisable): ``create_model(self.model_name, **self.config())``."""
        return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self._config.items()}

    def encoder_for(self, modality: str) -> nn.Module:
        """The encoder that reads ``modality``."""
        if modality not in self.image_modalities:
            raise ValueError(f"{type(self).__name__} has no encoder for {modality!r} (reads {self.modalities})")
        return self.encoders[SHARED] if SHARED in self.encoders else self.encoders[modality]

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the image encoders (fastai parameter group 0)."""
        return self.encoders.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter that is not an encoder's (fastai parameter group 1)."""
        enc = {id(p) for p in self.encoders.parameters()}
        return (p for p in self.parameters() if id(p) not in enc)

    # ------------------------------------------------------------------ inputs
    def check_inputs(self, x: dict) -> int:
        """Validate batch ``x`` against the sample format; returns the batch size ``B``."""
        if not isinstance(x, dict) or PRESENT not in x:
            raise ValueError(f"x must be a dict of tensors with key {PRESENT!r} (see mmlib.batch)")
        present = x[PRESENT]
        if present.ndim != 2 or present.shape[1] != len(MODALITIES) or present.dtype != torch.bool:
            raise ValueError(f"x[{PRESENT!r}] must be bool (B, {len(MODALITIES)}), got {present.dtype} "
                             f"{tuple(present.shape)}")
        batch = present.shape[0]
        for m in self.image_modalities:
            for key in (m, views_key(m)):
                if key not in x:
                    raise ValueError(f"x lacks {key!r}, needed by {type(self).__name__}")
            data, views = x[m], x[views_key(m)]
            channels = self.num_features if self.input_kind == "features" else 3
            if data.ndim != 5 or data.shape[0] != batch or data.shape[2] != channels:
                what = "feature maps (B, V, C, h, w)" if self.input_kind == "features" else "images (B, V, 3, H, W)"
                raise ValueError(f"x[{m!r}] must hold {what} with B={batch}, C={channels}, got {tuple(data.shape)}")
            if views.shape != data.shape[:2] or views.dtype != torch.bool:
                raise ValueError(f"x[{views_key(m)!r}] must be bool {tuple(data.shape[:2])}, got {views.dtype} "
                                 f"{tuple(views.shape)}")
            if self.outline_features:
                want = (*data.shape[:2], self.outline_features)
                if outline_key(m) not in x or tuple(x[outline_key(m)].shape) != want:
                    got = tuple(x[outline_key(m)].shape) if outline_key(m) in x else "nothing"
                    raise ValueError(f"x[{outline_key(m)!r}] must hold lesion-outline features {want} "
                                     f"(outline_features={self.outline_features}), got {got}")
        if CLINICAL in self.modalities:
            if CLINICAL not in x:
                raise ValueError(f"x lacks {CLINICAL!r}, needed by {type(self).__name__}")
            if tuple(x[CLINICAL].shape) != (batch, self.clinical_features):
                raise ValueError(f"x[{CLINICAL!r}] must be ({batch}, {self.clinical_features}) "
                                 f"(clinical_features), got {tuple(x[CLINICAL].shape)}")
        return batch

    def presence(self, x: dict) -> torch.Tensor:
        """``(B, len(self.modalities))`` bool: which of this model's inputs each patient has."""
        cols = []
        for m in self.modalities:
            if m == CLINICAL:
                cols.append(x[PRESENT][:, modality_index(m)])
            else:
                cols.append(effective_views(x, m).any(dim=1))
        return torch.stack(cols, dim=1)

    # ------------------------------------------------------------------ encoding
    def _feature_map_size(self, modality: str, height: int, width: int, like: torch.Tensor) -> tuple[int, int]:
        key = (modality, height, width)
        if key not in self._map_sizes:
            enc = self.encoder_for(modality)
            was_training = enc.training
            # Eval mode and no_grad: measuring the map size must not move BatchNorm statistics.
            enc.eval()
            with torch.no_grad():
                probe = enc(like.new_zeros(1, like.shape[-3], height, width))
            enc.train(was_training)
            self._map_sizes[key] = tuple(probe.shape[-2:])
        return self._map_sizes[key]

    def _encode_views(self, modality: str, images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        batch, nviews = views.shape
        real = images[views]
        if real.shape[0] > 0:
            feats = self.encoder_for(modality)(real)
            self._map_sizes[(modality, *images.shape[-2:])] = tuple(feats.shape[-2:])
            maps = feats.new_zeros(batch, nviews, *feats.shape[1:])
            maps[views] = feats
            return maps
        h, w = self._feature_map_size(modality, images.shape[-2], images.shape[-1], images)
        return images.new_zeros(batch, nviews, self.num_features, h, w)

    def encode(self, x: dict) -> dict[str, torch.Tensor]:
        """Projected feature maps of each imaging modality this model reads.

        Images are encoded only for effective views (gathered, encoded, scattered back); cached maps of
        absent views are replaced by zeros. Projected maps of absent views are zero.

        Returns:
            ``{modality: (B, V, dim, h, w)}``.
        """
        out = {}
        for m in self.image_modalities:
            views = effective_views(x, m)
            if self.input_kind == "images":
                maps = self._encode_views(m, x[m].float(), views)
            else:
                maps = torch.where(views[..., None, None, None], x[m].float(), 0.0)
            batch, nviews = views.shape
            flat = maps.flatten(0, 1)
            if self.spatial_grid is not None and tuple(flat.shape[-2:]) != (self.spatial_grid,) * 2:
                # Average pooling commutes with the 1x1 projection (both linear), so pooling first gives the
                # same result at a fraction of the cost: the projection of 1280-channel maps dominated training.
                flat = F.adaptive_avg_pool2d(flat, self.spatial_grid)
            proj = self.projections[m](flat).unflatten(0, (batch, nviews))
            if self.outline_features:
                proj = proj + self.outline_projections[m](x[outline_key(m)].float())[..., None, None]
            out[m] = torch.where(views[..., None, None, None], proj, 0.0)
        return out

    def encode_clinical(self, x: dict) -> torch.Tensor:
        """Clinical embedding ``(B, dim)``; zero for patients without clinical input."""
        present = x[PRESENT][:, modality_index(CLINICAL)]
        values = torch.where(present[:, None], x[CLINICAL].float(), 0.0)
        return torch.where(present[:, None], self.clinical_encoder(values), 0.0)

    def pooled_views(self, maps: dict[str, torch.Tensor], modality: str) -> torch.Tensor:
        """Global average pooled projected maps of each view, ``(B, V, dim)``."""
        return maps[modality].mean(dim=(-2, -1))

    def modality_vectors(self, x: dict, maps: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """One vector per input: mean over effective views of pooled maps, or the clinical embedding.

        Returns:
            ``(B, len(self.modalities), dim)``; zero for absent inputs.
        """
        maps = self.encode(x) if maps is None else maps
        vecs = []
        for m in self.modalities:
            if m == CLINICAL:
                vecs.append(self.encode_clinical(x))
            else:
                vecs.append(masked_mean(self.pooled_views(maps, m), effective_views(x, m)))
        return torch.stack(vecs, dim=1)

    def instances(self, x: dict, maps: dict[str, torch.Tensor], embedding: torch.Tensor, *, tiles: int = 1):
        """The patient's inputs as a bag (or sequence) of instances, each plus its modality's row of ``embedding``.

        Instances, in ``self.modalities`` order: every view slot of each imaging modality (its projected map
        pooled to one vector, or with ``tiles > 1`` to a square grid of ``tiles`` cells, row-major), and the
        clinical embedding as one instance.

        Args:
            x: the batch; maps: :meth:`encode` of it; embedding: ``(len(self.modalities), dim)``.
            tiles: instances per view, a perfect square.

        Returns:
            instances ``(B, N, dim)``, their mask ``(B, N)`` bool (effective views, clinical presence), and N
            tuples ``(modality, view, tile)``.
        """
        side = perfect_square_side("tiles", tiles)
        feats, keep, index = [], [], []
        for i, m in enumerate(self.modalities):
            if m == CLINICAL:
                f = self.encode_clinical(x)[:, None]
                k = x[PRESENT][:, modality_index(CLINICAL), None]
                index.append((CLINICAL, 0, 0))
            else:
                p = maps[m]
                batch, nviews = p.shape[:2]
                if tiles == 1:
                    f = p.mean(dim=(-2, -1))
                else:
                    p = F.adaptive_avg_pool2d(p.flatten(0, 1), side).unflatten(0, (batch, nviews))
                    f = p.flatten(-2).transpose(-1, -2).reshape(batch, nviews * tiles, self.dim)
                k = effective_views(x, m)[:, :, None].expand(batch, nviews, tiles).reshape(batch, -1)
                index.extend((m, v, t) for v in range(nviews) for t in range(tiles))
            feats.append(f + embedding[i])
            keep.append(k)
        return torch.cat(feats, dim=1), torch.cat(keep, dim=1), index

    # ------------------------------------------------------------------ forward
    def _forward(self, x: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def forward_with_internals(self, x: dict) -> tuple[torch.Tensor, dict]:
        """Logits ``(B,)`` and the model's internals (documented by each model)."""
        self.check_inputs(x)
        self.aux_logits, self.aux_mask = None, None
        logits, internals = self._forward(x)
        has_input = self.presence(x).any(dim=1)
        return torch.where(has_input, logits, torch.zeros_like(logits)), internals

    def forward(self, x: dict) -> torch.Tensor:
        """Logits of malignancy ``(B,)``."""
        return self.forward_with_internals(x)[0]
