"""The registered models: shapes, masking, images vs features, gradients, arguments, config, internals."""

from __future__ import annotations

import json

import pytest
import torch

from mmlib.batch import with_presence
from mmlib.models import ABLATIONS, BASELINES, MULTIMODAL_MODELS, create_model, list_models, model_class, register_model
from mmlib.models.parts import masked_softmax
from mmlib.schema import IMAGE_MODALITIES, MODALITIES, all_scenarios

B, V, PX, K = 3, 2, 64, 4
TINY = {"encoder": "test_efficientnet", "encoder_weights": "none", "clinical_features": K, "dim": 32}
#: The networks (every registered model but the tabular ones, which read no batches).
NAMES = [n for n in list_models() if not model_class(n).tabular]
SINGLE_INPUT = {"ultrasound_only": "ultrasound", "mammography_only": "mammography", "clinical_only": "clinical"}


def build(name: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return create_model(name, **{**TINY, **kwargs}).eval()


def make_batch(seed: int = 0, nviews: int = V) -> dict:
    """Patient 0: mammography flagged absent (its view flags still True), clinical present.
    Patient 1: everything, second view slots padded. Patient 2: ultrasound has no view, clinical absent."""
    g = torch.Generator().manual_seed(seed)
    mviews = torch.tensor([[True, True], [True, False], [True, True]])
    uviews = torch.tensor([[True, True], [True, False], [False, False]])
    pad = torch.zeros(B, nviews - V, dtype=torch.bool)
    return {
        "mammography": torch.randn(B, nviews, 3, PX, PX, generator=g),
        "mammography_views": torch.cat([mviews, pad], 1),
        "ultrasound": torch.randn(B, nviews, 3, PX, PX, generator=g),
        "ultrasound_views": torch.cat([uviews, pad], 1),
        "clinical": torch.randn(B, K, generator=g),
        "present": torch.tensor([[False, True, True], [True, True, True], [True, True, False]]),
    }


def full_batch(seed: int = 1) -> dict:
    x = make_batch(seed)
    for m in IMAGE_MODALITIES:
        x[f"{m}_views"] = torch.ones(B, V, dtype=torch.bool)
    x["present"] = torch.ones(B, 3, dtype=torch.bool)
    return x


def perturb_absent(x: dict, seed: int = 5) -> dict:
    g = torch.Generator().manual_seed(seed)
    y = {k: v.clone() for k, v in x.items()}
    y["mammography"][0] = 100 * torch.randn(y["mammography"][0].shape, generator=g)  # flagged absent
    y["mammography"][1, 1] = 100 * torch.randn(y["mammography"][1, 1].shape, generator=g)  # padded view
    y["ultrasound"][1, 1] = -50 * torch.randn(y["ultrasound"][1, 1].shape, generator=g)  # padded view
    y["ultrasound"][2] = 1e4  # no view flagged
    y["clinical"][2] = 1e3  # clinical absent
    return y


def to_features(model, x: dict) -> dict:
    """The model's own encoders applied to every view slot (padded ones too): a feature cache.

    Modalities the model does not read keep their images (it ignores them)."""
    y = dict(x)
    with torch.no_grad():
        for m in model.image_modalities:
            y[m] = model.encoder_for(m)(x[m].flatten(0, 1)).unflatten(0, x[m].shape[:2])
    return y


def test_registry_lists_every_model():
    assert MULTIMODAL_MODELS == ("cuf_mt", "amw_cnn", "mm_abmil", "cnn_lstm")  # the paper's order
    assert set(BASELINES) == {"age_only", "ultrasound_only", "mammography_only", "late_fusion", "clinical_only"}
    assert list_models() == [*MULTIMODAL_MODELS, *BASELINES]
    assert set(ABLATIONS) == set(MULTIMODAL_MODELS) and all(ABLATIONS.values())
    assert [n for n in list_models() if model_class(n).tabular] == ["age_only"]
    for name in list_models():
        cls = model_class(name)
        assert cls.model_name == name and cls.display_name and cls.display_name != name
        assert set(cls.inputs) <= set(MODALITIES)
    assert model_class("ultrasound_only").inputs == ("ultrasound",)
    assert model_class("age_only").inputs == ("clinical",)
    assert model_class("cuf_mt").display_name == "CUF-MT"
    with pytest.raises(ValueError, match="cuf_mt"):
        create_model("resnet_fusion", **TINY)
    with pytest.raises(TypeError, match="fusion_kind"):
        create_model("amw_cnn", fusion_kind="adaptive", **TINY)
    with pytest.raises(TypeError, match="modalities"):
        create_model("ultrasound_only", modalities=("ultrasound",), **TINY)
    with pytest.raises(ValueError, match="kind"):
        list_models("fancy")


def test_registration_checks_the_metadata():
    from mmlib.models import _REGISTRY
    from mmlib.models.parts import MultimodalModel

    before = dict(_REGISTRY)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_model("amw_cnn")(type("Other", (MultimodalModel,), {}))
        with pytest.raises(ValueError, match="kind"):
            register_model("bad_kind")(type("BadKind", (MultimodalModel,), {"kind": "fusion"}))
        with pytest.raises(ValueError, match="inputs"):
            register_model("bad_inputs")(type("BadInputs", (MultimodalModel,), {"inputs": ("mri",)}))
        with pytest.raises(ValueError, match="ablation 'wide'"):
            register_model("bad_ablation")(type("BadAblation", (MultimodalModel,), {"ablations": {"wide": {"width": 2}}}))
        with pytest.raises(ValueError, match="ablation 'none'"):
            register_model("bad_name")(type("BadName", (MultimodalModel,), {"ablations": {"none": {"dim": 8}}}))
        assert _REGISTRY == before  # nothing half-registered
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(before)


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_every_scenario_finite(name):
    model, x = build(name), full_batch()
    with torch.no_grad():
        for keep in all_scenarios():
            out = model(with_presence(x, keep))
            assert out.shape == (B,) and out.dtype == torch.float32
            assert torch.isfinite(out).all(), keep
            if name in SINGLE_INPUT:
                # A baseline whose input is absent abstains: logit exactly 0.
                assert (out == 0).all() == (SINGLE_INPUT[name] not in keep)


@pytest.mark.parametrize("input_kind", ["images", "features"])
@pytest.mark.parametrize("name", NAMES)
def test_absent_inputs_never_change_the_output(name, input_kind):
    model = build(name)
    x = make_batch()
    if input_kind == "features":
        x = to_features(model, x)
        model = build(name, input_kind="features")
    with torch.no_grad():
        ref = model(x)
        out = model(perturb_absent(x))
        assert torch.allclose(out, ref, atol=1e-6, rtol=0), (out, ref)
        # A present input does move the prediction (the test above is not vacuous).
        y = {k: v.clone() for k, v in x.items()}
        y["mammography"][2, 0] += 3.0
        y["ultrasound"][0, 0] += 3.0
        y["clinical"][0] += 3.0
        moved = model(y)
    reads = [m in model.modalities for m in ("mammography", "ultrasound")]
    if reads[0]:
        assert moved[2] != ref[2]
    if reads[1] or "clinical" in model.modalities:
        assert moved[0] != ref[0]


@pytest.mark.parametrize("name", NAMES)
def test_extra_padded_view_slots_change_nothing(name):
    model = build(name)
    x3 = make_batch(nviews=3)
    x2 = {k: (v[:, :V] if k in IMAGE_MODALITIES or k.endswith("_views") else v) for k, v in x3.items()}
    with torch.no_grad():
        assert torch.allclose(model(x3), model(x2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_features_mode_matches_images_mode(name):
    model = build(name, seed=3)
    feats_model = create_model(name, **{**model.config(), "input_kind": "features"}).eval()
    feats_model.load_state_dict(model.state_dict(), strict=True)
    assert not any(p.requires_grad for p in feats_model.encoder_parameters())
    x = make_batch(seed=4)
    with torch.no_grad():
        ref = model(x)
        out = feats_model(to_features(model, x))
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5), (out, ref)
    if model.image_modalities:
        with pytest.raises(ValueError, match="feature maps"):
            feats_model(x)  # images where maps are expected


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_trainable_parameter(name):
    model = build(name, dropout=0.0)
    x = full_batch()
    out = model(x)
    loss = out.sum() + (sum(v.sum() for v in model.aux_logits.values()) if model.aux_logits else 0.0)
    loss.backward()
    # The bias of MM-ABMIL's last attention layer adds one constant to every instance's score, which the softmax over
    # the bag cancels: its gradient is zero in exact arithmetic (rounding alone made it nonzero for some inits).
    invariant = {"attention.attention_w.bias"}
    unreached = [n for n, p in model.named_parameters()
                 if p.requires_grad and n not in invariant and (p.grad is None or not p.grad.any())]
    assert not unreached
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    enc = {id(p) for p in model.encoder_parameters()}
    head = {id(p) for p in model.head_parameters()}
    assert not enc & head and enc | head == {id(p) for p in model.parameters()}
    assert bool(enc) == bool(model.image_modalities)


def test_no_nan_gradient_for_a_patient_without_inputs():
    model = build("late_fusion", dropout=0.0, modalities=("ultrasound", "clinical"))
    x = make_batch()
    x["present"][2] = torch.tensor([True, False, False])  # ultrasound_views of patient 2 are all False anyway
    out = model(x)
    assert out[2] == 0
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


COMMON_BAD = [
    ("dim", 0), ("dropout", 1.5), ("input_kind", "pixels"), ("clinical_features", -1),
    ("encoder_weights", "imagenet21k"), ("shared_encoder", "yes"),
]
SPECIFIC_BAD = [
    ("amw_cnn", "fusion", "sum"), ("cuf_mt", "heads", 3), ("cuf_mt", "tokens_per_view", 5),
    ("cuf_mt", "aux_weight", -1.0), ("cuf_mt", "depth", 0), ("mm_abmil", "tiles", 3),
    ("mm_abmil", "pooling", "max"), ("cnn_lstm", "reader", "gru"), ("cnn_lstm", "order", "random"),
    ("cnn_lstm", "hidden", 0), ("late_fusion", "aux_weight", -0.5),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("arg,value", COMMON_BAD)
def test_constructor_rejects_bad_common_args(name, arg, value):
    with pytest.raises(ValueError, match=arg):
        create_model(name, **{**TINY, arg: value})


@pytest.mark.parametrize("name,arg,value", SPECIFIC_BAD)
def test_constructor_rejects_bad_model_args(name, arg, value):
    with pytest.raises(ValueError, match=arg):
        create_model(name, **{**TINY, arg: value})


def test_constructor_rejects_bad_modalities():
    with pytest.raises(ValueError, match="modalities"):
        create_model("amw_cnn", **{**TINY, "modalities": ("mammography", "mri")})
    with pytest.raises(ValueError, match="clinical_features"):
        create_model("clinical_only", **{**TINY, "clinical_features": 0})
    with pytest.raises(ValueError, match="leave no input"):
        create_model("cnn_lstm", **{**TINY, "clinical_features": 0, "modalities": ("clinical",)})


CONFIG_CASES = [(n, {}) for n in NAMES] + [(n, kw) for n, abl in ABLATIONS.items() for kw in abl.values()] + [
    ("amw_cnn", {"shared_encoder": False, "clinical_features": 0}),
    ("cuf_mt", {"tokens_per_view": None, "modalities": ("mammography", "clinical")}),
    ("mm_abmil", {"tiles": 4}),
    ("cnn_lstm", {"bidirectional": False, "hidden": 16}),
]


@pytest.mark.parametrize("name,kwargs", CONFIG_CASES)
def test_config_round_trip_rebuilds_the_same_model(name, kwargs):
    model = build(name, seed=7, **kwargs)
    config = json.loads(json.dumps(model.config()))
    for key, value in kwargs.items():
        assert config[key] == (list(value) if isinstance(value, tuple) else value)
    twin = build(name, seed=8, **config)
    x = make_batch(seed=2)
    with torch.no_grad():
        assert not torch.equal(twin(x), model(x))  # different seeds, different weights
        twin.load_state_dict(model.state_dict(), strict=True)
        assert torch.equal(twin(x), model(x))
        assert torch.isfinite(model(x)).all()


def test_shared_encoder_is_one_module():
    shared, separate = build("amw_cnn"), build("amw_cnn", shared_encoder=False)
    assert list(shared.encoders) == ["shared"] and shared.encoder_for("mammography") is shared.encoder_for("ultrasound")
    assert list(separate.encoders) == ["mammography", "ultrasound"]
    n_enc = sum(p.numel() for p in shared.encoder_parameters())
    assert sum(p.numel() for p in separate.encoder_parameters()) == 2 * n_enc


# ----------------------------------------------------------------------------------------------- internals
def test_masked_softmax_known_values():
    scores = torch.tensor([[1.0, 2.0, 3.0], [5.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    w = masked_softmax(scores, mask)
    e1, e3 = torch.exp(torch.tensor(1.0)), torch.exp(torch.tensor(3.0))
    assert torch.allclose(w[0], torch.stack([e1 / (e1 + e3), torch.tensor(0.0), e3 / (e1 + e3)]))
    assert torch.equal(w[1], torch.zeros(3)) and torch.allclose(w[2], torch.full((3,), 1 / 3))


@pytest.mark.parametrize("fusion", ["adaptive", "equal"])
def test_amw_cnn_modality_weights(fusion):
    model, x = build("amw_cnn", fusion=fusion), make_batch()
    with torch.no_grad():
        _, internals = model.forward_with_internals(x)
    w = internals["modality_weights"]
    present = torch.tensor([[False, True, True], [True, True, True], [True, False, False]])
    assert w.shape == (B, 3)
    assert torch.allclose(w.sum(1), torch.ones(B)) and (w[~present] == 0).all() and (w[present] > 0).all()
    assert torch.equal(w[2], torch.tensor([1.0, 0.0, 0.0]))
    if fusion == "equal":
        assert torch.allclose(w[present], (1 / present.sum(1, keepdim=True).float()).expand(B, 3)[present])
    else:
        assert not torch.allclose(w[1], torch.full((3,), 1 / 3))


def test_cuf_mt_attention_and_token_index():
    model, x = build("cuf_mt"), make_batch()
    with torch.no_grad():
        _, internals = model.forward_with_internals(x)
    att, index, keep = internals["attention"], internals["token_index"], internals["token_mask"]
    n_tokens = 1 + 2 * V * 16 + 1
    assert att.shape == (B, 2, n_tokens) and len(index) == n_tokens and keep.shape == (B, n_tokens)
    assert index[0] == ("cls", -1, -1) and index[-1] == ("clinical", 0, 0)
    assert index[1] == ("mammography", 0, 0) and index[1 + V * 16] == ("ultrasound", 0, 0)
    assert internals["grid"] == {"mammography": (4, 4), "ultrasound": (4, 4)}
    assert torch.allclose(att.sum(-1), torch.ones(B, 2))
    assert (att.permute(0, 2, 1)[~keep] == 0).all()
    # Patient 0 has no mammography: no attention on any mammography token.
    mammo = torch.tensor([i[0] == "mammography" for i in index])
    assert (att[0][:, mammo] == 0).all() and (att[1][:, mammo] > 0).any()
    assert set(model.aux_logits) == set(MODALITIES) and model.aux_mask.shape == (B, 3)
    assert torch.equal(model.aux_mask, torch.tensor([[False, True, True], [True, True, True], [True, False, False]]))
    assert build("cuf_mt", aux_weight=0.0).aux_heads is None


@pytest.mark.parametrize("cross_modal", [True, False])
def test_cuf_mt_cross_modal_ablation(cross_modal):
    """Without cross-modal attention, the mammography tokens never see ultrasound (its aux logit stays)."""
    model, x = build("cuf_mt", cross_modal=cross_modal), full_batch()
    with torch.no_grad():
        model(x)
        ref_aux, ref_out = model.aux_logits["mammography"].clone(), model(x)
        y = dict(x, ultrasound=x["ultrasound"] + 2.0)
        out = model(y)
        aux = model.aux_logits["mammography"]
    assert not torch.allclose(out, ref_out)  # the CLS token reads every modality either way
    assert torch.allclose(aux, ref_aux, atol=1e-6) != cross_modal


@pytest.mark.parametrize("tiles,pooling", [(1, "gated_attention"), (4, "gated_attention"), (1, "mean")])
def test_mm_abmil_instance_attention(tiles, pooling):
    model, x = build("mm_abmil", tiles=tiles, pooling=pooling), make_batch()
    with torch.no_grad():
        _, internals = model.forward_with_internals(x)
    att, index, keep = internals["instance_attention"], internals["instance_index"], internals["instance_mask"]
    n = 2 * V * tiles + 1
    assert att.shape == (B, n) and len(index) == n and index[-1] == ("clinical", 0, 0)
    assert index[tiles] == ("mammography", 1, 0) and index[2 * tiles] == ("ultrasound", 0, 0)
    assert torch.equal(keep.sum(1), torch.tensor([2 * tiles + 1, 2 * tiles + 1, 2 * tiles]))
    assert torch.allclose(att.sum(1), torch.ones(B)) and (att[~keep] == 0).all() and (att[keep] > 0).all()
    if pooling == "mean":
        assert torch.allclose(att, keep / keep.sum(1, keepdim=True))


def test_cnn_lstm_matches_an_unpacked_run_on_present_items():
    model, x = build("cnn_lstm"), make_batch()
    with torch.no_grad():
        out, internals = model.forward_with_internals(x)
        items, keep, _ = model._items(x)
        for b in range(B):
            _, (h, _) = model.lstm(items[b][keep[b]][None])
            expected = model.head(torch.cat([h[-2], h[-1]], dim=1)).squeeze()
            assert torch.allclose(out[b], expected, atol=1e-6)
    assert torch.equal(internals["sequence_lengths"], torch.tensor([3, 3, 2]))
    assert internals["item_index"][0] == ("mammography", 0) and internals["item_index"][-1] == ("clinical", 0)


def test_cnn_lstm_order_and_reader_ablations():
    x = make_batch()
    with torch.no_grad():
        permuted = build("cnn_lstm", order="permuted")
        _, internals = permuted.forward_with_internals(x)
        assert internals["item_index"][0] == ("clinical", 0)
        mean = build("cnn_lstm", reader="mean")
        out = mean(x)
        items, keep, _ = mean._items(x)
        expected = torch.stack([mean.head(items[b][keep[b]].mean(0, keepdim=True))[0, 0] for b in range(B)])
    assert mean.lstm is None and torch.allclose(out, expected, atol=1e-6)


def test_late_fusion_is_the_mean_probability():
    model, x = build("late_fusion"), make_batch()
    with torch.no_grad():
        out, internals = model.forward_with_internals(x)
    logits, mask = internals["input_logits"].double(), internals["input_mask"]
    for b in range(B):
        p = torch.sigmoid(logits[b][mask[b]]).mean()
        assert torch.allclose(out[b].double(), torch.log(p / (1 - p)), atol=1e-5)
    assert set(model.aux_logits) == set(MODALITIES) and torch.equal(model.aux_mask, mask)
    with torch.no_grad():
        single = model(with_presence(x, ("clinical",)))
    assert torch.allclose(single[:2], internals["input_logits"][:2, 2], atol=1e-5) and single[2] == 0


def test_clinical_only_is_logistic_regression():
    model, x = build("clinical_only"), make_batch()
    assert sum(p.numel() for p in model.parameters()) == K + 1
    with torch.no_grad():
        expected = x["clinical"] @ model.linear.weight[0] + model.linear.bias
        out = model(x)
    assert torch.allclose(out[:2], expected[:2]) and out[2] == 0


def test_pooling_before_projection_is_exact():
    """Models that read pooled vectors pool cached maps before the 1x1 projection: the same numbers, cheaper."""
    from mmlib.models import create_model

    torch.manual_seed(0)
    model = create_model("amw_cnn", clinical_features=2, encoder_weights="none", dim=16, input_kind="features").eval()
    x = {"mammography": torch.randn(2, 1, 1280, 7, 7), "mammography_views": torch.ones(2, 1, dtype=torch.bool),
         "ultrasound": torch.randn(2, 1, 1280, 7, 7), "ultrasound_views": torch.ones(2, 1, dtype=torch.bool),
         "clinical": torch.randn(2, 2), "present": torch.ones(2, 3, dtype=torch.bool)}
    pooled = model.encode(x)["ultrasound"].mean(dim=(-2, -1))
    model.spatial_grid = None
    full = model.encode(x)["ultrasound"].mean(dim=(-2, -1))
    torch.testing.assert_close(pooled, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["amw_cnn", "mm_abmil"])
def test_mid_level_encoder_features_round_trip_through_the_config(name):
    m = create_model(name, clinical_features=2, encoder_weights="none", encoder_levels=[3, 4], dim=16).eval()
    assert m.num_features == 80 + 112 and m.config()["encoder_levels"] == [3, 4]
    again = create_model(name, **m.config()).eval()
    again.load_state_dict(m.state_dict())
    x = {"mammography": torch.randn(2, 1, 3, 64, 64), "mammography_views": torch.ones(2, 1, dtype=torch.bool),
         "ultrasound": torch.randn(2, 1, 3, 64, 64), "ultrasound_views": torch.ones(2, 1, dtype=torch.bool),
         "clinical": torch.randn(2, 2), "present": torch.ones(2, 3, dtype=torch.bool)}
    with torch.no_grad():
        torch.testing.assert_close(m(x), again(x))


def test_age_only_is_a_tabular_baseline():
    import numpy as np

    from mmlib.experiment import ParamsError, train_model

    rng = np.random.default_rng(0)
    y = (rng.uniform(size=200) < 0.4).astype(int)
    X = np.stack([y + rng.normal(0, 1, 200), np.zeros(200)], 1)  # (age z-score, missing flag)
    model = create_model("age_only").fit(X, y)
    p = model.predict_proba(X)
    assert p.shape == (200,) and ((0 < p) & (p < 1)).all()
    assert p[y == 1].mean() > p[y == 0].mean()
    with pytest.raises(ValueError, match="C must be"):
        create_model("age_only", C=0)
    with pytest.raises(TypeError, match="encoder"):
        create_model("age_only", encoder="resnet18")
    with pytest.raises(ParamsError, match="not a savable network.*amw_cnn"):
        train_model("unused.csv", "age_only", "unused")


@pytest.mark.parametrize("cross_modal", [True, False])
def test_cuf_mt_leaves_out_tokens_absent_in_every_row_without_changing_any_output(cross_modal):
    """Ultrasound absent for the whole batch (an ultrasound-free cohort): its tokens are left out of the
    attention. Every output, the attention over all T tokens and the auxiliary logits match the same rows
    run beside a patient who has ultrasound (where nothing is left out)."""
    model = build("cuf_mt", cross_modal=cross_modal)
    x = full_batch()
    x["present"][:, 1] = False  # no ultrasound for patients 0-2
    x["ultrasound_views"][:] = False
    extra = full_batch(seed=7)  # patient 3 has everything
    both = {k: torch.cat([x[k], extra[k][:1]]) for k in x}
    with torch.no_grad():
        out, inside = model.forward_with_internals(x)
        aux = {m: v.clone() for m, v in model.aux_logits.items()}
        out_all, inside_all = model.forward_with_internals(both)
        aux_all = model.aux_logits
    n_tokens = 1 + 2 * V * 16 + 1
    assert inside["attention"].shape == (B, 2, n_tokens) and inside["token_mask"].shape == (B, n_tokens)
    assert torch.allclose(out, out_all[:B], atol=1e-5)
    assert torch.allclose(inside["attention"], inside_all["attention"][:B], atol=1e-6)
    assert torch.equal(inside["token_mask"], inside_all["token_mask"][:B])
    us = torch.tensor([i[0] == "ultrasound" for i in inside["token_index"]])
    assert (inside["attention"][:, :, us] == 0).all()
    assert torch.allclose(inside["attention"].sum(-1), torch.ones(B, 2))
    for m in MODALITIES:
        assert torch.allclose(aux[m], aux_all[m][:B], atol=1e-5), m
