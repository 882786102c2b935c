"""CUF-MT: cross-modal unified fusion transformer, multi-task."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..batch import CLINICAL, PRESENT, effective_views, modality_index
from . import register_model
from .parts import MultimodalModel, create_head, masked_mean, perfect_square_side

#: grid of the learned cell-position embedding when every cell is a token (``tokens_per_view=None``).
DEFAULT_GRID = 4


class FusionLayer(nn.Module):
    """Pre-norm transformer encoder layer whose attention weights can be read.

    ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``, as ``nn.TransformerEncoderLayer(norm_first=True)``, but
    built on ``nn.MultiheadAttention`` called with ``need_weights=True``.

    Args:
        dim: token width.
        heads: attention heads (``dim`` must be divisible by it).
        mlp_ratio: hidden width of the MLP over ``dim``.
        dropout: dropout probability (attention weights, MLP, residual branches).
    """

    def __init__(self, *, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, attn_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: tokens ``(B, T, dim)``; attn_mask float ``(B * heads, T, T)``, ``-inf`` = may not attend.

        Returns: tokens ``(B, T, dim)`` and attention weights ``(B, T, T)`` averaged over heads.
        """
        h = self.norm1(tokens)
        attended, weights = self.attn(h, h, h, attn_mask=attn_mask, need_weights=True, average_attn_weights=True)
        tokens = tokens + self.drop(attended)
        tokens = tokens + self.drop(self.mlp(self.norm2(tokens)))
        return tokens, weights


