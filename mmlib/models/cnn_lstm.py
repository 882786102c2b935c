"""CNN-LSTM: the patient's inputs read as a sequence by a (bi)LSTM."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from . import register_model
from .parts import MultimodalModel, check_choice, create_head, masked_mean

READERS: tuple[str, ...] = ("lstm", "mean")
ORDERS: tuple[str, ...] = ("default", "permuted")


@register_model("cnn_lstm")
class CNNLSTM(MultimodalModel):
    """CNN features of each view and the clinical embedding, read in sequence by an LSTM.

    Items: the projected, global-average-pooled map of every view (mammography views, then ultrasound
    views), then the clinical embedding, each plus a learned modality embedding. Absent items are left out
    of the sequence, not zero-filled: present items are moved to the front (keeping their order) and the
    sequences packed with ``pack_padded_sequence``, so a patient with two items is a sequence of length 2.
    The LSTM's last hidden states (both directions when bidirectional) go to the head.

    Args:
        reader: ``"lstm"`` (the model) or ``"mean"`` (ablation: mean of the present items, no recurrence).
        order: ``"default"`` (mammography, ultrasound, clinical) or ``"permuted"`` (ablation: reversed).
        bidirectional: a bidirectional LSTM.
        hidden: LSTM hidden size (default ``dim``).
        **kwargs: those of :class:`~mmlib.models.parts.MultimodalModel`.

    Shapes:
        ``forward(x)`` -> ``(B,)``. Internals: ``sequence_lengths`` ``(B,)`` long (present items per
        patient); ``item_index``: N tuples ``(modality, view)`` in reading order; ``item_mask`` ``(B, N)``.
    """

    display_name = "CNN-LSTM"
    table_order = 4
    ablations = {"mean_reader": {"reader": "mean"}, "permuted_order": {"order": "permuted"}}

    def __init__(self, *, reader: str = "lstm", order: str = "default", bidirectional: bool = True,
                 hidden: int | None = None, **kwargs):
        check_choice("reader", reader, READERS)
        check_choice("order", order, ORDERS)
        if not isinstance(bidirectional, bool):
            raise ValueError(f"bidirectional must be True or False, got {bidirectional!r}")
        if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1):
            raise ValueError(f"hidden must be None or an int >= 1, got {hidden!r}")
        super().__init__(**kwargs)
        self.spatial_grid = 1  # reads pooled vectors only
        self._config.update(reader=reader, order=order, bidirectional=bidirectional, hidden=hidden)
        self.reader, self.order = reader, order
        dim, dropout = self.dim, self._config["dropout"]
        self.modality_embedding = nn.Parameter(torch.zeros(len(self.modalities), dim))
        nn.init.trunc_normal_(self.modality_embedding, std=0.02)
        self.item_dropout = nn.Dropout(dropout)
        if reader == "lstm":
            hidden = hidden or dim
            self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=bidirectional)
            out = hidden * (2 if bidirectional else 1)
        else:
            self.lstm, out = None, dim
        self.head = create_head(out, hidden=dim, dropout=dropout)

    def _items(self, x: dict):
        feats, keep, index = self.instances(x, self.encode(x), self.modality_embedding)
        index = [(m, v) for m, v, _ in index]
        if self.order == "permuted":
            feats, keep, index = feats.flip(1), keep.flip(1), index[::-1]
        return self.item_dropout(feats), keep, index

    def _forward(self, x: dict) -> tuple[torch.Tensor, dict]:
        items, keep, index = self._items(x)
        lengths = keep.sum(dim=1)
        internals = {"sequence_lengths": lengths, "item_index": index, "item_mask": keep}
        if self.lstm is None:
            return self.head(masked_mean(items, keep)).squeeze(-1), internals
        # Present items to the front, in reading order (a stable sort on "absent").
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
        items = torch.gather(items, 1, order[..., None].expand_as(items))
        # A patient without any input still needs length >= 1 to be packed; the base class sets its logit to 0.
        packed = pack_padded_sequence(items, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)
        last = torch.cat([h_n[-2], h_n[-1]], dim=1) if self.lstm.bidirectional else h_n[-1]
        return self.head(last).squeeze(-1), internals
