"""AMW-CNN: adaptive modality weighting of CNN features."""

from __future__ import annotations

import torch
from torch import nn

from . import register_model
from .parts import MultimodalModel, check_choice, create_head, masked_softmax

FUSIONS: tuple[str, ...] = ("adaptive", "equal", "concat")


@register_model("amw_cnn")
class AMWCNN(MultimodalModel):
    """Adaptive modality weighting CNN.

    Each imaging modality becomes one vector: its projected feature maps, global-average pooled per view
    and averaged over the patient's views; the clinical vector goes through the clinical MLP. A gating MLP
    (shared over modalities, told which modality by a learned embedding) scores each vector; a softmax
    over the patient's *present* modalities (absent ones set to ``-inf``, hence weight 0) gives the
    weights, and the weighted sum goes to the head. The weights are per patient, so the model can lean on
    ultrasound for one patient and on mammography for another.

    Args:
        fusion: ``"adaptive"`` (gated weights, the model), ``"equal"`` (ablation: uniform weights over
            present modalities), ``"concat"`` (ablation: concatenation of the vectors, absent ones zero, plus
            the presence flags, through a linear layer to ``dim``).
        **kwargs: those of :class:`~mmlib.models.parts.MultimodalModel`.

    Shapes:
        ``forward(x)`` -> ``(B,)`` logits. Internals: ``modality_weights`` ``(B, M)`` (columns in
        ``self.modalities`` order; M = 3 by default), rows summing to 1 over present inputs and 0 for
        absent ones; absent for ``fusion="concat"``, which has no weights.
    """

    display_name = "AMW-CNN"
    table_order = 2
    ablations = {"equal_weights": {"fusion": "equal"}, "concat": {"fusion": "concat"}}

    def __init__(self, *, fusion: str = "adaptive", **kwargs):
        check_choice("fusion", fusion, FUSIONS)
        super().__init__(**kwargs)
        self.spatial_grid = 1  # reads pooled vectors only
        self._config["fusion"] = fusion
        self.fusion = fusion
        n, dim = len(self.modalities), self.dim
        if fusion == "adaptive":
            self.modality_embedding = nn.Parameter(torch.zeros(n, dim))
            nn.init.trunc_normal_(self.modality_embedding, std=0.02)
            # No bias on the last layer: a score shift common to all modalities cancels in the softmax.
            self.gate = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim // 2 or 1), nn.Tanh(),
                                      nn.Linear(dim // 2 or 1, 1, bias=False))
        elif fusion == "concat":
            self.fuse = nn.Linear(n * dim + n, dim)
        dropout = self._config["dropout"]
        self.head = create_head(dim, hidden=dim, dropout=dropout)

    def adaptive_modality_weights(self, vectors: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Softmax weights ``(B, M)`` of the modality vectors ``(B, M, dim)``, zero where not ``present``."""
        if self.fusion == "adaptive":
            scores = self.gate(vectors + self.modality_embedding).squeeze(-1)
        else:
            scores = torch.zeros(present.shape, dtype=vectors.dtype, device=vectors.device)
        return masked_softmax(scores, present)

    def _forward(self, x: dict) -> tuple[torch.Tensor, dict]:
        vectors = self.modality_vectors(x)
        present = self.presence(x)
        if self.fusion == "concat":
            fused = self.fuse(torch.cat([vectors.flatten(1), present.to(vectors.dtype)], dim=1))
            internals = {}
        else:
            weights = self.adaptive_modality_weights(vectors, present)
            fused = (weights[..., None] * vectors).sum(dim=1)
            internals = {"modality_weights": weights}
        return self.head(fused).squeeze(-1), internals
