"""The fastai callbacks of the learner, on their own: importable, picklable, and doing only what they say."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mmlib.batch import PRESENT
from mmlib.learner import AuxiliaryLoss, FrozenEncoders, ModalityDropout, SaveBest, aux_loss


def _attach(cb, *, training: bool, **learn):
    """Give a callback a stand-in learner (fastai reads ``training`` from the learner)."""
    cb.learn = SimpleNamespace(training=training, **learn)
    return cb


def _presence(n: int = 400, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    present = torch.rand(n, 3, generator=g) < 0.6
    present[0] = False  # a patient with nothing stays with nothing
    present[1] = torch.tensor([False, True, False])  # a single input is never dropped
    return present


@pytest.mark.parametrize("cb", [ModalityDropout(0.3, seed=2), AuxiliaryLoss(), FrozenEncoders(), SaveBest()])
def test_callbacks_pickle_round_trip(cb):
    twin = pickle.loads(pickle.dumps(cb))
    assert type(twin) is type(cb) and twin.order == cb.order
    if isinstance(cb, ModalityDropout):
        present = _presence()
        assert (twin.p, twin.seed) == (cb.p, cb.seed)
        assert torch.equal(twin.drop(present), cb.drop(present))  # the generator's state travels too
    if isinstance(cb, SaveBest):
        assert (twin.fname, twin.monitor, twin.with_opt) == ("best", "valid_loss", False)


@pytest.mark.parametrize("p", [0.3, 0.9])
def test_modality_dropout_never_drops_every_input(p):
    cb = ModalityDropout(p, seed=1)
    present = _presence()
    for _ in range(20):
        keep = cb.drop(present)
        assert not (keep & ~present).any()  # only ever removes
        assert torch.equal(keep.any(dim=1), present.any(dim=1))  # every patient keeps at least one input
        assert keep[1].tolist() == [False, True, False]
    assert (keep.sum() < present.sum()), "dropout at p > 0 removed nothing"


def test_modality_dropout_acts_only_in_training():
    present = _presence()
    x = {PRESENT: present.clone(), "clinical": torch.zeros(len(present), 2)}
    cb = _attach(ModalityDropout(0.5, seed=0), training=False, xb=(x,))
    cb.before_batch()
    assert torch.equal(cb.learn.xb[0][PRESENT], present)
    cb.learn.training = True
    cb.before_batch()
    dropped = cb.learn.xb[0][PRESENT]
    assert not torch.equal(dropped, present) and not (dropped & ~present).any()
    assert torch.equal(x[PRESENT], present)  # the batch's own dict is not changed in place


def test_modality_dropout_rejects_bad_p():
    for bad in (-0.1, 1.0, "0.3", True):
        with pytest.raises(ValueError, match="modality dropout"):
            ModalityDropout(bad)


def _aux_model(mask, weight=0.5):
    model = nn.Linear(1, 1)
    model.aux_logits = {"mammography": torch.tensor([2.0, -1.0, 0.5]), "ultrasound": torch.tensor([0.3, 4.0, -2.0])}
    model.aux_mask = mask
    model.aux_weight = weight
    return model


def test_aux_loss_reads_only_the_present_modalities():
    y = torch.tensor([1.0, 0.0, 1.0])
    mask = torch.tensor([[True, False], [False, True], [True, False]])
    model = _aux_model(mask)
    bce = nn.functional.binary_cross_entropy_with_logits
    expected = 0.5 * (bce(torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.0])) + bce(torch.tensor([4.0]), torch.tensor([0.0]))) / 2
    assert aux_loss(model, y) == pytest.approx(expected.item())
    # logits of absent inputs never reach the loss
    model.aux_logits["mammography"][1] = 1e4
    model.aux_logits["ultrasound"][0] = -1e4
    assert aux_loss(model, y) == pytest.approx(expected.item())
    # a modality nobody has is left out of the mean, not counted as zero
    model.aux_mask = torch.tensor([[True, False]] * 3)
    assert aux_loss(model, y) == pytest.approx(0.5 * bce(model.aux_logits["mammography"], y).item())
    model.aux_mask = torch.zeros(3, 2, dtype=torch.bool)
    assert aux_loss(model, y) is None
    assert aux_loss(_aux_model(mask, weight=0.0), y) is None
    assert aux_loss(nn.Linear(1, 1), y) is None


def test_auxiliary_loss_callback_adds_in_training_only():
    y = torch.tensor([1.0, 0.0, 1.0])
    model = _aux_model(torch.ones(3, 2, dtype=torch.bool))
    cb = _attach(AuxiliaryLoss(), training=False, model=model, yb=(y,), loss_grad=torch.tensor(1.0),
                 loss=torch.tensor(1.0))
    cb.after_loss()
    assert cb.learn.loss_grad.item() == 1.0
    cb.learn.training = True
    cb.after_loss()
    assert cb.learn.loss_grad.item() == pytest.approx(1.0 + aux_loss(model, y).item())
    assert cb.learn.loss.item() == pytest.approx(cb.learn.loss_grad.item())


def test_frozen_encoders_stay_in_eval_mode():
    model = nn.Module()
    frozen, trained = nn.BatchNorm2d(2), nn.BatchNorm2d(2)
    for p in frozen.parameters():
        p.requires_grad_(False)
    model.encoders = nn.ModuleDict({"mammography": frozen, "ultrasound": trained})
    model.train()
    _attach(FrozenEncoders(), training=True, model=model).before_train()
    assert not frozen.training and trained.training
