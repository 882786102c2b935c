"""The lesion segmenter (mmlib.segmentation): learns a blob, masks at the image's size, safe folders."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmlib.imaging import read_mask
from mmlib.segmentation import (
    LesionUNet,
    Segmenter,
    SegmenterSettings,
    UnsafeSegmenterFolder,
    dice_iou,
    fit_segmenter,
    largest_component,
)

TINY_LR = 3e-3
TINY = dict(lr=TINY_LR, image_size=64, epochs=12, n_augment=1, bs=8, decoder_channels=(32, 24, 16, 8, 8), encoder_weights="none")


def _blob_images(folder, n, seed=0):
    """Gray images with one dark elliptical lesion (a known mask), of varied sizes and aspects."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for i in range(n):
        h, w = int(rng.integers(80, 120)), int(rng.integers(100, 150))
        yy, xx = np.mgrid[:h, :w]
        cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
        ry, rx = rng.uniform(0.15, 0.25) * h, rng.uniform(0.15, 0.25) * w
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        img = np.clip(0.65 + 0.08 * rng.standard_normal((h, w)) - 0.45 * mask, 0, 1)
        images.append(folder / f"img{i}.png")
        masks.append(folder / f"img{i}_mask.png")
        Image.fromarray((img * 255).astype(np.uint8)).save(images[-1])
        Image.fromarray(mask.astype(np.uint8) * 255).save(masks[-1])
    return images, masks


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return _blob_images(tmp_path_factory.mktemp("blobs"), 20)


@pytest.fixture(scope="module")
def fitted(blobs):
    images, masks = blobs
    return fit_segmenter(images[:14], masks[:14], settings=TINY, seed=0, progress=False)


@pytest.mark.slow  # fits segmenters
def test_segmenter_learns_the_blob_at_the_image_size(fitted, blobs):
    images, masks = blobs
    predicted = fitted.predict(images[14:])
    dice = []
    for pm, image, mask in zip(predicted, images[14:], masks[14:]):
        truth = read_mask(mask)
        assert pm.mask.shape == truth.shape == np.asarray(Image.open(image)).shape[:2]
        assert pm.mask.dtype == bool and pm.found and 0.5 < pm.score <= 1
        dice.append(dice_iou(pm.mask, truth)[0])
    assert np.mean(dice) > 0.8, dice


@pytest.mark.slow  # fits segmenters
def test_blank_image_finds_no_lesion(fitted, tmp_path):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((90, 120), 160, np.uint8)).save(blank)
    (pm,) = fitted.predict([blank])
    assert not pm.found and pm.mask.shape == (90, 120) and not pm.mask.any()


@pytest.mark.slow  # fits segmenters
def test_save_load_round_trip_and_pickle_refusal(fitted, blobs, tmp_path):
    images, _ = blobs
    fitted.save(tmp_path / "seg")
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == ["segmenter.json", "segmenter.safetensors"]
    again = Segmenter.load(tmp_path / "seg")
    for a, b in zip(fitted.predict(images[14:17]), again.predict(images[14:17])):
        assert np.array_equal(a.mask, b.mask) and a.found == b.found and a.score == pytest.approx(b.score)
    torch.save({"x": torch.zeros(1)}, tmp_path / "seg" / "extra.pt")
    with pytest.raises(UnsafeSegmenterFolder, match="extra.pt"):
        Segmenter.load(tmp_path / "seg")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "segmenter.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="segmenter.safetensors"):
        Segmenter.load(tmp_path / "half")


def test_largest_component_keeps_one_filled_lesion():
    m = np.zeros((40, 40), bool)
    m[5:25, 5:25] = True
    m[12:15, 12:15] = False  # a hole
    m[30:34, 30:34] = True  # a smaller spot
    out = largest_component(m)
    assert out[5:25, 5:25].all() and not out[30:34, 30:34].any()
    assert not largest_component(np.zeros((5, 5), bool)).any()


def test_dice_iou():
    a = np.zeros((10, 10), bool)
    b = a.copy()
    a[:5], b[:, :5] = True, True
    assert dice_iou(a, b) == pytest.approx((0.5, 1 / 3))
    assert dice_iou(a, a) == (1.0, 1.0)
    assert dice_iou(np.zeros((3, 3)), np.zeros((3, 3))) == (1.0, 1.0)
    with pytest.raises(ValueError, match="shapes"):
        dice_iou(a, np.zeros((5, 5)))


def test_network_split_equals_the_whole():
    net = LesionUNet(decoder_channels=(16, 16, 8, 8, 4), frozen_blocks=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), net.head(net.stem(x)))
        assert net(x).shape == (2, 1, 64, 64)
        assert torch.allclose(net(x), net.net(x), atol=1e-5)  # the same function as smp's own forward


def test_output_stride_two_refines_at_half_resolution():
    """Stride 2: the same parameters, the last decoder stage at half the input's size, logits upsampled to it."""
    full = LesionUNet(decoder_channels=(16, 16, 8, 8, 4), frozen_blocks=3).eval()
    half = LesionUNet(decoder_channels=(16, 16, 8, 8, 4), frozen_blocks=3, output_stride=2).eval()
    half.load_state_dict(full.state_dict())  # no parameter is added or dropped
    x = torch.randn(2, 3, 64, 64)
    seen = []
    hook = half.net.decoder.blocks[-1].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        out = half(x)
        assert out.shape == (2, 1, 64, 64) and torch.allclose(out, half.head(half.stem(x)))
        assert not torch.allclose(out, full(x))
    hook.remove()
    assert set(seen) == {(32, 32)}  # the last stage ran at half of 64, in each of the two calls
    # masks fitted before the setting existed keep their reuse key; stride 2 gets its own
    assert "output_stride" not in SegmenterSettings().key_dict()
    assert SegmenterSettings(output_stride=2).key_dict()["output_stride"] == 2
    with pytest.raises(ValueError, match="output_stride must be 1 or 2"):
        SegmenterSettings(output_stride=4)
    with pytest.raises(ValueError, match="output_stride must be 1 or 2"):
        LesionUNet(output_stride=3)


