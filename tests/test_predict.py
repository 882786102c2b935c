"""Images in, answer out: mask-free `mmlib predict`, `mmlib segment`, model folders that carry a segmenter,
and bad inputs named with their file, row and column, nothing half-written."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import segmentation_standin
from mmlib.cli import main
from mmlib.cohort import ManifestError, load_manifest
from mmlib.deploy import mask_file_names, output_folder, predict_manifest, write_csv_atomic
from mmlib.experiment import train_model

TINY = {"image_size": 64, "n_augment": 0, "epochs": 2, "early_stopping": 0, "dim": 32, "n_folds": 3,
        "progress": False, "models": ["amw_cnn"]}


@pytest.fixture
def standin(monkeypatch):
    """``mmlib.segmentation`` replaced by the instant stand-in (the real network is tested in its own file)."""
    import mmlib

    monkeypatch.setitem(sys.modules, "mmlib.segmentation", segmentation_standin)
    monkeypatch.setattr(mmlib, "segmentation", segmentation_standin, raising=False)
    monkeypatch.setattr(segmentation_standin.Segmenter, "not_found", set())
    monkeypatch.setattr(segmentation_standin.Segmenter, "not_refined", set())
    monkeypatch.setattr(segmentation_standin.Segmenter, "uncertain", set())
    monkeypatch.setattr(segmentation_standin.Segmenter, "fits", [])
    return segmentation_standin


def _masked_cohort(folder: Path, n: int = 36) -> Path:
    """A small synthetic cohort whose ultrasound images have expert masks (the lesion boxes, filled)."""
    from mmlib.synth import generate_cohort

    manifest = generate_cohort(folder, n_patients=n, seed=5, ultrasound_size=64, mammography_size=64)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    masks = []
    for image, box in zip(table["ultrasound"], table["ultrasound_bbox"]):
        x0, y0, x1, y1 = (int(v) for v in box.split())
        h, w = np.asarray(Image.open(folder / image)).shape[:2]
        mask = np.zeros((h, w), np.uint8)
        mask[y0:y1, x0:x1] = 255
        name = Path(image).with_name(Path(image).stem + "_tumor.png")
        Image.fromarray(mask).save(folder / name)
        masks.append(name.as_posix())
    table["ultrasound_mask"] = masks
    table.to_csv(manifest, index=False)
    return manifest


def _strip(manifest: Path, out: Path, drop=("label", "ultrasound_mask", "ultrasound_bbox", "mammography_bbox",
                                            "split")) -> Path:
    """A copy of a manifest without the given columns, its paths made absolute (it lies in another folder)."""
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    for col in ("mammography", "ultrasound", "ultrasound_mask"):
        if col in table:
            table[col] = table[col].map(lambda v: str(manifest.parent / v) if v else v)
    table.drop(columns=[c for c in drop if c in table]).to_csv(out, index=False)
    return out


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    return _masked_cohort(tmp_path_factory.mktemp("masked"))


@pytest.fixture(scope="module")
def expert_model(masked, tmp_path_factory):
    """An AMW-CNN that crops on the expert's lesion and reads its outline (lesion_source expert)."""
    out = tmp_path_factory.mktemp("models") / "expert"
    return train_model(masked, "amw_cnn", out, {**TINY, "roi": True, "outline_features": True})


