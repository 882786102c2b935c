"""Training through fastai on the CPU fast path, safe model folders, and the end-to-end path."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mmlib.data import (ClinicalScaler, FeatureCache, FeatureDataset, ImageSettings, MultimodalDataset, SampleSpec,
                        collate, make_dataloaders, max_views)
from mmlib.encoders import create_encoder
from mmlib.learner import (UnsafeModelFolder, load_model, multimodal_learner, predict_manifest, predict_proba,
                           save_model)
from mmlib.models import MULTIMODAL_MODELS
from mmlib.splits import make_splits

SIZE = 64


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """160 synthetic patients, images at 64 px, ImageNet features cached once for the module."""
    from mmlib.cohort import load_manifest
    from mmlib.synth import generate_cohort

    out = tmp_path_factory.mktemp("small")
    generate_cohort(out, n_patients=160, seed=11, ultrasound_size=SIZE, mammography_size=SIZE, test_fraction=0.25)
    cohort = load_manifest(out / "manifest.csv", decode_images=False)
    splits = make_splits(cohort, n_folds=3, seed=0)
    dev = np.flatnonzero(splits["split"].to_numpy() == "dev")
    test = np.flatnonzero(splits["split"].to_numpy() == "test")
    encoder = create_encoder("efficientnet_lite0", weights="imagenet")
    settings = ImageSettings(size=SIZE, mean=encoder.mean, std=encoder.std)
    cache = FeatureCache(encoder, settings, n_augment=1, progress=False).build(cohort, np.arange(len(cohort.patients)),
                                                                               augment_rows=dev)
    spec = SampleSpec(ClinicalScaler.fit(cohort.patients.iloc[dev], cohort.clinical_columns), settings,
                      max_views(cohort.patients))
    return dict(dir=out, cohort=cohort, dev=dev, test=test, cache=cache, spec=spec, encoder=encoder)


def _learner(small, name, **kw):
    c, spec, cache = small["cohort"], small["spec"], small["cache"]
    dev = small["dev"]
    train_ds = FeatureDataset(c, dev[: int(0.85 * len(dev))], spec, cache, train=True)
    valid_ds = FeatureDataset(c, dev[int(0.85 * len(dev)):], spec, cache)
    dls = make_dataloaders(train_ds, valid_ds, bs=32)
    learn = multimodal_learner(dls, name, encoder_weights="none", dim=64, csv_log=None, **kw)
    for e in {id(v): v for v in learn.model.encoders.values()}.values():
        e.load_state_dict(small["encoder"].state_dict())
    return learn


@pytest.mark.slow
@pytest.mark.parametrize("name", [*MULTIMODAL_MODELS, "late_fusion", "ultrasound_only"])
def test_short_training_beats_chance(small, name):
    learn = _learner(small, name, seed=0)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(12, 3e-3)
    test_ds = FeatureDataset(small["cohort"], small["test"], small["spec"], small["cache"])
    prob = predict_proba(learn.model, test_ds)
    auc = roc_auc_score(test_ds.labels.numpy(), prob)
    print(f"{name}: held-out AUC {auc:.3f}")
    assert auc > 0.75


@pytest.mark.slow
def test_seeded_training_is_repeatable(small):
    probs = []
    for _ in range(2):
        learn = _learner(small, "amw_cnn", seed=5)
        with learn.no_bar(), learn.no_logging():
            learn.fit(2, 1e-3)
        probs.append(predict_proba(learn.model, FeatureDataset(small["cohort"], small["test"], small["spec"], small["cache"])))
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-6)


@pytest.mark.slow
def test_feature_path_equals_image_path(small):
    """The cached-feature fast path and the end-to-end path give the same logits for the same weights."""
    learn = _learner(small, "cuf_mt", seed=0)
    model = learn.model.eval()
    rows = small["test"][:6]
    feats = FeatureDataset(small["cohort"], rows, small["spec"], small["cache"])
    imgs = MultimodalDataset(small["cohort"], rows, small["spec"], train=False)
    xf, _ = collate([feats[i] for i in range(len(rows))])
    xi, _ = collate([imgs[i] for i in range(len(rows))])
    with torch.no_grad():
        lf = model(xf)
        model.input_kind = "images"
        li = model(xi)
    # the cache stores float16 maps: equal up to that rounding
    torch.testing.assert_close(lf, li, atol=2e-2, rtol=1e-2)


@pytest.mark.slow
def test_save_load_roundtrip_and_predict(small, tmp_path):
    learn = _learner(small, "mm_abmil", seed=0)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    folder = save_model(learn.model, tmp_path / "m", name="mm_abmil", spec=small["spec"], threshold=0.42,
                        info={"note": "test"})
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]
    meta = json.loads((folder / "model.json").read_text())
    assert meta["model"] == "mm_abmil" and meta["threshold"] == 0.42
    assert meta["sample_spec"]["images"]["size"] == SIZE
    model, meta = load_model(folder)
    rows = small["test"][:8]
    ds = MultimodalDataset(small["cohort"], rows, small["spec"])
    learn.model.input_kind = "images"
    a = predict_proba(learn.model, ds)
    b = predict_proba(model, ds)
    np.testing.assert_allclose(a, b, atol=1e-6)
    # mmlib predict on the manifest: one row per patient, with labels
    df = predict_manifest(folder, small["dir"] / "manifest.csv")
    assert len(df) == len(small["cohort"].patients)
    assert set(df.columns) >= {"patient_id", "prob_malignant", "label"}
    np.testing.assert_allclose(df.set_index("patient_id").loc[ds.patient_ids, "prob_malignant"].to_numpy(), b, atol=1e-5)


@pytest.mark.slow
def test_model_folder_with_a_pickle_is_refused(small, tmp_path):
    learn = _learner(small, "amw_cnn", seed=0)
    folder = save_model(learn.model, tmp_path / "m", name="amw_cnn", spec=small["spec"])
    torch.save({"x": 1}, folder / "extra.pth")
    with pytest.raises(UnsafeModelFolder, match="extra.pth"):
        load_model(folder)


@pytest.mark.slow
def test_modality_dropout_and_aux_loss_train(small):
    learn = _learner(small, "cuf_mt", seed=0, modality_dropout=0.5)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    assert np.isfinite(learn.recorder.values[-1][0])


@pytest.mark.slow
def test_end_to_end_finetune_on_cpu_tiny(small):
    """The GPU profile's path (encoders unfrozen, images in) runs on the CPU at tiny sizes."""
    c, spec = small["cohort"], small["spec"]
    dev = small["dev"][:24]
    dls = make_dataloaders(MultimodalDataset(c, dev[:16], spec, train=True), MultimodalDataset(c, dev[16:], spec), bs=8)
    learn = multimodal_learner(dls, "amw_cnn", encoder_weights="none", dim=32, csv_log=None, frozen=False)
    before = [p.detach().clone() for p in learn.model.encoder_parameters()][:3]
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(1, base_lr=1e-3, freeze_epochs=0)
    after = [p.detach() for p in learn.model.encoder_parameters()][:3]
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "fine-tuning must update the encoder"



