"""The synthetic paired cohort: determinism, the generative model's known answers, the files it writes."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from scipy import ndimage
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from mmlib import synth
from mmlib.schema import LABELS, REQUIRED_COLUMNS
from mmlib.synth import (
    SOURCES,
    SynthConfig,
    generate_cohort,
    load_cohort_info,
    load_truth,
    render_mammogram,
    render_ultrasound,
)

# Small images keep the whole file fast; the renderers take any size.
SMALL = dict(ultrasound_size=64, mammography_size=64)


def _hashes(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A small cohort with two views, DICOM mammograms and some missing inputs."""
    out = tmp_path_factory.mktemp("synth")
    generate_cohort(out, n_patients=30, seed=3, mammography_views=2,
                    missing={"mammography": 0.3, "ultrasound": 0.3, "age": 0.3}, **SMALL)
    return out


# ---------------------------------------------------------------------------------------- determinism


def test_same_config_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    config = SynthConfig(n_patients=8, seed=5, mammography_views=2, missing={"age": 0.25}, **SMALL)
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_cohort(first, config)
    generate_cohort(second, config)
    generate_cohort(other, config, seed=6)
    a, b, c = _hashes(first), _hashes(second), _hashes(other)
    assert len(a) == 3 + 8 * 2 + 8  # manifest, truth, cohort.json, 2 mammograms and 1 ultrasound each
    assert a == b
    assert a["truth.csv"] != c["truth.csv"]
    shared_images = [k for k in a if k.startswith("images/") and k in c]
    assert shared_images and all(a[k] != c[k] for k in shared_images)