@pytest.mark.slow  # fits a segmenter
def test_output_stride_two_fits_and_round_trips(blobs, tmp_path):
    images, masks = blobs
    seg = fit_segmenter(images[:14], masks[:14], settings={**TINY, "output_stride": 2}, seed=0, progress=False)
    predicted = seg.predict(images[14:])
    assert np.mean([dice_iou(pm.mask, read_mask(m))[0] for pm, m in zip(predicted, masks[14:])]) > 0.8
    again = Segmenter.load(seg.save(tmp_path / "seg"))
    assert again.settings.output_stride == 2 and again.network.output_stride == 2
    for a, b in zip(predicted, again.predict(images[14:])):
        assert np.array_equal(a.mask, b.mask)


@pytest.mark.slow  # fits a segmenter
def test_bfloat16_training_learns_and_predicts_in_float32(blobs, tmp_path):
    """precision bfloat16: the forward pass trains under bfloat16 autocast; the saved weights stay float32."""
    images, masks = blobs
    seg = fit_segmenter(images[:14], masks[:14], settings={**TINY, "precision": "bfloat16"}, seed=0, progress=False)
    assert all(p.dtype == torch.float32 for p in seg.network.parameters())
    predicted = seg.predict(images[14:])
    assert np.mean([dice_iou(pm.mask, read_mask(m))[0] for pm, m in zip(predicted, masks[14:])]) > 0.8
    again = Segmenter.load(seg.save(tmp_path / "seg"))
    assert again.settings.precision == "bfloat16"
    assert "precision" not in SegmenterSettings().key_dict()  # masks fitted before the setting keep their key
    assert SegmenterSettings(precision="bfloat16").key_dict()["precision"] == "bfloat16"
    with pytest.raises(ValueError, match="precision must be one of"):
        SegmenterSettings(precision="float16")


def test_fit_refuses_bad_input(blobs, tmp_path):
    images, masks = blobs
    with pytest.raises(ValueError, match="one mask per image"):
        fit_segmenter(images[:3], masks[:2], settings=TINY, progress=False)
    empty = tmp_path / "empty_mask.png"
    Image.fromarray(np.zeros(np.asarray(Image.open(images[0])).shape[:2], np.uint8)).save(empty)
    with pytest.raises(ValueError, match="empty_mask.png.*empty"):
        fit_segmenter([images[0], images[1]], [empty, masks[1]], settings=TINY, progress=False)
    with pytest.raises(ValueError, match="unknown segmenter settings"):
        SegmenterSettings.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="multiple of 32"):
        SegmenterSettings(image_size=100)


# ----------------------------------------------------------------------------------------------- in the study
@pytest.mark.parametrize("scheme", ["pairs", "halves"])
@pytest.mark.parametrize("n_folds", [3, 4, 5, 6])
def test_crossfitting_never_lets_a_held_out_mask_reach_its_segmenters(scheme, n_folds):
    """Every segmenter whose mask a classifier of outer fold k reads for its held-out or training rows was fitted
    without fold k and without the row's own fold; internal-test rows are in no segmenter's training; every
    segmenter of the plan gives some row its mask, and segments only rows that get their mask from it."""
    from mmlib.lesions import crossfit_plan, segmenter_left_out, segmenter_rows

    row_folds = np.array([-1, -1] + [k for k in range(n_folds) for _ in range(3)])
    plan = crossfit_plan(n_folds, scheme)
    assert len(plan) == len(set(plan))
    used = {}
    for outer in [*range(n_folds), None]:
        for r, fold in enumerate(row_folds):
            left = segmenter_left_out(int(fold), outer, n_folds, scheme)
            assert left in plan
            used.setdefault(left, set()).add(r)
            train, targets = segmenter_rows(left, row_folds, n_folds, scheme)
            assert r in targets  # the segmenter that gives the row its mask segments it
            assert r not in train and not np.isin(row_folds[train], [-1]).any()
            if fold >= 0:  # a development row: neither its own fold's nor the held-out fold's expert masks
                assert fold not in row_folds[train]
                assert outer is None or outer not in row_folds[train]
                assert len(train) >= 3  # trained on at least one fold
    for left in plan:  # nothing fitted that no row reads; nothing segmented that no classifier reads
        assert set(segmenter_rows(left, row_folds, n_folds, scheme)[1]) == used[left]
    # the held-out fold's masks come from one segmenter; the refit's rows from the segmenter without their fold
    assert segmenter_left_out(2, 2, n_folds, scheme) == {2} and segmenter_left_out(1, None, n_folds, scheme) == {1}
    assert segmenter_left_out(-1, 2, n_folds, scheme) == frozenset()
    if scheme == "pairs":
        assert len(plan) == 1 + n_folds + n_folds * (n_folds - 1) // 2
        assert segmenter_left_out(1, 2, n_folds, scheme) == {1, 2}


def test_halves_crossfit_is_two_fold_cross_fitting_inside_the_training_folds():
    """For K = 5: each outer fold's four training folds split into two halves of two folds that segment each
    other, and the ten halves are five distinct segmenters (a cycle), so 11 fits instead of 16."""
    from mmlib.lesions import crossfit_plan, segmenter_left_out, training_halves

    assert training_halves(0, 5) == ({1, 2}, {3, 4}) and training_halves(3, 5) == ({4, 0}, {1, 2})
    # outer fold 0: a row of fold 3 gets the segmenter trained on folds 1 and 2, a row of fold 1 the one on 3 and 4
    assert segmenter_left_out(3, 0, 5, "halves") == {0, 3, 4}
    assert segmenter_left_out(1, 0, 5, "halves") == {0, 1, 2}
    assert len(crossfit_plan(5, "halves")) == 11 and len(crossfit_plan(5, "pairs")) == 16
    with pytest.raises(ValueError, match="segmenter_crossfit.*pairs.*halves"):
        segmenter_left_out(1, 0, 5, "thirds")
    with pytest.raises(ValueError, match="n_folds >= 3"):
        training_halves(0, 2)


def test_lesion_source_is_checked():
    from mmlib.lesions import check_lesion_source
    from mmlib.params import ParamsError, load_params

    with pytest.raises(ParamsError, match="lesion_source.*expected 'expert', 'predicted' or 'none'"):
        load_params("smoke", {"lesion_source": "segmenter"})
    with pytest.raises(ParamsError, match="unknown segmenter settings"):
        load_params("smoke", {"segmenter": {"epoch": 3}})
    with pytest.raises(ValueError, match="lesion_source"):
        check_lesion_source("auto")
    p = load_params("breast-lesions-usg", {"lesion_source": "none"})
    assert not p["roi"] and not p["outline_features"]  # whole images: nothing to crop on


