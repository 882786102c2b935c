"""The `mmlib` command line: synth, validate, import, train and predict."""

import pandas as pd
import pytest

from mmlib.cli import main


def test_cohort_synth_and_validate(tmp_path, capsys):
    assert main(["cohort", "synth", str(tmp_path / "c"), "--patients", "24", "--seed", "2"]) == 0
    assert "oracle AUC" in capsys.readouterr().out
    assert main(["cohort", "validate", str(tmp_path / "c" / "manifest.csv")]) == 0
    out = capsys.readouterr().out
    assert "24" in out and "malignant" in out


def test_validate_reports_every_bad_row_and_exits_nonzero(tmp_cohort_copy, capsys):
    manifest = tmp_cohort_copy
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    df.loc[1, "label"] = "maybe"
    df.loc[3, "age"] = "abc"
    df.to_csv(manifest, index=False)
    assert main(["cohort", "validate", str(manifest)]) == 1
    err = capsys.readouterr().err
    assert "row 3" in err and "'label'" in err and "maybe" in err
    assert "row 5" in err and "'age'" in err and "abc" in err


def test_import_unknown_kind_is_refused(tmp_path, capsys):
    assert main(["cohort", "import", "no-such-collection", str(tmp_path), "--out", str(tmp_path / "m.csv")]) == 1
    assert "breast-lesions-usg" in capsys.readouterr().err


def test_import_options_reach_the_importer(tmp_path, capsys):
    args = ["cohort", "import", "bus-bra", str(tmp_path), "--out", str(tmp_path / "m.csv")]
    assert main(args + ["--option", "bbox=xyxy"]) == 1
    assert "unknown option(s) ['bbox'] for kind 'bus-bra'; accepted: ['bbox_format']" in capsys.readouterr().err
    assert main(args + ["--option", "bbox_format"]) == 1
    assert "--option 'bbox_format': expected KEY=VALUE" in capsys.readouterr().err
    # A known option passes the check and reaches the importer, which then finds no source here.
    assert main(args + ["--option", "bbox_format=xyxy"]) == 1
    assert "bus_data.csv" in capsys.readouterr().err


def test_train_then_predict(tmp_path, tiny_cohort_dir, capsys):
    import yaml

    profile = tmp_path / "tiny.yaml"
    profile.write_text(yaml.safe_dump({"image_size": 64, "n_augment": 0, "epochs": 2, "early_stopping": 0, "dim": 32,
                                       "n_folds": 3, "progress": False}))
    model_dir = tmp_path / "model"
    assert main(["train", str(tiny_cohort_dir / "manifest.csv"), "--model", "amw_cnn", "--out", str(model_dir),
                 "--params", str(profile)]) == 0
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.json", "model.safetensors"]
    out = tmp_path / "pred.csv"
    assert main(["predict", str(model_dir), str(tiny_cohort_dir / "manifest.csv"), "--out", str(out)]) == 0
    pred = pd.read_csv(out)
    assert len(pred) == 60 and pred["prob_malignant"].between(0, 1).all()
    assert {"patient_id", "prob_malignant", "label"} <= set(pred.columns)


@pytest.fixture
def tmp_cohort_copy(tiny_cohort_dir, tmp_path):
    """A copy of the tiny cohort's manifest whose image paths still point at the tiny cohort's images."""
    df = pd.read_csv(tiny_cohort_dir / "manifest.csv", dtype=str, keep_default_na=False)
    for col in ("mammography", "ultrasound"):
        df[col] = df[col].map(lambda v: "|".join(str(tiny_cohort_dir / p) for p in v.split("|")) if v else v)
    for col in [c for c in df.columns if c.endswith("_bbox") or c.endswith("_mask")]:
        df = df.drop(columns=col) if col.endswith("_mask") else df
    path = tmp_path / "manifest.csv"
    df.to_csv(path, index=False)
    return path