def test_augmentation_does_not_depend_on_where_the_cohort_lies(tiny_cohort_dir, tmp_path):
    """The same cohort checked out in two places draws the same augmented copies (cached and on the fly), so a study
    gives the same numbers wherever it runs; another copy index or seed draws another copy."""
    import shutil

    from mmlib.cohort import load_manifest
    from mmlib.data import patient_views

    moved = tmp_path / "elsewhere" / "cohort"
    shutil.copytree(tiny_cohort_dir, moved)
    settings = ImageSettings(size=SIZE)
    copies, samples = [], []
    for root in (tiny_cohort_dir, moved):
        cohort = load_manifest(root / "manifest.csv", decode_images=False)
        view = next(v for i in range(len(cohort.patients)) for v in patient_views(cohort.patients.iloc[i], "ultrasound"))
        assert str(view[0]).startswith(str(root))
        seed0, seed1 = (FeatureCache(None, settings, n_augment=2, seed=s, progress=False) for s in (0, 1))
        copies.append([seed0._input("ultrasound", view, 1), seed0._input("ultrasound", view, 2),
                       seed1._input("ultrasound", view, 1)])
        spec = SampleSpec(ClinicalScaler.fit(cohort.patients, cohort.clinical_columns), settings, max_views(cohort.patients))
        samples.append(MultimodalDataset(cohort, [0, 1], spec, train=True)[1][0]["ultrasound"])
    assert all(torch.equal(a, b) for a, b in zip(*copies))
    assert not torch.equal(copies[0][0], copies[0][1]) and not torch.equal(copies[0][0], copies[0][2])
    assert torch.equal(samples[0], samples[1])