@pytest.fixture(scope="module")
def blob_manifest(tmp_path_factory):
    """A tiny labelled ultrasound cohort: malignant lesions are darker and smaller; expert masks given."""
    from mmlib.cohort import write_manifest

    folder = tmp_path_factory.mktemp("blob-cohort")
    images, masks = _blob_images(folder, 30, seed=1)
    rows = [{"patient_id": f"p{i:02d}", "label": i % 2, "age": 40 + i, "ultrasound": str(img),
             "ultrasound_mask": str(mask), "split": "test" if i >= 24 else "dev"}
            for i, (img, mask) in enumerate(zip(images, masks))]
    return write_manifest(rows, folder / "manifest.csv")


@pytest.mark.slow  # fits segmenters
def test_study_with_predicted_lesions(blob_manifest, tmp_path):
    from mmlib import experiment as ex

    params = ex.load_params(dict(
        profile="seg", cohort=str(blob_manifest), n_folds=3, image_size=32, roi=True, roi_margin=0.0,
        outline_features=True, encoder_weights="none", n_augment=1, epochs=1, early_stopping=0, bs=8, dim=16,
        models=["amw_cnn"], baselines=[], ablations=False, scenarios=False, n_boot=50, progress=False,
        lesion_source="predicted", segmenter=dict(TINY, image_size=32, epochs=4, n_augment=0),
        results_dir=str(tmp_path / "results")))
    res = ex.load_results(ex.run_experiment(params))
    # run.json says what the run fitted
    assert res.run["segmenters"] == {"total": 1 + 3 + 3, "reused": 0, "resegmented": 0}
    seg = pd.read_csv(res.folder / "segmentation.csv")
    assert set(seg["split"]) == {"cv", "crossfit", "test"} and set(seg["fold"]) == {"0", "1", "2", "all"}
    # the training rows' masks are scored too: every development image once per pair segmenter that segments it
    crossfit = seg[seg["split"] == "crossfit"].iloc[0]
    assert crossfit["fold"] == "all" and crossfit["n_images"] == 2 * seg.query("split == 'cv' and fold == 'all'")[
        "n_images"].item()
    assert (seg["dice_ci_low"] <= seg["dice"]).all() and (seg["dice"] <= seg["dice_ci_high"]).all()
    assert seg.loc[(seg["split"] == "cv") & (seg["fold"] == "all"), "dice"].item() > 0.3
    assert "lesion_found" in res.predictions and res.predictions["lesion_found"].dtype == bool
    assert "segmentation" in res.run["timings"]
    images = pd.read_csv(res.folder / "segmentation_images.csv")  # per image, with its patient
    assert len(images) == seg.query("fold == 'all'")["n_images"].sum() and images["patient_id"].notna().all()
    from mmlib.probes import refiner_text

    assert "without a refiner" in refiner_text(res.folder, "cmd")
    # 1 + 3 + 3 segmenters, each with its masks in a folder named by their content
    done = sorted((res.folder / "cache" / "lesions").glob("*/done.json"))
    assert len(done) == 7
    # the saved model carries the segmenter fitted on all development patients: it needs only images
    model_dir = res.folder / "models" / "amw_cnn"
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["lesion"]["source"] == "predicted" and meta["lesion"]["segmenters"] == {"ultrasound": "segmenter"}
    Segmenter.load(model_dir / "segmenter")
    # every outline's score is kept beside its segmenter; uncertain_below 0 flags none
    assert not res.predictions["uncertain_outline"].any() and res.predictions["uncertain_outline"].dtype == bool
    assert images["score"].between(0, 1).all() and not images["uncertain"].any()
    # the benchmarks' view of a fold: the segmenter fitted without it and the fold's images, with their expert masks
    from mmlib.cohort import load_manifest
    from mmlib.lesions import held_out_images

    cohort = load_manifest(blob_manifest, decode_images=False)
    fold0, rows0, images0, masks0 = held_out_images(res.folder, 0, cohort)
    held = images.query("split == 'cv' and fold == 0")
    assert sorted(rows0) == sorted(held["row"]) and len(images0) == len(masks0) == len(rows0)
    assert images0 == [cohort.patients["ultrasound"].iloc[r][0] for r in rows0] and fold0.settings.image_size == 32
    # a rerun reuses every segmenter and every finished unit; a segmenter cached without its scores is run again
    # once for them (prediction only)
    (done[1].parent / "outline_scores.csv").unlink()
    again = ex.load_results(ex.run_experiment(params))
    pd.testing.assert_frame_equal(res.predictions, again.predictions)
    assert again.run["segmenters"] == {"total": 7, "reused": 7, "resegmented": 0}
    assert (done[1].parent / "outline_scores.csv").is_file()
    pd.testing.assert_frame_equal(images, pd.read_csv(again.folder / "segmentation_images.csv"), atol=1e-6)
    # a tuning variant beside it (another results folder) copies the same segmenters' masks instead of refitting
    import mmlib.segmentation

    def no_fit(*a, **k):
        raise AssertionError("a segmenter was fitted again")

    variant = dict(params, outline_features=False, results_dir=str(tmp_path / "results-variant"),
                   segmenter=dict(params["segmenter"], uncertain_below=0.65))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mmlib.segmentation, "fit_segmenter", no_fit)
        other = ex.load_results(ex.run_experiment(variant))
    copied = sorted((tmp_path / "results-variant" / "cache" / "lesions").glob("*/done.json"))
    assert [d.parent.name for d in copied] == [d.parent.name for d in done]
    assert all(str(tmp_path / "results-variant") in m for d in copied for *_, m, _ in json.loads(d.read_text())["views"]
               if m is not None)  # the variant's masks live in its own folder
    pd.testing.assert_frame_equal(pd.read_csv(res.folder / "segmentation.csv"),
                                  pd.read_csv(other.folder / "segmentation.csv"))
    # the variant's uncertain_below flags the outlines scoring below it, in the per-image table and per patient
    flagged = pd.read_csv(other.folder / "segmentation_images.csv")
    assert (flagged["uncertain"] == (flagged["found"] & (flagged["score"] < 0.65))).all()
    pd.testing.assert_series_equal(flagged["score"], images["score"])
    cv = flagged[flagged["split"] == "cv"].groupby("patient_id")["uncertain"].any()
    rows = other.predictions.query("split == 'cv' and model == 'amw_cnn'").set_index("patient_id")
    assert (rows["uncertain_outline"] == cv.reindex(rows.index.astype(str)).to_numpy()).all()
    assert 0 < rows["uncertain_outline"].sum() < len(rows)  # the tiny segmenter's scores straddle the cut-off
    # uncertain_below changes no mask (the segmenters were reused), but the saved model says the run's value
    assert Segmenter.load(res.folder / "models" / "amw_cnn" / "segmenter").settings.uncertain_below == 0
    assert Segmenter.load(other.folder / "models" / "amw_cnn" / "segmenter").settings.uncertain_below == 0.65
    # deployed_segmenter folds: no refit on all development patients; the mean of the 3 fold segmenters segments
    # the internal test and is saved with the models
    folds = dict(params, deployed_segmenter="folds", results_dir=str(tmp_path / "results-folds"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mmlib.segmentation, "fit_segmenter", no_fit)
        ens = ex.load_results(ex.run_experiment(folds))
    assert ens.run["segmenters"] == {"total": 3 + 3, "reused": 3 + 3, "resegmented": 0}
    names = sorted(d.parent.name for d in (tmp_path / "results-folds" / "cache" / "lesions").glob("*/done.json"))
    assert not any("all-dev" in n for n in names) and sum("fold-ensemble" in n for n in names) == 1
    saved = Segmenter.load(ens.folder / "models" / "amw_cnn" / "segmenter")
    assert saved.n_members == 3 and saved.info["deployed_segmenter"] == "folds"
    seg_f = pd.read_csv(ens.folder / "segmentation.csv")
    same = ["modality", "split", "fold", "n_images", "dice", "iou"]  # the CIs draw one stream over every split
    pd.testing.assert_frame_equal(seg_f.loc[seg_f["split"] != "test", same].reset_index(drop=True),
                                  seg.loc[seg["split"] != "test", same].reset_index(drop=True))
    assert seg_f.query("split == 'test'")["n_images"].tolist() == seg.query("split == 'test'")["n_images"].tolist()
    pd.testing.assert_frame_equal(ens.predictions.query("split == 'cv'").reset_index(drop=True),
                                  res.predictions.query("split == 'cv'").reset_index(drop=True))
    with pytest.MonkeyPatch.context() as mp:  # its masks are reused like a fitted segmenter's
        mp.setattr(mmlib.segmentation, "ensemble_segmenters", lambda *a, **k: pytest.fail("ensembled again"))
        again = ex.load_results(ex.run_experiment(folds))
    pd.testing.assert_frame_equal(ens.predictions, again.predictions)
    # settings that change the masks but not the network (a second scale, two refiner margins) segment again with
    # the cached networks: no fit, new masks under a new key that names its network, and the models say the run's
    tta = dict(params, results_dir=str(tmp_path / "results-tta"), segmenter=dict(params["segmenter"], tta_scales=[64]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mmlib.segmentation, "fit_segmenter", no_fit)
        multi = ex.load_results(ex.run_experiment(tta))
    assert multi.run["segmenters"] == {"total": 7, "reused": 0, "resegmented": 7}
    homes = sorted((tmp_path / "results-tta" / "cache" / "lesions").glob("*/done.json"))
    assert len(homes) == 7 and not {h.parent.name for h in homes} & {d.parent.name for d in done}
    assert sorted(json.loads(h.read_text())["network"] for h in homes) == sorted(
        json.loads(d.read_text())["key"] for d in done)  # each names the network it reused
    seg_t = pd.read_csv(multi.folder / "segmentation.csv")
    assert not np.allclose(seg_t["dice"], seg["dice"])  # the masks were drawn again, at two scales
    assert Segmenter.load(multi.folder / "models" / "amw_cnn" / "segmenter").settings.scales == (32, 64)
    with pytest.MonkeyPatch.context() as mp:  # and are reused by a rerun, like any segmenter's
        mp.setattr(mmlib.segmentation, "fit_segmenter", no_fit)
        assert ex.load_results(ex.run_experiment(tta)).run["segmenters"] == {"total": 7, "reused": 7,
                                                                              "resegmented": 0}


def test_a_collapsed_fit_is_refitted_and_said(blobs, monkeypatch):
    """A fit whose training Dice stays below the collapse bar is refitted once at a lower rate, with a warning and
    the record in the segmenter's info; the better of the two fits is kept."""
    import mmlib.segmentation as seg

    calls = []

    def fake_fit(model, train_ds, settings, *, seed, lr, progress, device):
        calls.append((seed, lr))
        return 0.0 if len(calls) == 1 else 0.6

    monkeypatch.setattr(seg, "_fit_once", fake_fit)
    images, masks = blobs
    with pytest.warns(UserWarning, match="training Dice 0.0; refitted"):
        s = fit_segmenter(images[:4], masks[:4], settings=TINY, seed=3, progress=False)
    assert calls == [(3, TINY_LR), (4, TINY_LR / 3)]
    assert s.info["refit"] == {"first_training_dice": 0.0, "refit_training_dice": 0.6}
    assert s.info["training_dice"] == 0.6


@pytest.mark.slow  # fits a segmenter
def test_training_dice_of_a_real_fit(fitted):
    assert fitted.info["training_dice"] > seg_collapse_bar()


def seg_collapse_bar() -> float:
    from mmlib.segmentation import COLLAPSED_TRAINING_DICE

    return COLLAPSED_TRAINING_DICE


@pytest.mark.slow  # fits a segmenter with a refiner
def test_refiner_outlines_a_crop_around_the_found_lesion_and_round_trips(blobs, tmp_path):
    """refine_size: a second network trained on crops around the expert's lesion re-segments a crop around the
    lesion the first one found; masks stay at the image's size; both networks are saved (safetensors)."""
    from mmlib import segmentation as S

    images, masks = blobs
    seg = fit_segmenter(images[:14], masks[:14], settings={**TINY, "refine_size": 64, "refine_margin": 0.3}, seed=0,
                        progress=False)
    assert seg.refiner is not None and "refiner_training_dice" in seg.info
    predicted = seg.predict(images[14:], whole_image=True)
    coarse = [seg._mask(p, s) for p, s in zip(*seg.probabilities(images[14:]))]
    assert [pm.mask.shape for pm in predicted] == [read_mask(m).shape for m in masks[14:]]
    assert np.mean([dice_iou(pm.mask, read_mask(m))[0] for pm, m in zip(predicted, masks[14:])]) > 0.8
    assert any(not np.array_equal(a.mask, b.mask) for a, b in zip(predicted, coarse))  # the refiner drew them
    for pm, c in zip(predicted, coarse):  # each answer carries the whole-image network's own, from the same pass
        assert pm.refined is True and np.array_equal(pm.whole_image.mask, c.mask)
    for pm, again in zip(predicted, seg.predict(images[14:])):  # only when asked for
        assert again.whole_image is None and again.refined is True and np.array_equal(pm.mask, again.mask)
    for pm, c in zip(predicted, coarse):  # inside the crop around the coarse lesion
        y0, y1, x0, x1 = S._crop_box(c.mask, 0.3)
        assert not pm.mask[:y0].any() and not pm.mask[y1:].any()
        assert not pm.mask[:, :x0].any() and not pm.mask[:, x1:].any()
    folder = seg.save(tmp_path / "seg")
    assert sorted(p.name for p in folder.iterdir()) == ["segmenter-refiner.safetensors", "segmenter.json",
                                                       "segmenter.safetensors"]
    again = Segmenter.load(folder)
    for a, b in zip(predicted, again.predict(images[14:])):
        assert np.array_equal(a.mask, b.mask)
    (folder / "segmenter-refiner.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="segmenter-refiner.safetensors"):
        Segmenter.load(folder)
    # masks fitted before the setting existed keep their reuse key
    assert "refine_size" not in SegmenterSettings().key_dict()
    assert SegmenterSettings(refine_size=128).key_dict()["refine_size"] == 128
    with pytest.raises(ValueError, match="refine_size must be 0"):
        SegmenterSettings(refine_size=100)


def _constant_network(settings, logit: float):
    """A network whose every pixel's logit is ``logit`` (lesion everywhere, or nowhere)."""
    from mmlib.segmentation import _network_of

    return _constant_head(_network_of(settings), logit)


def _constant_head(net, logit: float):
    """``net`` with its segmentation head set to give ``logit`` at every pixel."""
    conv = net.net.segmentation_head[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(logit)
    return net.eval()


def test_where_the_refiner_finds_nothing_the_whole_image_outline_is_kept_and_said(blobs, fitted):
    """A refiner that finds no lesion in its crop: the whole-image network's outline is the answer, marked
    refined=False; without a refiner nothing is marked."""
    images, _ = blobs
    settings = SegmenterSettings(**{**TINY, "refine_size": 64})
    seg = Segmenter(_constant_network(settings, 20.0), settings, {}, _constant_network(settings, -20.0))
    for pm in seg.predict(images[14:16], whole_image=True):
        assert pm.found and pm.mask.all() and pm.refined is False
        assert np.array_equal(pm.mask, pm.whole_image.mask)
    for pm in fitted.predict(images[14:16], whole_image=True):
        assert pm.refined is None and pm.whole_image is None
    nothing = Segmenter(_constant_network(settings, -20.0), settings, {}, _constant_network(settings, 20.0))
    for pm in nothing.predict(images[14:16], whole_image=True):  # nothing found: nothing to refine, the whole image's answer kept
        assert not pm.found and pm.refined is None and not pm.whole_image.found


def test_refiner_overrides_set_the_refiner_apart_and_round_trip(blobs, tmp_path):
    """refiner_overrides: the refiner's own schedule and decoder (the whole-image network keeps the rest); saved
    in the JSON, rebuilt on load; only head settings may differ, and only where there is a refiner."""
    images, masks = blobs
    settings = {**TINY, "epochs": 2, "refine_size": 64, "refiner_overrides": {"output_stride": 2, "epochs": 1,
                                                                            "decoder_channels": [16, 16, 8, 8, 8]}}
    seg = fit_segmenter(images[:6], masks[:6], settings=settings, seed=0, progress=False)
    assert seg.network.output_stride == 1 and seg.refiner.output_stride == 2
    assert seg.settings.refiner_settings().epochs == 1 and seg.settings.epochs == 2
    again = Segmenter.load(seg.save(tmp_path / "seg"))
    assert again.refiner.output_stride == 2 and again.settings == seg.settings
    for a, b in zip(seg.predict(images[14:16]), again.predict(images[14:16])):
        assert np.array_equal(a.mask, b.mask)
    assert SegmenterSettings(refine_size=64, refiner_overrides={"epochs": 4}).key_dict()["refiner_overrides"] == {
        "epochs": 4}
    assert "refiner_overrides" not in SegmenterSettings(refine_size=64).key_dict()  # older caches keep their key
    with pytest.raises(ValueError, match=r"\['image_size'\] cannot differ for the refiner"):
        SegmenterSettings(refine_size=64, refiner_overrides={"image_size": 96})
    with pytest.raises(ValueError, match="needs a refiner"):
        SegmenterSettings(refiner_overrides={"epochs": 4})
    with pytest.raises(ValueError, match="output_stride must be 1 or 2"):
        SegmenterSettings(refine_size=64, refiner_overrides={"output_stride": 3})


def test_refiner_training_crops_hold_the_lesion_and_jitter():
    from mmlib import segmentation as S

    mask = np.zeros((200, 300), bool)
    mask[80:120, 100:160] = True
    assert S._crop_box(mask, 0.25) == (55, 145, 85, 175)  # 40x60 lesion + 10/15 px a side, squared on 90 px
    boxes = {S._crop_box(mask, 0.25, seed=s) for s in range(20)}
    assert len(boxes) > 10
    for y0, y1, x0, x1 in boxes:
        assert 0 <= y0 < y1 <= 200 and 0 <= x0 < x1 <= 300 and y1 - y0 == x1 - x0
        assert mask[y0:y1, x0:x1].sum() > 0.7 * mask.sum()  # the shift never loses most of the lesion


@pytest.mark.slow  # a small study that fits segmenters with refiners
def test_study_with_a_refiner_scores_what_it_adds(blob_manifest, tmp_path):
    """refine_size in the study: the held-out masks are the refiner's; the whole-image network's own masks of the same
    images are scored beside them (split cv_whole_image), and the chapter's sentence reads the paired difference."""
    from mmlib import experiment as ex
    from mmlib.lesions import WHOLE_IMAGE_SPLIT, refiner_gain
    from mmlib.probes import refiner_text

    params = ex.load_params(dict(
        profile="seg", cohort=str(blob_manifest), n_folds=3, image_size=32, roi=True, roi_margin=0.0,
        outline_features=True, encoder_weights="none", n_augment=1, epochs=1, early_stopping=0, bs=8, dim=16,
        models=["amw_cnn"], baselines=[], ablations=False, scenarios=False, n_boot=50, progress=False,
        lesion_source="predicted", segmenter_crossfit="halves",
        segmenter=dict(TINY, image_size=32, epochs=4, n_augment=0, refine_size=32),
        results_dir=str(tmp_path / "results")))
    import mmlib.segmentation

    with pytest.MonkeyPatch.context() as mp:  # the whole-image scores come from the fit's own prediction
        mp.setattr(mmlib.segmentation.Segmenter, "load", classmethod(lambda *a: pytest.fail("loaded a segmenter")))
        res = ex.load_results(ex.run_experiment(params))
    seg = pd.read_csv(res.folder / "segmentation.csv")
    assert set(seg["split"]) == {"cv", "crossfit", "test", WHOLE_IMAGE_SPLIT}
    cv = seg.query("split == 'cv' and fold == 'all'").iloc[0]
    whole = seg.query(f"split == '{WHOLE_IMAGE_SPLIT}'").iloc[0]
    assert whole["n_images"] == cv["n_images"] and whole["fold"] == "all"
    g = refiner_gain(pd.read_csv(res.folder / "segmentation_images.csv"))
    assert g["dice"] == pytest.approx(cv["dice"]) and g["dice_whole_image"] == pytest.approx(whole["dice"])
    assert g["ci_low"] <= g["diff"] <= g["ci_high"] and g["n_images"] == cv["n_images"]
    text = refiner_text(res.folder, "cmd")
    assert f"{g['dice']:.3f} against {g['dice_whole_image']:.3f}" in text and "95% CI" in text
    assert (res.folder / "models" / "amw_cnn" / "segmenter" / "segmenter-refiner.safetensors").is_file()
    # the whole-image scores are kept beside each held-out segmenter: a rerun reads them, it loads no segmenter
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mmlib.segmentation.Segmenter, "load", classmethod(lambda *a: pytest.fail("loaded a segmenter")))
        again = ex.load_results(ex.run_experiment(params))
    pd.testing.assert_frame_equal(seg, pd.read_csv(again.folder / "segmentation.csv"))


def test_uncertain_below_says_more_without_changing_a_mask(blobs, tmp_path):
    """uncertain_below changes no mask: outside the reuse key, and settable on a saved segmenter (a cached one gets
    the run's value); anything else is refused, as is a value outside [0, 1)."""
    from mmlib.segmentation import set_post_processing

    assert SegmenterSettings(uncertain_below=0.88).key_dict() == SegmenterSettings().key_dict()
    with pytest.raises(ValueError, match=r"uncertain_below must be in \[0, 1\)"):
        SegmenterSettings(uncertain_below=1.0)
    images, masks = blobs
    seg = fit_segmenter(images[:4], masks[:4], settings={**TINY, "epochs": 1}, seed=0, progress=False)
    folder = seg.save(tmp_path / "seg")
    before = (folder / "segmenter.safetensors").read_bytes()
    assert set_post_processing(folder, uncertain_below=0.7)["uncertain_below"] == 0.7
    again = Segmenter.load(folder)
    assert again.settings.uncertain_below == 0.7 and (folder / "segmenter.safetensors").read_bytes() == before
    assert again.settings.key_dict() == seg.settings.key_dict()
    with pytest.raises(ValueError, match=r"\['epochs'\] would change the masks"):
        set_post_processing(folder, epochs=3)
    with pytest.raises(ValueError, match="uncertain_below must be in"):
        set_post_processing(folder, uncertain_below=-0.1)
    with pytest.raises(FileNotFoundError, match="not a segmenter folder"):
        set_post_processing(tmp_path, uncertain_below=0.5)


def _shifted(net, logit: float):
    """A copy of ``net`` (same stem) whose every pixel's logit is ``logit``."""
    import copy

    return _constant_head(copy.deepcopy(net), logit)


def test_an_ensemble_reads_the_mean_probability_of_its_members_and_round_trips(blobs, tmp_path):
    """ensemble_segmenters: the mean of the members' lesion probabilities, in the whole-image network and the
    refiner; members with equal frozen stems run the stem once; saved as format /2 and rebuilt on load."""
    from mmlib.segmentation import ENSEMBLE_FORMAT, MeanProbability, ensemble_segmenters

    images, _ = blobs
    settings = SegmenterSettings(**{**TINY, "refine_size": 64})
    base = _constant_network(settings, 2.0)
    a = Segmenter(base, settings, {"seed": 0}, _constant_network(settings, 2.0))
    b = Segmenter(_shifted(base, -1.0), settings, {"seed": 1}, _shifted(a.refiner, -1.0))
    ens = ensemble_segmenters([a, b], info={"deployed_segmenter": "folds"})
    assert ens.n_members == 2 and a.n_members == 1
    assert ens.network.shared_stem and ens.refiner.shared_stem
    mean = (torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(-1.0))).item() / 2
    x = torch.rand(2, 3, 64, 64)
    for net in (ens.network, ens.refiner):
        assert torch.allclose(net.probability(x), torch.full((2, 1, 64, 64), mean), atol=1e-6)
        assert torch.allclose(torch.sigmoid(net(x)), net.probability(x), atol=1e-5)
    (pm,) = ens.predict(images[:1])
    assert pm.found and pm.mask.all() and pm.score == pytest.approx(mean, abs=1e-5)
    (alone,) = a.predict(images[:1])
    assert alone.score == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), abs=1e-5)
    ens.save(tmp_path / "ens")
    meta = json.loads((tmp_path / "ens" / "segmenter.json").read_text())
    assert meta["format"] == ENSEMBLE_FORMAT and meta["members"] == 2
    assert meta["info"]["members"] == [{"seed": 0}, {"seed": 1}] and meta["info"]["deployed_segmenter"] == "folds"
    again = Segmenter.load(tmp_path / "ens")
    assert isinstance(again.network, MeanProbability) and again.n_members == 2 and again.network.shared_stem
    (pm2,) = again.predict(images[:1])
    assert np.array_equal(pm.mask, pm2.mask) and pm2.score == pytest.approx(pm.score, abs=1e-6)
    meta["members"] = 1
    (tmp_path / "ens" / "segmenter.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="'members' >= 2"):
        Segmenter.load(tmp_path / "ens")


def test_an_ensemble_of_unequal_stems_still_averages(blobs):
    from mmlib.segmentation import ensemble_segmenters

    settings = SegmenterSettings(**TINY)
    a = Segmenter(_constant_network(settings, 1.0), settings)
    b = Segmenter(_constant_network(settings, 3.0), settings)  # initialised apart: other stems
    ens = ensemble_segmenters([a, b])
    assert not ens.network.shared_stem and ens.refiner is None
    x = torch.rand(1, 3, 64, 64)
    expect = (torch.sigmoid(torch.tensor(1.0)) + torch.sigmoid(torch.tensor(3.0))) / 2
    assert torch.allclose(ens.network.probability(x), expect.expand(1, 1, 64, 64), atol=1e-6)


def test_an_ensemble_refuses_what_it_cannot_average():
    from mmlib.segmentation import ensemble_segmenters

    settings = SegmenterSettings(**TINY)
    a = Segmenter(_constant_network(settings, 1.0), settings)
    with pytest.raises(ValueError, match="at least 2 segmenters, got 1"):
        ensemble_segmenters([a])
    other = SegmenterSettings(**{**TINY, "threshold": 0.4})
    with pytest.raises(ValueError, match=r"segmenter 1 was fitted with other settings.*\['threshold'\]"):
        ensemble_segmenters([a, Segmenter(_constant_network(other, 1.0), other)])
    with pytest.raises(ValueError, match="itself an ensemble"):
        ensemble_segmenters([a, ensemble_segmenters([a, a])])


def test_strong_augmentation_moves_the_mask_with_the_image_and_enters_the_key(blobs):
    """augment: strong (for other scanners) draws seeded intensity changes on the image alone and the same geometry
    on image and mask; standard stays out of the reuse key (segmenters cached before the setting stay valid)."""
    from mmlib.segmentation import _augment, _read_pair

    img, mask, _ = _read_pair(blobs[0][0], blobs[1][0], 64)
    for seed in range(8):
        a, m = _augment(img, mask, seed, "strong")
        assert a.shape == m.shape == (1, 64, 64) and m.dtype == torch.bool and 0 <= a.min() and a.max() <= 1
        assert a[m].mean() < a[~m].mean() - 0.1  # the dark lesion is still under its mask
        b, _ = _augment(img, mask, seed, "strong")
        assert torch.equal(a, b)  # seeded
    assert not torch.equal(_augment(img, mask, 3, "strong")[0], _augment(img, mask, 3, "standard")[0])
    assert "augment" not in SegmenterSettings().key_dict()
    assert SegmenterSettings(augment="strong").key_dict()["augment"] == "strong"
    with pytest.raises(ValueError, match="augment must be one of"):
        SegmenterSettings(augment="heavy")


def test_stem_cache_travels_whole_through_its_file(blobs, tmp_path):
    """StemCache.save/load: the same items (whole images and the refiner's crops) and the same frozen network (a
    random encoder's draw too), so a fit in a worker process starts where a fit here would."""
    from mmlib.segmentation import StemCache

    images, masks = blobs
    settings = SegmenterSettings.from_dict({**TINY, "refine_size": 32})
    cache = StemCache(settings, seed=3)
    cache.build(images[:3], masks[:3], progress=False)
    cache.crop_cache().build(images[:3], masks[:3], progress=False)
    again = StemCache.load(cache.save(tmp_path / "stems.safetensors"), settings)
    assert again.seed == 3 and not (tmp_path / "stems.safetensors.tmp").exists()
    for mine, theirs in ((cache, again), (cache.crop_cache(), again.crop_cache())):
        assert list(mine.items) == list(theirs.items) and len(mine.items) == 3 * (1 + TINY["n_augment"])
        for key, (feats, mask) in mine.items.items():
            other, other_mask = theirs.items[key]
            assert all(torch.equal(a, b) for a, b in zip(feats, other, strict=True)) and torch.equal(mask, other_mask)
    for k, v in cache.network.body.state_dict().items():
        assert torch.equal(v, again.network.body.state_dict()[k]), k
    with pytest.raises(ValueError, match="other segmenter settings"):
        StemCache.load(tmp_path / "stems.safetensors", SegmenterSettings.from_dict({**TINY, "refine_size": 32,
                                                                                       "epochs": 2}))


@pytest.mark.slow  # fits segmenters twice
def test_study_segmenters_do_not_depend_on_the_number_of_workers(blob_manifest, tmp_path):
    """The study's segmenters fit on one thread each, in worker processes when there are several: the masks (named
    by their content) and every score are the same with one worker or two."""
    from mmlib import experiment as ex

    runs = {}
    for workers in (1, 2):
        params = ex.load_params(dict(
            profile="seg", cohort=str(blob_manifest), n_folds=3, image_size=32, roi=True, roi_margin=0.0,
            outline_features=True, encoder_weights="none", n_augment=1, epochs=1, early_stopping=0, bs=8, dim=16,
            models=["amw_cnn"], baselines=[], ablations=False, scenarios=False, n_boot=50, progress=True,
            lesion_source="predicted", segmenter_crossfit="halves", workers=workers,
            segmenter=dict(TINY, image_size=32, epochs=3, n_augment=1, refine_size=32),
            results_dir=str(tmp_path / f"w{workers}" / "results")))  # apart: no sibling cache to copy from
        runs[workers] = ex.load_results(ex.run_experiment(params))
        assert runs[workers].run["segmenters"] == {"total": 7, "reused": 0, "resegmented": 0}
        assert not list((runs[workers].folder / "cache" / "lesions").glob(".stems-*"))  # cleaned up
    homes = {w: sorted(p.relative_to(r.folder).as_posix() for p in (r.folder / "cache" / "lesions").glob("*/masks-*"))
             for w, r in runs.items()}
    assert homes[1] == homes[2] and len(homes[1]) == 7
    for table in ("segmentation.csv", "segmentation_images.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(runs[1].folder / table), pd.read_csv(runs[2].folder / table))


def test_study_segmenter_home_finds_the_newest_with_exactly_those_folds_left_out(tmp_path):
    import os

    from mmlib.lesions import study_segmenter_home

    folder = tmp_path / "cache" / "lesions"
    for i, name in enumerate(["ultrasound-without-0-aaa", "ultrasound-without-0-3-4-bbb", "ultrasound-without-0-ccc",
                              "ultrasound-without-1-ddd"]):
        (folder / name).mkdir(parents=True)
        (folder / name / "done.json").write_text("{}")
        os.utime(folder / name / "done.json", (1000 + i, 1000 + i))
    assert study_segmenter_home(tmp_path, {0}).name == "ultrasound-without-0-ccc"  # the newer of the two
    assert study_segmenter_home(tmp_path, frozenset({0, 3, 4})).name == "ultrasound-without-0-3-4-bbb"
    with pytest.raises(FileNotFoundError, match=r"without folds \[2\].*run the study with lesion_source predicted"):
        study_segmenter_home(tmp_path, {2})


@pytest.mark.slow  # two worker processes
def test_a_segmenter_failing_in_a_worker_is_named_and_the_others_are_kept(blobs, tmp_path):
    from types import SimpleNamespace

    from mmlib.lesions import _fit_segmenters, _SegmenterJob

    images, masks = blobs
    lines = []
    study = SimpleNamespace(params={"device": "cpu", "workers": 2, "train_mode": "frozen", "progress": False},
                            log=lines.append)
    settings = SegmenterSettings.from_dict({**TINY, "image_size": 32, "epochs": 1, "n_augment": 0})
    targets = [(i, 0, images[i], masks[i]) for i in range(4, 6)]
    good = _SegmenterJob("ultrasound", frozenset({1}), "k1", list(zip(images[:4], masks[:4])), targets)
    bad = _SegmenterJob("ultrasound", frozenset({2}), "k2", [(images[6], masks[6])], targets)  # one image: refused
    folder = tmp_path / "lesions"
    with pytest.raises(RuntimeError, match=r"1 segmenter fit\(s\) failed \(the 1 finished are kept.*\n  ultrasound "
                                           r"segmenter without-2: ValueError: fit_segmenter needs at least 2 images"):
        _fit_segmenters(study, [good, bad], settings, 0, folder, np.zeros(10, dtype=int))
    assert (folder / "ultrasound-without-1-k1" / "done.json").is_file()
    assert not (folder / "ultrasound-without-2-k2").exists() and not list(folder.glob(".stems-*"))
    assert any("without-1: fitted on 4 images" in line for line in lines)


@pytest.mark.slow  # uses the fitted segmenter
def test_prediction_scales_and_refiner_margins_average_their_maps(fitted, blobs):
    """tta_scales: the whole-image network also reads each image at other sides, the maps averaged in the
    image_size letterbox; refine_margins: the refiner's crops at several margins, averaged where they overlap. Both
    change the masks, not the network: outside the network's key, inside the masks'."""
    from dataclasses import replace

    from mmlib import segmentation as S
    from mmlib.imaging import read_image, resize_square

    images, masks = blobs
    base = fitted.settings
    assert base.scales == (64,) and replace(base, tta_scales=(64,)).scales == (64,)
    multi = replace(fitted, settings=replace(base, tta_scales=(96, 64)))
    assert multi.settings.scales == (64, 96)
    probs, shapes = multi.probabilities(images[14:16])
    one, _ = fitted.probabilities(images[14:16])
    for p, q, image, shape in zip(probs, one, images[14:16], shapes):
        x = torch.from_numpy(resize_square(read_image(image), 96))[None, None]
        with torch.no_grad():
            at96 = fitted._sigmoid(fitted.network.eval(), S._normalise(x))[0, 0].numpy()
        np.testing.assert_allclose(p, (q + S._rebox(at96, shape, 96, 64)) / 2, atol=1e-6)
    top, left, nh, nw = S._letterbox(shapes[0], 64)  # a map brought into its own letterbox is itself inside it
    same = S._rebox(one[0], shapes[0], 64, 64)
    np.testing.assert_allclose(same[top:top + nh, left:left + nw], one[0][top:top + nh, left:left + nw], atol=1e-6)
    assert not same[:top].any() and not same[:, :left].any()
    scored = [dice_iou(pm.mask, read_mask(m))[0] for pm, m in zip(multi.predict(images[14:]), masks[14:])]
    assert np.mean(scored) > 0.7
    # the refiner's margins (the fitted network stands in for a refiner of 64 px crops)
    refined = S.Segmenter(fitted.network, replace(base, refine_size=64), {}, fitted.network)
    two = replace(refined, settings=replace(refined.settings, refine_margins=(0.3, 0.8)))
    assert refined.settings.margins == (0.3,) and two.settings.margins == (0.3, 0.8)
    alone = replace(refined, settings=replace(refined.settings, refine_margins=(0.3,)))
    for a, b in zip(refined.predict(images[14:]), alone.predict(images[14:])):
        assert np.array_equal(a.mask, b.mask)  # one margin: as before
    coarse = fitted.predict(images[14:])
    wide = two.predict(images[14:])
    assert any(not np.array_equal(a.mask, b.mask) for a, b in zip(wide, refined.predict(images[14:])))
    for pm, c in zip(wide, coarse):  # inside the widest crop
        y0, y1, x0, x1 = S._crop_box(c.mask, 0.8)
        assert pm.refined and not pm.mask[:y0].any() and not pm.mask[y1:].any() and not pm.mask[:, :x0].any()
    # keys: defaults leave old keys alone; set, they enter the masks' key but not the network's
    assert "tta_scales" not in SegmenterSettings().key_dict() and "refine_margins" not in SegmenterSettings().key_dict()
    tuned = SegmenterSettings(refine_size=128, tta_scales=[192], refine_margins=[0.3, 0.45])
    assert tuned.key_dict()["tta_scales"] == [192] and tuned.key_dict()["refine_margins"] == [0.3, 0.45]
    assert tuned.network_settings().key_dict() == SegmenterSettings(refine_size=128).key_dict()
    assert SegmenterSettings.from_dict(tuned.to_dict()) == tuned  # JSON round trip
    for bad, match in (({"tta_scales": [100]}, "multiples of 32"), ({"tta_scales": 192}, "must be a list"),
                       ({"tta_scales": [192.5]}, "whole numbers"), ({"refine_margins": [0.3]}, "needs a refiner"),
                       ({"refine_size": 128, "refine_margins": [3]}, r"in \[0, 2\]")):
        with pytest.raises(ValueError, match=match):
            SegmenterSettings(**bad)
