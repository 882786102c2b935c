"""Lesion-outline morphometry: the descriptors, their scaling, the samples and models that read them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmlib.morphometry import OUTLINE_FEATURES, outline_features, outline_of
from test_models import NAMES, build, make_batch, perturb_absent

F = {name: i for i, name in enumerate(OUTLINE_FEATURES)}


def ellipse(h=200, w=200, ry=40, rx=40, cy=100, cx=100, angle=0.0):
    yy, xx = np.mgrid[:h, :w].astype(float)
    y, x = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1


def star(h=200, w=200, r=40, spikes=12, depth=0.45):
    yy, xx = np.mgrid[:h, :w].astype(float)
    y, x = yy - h / 2, xx - w / 2
    radius = r * (1 - depth / 2 + depth / 2 * np.cos(spikes * np.arctan2(y, x)))
    return np.hypot(y, x) <= radius


def test_disc_is_round_solid_and_smooth():
    f = outline_features(ellipse())
    assert f.shape == (len(OUTLINE_FEATURES),) and f.dtype == np.float32
    assert abs(f[F["log_depth_width"]]) < 0.05
    assert f[F["solidity"]] > 0.95 and f[F["axis_ratio"]] > 0.95
    assert abs(f[F["log_compactness"]]) < 0.35  # a digital circle's perimeter is a little longer than 2 pi r
    assert f[F["radial_std"]] < 0.03 and abs(f[F["log_ellipse_fit"]]) < 0.05
    assert f[F["roughness"]] < 0.02 and f[F["concavity"]] < 0.02
    assert f[F["extent"]] == pytest.approx(np.pi / 4, abs=0.03)
    assert f[F["has_outline"]] == 1.0


def test_orientation_taller_than_wide_and_not_parallel():
    tall, wide = outline_features(ellipse(ry=60, rx=25)), outline_features(ellipse(ry=25, rx=60))
    assert tall[F["log_depth_width"]] > 0.7 and wide[F["log_depth_width"]] < -0.7
    assert tall[F["non_parallel"]] > 0.95 and wide[F["non_parallel"]] < 0.05
    assert tall[F["axis_ratio"]] == pytest.approx(25 / 60, abs=0.03)
    tilted = outline_features(ellipse(ry=25, rx=60, angle=np.pi / 6))
    assert tilted[F["non_parallel"]] == pytest.approx(0.5, abs=0.05)


def test_spiculated_outline_differs_from_a_disc_the_way_malignancy_does():
    disc, spiky = outline_features(ellipse()), outline_features(star())
    assert spiky[F["solidity"]] < disc[F["solidity"]] - 0.1
    assert spiky[F["log_compactness"]] > disc[F["log_compactness"]] + 0.2
    assert spiky[F["radial_std"]] > disc[F["radial_std"]] + 0.05
    assert spiky[F["roughness"]] > disc[F["roughness"]] and spiky[F["concavity"]] > disc[F["concavity"]]


def test_scale_free_and_flip_invariant():
    small = outline_features(ellipse(h=120, w=160, ry=20, rx=35, cy=60, cx=80))
    big = outline_features(ellipse(h=720, w=960, ry=120, rx=210, cy=360, cx=480))  # downsampled to 256 px first
    np.testing.assert_allclose(small[:5], big[:5], atol=0.06)
    shape = star(spikes=7) | ellipse(ry=15, rx=70, cy=120)
    np.testing.assert_allclose(outline_features(shape), outline_features(shape[:, ::-1]), atol=1e-5)


def test_degenerate_masks():
    np.testing.assert_array_equal(outline_features(np.zeros((30, 40))), np.zeros(len(OUTLINE_FEATURES)))
    one = np.zeros((30, 40), dtype=bool)
    one[5, 7] = True
    line = np.zeros((30, 40), dtype=bool)
    line[10, 3:30] = True
    for m in (one, line):
        f = outline_features(m)
        assert np.isfinite(f).all() and f[F["has_outline"]] == 1.0
    with pytest.raises(ValueError, match="non-empty \\(H, W\\)"):
        outline_features(np.zeros(5))


def test_outline_of_files(tmp_path):
    path = tmp_path / "case_tumor.png"
    Image.fromarray(ellipse(ry=50, rx=20).astype(np.uint8) * 255).save(path)
    f = outline_of(path)
    assert f[F["log_depth_width"]] > 0.8 and f[F["has_outline"]] == 1.0
    f[:] = 0  # a copy: the cache is not altered
    assert outline_of(path)[F["has_outline"]] == 1.0
    np.testing.assert_array_equal(outline_of(None), np.zeros(len(OUTLINE_FEATURES)))
    bad = tmp_path / "not_a_mask.png"
    bad.write_text("not a png")
    with pytest.raises(ValueError, match="not_a_mask.png"):
        outline_of(bad)


# ------------------------------------------------------------------------------------------ samples
@pytest.fixture(scope="module")
def masked_cohort(tmp_path_factory):
    """12 ultrasound patients, masks on all but the last (round benign, spiculated malignant)."""
    from mmlib.cohort import load_manifest, write_manifest

    root = tmp_path_factory.mktemp("masked")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        malignant = i % 2 == 1
        img = (rng.random((96, 96)) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"u{i}.png")
        row = {"patient_id": f"P{i}", "label": int(malignant), "age": 40 + i, "ultrasound": f"u{i}.png"}
        if i < 11:
            m = star(96, 96, r=20 + i, spikes=9) if malignant else ellipse(96, 96, ry=15 + i, rx=25, cy=48, cx=48)
            Image.fromarray(m.astype(np.uint8) * 255).save(root / f"u{i}_mask.png")
            row["ultrasound_mask"] = f"u{i}_mask.png"
        rows.append(row)
    write_manifest(rows, root / "manifest.csv")
    return load_manifest(root / "manifest.csv")


def test_scaler_standardises_views_with_an_outline_only(masked_cohort):
    from mmlib.data import OutlineScaler, view_outlines

    pats = masked_cohort.patients
    scaler = OutlineScaler.fit(pats.iloc[:10])
    raw = np.stack([view_outlines(pats.iloc[i], "ultrasound", 2) for i in range(12)])
    assert raw.shape == (12, 2, len(OUTLINE_FEATURES)) and (raw[:, 1] == 0).all()  # second slot: padding
    z = scaler.transform(raw, "ultrasound")
    np.testing.assert_allclose(z[:10, 0, :-1].mean(0), 0, atol=1e-5)
    np.testing.assert_array_equal(z[:, :, -1], raw[:, :, -1])
    np.testing.assert_array_equal(z[11], 0)  # no mask: all zero, flag 0
    assert scaler.mean["mammography"] == [0.0] * (len(OUTLINE_FEATURES) - 1)  # no mammography outlines
    with pytest.raises(ValueError, match="need lesion masks"):
        OutlineScaler.fit(pats.iloc[11:])


def test_samples_carry_outlines_and_the_spec_round_trips(masked_cohort):
    from mmlib.data import ClinicalScaler, ImageSettings, MultimodalDataset, OutlineScaler, SampleSpec

    pats = masked_cohort.patients
    rows = np.arange(len(pats))
    spec = SampleSpec(ClinicalScaler.fit(pats, masked_cohort.clinical_columns), ImageSettings(size=32, roi=True),
                      {"mammography": 1, "ultrasound": 1}, True, OutlineScaler.fit(pats))
    back = SampleSpec.from_dict(spec.to_dict())
    assert back.outline == spec.outline
    x, _ = MultimodalDataset(masked_cohort, rows, back)[1]
    assert x["ultrasound_outline"].shape == (1, len(OUTLINE_FEATURES)) and x["ultrasound_outline"][0, -1] == 1
    assert x["mammography_outline"].shape == (1, len(OUTLINE_FEATURES)) and not x["mammography_outline"].any()
    plain = SampleSpec(spec.clinical, spec.images, spec.views, True)
    assert SampleSpec.from_dict(plain.to_dict()).outline is None
    assert "ultrasound_outline" not in MultimodalDataset(masked_cohort, rows, plain)[1][0]


# ------------------------------------------------------------------------------------------ models
K_OUT = len(OUTLINE_FEATURES)


def with_outlines(x: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    y = dict(x)
    for m in ("mammography", "ultrasound"):
        y[f"{m}_outline"] = torch.randn(*x[f"{m}_views"].shape, K_OUT, generator=g)
    return y


@pytest.mark.parametrize("name", NAMES)
def test_models_read_outlines_only_where_the_view_is_present(name):
    model = build(name, outline_features=K_OUT)
    x = with_outlines(make_batch())
    with torch.no_grad():
        ref = model(x)
        noisy = perturb_absent(x)
        for m in ("mammography", "ultrasound"):
            noisy[f"{m}_outline"] = noisy[f"{m}_outline"].clone()
        noisy["mammography_outline"][0] = 1e3  # mammography flagged absent
        noisy["ultrasound_outline"][1, 1] = -1e3  # padded view
        noisy["ultrasound_outline"][2] = 1e3  # no ultrasound view
        assert torch.allclose(model(noisy), ref, atol=1e-6, rtol=0)
        moved = dict(x)
        moved["ultrasound_outline"] = x["ultrasound_outline"] + 3.0
        out = model(moved)
    if "ultrasound" in model.modalities:
        assert out[0] != ref[0] and out[1] != ref[1]
    else:
        assert torch.equal(out, ref)


def test_outline_inputs_are_checked_and_kept_in_the_config():
    from mmlib.models import create_model

    model = build("cuf_mt", outline_features=K_OUT)
    assert model.config()["outline_features"] == K_OUT
    assert create_model("cuf_mt", **model.config()).outline_features == K_OUT
    with pytest.raises(ValueError, match="mammography_outline.*got nothing"):
        model(make_batch())
    x = with_outlines(make_batch())
    x["ultrasound_outline"] = x["ultrasound_outline"][..., :3]
    with pytest.raises(ValueError, match="outline_features=11"):
        model(x)
    with pytest.raises(ValueError, match="outline_features"):
        build("cuf_mt", outline_features=-1)


# ------------------------------------------------------------------------------------------ parameters
def test_outline_parameter_is_checked(tmp_path, masked_cohort):
    from mmlib import experiment as ex
    from mmlib.cohort import write_manifest

    with pytest.raises(ex.ParamsError, match="outline_features.*true or false"):
        ex.load_params("smoke", outline_features="yes")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "u.png")
    write_manifest([{"patient_id": f"P{i}", "label": i % 2, "age": 50, "ultrasound": "u.png"} for i in range(4)],
                   tmp_path / "manifest.csv")
    p = ex.load_params("smoke", cohort=str(tmp_path / "manifest.csv"), outline_features=True)
    with pytest.raises(ex.ParamsError, match="needs lesion masks.*outline_features: false"):
        ex.prepare_cohort(p)
    # ROI crops need a mask or a box somewhere, or they would silently be whole images.
    with pytest.raises(ex.ParamsError, match="'roi' crops around lesion masks or boxes.*manifest.csv.*set roi: false"):
        ex.prepare_cohort(ex.load_params("smoke", cohort=str(tmp_path / "manifest.csv"), roi=True))
    write_manifest([{"patient_id": f"P{i}", "label": i % 2, "age": 50, "ultrasound": "u.png",
                     "ultrasound_bbox": "2 2 20 20" if i == 0 else ""} for i in range(4)], tmp_path / "boxed.csv")
    cohort, _ = ex.prepare_cohort(ex.load_params("smoke", cohort=str(tmp_path / "boxed.csv"), roi=True))
    assert cohort.patients["ultrasound_bbox"].iloc[0] == [(2, 2, 20, 20)]


def test_breast_lesions_outlines_separate_the_classes(shared_data):
    """On BrEaST-Lesions_USG, malignant outlines are less solid, more indented and less compact (a known signal)."""
    from sklearn.metrics import roc_auc_score

    from mmlib import experiment as ex
    from mmlib.data import view_outlines

    cohort, _ = ex.prepare_cohort(ex.load_params("breast-lesions-usg-expert", progress=False))
    pats = cohort.patients
    f = np.stack([view_outlines(pats.iloc[i], "ultrasound", 1)[0] for i in range(len(pats))])
    y = pats["label"].to_numpy()
    assert (f[:, F["has_outline"]] == 1).all()
    assert roc_auc_score(y, -f[:, F["solidity"]]) > 0.7
    assert roc_auc_score(y, f[:, F["concavity"]]) > 0.7
    assert roc_auc_score(y, f[:, F["log_compactness"]]) > 0.65


def test_fingerprint_changes_when_an_expert_mask_is_redrawn_in_place(masked_cohort):
    """Crops, outline features and segmenters all read the expert masks: a mask edited in place (same path, same
    manifest) must change the cohort fingerprint, so finished work is not reused on stale masks."""
    from mmlib.experiment import cohort_fingerprint

    before = cohort_fingerprint(masked_cohort)
    mask = masked_cohort.patients["ultrasound_mask"].iloc[0][0]
    original = mask.read_bytes()
    try:
        drawn = np.asarray(Image.open(mask)).copy()
        drawn[0, 0] = 255 - drawn[0, 0]  # one pixel redrawn, same path, same manifest
        Image.fromarray(drawn).save(mask)
        assert cohort_fingerprint(masked_cohort) != before
    finally:
        mask.write_bytes(original)
    assert cohort_fingerprint(masked_cohort) == before
