"""MM-ABMIL: multimodal attention-based multiple-instance learning."""

from __future__ import annotations

import torch
from torch import nn

from . import register_model
from .parts import MultimodalModel, check_choice, create_head, masked_softmax, perfect_square_side

POOLINGS: tuple[str, ...] = ("gated_attention", "mean")


class GatedAttention(nn.Module):
    """Gated attention scores of Ilse, Tomczak & Welling (ICML 2018): ``w^T (tanh(V h) * sigmoid(U h))``.

    Args:
        dim: instance width.
        hidden: width ``L`` of ``V`` and ``U``.

    Shapes: ``(B, N, dim)`` -> scores ``(B, N)`` (before the softmax).
    """

    def __init__(self, *, dim: int, hidden: int):
        super().__init__()
        self.attention_V = nn.Linear(dim, hidden)
        self.attention_U = nn.Linear(dim, hidden)
        self.attention_w = nn.Linear(hidden, 1)

    def forward(self, instances: torch.Tensor) -> torch.Tensor:
        gated = torch.tanh(self.attention_V(instances)) * torch.sigmoid(self.attention_U(instances))
        return self.attention_w(gated).squeeze(-1)


@register_model("mm_abmil")
class MMABMIL(MultimodalModel):
    """Multimodal attention-based MIL: a patient is a bag of instances from every input.

    Instances: each effective view of each imaging modality (its projected map, global-average pooled),
    or with ``tiles > 1`` each of the view's ``tiles`` spatial cells (the map adaptive-average-pooled to a
    square grid); and the clinical embedding as one instance. A learned modality embedding is added to
    each instance, then a shared instance MLP. Gated attention (softmax over the bag's present instances)
    weighs the instances; the weighted sum (the bag embedding) goes to the head.

    Args:
        tiles: instances per view (1 = whole view, 4 = 2x2 cells, any perfect square).
        pooling: ``"gated_attention"`` (the model) or ``"mean"`` (ablation: uniform weights over present
            instances).
        attention_dim: hidden width of the gated attention (default ``dim``).
        **kwargs: those of :class:`~mmlib.models.parts.MultimodalModel`.

    Shapes:
        ``forward(x)`` -> ``(B,)``. Internals: ``instance_attention`` ``(B, N)`` (sums to 1 over present
        instances, 0 on absent ones); ``instance_index``: N tuples ``(modality, view, tile)``, tiles in
        row-major order; ``instance_mask`` ``(B, N)`` bool.
    """

    display_name = "MM-ABMIL"
    table_order = 3
    ablations = {"mean_pooling": {"pooling": "mean"}}

    def __init__(self, *, tiles: int = 1, pooling: str = "gated_attention", attention_dim: int | None = None,
                 **kwargs):
        side = perfect_square_side("tiles", tiles)
        check_choice("pooling", pooling, POOLINGS)
        if attention_dim is not None and (isinstance(attention_dim, bool) or not isinstance(attention_dim, int)
                                          or attention_dim < 1):
            raise ValueError(f"attention_dim must be None or an int >= 1, got {attention_dim!r}")
        super().__init__(**kwargs)
        self._config.update(tiles=tiles, pooling=pooling, attention_dim=attention_dim)
        self.tiles, self.tile_side, self.pooling = tiles, side, pooling
        self.spatial_grid = side  # tiles per view side (1 = the pooled view)
        dim, dropout = self.dim, self._config["dropout"]
        self.modality_embedding = nn.Parameter(torch.zeros(len(self.modalities), dim))
        nn.init.trunc_normal_(self.modality_embedding, std=0.02)
        self.instance_mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout))
        self.attention = GatedAttention(dim=dim, hidden=attention_dim or dim) if pooling == "gated_attention" else None
        self.head = create_head(dim, hidden=dim, dropout=dropout)

    def _forward(self, x: dict) -> tuple[torch.Tensor, dict]:
        instances, keep, index = self.instances(x, self.encode(x), self.modality_embedding, tiles=self.tiles)
        instances = self.instance_mlp(instances)
        if self.attention is not None:
            scores = self.attention(instances)
        else:
            scores = torch.zeros(keep.shape, dtype=instances.dtype, device=instances.device)
        weights = masked_softmax(scores, keep)
        bag = (weights[..., None] * torch.where(keep[..., None], instances, 0.0)).sum(dim=1)
        internals = {"instance_attention": weights, "instance_index": index, "instance_mask": keep}
        return self.head(bag).squeeze(-1), internals