@pytest.fixture(scope="module")
def whole_image_model(masked, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "none"
    return train_model(masked, "amw_cnn", out, {**TINY, "roi": True, "outline_features": True,
                                                 "lesion_source": "none"})


@pytest.fixture
def predicted_model(masked, standin, tmp_path):
    standin.Segmenter.not_found = {"SYN0004"}  # its cross-fitted mask is empty, as at prediction time
    return train_model(masked, "amw_cnn", tmp_path / "predicted", {**TINY, "roi": True, "outline_features": True,
                                                                   "lesion_source": "predicted",
                                                                   "segmenter": {"uncertain_below": 0.5}})


# --- model folders --------------------------------------------------------------------------------------------


def test_predicted_model_folder_carries_its_segmenter(predicted_model, standin):
    files = sorted(p.relative_to(predicted_model).as_posix() for p in predicted_model.rglob("*") if p.is_file())
    assert files == ["model.json", "model.safetensors", "segmenter/segmenter.json", "segmenter/segmenter.safetensors"]
    meta = json.loads((predicted_model / "model.json").read_text())
    assert meta["lesion"] == {"source": "predicted", "modalities": ["ultrasound"],
                              "segmenters": {"ultrasound": "segmenter"}}
    # Cross-fitting: one segmenter per fold on the other folds' masks, then one on all development masks.
    fits = standin.Segmenter.fits
    assert len(fits) == TINY["n_folds"] + 1 and max(fits[:-1]) < fits[-1] == meta["info"]["trained_on_patients"]
    crossfit = meta["info"]["crossfit_segmentation"]["ultrasound"]
    assert crossfit["lesion_found"] == crossfit["images"] - 1 and 0 < crossfit["dice_mean"] < 1
    assert not (predicted_model.parent / "predicted.work").exists()


def test_whole_image_model_reads_no_lesion(whole_image_model):
    meta = json.loads((whole_image_model / "model.json").read_text())
    assert meta["lesion"]["source"] == "none"
    assert meta["sample_spec"]["images"]["roi"] is False and meta["sample_spec"]["outline"] is None


# --- predict --------------------------------------------------------------------------------------------------


def test_predict_without_masks_boxes_or_labels(whole_image_model, masked, tmp_path, capsys):
    bare = _strip(masked, tmp_path / "bare.csv")
    out = tmp_path / "p.csv"
    assert main(["predict", str(whole_image_model), str(bare), "--out", str(out)]) == 0
    pred = pd.read_csv(out)
    assert len(pred) == 36 and pred["prob_malignant"].between(0, 1).all()
    assert "label" not in pred and set(pred["lesion_source"]) == {"none"}
    assert set(pred["predicted"]) <= {"benign", "malignant"}
    # Labels, where present, are kept; the probabilities do not depend on them or on the masks.
    labelled = predict_manifest(whole_image_model, masked)
    assert list(labelled["label"]) == list(pd.read_csv(masked)["label"])
    np.testing.assert_allclose(labelled["prob_malignant"], pred["prob_malignant"], atol=1e-6)


def test_expert_model_without_masks_names_the_rows_and_column(expert_model, masked, tmp_path, capsys):
    table = pd.read_csv(masked, dtype=str, keep_default_na=False)
    table.loc[[2, 5], "ultrasound_mask"] = ""
    copy = masked.parent / "partial.csv"  # beside the images: the manifest's paths are relative to its folder
    table.to_csv(copy, index=False)
    out = tmp_path / "p.csv"
    assert main(["predict", str(expert_model), str(copy), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "column 'ultrasound_mask'" in err and "2 row(s)" in err
    assert f"rows 4 ({table.loc[2, 'patient_id']}), 7 ({table.loc[5, 'patient_id']})" in err
    assert "lesion_source 'expert'" in err and not out.exists()


def test_predicted_model_segments_and_flags_the_fallback(predicted_model, masked, standin, tmp_path, capsys):
    bare = _strip(masked, tmp_path / "bare.csv")
    standin.Segmenter.not_found = {"SYN0007"}
    standin.Segmenter.not_refined = {"SYN0009"}
    standin.Segmenter.uncertain = {"SYN0011"}
    out = tmp_path / "p.csv"
    assert main(["predict", str(predicted_model), str(bare), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "1 patient(s) where the refiner found nothing" in said
    assert "1 patient(s) with an uncertain lesion outline: check their masks" in said
    pred = pd.read_csv(out, keep_default_na=False).set_index("patient_id")
    assert len(pred) == 36 and (pred["lesion_source"] == "predicted").all()
    assert not pred.loc["SYN0007", "lesion_found"] and pred.drop(index="SYN0007")["lesion_found"].all()
    assert pred.loc["SYN0007", "note"] == "no lesion found in ultrasound view 1 (SYN0007.png): whole image used"
    assert pred.loc["SYN0009", "note"] == ("the refiner found no lesion around the lesion found in ultrasound view 1 "
                                           "(SYN0009.png): the whole-image outline used")
    assert pred.loc["SYN0011", "note"] == ("the lesion outline in ultrasound view 1 (SYN0011.png) is uncertain (segmenter "
                                           "score 0.300, below 0.5): check its mask (mmlib segment)")
    assert pred.loc["SYN0011", "lesion_found"]  # found, and used: the note says how far to trust it
    assert (pred.drop(index=["SYN0007", "SYN0009", "SYN0011"])["note"] == "").all()
    # The expert's masks, when present, are not read: the same probabilities with them.
    again = predict_manifest(predicted_model, masked).set_index("patient_id")
    np.testing.assert_allclose(again.loc[pred.index, "prob_malignant"], pred["prob_malignant"], atol=1e-6)


def test_predict_needs_the_age_column_where_the_model_reads_age(whole_image_model, masked, tmp_path):
    no_age = _strip(masked, tmp_path / "no_age.csv", drop=("age",))
    with pytest.raises(ManifestError, match="missing required column\\(s\\) 'age'"):
        predict_manifest(whole_image_model, no_age)


# --- segment --------------------------------------------------------------------------------------------------


def test_mask_file_names_follow_the_image():
    assert mask_file_names([Path("a/bus_0001-l.png"), Path("b/bus_0001-l.png"), Path("c/x.dcm")]) == [
        "bus_0001-l_mask.png", "bus_0001-l-2_mask.png", "x_mask.png"]


def test_segment_writes_one_mask_per_image_and_a_manifest_copy(predicted_model, masked, standin, tmp_path):
    standin.Segmenter.not_found = {"SYN0003"}
    standin.Segmenter.not_refined = {"SYN0005"}
    standin.Segmenter.uncertain = {"SYN0005", "SYN0006"}
    out = tmp_path / "seg"
    assert main(["segment", str(predicted_model), str(masked), "--out", str(out)]) == 0
    copy = out / masked.name
    table = pd.read_csv(copy, dtype=str, keep_default_na=False).set_index("patient_id")
    masks = sorted(p.name for p in out.glob("*_mask.png"))
    assert masks == sorted(f"{pid}_mask.png" for pid in table.index)
    for pid in table.index[:5]:
        image = Image.open(masked.parent / "images" / "ultrasound" / f"{pid}.png")
        assert Image.open(out / f"{pid}_mask.png").size == image.size
        assert table.loc[pid, "ultrasound_mask"] == f"{pid}_mask.png"
    assert table.loc["SYN0003", "ultrasound_lesion_found"] == "false"
    assert not np.asarray(Image.open(out / "SYN0003_mask.png")).any()
    assert (table.drop(index="SYN0003")["ultrasound_lesion_found"] == "true").all()
    # The copy reads from its own folder; its masks are the segmenter's, ready to correct.
    cohort = load_manifest(copy)
    assert cohort.patients["ultrasound_mask"].iloc[0][0] == out / f"{cohort.patients['patient_id'].iloc[0]}_mask.png"
    record = json.loads((out / "segment.json").read_text())
    assert record["lesion_found"] == len(table) - 1 and record["refiner_found_nothing"] == 1
    assert record["uncertain_outline"] == 2
    # An earlier output is replaced; a folder that is not one is left alone.
    assert main(["segment", str(predicted_model), str(masked), "--out", str(out)]) == 0
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert main(["segment", str(predicted_model), str(masked), "--out", str(other)]) == 1
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_segment_refuses_a_model_without_segmenter(whole_image_model, masked, tmp_path, capsys):
    assert main(["segment", str(whole_image_model), str(masked), "--out", str(tmp_path / "s")]) == 1
    assert "has no segmenter" in capsys.readouterr().err and not (tmp_path / "s").exists()


# --- bad inputs -----------------------------------------------------------------------------------------------


def _broken_copy(masked: Path, tmp_path: Path, what: str) -> tuple[Path, str]:
    """A copy of the cohort (images linked) with one bad file; returns the manifest and the bad file's name."""
    import shutil

    folder = tmp_path / "cohort"
    shutil.copytree(masked.parent, folder)
    table = pd.read_csv(folder / masked.name, dtype=str, keep_default_na=False)
    if what == "image":
        bad = folder / table.loc[3, "ultrasound"]
        bad.write_bytes(bad.read_bytes()[:40])  # truncated
    elif what == "empty mask":
        bad = folder / table.loc[3, "ultrasound_mask"]
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(bad)
    else:
        bad = folder / table.loc[3, "ultrasound_mask"]
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(bad)
    return folder / masked.name, bad.name


@pytest.mark.parametrize("what, message", [
    ("image", "column 'ultrasound': cannot read image"),
    ("empty mask", "column 'ultrasound_mask': mask '.*' is empty"),
    ("small mask", "column 'ultrasound_mask': mask '.*' is 32x32 pixels but its image is 64x64"),
])
def test_bad_input_is_named_and_nothing_is_written(what, message, masked, expert_model, tmp_path, capsys):
    manifest, bad = _broken_copy(masked, tmp_path, what)
    pid = pd.read_csv(manifest)["patient_id"][3]
    out = tmp_path / "p.csv"
    assert main(["predict", str(expert_model), str(manifest), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"row 5 (patient {pid})" in err and bad in err
    assert re.search(message, err), err
    assert not out.exists() and not list(tmp_path.glob(".p.csv*"))
    model_dir = tmp_path / "model"
    assert main(["train", str(manifest), "--model", "amw_cnn", "--out", str(model_dir),
                 "--params", _profile(tmp_path, roi=True, outline_features=True)]) == 1
    err = capsys.readouterr().err
    assert bad in err and f"row 5 (patient {pid})" in err
    assert not model_dir.exists() and not list(tmp_path.glob(".model*")) and not (tmp_path / "model.work").exists()


def _profile(folder: Path, **kw) -> str:
    import yaml

    path = folder / "profile.yaml"
    path.write_text(yaml.safe_dump({**TINY, **kw}))
    return str(path)


def test_csv_and_folders_are_written_whole(tmp_path):
    out = tmp_path / "x.csv"
    write_csv_atomic(pd.DataFrame({"a": [1]}), out)
    assert out.read_text() == "a\n1\n"
    with pytest.raises(RuntimeError):
        with output_folder(tmp_path / "f", marker="done.json") as tmp:
            (tmp / "half.csv").write_text("x")
            raise RuntimeError("stopped")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]
    with output_folder(tmp_path / "f", marker="done.json") as tmp:
        (tmp / "done.json").write_text("{}")
    assert [p.name for p in (tmp_path / "f").iterdir()] == ["done.json"]


def test_outputs_get_the_permissions_of_plain_new_files(tmp_path):
    """Temporary files and folders (and safetensors files) are private; an output renamed from one is not."""
    import os
    import stat

    from safetensors.torch import save_file
    import torch

    old = os.umask(0o022)
    try:
        write_csv_atomic(pd.DataFrame({"a": [1]}), tmp_path / "p.csv")
        with output_folder(tmp_path / "m", marker="model.json") as tmp:
            (tmp / "model.json").write_text("{}")
            save_file({"w": torch.zeros(1)}, str(tmp / "model.safetensors"))
            (tmp / "sub").mkdir(mode=0o700)
            (tmp / "sub" / "x.txt").write_text("x")
            os.chmod(tmp / "sub" / "x.txt", 0o600)
    finally:
        os.umask(old)

    def mode(p):
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(tmp_path / "p.csv") == 0o644
    assert mode(tmp_path / "m") == mode(tmp_path / "m" / "sub") == 0o755
    assert {mode(p) for p in (tmp_path / "m").rglob("*") if p.is_file()} == {0o644}


def test_real_segmenter_round_trip(masked, tmp_path, monkeypatch):
    """The model folder, `mmlib predict` and `mmlib segment` with the real segmenter (a tiny one)."""
    from mmlib import segmentation

    small = segmentation.SegmenterSettings(image_size=32, epochs=1, n_augment=0, bs=8, min_area=0.0)
    real_fit = segmentation.fit_segmenter

    def tiny_fit(images, masks, *, settings=None, **kw):
        return real_fit(images, masks, settings=small, **kw)

    monkeypatch.setattr(segmentation, "fit_segmenter", tiny_fit)
    model = train_model(masked, "amw_cnn", tmp_path / "m", {**TINY, "roi": True, "lesion_source": "predicted",
                                                             "n_folds": 2})
    assert segmentation.Segmenter.load(model / "segmenter").settings.image_size == 32
    pred = predict_manifest(model, _strip(masked, tmp_path / "bare.csv"))
    assert len(pred) == 36 and pred["prob_malignant"].between(0, 1).all()
    assert pred["lesion_found"].dtype == bool and (pred["note"] != "").sum() == (~pred["lesion_found"]).sum()
    assert main(["segment", str(model), str(masked), "--out", str(tmp_path / "seg")]) == 0
    first = pd.read_csv(masked)["ultrasound"][0]
    mask = Image.open(tmp_path / "seg" / (Path(first).stem + "_mask.png"))
    assert mask.size == Image.open(masked.parent / first).size


def test_train_can_carry_the_mean_of_its_cross_fitting_segmenters(masked, tmp_path, monkeypatch):
    """deployed_segmenter folds: `mmlib train` saves the mean of its cross-fitting folds' segmenters (no fit on all
    rows), as one segmenter folder that `mmlib predict` reads like any other."""
    from mmlib import segmentation

    small = segmentation.SegmenterSettings(image_size=32, epochs=1, n_augment=0, bs=8, min_area=0.0)
    real_fit, sizes = segmentation.fit_segmenter, []

    def tiny_fit(images, masks, *, settings=None, **kw):
        sizes.append(len(images))
        return real_fit(images, masks, settings=small, **kw)

    monkeypatch.setattr(segmentation, "fit_segmenter", tiny_fit)
    model = train_model(masked, "amw_cnn", tmp_path / "m", {**TINY, "roi": True, "lesion_source": "predicted",
                                                             "n_folds": 2, "deployed_segmenter": "folds"})
    assert len(sizes) == 2  # the two cross-fitting folds' segmenters, and no third on every row
    seg = segmentation.Segmenter.load(model / "segmenter")
    assert seg.n_members == 2 and seg.info["deployed_segmenter"] == "folds"
    assert json.loads((model / "segmenter" / "segmenter.json").read_text())["format"] == segmentation.ENSEMBLE_FORMAT
    pred = predict_manifest(model, _strip(masked, tmp_path / "bare.csv"))
    assert len(pred) == 36 and pred["prob_malignant"].between(0, 1).all()


def test_train_saves_one_member_per_profile_seed(masked, tmp_path):
    """`mmlib train` with several seeds saves their average, the model the study's seed-averaged metrics describe."""
    from mmlib.learner import SeedEnsemble, load_model

    folder = train_model(masked, "amw_cnn", tmp_path / "ens", {**TINY, "lesion_source": "none", "seeds": [0, 1],
                                                               "epochs": 1})
    model, meta = load_model(folder)
    assert isinstance(model, SeedEnsemble) and model.seeds == [0, 1] and meta["info"]["seeds"] == [0, 1]
    assert meta["threshold"] == pytest.approx(np.mean(meta["ensemble"]["thresholds"]))
    single = train_model(masked, "amw_cnn", tmp_path / "one", {**TINY, "lesion_source": "none", "seeds": [0],
                                                               "epochs": 1})
    assert not isinstance(load_model(single)[0], SeedEnsemble)
    out = predict_manifest(folder, _strip(masked, tmp_path / "bare.csv"))
    first = predict_manifest(single, _strip(masked, tmp_path / "bare.csv"))
    assert out["prob_malignant"].between(0, 1).all() and not np.allclose(out["prob_malignant"], first["prob_malignant"])