@pytest.mark.slow
def test_seed_ensemble_averages_members_and_round_trips(small, tmp_path):
    from mmlib.learner import SeedEnsemble, ensemble_threshold

    members = []
    for seed in (0, 1):
        learn = _learner(small, "amw_cnn", seed=seed)
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, 1e-3)
        learn.model.input_kind = "images"
        members.append(learn.model.eval())
    rows = small["test"][:8]
    ds = MultimodalDataset(small["cohort"], rows, small["spec"])
    each = [predict_proba(m, ds) for m in members]
    assert not np.allclose(each[0], each[1])  # two seeds, two models
    ens = SeedEnsemble(members, [0, 1], [0.4, 0.5])
    assert ens.tied_encoders  # the same frozen ImageNet encoder: stored once
    np.testing.assert_allclose(predict_proba(ens, ds), np.mean(each, axis=0), atol=1e-6)
    single = save_model(members[0], tmp_path / "one", name="amw_cnn", spec=small["spec"])
    folder = save_model(ens, tmp_path / "ens", name="amw_cnn", spec=small["spec"],
                        threshold=ensemble_threshold([0.4, 0.5]))
    meta = json.loads((folder / "model.json").read_text())
    assert meta["format"] == "mmlib-model/2" and meta["threshold"] == pytest.approx(0.45)
    assert meta["ensemble"] == {"seeds": [0, 1], "thresholds": [0.4, 0.5], "tied_encoders": True,
                                "combine": "mean probability"}
    # the shared encoder is written once: two members cost far less than twice one model
    assert (folder / "model.safetensors").stat().st_size < 1.5 * (single / "model.safetensors").stat().st_size
    loaded, meta = load_model(folder)
    assert isinstance(loaded, SeedEnsemble) and loaded.seeds == [0, 1]
    assert loaded.members[1].encoders is loaded.members[0].encoders
    np.testing.assert_allclose(predict_proba(loaded, ds), np.mean(each, axis=0), atol=1e-5)
    df = predict_manifest(folder, small["dir"] / "manifest.csv")
    np.testing.assert_allclose(df["threshold"], 0.45)
    np.testing.assert_allclose(df.set_index("patient_id").loc[ds.patient_ids, "prob_malignant"].to_numpy(),
                               np.mean(each, axis=0), atol=1e-5)


def test_seed_ensemble_refuses_what_is_not_one_model_over_seeds():
    from mmlib.learner import SeedEnsemble, ensemble_threshold
    from mmlib.models import create_model

    kw = dict(encoder_weights="none", dim=16, clinical_features=1)
    a, b = create_model("amw_cnn", **kw), create_model("amw_cnn", **kw)
    assert SeedEnsemble([a, b], [0, 1]).tied_encoders  # a random encoder is seeded: the same in every model
    b = create_model("amw_cnn", **kw)
    with torch.no_grad():
        next(iter(b.encoder_parameters())).add_(1.0)
    assert not SeedEnsemble([a, b], [0, 1]).tied_encoders  # encoders that differ: each member keeps its own
    with pytest.raises(ValueError, match="two or more members"):
        SeedEnsemble([a], [0])
    with pytest.raises(ValueError, match="one per seed"):
        SeedEnsemble([a, b], [0, 1, 2])
    with pytest.raises(ValueError, match="seeds must differ"):
        SeedEnsemble([a, b], [0, 0])
    with pytest.raises(ValueError, match="same model with the same settings"):
        SeedEnsemble([a, create_model("amw_cnn", **{**kw, "dim": 32})], [0, 1])
    assert ensemble_threshold([0.2, 0.4]) == pytest.approx(0.3)
    assert ensemble_threshold([0.2, None]) is None and ensemble_threshold([]) is None


def test_an_unknown_model_format_is_refused(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"format": "mmlib-model/9"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown format 'mmlib-model/9'"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"format": "mmlib-model/2", "model": "amw_cnn",
                                                     "model_kwargs": {}, "ensemble": {"seeds": [0]}}))
    with pytest.raises(ValueError, match="two or more seeds"):
        load_model(tmp_path)