def test_regenerating_in_place_is_identical_and_a_foreign_folder_is_refused(tmp_path):
    out = tmp_path / "cohort"
    generate_cohort(out, n_patients=6, seed=1, **SMALL)
    before = _hashes(out)
    generate_cohort(out, n_patients=6, seed=1, **SMALL)
    assert _hashes(out) == before
    # A smaller cohort in the same folder leaves no stale image behind.
    generate_cohort(out, n_patients=4, seed=1, **SMALL)
    assert len(list((out / "images" / "ultrasound").iterdir())) == 4

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes|synthetic"):
        generate_cohort(foreign, n_patients=4, **SMALL)
    assert (foreign / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("field, value", [
    ("n_patients", 1),
    ("n_patients", 10.0),
    ("seed", -1),
    ("prevalence", 0.0),
    ("prevalence", 1.0),
    ("informativeness", {"ultrasound": -0.5}),
    ("informativeness", {"doppler": 1.0}),
    ("informativeness", [2.2, 1.2, 0.8]),
    ("age_mean_benign", 5.0),
    ("age_sd", 0.0),
    ("ultrasound_size", 512),
    ("mammography_size", 16),
    ("mammography_views", 3),
    ("mammography_format", "jpeg"),
    ("missing", {"ultrasound": 1.5}),
    ("missing", {"clinical": 0.1}),
    ("missing", {"mammography": 1.0, "ultrasound": 1.0, "age": 1.0}),
    ("test_fraction", 1.0),
    ("test_fraction", -0.1),
])
def test_bad_config_fields_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        SynthConfig(**{field: value})


def test_class_counts_that_leave_a_class_empty_are_refused():
    with pytest.raises(ValueError, match="no malignant"):
        SynthConfig(n_patients=3, prevalence=0.1)
    with pytest.raises(ValueError, match="test_fraction"):
        SynthConfig(n_patients=4, prevalence=0.5, test_fraction=0.8)


def test_partial_dicts_update_the_defaults():
    config = SynthConfig(informativeness={"age": 0.0}, missing={"ultrasound": 0.1})
    assert config.informativeness == {"ultrasound": 2.2, "mammography": 1.5, "age": 0.0}
    assert config.missing == {"mammography": 0.0, "ultrasound": 0.1, "age": 0.0}


def test_unknown_overrides_and_views_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_patient"):
        generate_cohort(tmp_path / "x", n_patient=10)
    with pytest.raises(ValueError, match="view"):
        render_mammogram(0.0, np.random.default_rng(0), 64, "ML")


# ------------------------------------------------------------------------------- the generative model


def test_class_counts_are_exact_and_the_test_split_is_stratified():
    config = SynthConfig(n_patients=301, prevalence=0.4, test_fraction=0.2)
    latents = synth._draw_latents(config)
    y = latents["y"].to_numpy()
    assert y.sum() == 120  # round(301 * 0.4) = round(120.4)
    split = synth._draw_split(config, y)
    assert set(split) == {"dev", "test"}
    assert ((split == "test") & (y == 1)).sum() == 24  # round(0.2 * 120)
    assert ((split == "test") & (y == 0)).sum() == 36  # round(0.2 * 181) = round(36.2)
    assert (synth._draw_split(SynthConfig(n_patients=50, test_fraction=0.0), y[:50]) == "dev").all()


def test_latent_risk_is_the_bayes_log_odds():
    config = SynthConfig(n_patients=500, prevalence=0.3, seed=4)
    latents = synth._draw_latents(config)
    # A second implementation: the log likelihood ratio of the two class densities plus the prior log-odds.
    expected = math.log(0.3 / 0.7) + sum(
        norm.logpdf(latents[f"z_{s}"], loc=config.informativeness[s]) - norm.logpdf(latents[f"z_{s}"])
        for s in SOURCES)
    np.testing.assert_allclose(latents["latent_risk"], expected, rtol=1e-10, atol=1e-10)


def test_single_source_aucs_and_age_effect_match_the_configured_informativeness():
    config = SynthConfig(n_patients=40000, seed=11)
    latents = synth._draw_latents(config)
    y = latents["y"].to_numpy()
    for s in SOURCES:
        theoretical = norm.cdf(config.informativeness[s] / math.sqrt(2))
        assert roc_auc_score(y, latents[f"z_{s}"]) == pytest.approx(theoretical, abs=0.006)
    oracle = roc_auc_score(y, latents["latent_risk"])
    assert all(oracle > roc_auc_score(y, latents[f"z_{s}"]) + 0.01 for s in SOURCES)
    combined_d = math.sqrt(sum(d**2 for d in config.informativeness.values()))
    assert oracle == pytest.approx(norm.cdf(combined_d / math.sqrt(2)), abs=0.004)

    age = latents["age"]
    benign, malignant = age[y == 0], age[y == 1]
    pooled_sd = math.sqrt((benign.var() + malignant.var()) / 2)
    assert (malignant.mean() - benign.mean()) / pooled_sd == pytest.approx(config.informativeness["age"], abs=0.04)
    assert benign.mean() == pytest.approx(48.0, abs=0.3)
    assert age.min() >= 25.0 and age.max() <= 90.0
    np.testing.assert_array_equal(age, age.round(1))


def test_missing_rates_are_respected_and_no_patient_is_left_with_nothing():
    rates = {"mammography": 0.5, "ultrasound": 0.4, "age": 0.3}
    n = 20000
    missing = synth._draw_missing(SynthConfig(n_patients=n, missing=rates))
    assert not missing.all(axis=1).any()
    # Patients with nothing (probability prod(rates)) get back one input, chosen with weights 1 - rate.
    r = np.array([rates[k] for k in synth.MISSING_KEYS])
    expected = r - r.prod() * (1 - r) / (1 - r).sum()
    np.testing.assert_allclose(missing.mean(axis=0), expected, atol=4 * np.sqrt(0.25 / n))
    # Independent draws: both ultrasound and age are missing with probability 0.4 * 0.3, less the patients
    # with nothing (0.5 * 0.4 * 0.3) who get one of these two back (weights 0.6 and 0.7 of 1.8).
    both = 0.4 * 0.3 - 0.06 * (0.6 + 0.7) / 1.8
    assert (missing[:, 1] & missing[:, 2]).mean() == pytest.approx(both, abs=4 * np.sqrt(both / n))

    only_ultrasound = synth._draw_missing(SynthConfig(n_patients=500, missing={"mammography": 1.0, "age": 1.0}))
    assert only_ultrasound[:, 0].all() and only_ultrasound[:, 2].all() and not only_ultrasound[:, 1].any()


# --------------------------------------------------------------------------------------- files written


def test_manifest_follows_the_schema_and_hides_the_truth(cohort):
    manifest = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(manifest.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    assert "split" in manifest.columns
    assert not any(c.startswith("z_") or "risk" in c for c in manifest.columns)
    assert list(manifest["patient_id"]) == [f"SYN{i:04d}" for i in range(1, 31)]
    assert set(manifest["label"]) <= set(LABELS)
    truth = load_truth(cohort)
    assert list(truth["patient_id"]) == list(manifest["patient_id"])
    assert list(truth["label"]) == list(manifest["label"])

    for _, row in manifest.iterrows():
        assert row["mammography"] or row["ultrasound"] or row["age"], row["patient_id"]
        mg = row["mammography"].split("|") if row["mammography"] else []
        assert mg in ([], [f"images/mammography/{row['patient_id']}_{v}.dcm" for v in ("CC", "MLO")])
        if row["ultrasound"]:
            assert row["ultrasound"] == f"images/ultrasound/{row['patient_id']}.png"
        for path in mg + ([row["ultrasound"]] if row["ultrasound"] else []):
            assert (cohort / path).is_file()
        assert len(row["mammography_bbox"].split("|")) == len(mg) or not mg
    # Only images listed in the manifest are on disk.
    listed = {p for col in ("mammography", "ultrasound") for cell in manifest[col] for p in cell.split("|") if p}
    on_disk = {str(p.relative_to(cohort)) for p in (cohort / "images").rglob("*") if p.is_file()}
    assert listed == on_disk

    ages = pd.to_numeric(manifest["age"], errors="coerce")
    present = ages.notna().to_numpy()
    z_age = truth["z_age"].to_numpy()[present]
    np.testing.assert_allclose(ages[present], np.clip(48.0 + 11.0 * z_age, 25, 90).round(1))


def test_manifest_loads_with_the_project_reader(cohort):
    cohort_module = pytest.importorskip("mmlib.cohort")
    loaded = cohort_module.load_manifest(cohort / "manifest.csv")
    assert len(loaded) == 30
    truth = load_truth(cohort)
    np.testing.assert_array_equal(loaded.labels, (truth["label"] == "malignant").astype(int))


def test_cohort_info_reports_the_oracle(cohort):
    info = load_cohort_info(cohort)
    truth = load_truth(cohort)
    y = (truth["label"] == "malignant").to_numpy()
    assert info["synthetic"] is True and "synthetic" in info["note"].lower()
    assert info["generator_version"] == synth.GENERATOR_VERSION
    assert info["config"] == SynthConfig(**info["config"]).to_dict()
    assert info["oracle_auc"] == pytest.approx(roc_auc_score(y, truth["latent_risk"]), abs=1e-12)
    for s in SOURCES:
        assert info["source_auc"][s]["empirical"] == pytest.approx(roc_auc_score(y, truth[f"z_{s}"]), abs=1e-12)
    assert info["source_auc"]["ultrasound"]["theoretical"] == pytest.approx(norm.cdf(2.2 / math.sqrt(2)))
    assert info["importance_order"] == ["ultrasound", "mammography", "age"]
    assert info["n_malignant"] == 12 and info["n_test"] == 6
    # With inputs missing, the observed-data oracle cannot beat the full one in expectation; here it is lower.
    assert info["oracle_auc_observed"] < info["oracle_auc"]
    assert json.loads((cohort / "cohort.json").read_text()) == info


def test_importance_order_follows_the_configured_informativeness(tmp_path):
    generate_cohort(tmp_path, n_patients=10, informativeness={"age": 3.0, "ultrasound": 0.5}, **SMALL)
    assert load_cohort_info(tmp_path)["importance_order"] == ["age", "mammography", "ultrasound"]


def test_readers_name_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="truth.csv"):
        load_truth(tmp_path)
    with pytest.raises(FileNotFoundError, match="cohort.json"):
        load_cohort_info(tmp_path)


def test_images_decode_with_the_expected_format(cohort):
    manifest = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    row = manifest[(manifest["mammography"] != "") & (manifest["ultrasound"] != "")].iloc[0]

    us = Image.open(cohort / row["ultrasound"])
    assert us.format == "PNG" and us.mode == "L" and us.size == (64, 64)

    lateralities = set()
    for path, view in zip(row["mammography"].split("|"), ("CC", "MLO")):
        ds = pydicom.dcmread(cohort / path)  # no force: preamble and file meta must be valid
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2"
        assert ds.Modality == "MG" and ds.ViewPosition == view and ds.PatientID == row["patient_id"]
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
        assert float(ds.WindowCenter) == 2048 and float(ds.WindowWidth) == 4096
        assert "PatientAge" not in ds  # age is a separate, possibly missing, input
        pixels = ds.pixel_array
        assert pixels.dtype == np.uint16 and pixels.shape == (64, 64)
        assert 0 < pixels.max() <= 4095
        lateralities.add(ds.ImageLaterality)
    assert len(lateralities) == 1  # two views of one breast


def test_png_mammograms_are_8_bit(tmp_path):
    generate_cohort(tmp_path, n_patients=4, mammography_format="png", **SMALL)
    manifest = pd.read_csv(tmp_path / "manifest.csv", dtype=str)
    image = Image.open(tmp_path / manifest["mammography"][0])
    assert manifest["mammography"][0].endswith("_CC.png")
    assert image.mode == "L" and image.size == (64, 64)


def test_written_images_are_the_rendered_ones(tmp_path):
    config = SynthConfig(n_patients=3, seed=9, **SMALL)
    generate_cohort(tmp_path, config)
    truth = load_truth(tmp_path)
    us = np.asarray(Image.open(tmp_path / "images/ultrasound/SYN0002.png"))
    expected = render_ultrasound(truth["z_ultrasound"][1], synth._image_rng(config, "ultrasound", 1), 64)
    np.testing.assert_array_equal(us, expected)
    box = [int(v) for v in pd.read_csv(tmp_path / "manifest.csv")["ultrasound_bbox"][1].split()]
    assert 0 <= box[0] < box[2] <= 64 and 0 <= box[1] < box[3] <= 64


# ------------------------------------------------------------------------------------ image semantics

ZS = (-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0)
N_SEEDS = 6


def _strictly_increasing(values) -> bool:
    return bool(np.all(np.diff(values) > 0))


def test_ultrasound_lesion_darkens_shadows_and_stands_taller_with_z():
    size = 128
    inner, below, aspect = np.zeros((N_SEEDS, len(ZS))), np.zeros((N_SEEDS, len(ZS))), np.zeros((N_SEEDS, len(ZS)))
    for seed in range(N_SEEDS):
        for j, z in enumerate(ZS):
            img, (x0, y0, x1, y1) = synth._render_ultrasound(z, np.random.default_rng(seed), size)
            img = img.astype(float)
            w, h = x1 - x0, y1 - y0
            inner[seed, j] = img[y0 + h // 4: y1 - h // 4, x0 + w // 4: x1 - w // 4].mean()
            below[seed, j] = img[y1 + 4: min(y1 + 4 + h, size), x0 + w // 4: x1 - w // 4].mean()
            aspect[seed, j] = h / w
    assert _strictly_increasing(-inner.mean(axis=0))  # echogenicity falls
    assert _strictly_increasing(-below.mean(axis=0))  # enhancement turns into shadowing
    assert _strictly_increasing(aspect.mean(axis=0))  # wider-than-tall to taller-than-wide
    assert aspect[:, 0].max() < 1 < aspect[:, -1].min()


def test_mammogram_mass_gets_denser_and_more_irregular_with_z():
    size = 128
    density, irregularity = np.zeros((N_SEEDS, len(ZS))), np.zeros((N_SEEDS, len(ZS)))
    for seed in range(N_SEEDS):
        # The same generator state gives the same breast and mass placement for every z.
        _, (x0, y0, x1, y1), _ = synth._render_mammogram(-4.0, np.random.default_rng(seed), size, "CC")
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0 + y1 - y0) / 4
        yy, xx = np.mgrid[:size, :size]
        dist = np.hypot(yy - cy, xx - cx)
        core, ring = dist < 0.5 * r, (dist > 1.2 * r) & (dist < 2.5 * r)
        for j, z in enumerate(ZS):
            img = render_mammogram(z, np.random.default_rng(seed), size, "CC").astype(float) / 4095
            density[seed, j] = img[core].mean()
            # Spicules and an indistinct margin add fine structure around the mass.
            irregularity[seed, j] = np.abs(ndimage.gaussian_laplace(img, 1.0))[ring].mean()
    assert _strictly_increasing(density.mean(axis=0))
    assert _strictly_increasing(irregularity.mean(axis=0))
    assert (irregularity[:, -1] > 1.5 * irregularity[:, 0]).all()


def test_views_show_one_lesion_with_different_projections():
    rng_state = 123
    cc = synth._render_mammogram(3.0, np.random.default_rng(rng_state), 96, "CC")
    mlo = synth._render_mammogram(3.0, np.random.default_rng(rng_state), 96, "MLO")
    assert cc[2] == mlo[2]  # same breast side
    assert not np.array_equal(cc[0], mlo[0])
    again = synth._render_mammogram(3.0, np.random.default_rng(rng_state), 96, "MLO")
    np.testing.assert_array_equal(mlo[0], again[0])


@pytest.mark.parametrize("size", [32, 100, 224])
def test_renderers_return_the_documented_shapes_and_types(size):
    us = render_ultrasound(1.0, np.random.default_rng(0), size)
    mg = render_mammogram(1.0, np.random.default_rng(0), size, "MLO")
    assert us.shape == mg.shape == (size, size)
    assert us.dtype == np.uint8 and mg.dtype == np.uint16 and mg.max() <= 4095
    assert us.std() > 10 and mg.std() > 100  # real images, not blanks


def test_scenario_oracle_is_the_ceiling_of_each_input_subset(tmp_path):
    from sklearn.metrics import roc_auc_score

    from mmlib.synth import generate_cohort, load_cohort_info, scenario_oracle

    generate_cohort(tmp_path, n_patients=60, seed=1, ultrasound_size=64, mammography_size=64)
    info = load_cohort_info(tmp_path)
    full = scenario_oracle(tmp_path, ("mammography", "ultrasound", "clinical"))
    # all inputs: the risk given what each patient has, the documented observed oracle
    assert roc_auc_score(full["label"], full["oracle_risk"]) == pytest.approx(info["oracle_auc_observed"])
    us = scenario_oracle(tmp_path, ("ultrasound",))
    assert us["oracle_prob"].between(0, 1).all() and (us["label"] == full["label"]).all()
    assert roc_auc_score(us["label"], us["oracle_risk"]) < roc_auc_score(full["label"], full["oracle_risk"])
    with pytest.raises(ValueError, match="subset"):
        scenario_oracle(tmp_path, ("pet",))