@register_model("cuf_mt")
class CUFMT(MultimodalModel):
    """Cross-modal unified fusion transformer with auxiliary per-modality heads (multi-task).

    Tokens: every view of each imaging modality gives spatial tokens, the cells of its projected feature
    map adaptive-average-pooled to ``tokens_per_view`` cells (a square grid; None keeps all ``h*w``
    cells); the clinical embedding gives one token. Each token gets a learned modality embedding, imaging
    tokens also a view embedding and a cell-position embedding; a learned CLS token leads the sequence.
    A pre-norm transformer encoder (``depth`` layers, ``heads`` heads) fuses them; tokens of absent
    modalities and padded views are masked as keys, so nothing attends to them. The CLS output goes to
    the head. Multi-task: an auxiliary linear head per modality reads the mean output token of that
    modality; its logits (:attr:`aux_logits`, with :attr:`aux_mask` saying which were present) are added
    to the training loss with weight ``aux_weight`` by the learner.

    Args:
        depth: transformer layers.
        heads: attention heads (``dim`` must be divisible by it).
        tokens_per_view: cells per view after pooling (1, 4, 9, 16, ...); None = all cells of the map.
        cross_modal: True = every token attends to every present token; False (ablation) = tokens attend
            only within their own modality and only the CLS token reads all modalities.
        aux_weight: weight of the auxiliary losses; 0 builds no auxiliary heads (ablation).
        max_views: view slots the view embedding covers.
        mlp_ratio: width of the transformer MLP over ``dim``.
        **kwargs: those of :class:`~mmlib.models.parts.MultimodalModel`.

    Shapes:
        ``forward(x)`` -> ``(B,)``. Internals: ``attention`` ``(B, depth, T)``: the CLS token's attention
        over all T tokens (CLS first) in each layer, averaged over heads (rows sum to 1, 0 on masked
        tokens); ``token_index``: T tuples ``(modality, view, cell)`` (``("cls", -1, -1)`` first, cells in
        row-major order of the ``grid``); ``token_mask`` ``(B, T)`` bool; ``grid``: ``{modality: (h, w)}``.
    """

    display_name = "CUF-MT"
    table_order = 1
    ablations = {"no_cross_modal": {"cross_modal": False}, "no_aux": {"aux_weight": 0.0}}

    def __init__(
        self,
        *,
        depth: int = 2,
        heads: int = 4,
        tokens_per_view: int | None = 16,
        cross_modal: bool = True,
        aux_weight: float = 0.3,
        max_views: int = 4,
        mlp_ratio: float = 2.0,
        **kwargs,
    ):
        for name, value in (("depth", depth), ("heads", heads), ("max_views", max_views)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        side = None if tokens_per_view is None else perfect_square_side("tokens_per_view", tokens_per_view)
        if not isinstance(cross_modal, bool):
            raise ValueError(f"cross_modal must be True or False, got {cross_modal!r}")
        if isinstance(aux_weight, bool) or not isinstance(aux_weight, (int, float)) or aux_weight < 0:
            raise ValueError(f"aux_weight must be a number >= 0, got {aux_weight!r}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be a number > 0, got {mlp_ratio!r}")
        super().__init__(**kwargs)
        if self.dim % heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({heads})")
        self._config.update(depth=depth, heads=heads, tokens_per_view=tokens_per_view, cross_modal=cross_modal,
                            aux_weight=float(aux_weight), max_views=max_views, mlp_ratio=float(mlp_ratio))
        self.heads, self.cross_modal, self.max_views, self.grid_side = heads, cross_modal, max_views, side
        self.spatial_grid = side  # token grid per view (None: every cell of the map)
        self.aux_weight = float(aux_weight)
        dim, dropout = self.dim, self._config["dropout"]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.modality_embedding = nn.Parameter(torch.zeros(len(self.modalities), dim))
        for p in (self.cls_token, self.modality_embedding):
            nn.init.trunc_normal_(p, std=0.02)
        if self.image_modalities:
            grid = side or DEFAULT_GRID
            self.view_embedding = nn.Parameter(torch.zeros(max_views, dim))
            self.cell_embedding = nn.Parameter(torch.zeros(dim, grid, grid))
            for p in (self.view_embedding, self.cell_embedding):
                nn.init.trunc_normal_(p, std=0.02)
        self.layers = nn.ModuleList(
            FusionLayer(dim=dim, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = create_head(dim, hidden=dim, dropout=dropout)
        self.aux_heads = nn.ModuleDict({m: nn.Linear(dim, 1) for m in self.modalities}) if aux_weight > 0 else None

    def _image_tokens(self, maps: torch.Tensor, views: torch.Tensor, i: int):
        batch, nviews, dim, h, w = maps.shape
        if nviews > self.max_views:
            raise ValueError(f"{nviews} views per modality exceed max_views={self.max_views}")
        if self.grid_side is not None and (h, w) != (self.grid_side, self.grid_side):
            maps = F.adaptive_avg_pool2d(maps.flatten(0, 1), self.grid_side).unflatten(0, (batch, nviews))
            h = w = self.grid_side
        cells = self.cell_embedding
        if tuple(cells.shape[-2:]) != (h, w):
            cells = F.interpolate(cells[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        tokens = maps + cells + self.view_embedding[:nviews, :, None, None] + self.modality_embedding[i, :, None, None]
        tokens = tokens.permute(0, 1, 3, 4, 2).reshape(batch, nviews * h * w, dim)
        keep = views[:, :, None].expand(batch, nviews, h * w).reshape(batch, -1)
        return tokens, keep, (h, w)

    def _forward(self, x: dict) -> tuple[torch.Tensor, dict]:
        maps = self.encode(x)
        batch = x[PRESENT].shape[0]
        tokens = [self.cls_token.expand(batch, -1, -1)]
        keep = [torch.ones(batch, 1, dtype=torch.bool, device=x[PRESENT].device)]
        index, group, grids = [("cls", -1, -1)], [-1], {}
        for i, m in enumerate(self.modalities):
            if m == CLINICAL:
                tok = (self.encode_clinical(x) + self.modality_embedding[i])[:, None]
                k = x[PRESENT][:, modality_index(CLINICAL), None]
                index.append((CLINICAL, 0, 0))
            else:
                tok, k, (h, w) = self._image_tokens(maps[m], effective_views(x, m), i)
                grids[m] = (h, w)
                index.extend((m, v, c) for v in range(maps[m].shape[1]) for c in range(h * w))
            tokens.append(tok)
            keep.append(k)
            group.extend([i] * tok.shape[1])
        tokens, keep = torch.cat(tokens, dim=1), torch.cat(keep, dim=1)
        group = torch.tensor(group, device=tokens.device)
        full_keep, n_tokens = keep, keep.shape[1]
        # A token absent in every row of the batch (a modality no patient has, as mammography in an ultrasound
        # cohort, or a view slot nobody fills) is attended to by nothing but itself, so leaving it out changes no
        # other token: the attention runs over the live tokens only, and its weights are scattered back to all T.
        live = keep.any(dim=0)
        pruned = not bool(live.all())
        if pruned:
            live_idx = torch.nonzero(live).squeeze(1)
            tokens, keep, group = tokens[:, live_idx], keep[:, live_idx], group[live_idx]

        allowed = keep[:, None, :].expand(-1, keep.shape[1], -1)
        if not self.cross_modal:
            same = (group[:, None] == group[None, :]) | (group[:, None] == -1)
            allowed = allowed & same
        # Every token may attend to itself, so no row is fully masked (which would give NaN).
        allowed = allowed | torch.eye(keep.shape[1], dtype=torch.bool, device=tokens.device)
        mask = torch.zeros(allowed.shape, dtype=tokens.dtype, device=tokens.device).masked_fill(~allowed, float("-inf"))
        mask = mask.repeat_interleave(self.heads, dim=0)

        attention = []
        for layer in self.layers:
            tokens, weights = layer(tokens, mask)
            cls = weights[:, 0]
            if pruned:
                cls = cls.new_zeros(cls.shape[0], n_tokens).index_copy(1, live_idx, cls)
            attention.append(cls)
        tokens = self.norm(tokens)
        logits = self.head(tokens[:, 0]).squeeze(-1)

        if self.aux_heads is not None:
            self.aux_logits = {
                m: self.aux_heads[m](masked_mean(tokens, keep & (group == i))).squeeze(-1)
                for i, m in enumerate(self.modalities)
            }
            self.aux_mask = self.presence(x)
        internals = {"attention": torch.stack(attention, dim=1), "token_index": index, "token_mask": full_keep,
                     "grid": grids}
        return logits, internals
