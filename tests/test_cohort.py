"""Manifest loading, validation (every problem reported with row, column and message), writing, summaries."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmlib.cohort import Cohort, Issue, ManifestError, format_summary, load_manifest, write_manifest

HEADER = "patient_id,label,age,mammography,ultrasound"


def png(path: Path, shape=(64, 64), value=128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def folder(tmp_path) -> Path:
    """A cohort folder with images m1..m3 (mammography), u1..u2 (ultrasound) and a mask."""
    for name in ("m1", "m2", "m3", "u1", "u2"):
        png(tmp_path / "img" / f"{name}.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[10:20, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "img" / "m1_mask.png")
    return tmp_path


def manifest(folder: Path, *lines: str, header: str = HEADER, name: str = "manifest.csv") -> Path:
    path = folder / name
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def problems(path: Path, **kw) -> list[Issue]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, **kw)
    assert info.value.path == path
    return info.value.issues


def only(issues: list[Issue]) -> Issue:
    assert len(issues) == 1, [str(i) for i in issues]
    return issues[0]


# ----------------------------------------------------------------------------------------------- valid


def test_valid_manifest_normalised(folder):
    path = manifest(
        folder,
        "P1, Malignant ,61,img/m1.png|img/m2.png,img/u1.png,dev,G1,img/m1_mask.png|,10 10 30 20|,1.5,CBIS-1",
        f"P2,benign,,{folder / 'img' / 'm3.png'},,test,,,,,A",
        "P3,BENIGN,45.5,,img/u2.png,dev,,,,2,B",
        header=HEADER + ",split,group,mammography_mask,mammography_bbox,clinical_density,source",
    )
    c = load_manifest(path)
    p = c.patients
    assert isinstance(c, Cohort) and len(c) == 3 and c.manifest == path and c.root == folder
    assert list(p["patient_id"]) == ["P1", "P2", "P3"]
    np.testing.assert_array_equal(c.labels, [1, 0, 0])
    assert list(p["label_name"]) == ["malignant", "benign", "benign"]
    assert p["age"].iloc[0] == 61 and math.isnan(p["age"].iloc[1]) and p["age"].iloc[2] == 45.5
    assert p["mammography"].iloc[0] == [folder / "img" / "m1.png", folder / "img" / "m2.png"]
    assert p["mammography"].iloc[1] == [folder / "img" / "m3.png"]  # absolute path accepted
    assert p["mammography"].iloc[2] == [] and p["ultrasound"].iloc[1] == []
    assert p["mammography_mask"].iloc[0] == [folder / "img" / "m1_mask.png", None]
    assert p["mammography_bbox"].iloc[0] == [(10, 10, 30, 20), None]
    assert p["ultrasound_mask"].iloc[0] == [None] and p["ultrasound_bbox"].iloc[2] == [None]
    assert list(p["split"]) == ["dev", "test", "dev"]
    assert list(p["group"]) == ["G1", "P2", "P3"]  # group defaults to the patient id
    assert p["clinical_density"].iloc[0] == 1.5 and math.isnan(p["clinical_density"].iloc[1])
    assert list(p["source"]) == ["CBIS-1", "A", "B"]
    assert c.clinical_columns == ["age", "clinical_density"]
    pres = c.presence()
    assert list(pres.columns) == ["mammography", "ultrasound", "clinical"]
    np.testing.assert_array_equal(pres.to_numpy(), [[True, True, True], [True, False, False], [False, True, True]])
    assert [str(w) for w in c.warnings] == ["manifest.csv row 3 (patient P2), column 'age': missing age"]


def test_issue_text_format():
    issue = Issue(5, "age", "'abc' is not a number", "P004", "manifest.csv")
    assert str(issue) == "manifest.csv row 5 (patient P004), column 'age': 'abc' is not a number"
    assert str(Issue(None, "label", "x", None, "m.csv")) == "m.csv column 'label': x"
    assert str(Issue(None, None, "file not found", None, "m.csv")) == "m.csv: file not found"


# ----------------------------------------------------------------------------------------------- the file


def test_file_not_found(tmp_path):
    issue = only(problems(tmp_path / "nope.csv"))
    assert issue.row is None and issue.message == "file not found"


def test_not_a_csv(tmp_path):
    path = tmp_path / "cohort.xlsx"
    path.write_bytes(b"PK\x03\x04")
    assert "expected a .csv file" in only(problems(path)).message
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81\x82 not text")
    assert "not a UTF-8 text CSV file" in only(problems(binary)).message


def test_empty_file_and_header_only(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "the file is empty" in only(problems(empty)).message
    header_only = manifest(tmp_path, name="h.csv")
    assert only(problems(header_only)).message == "no patient rows below the header"


def test_missing_required_columns_named_with_found_columns(folder):
    path = manifest(folder, "P1,benign,img/m1.png", header="patient_id,Label,mammography")
    issue = only(problems(path))
    assert issue.row is None
    assert "missing required column(s) 'label', 'age', 'ultrasound'" in issue.message
    assert "found columns: 'patient_id', 'Label', 'mammography'" in issue.message
    assert "case-sensitive: rename 'Label'" in issue.message


# ----------------------------------------------------------------------------------------------- each bad input


def test_duplicate_patient_id_names_both_rows(folder):
    path = manifest(folder, "P1,benign,50,img/m1.png,", "P2,benign,50,img/m2.png,", "P1,malignant,50,img/m3.png,")
    issue = only(problems(path))
    assert (issue.row, issue.column, issue.patient_id) == (4, "patient_id", "P1")
    assert issue.message == "duplicate patient id 'P1': rows 2 and 4"


def test_bad_label(folder):
    path = manifest(folder, "P1,benign,50,img/m1.png,", "P2,maybe,50,img/m2.png,")
    issue = only(problems(path))
    assert (issue.row, issue.column, issue.patient_id) == (3, "label", "P2")
    assert "'maybe' is not a label; expected 'benign' or 'malignant'" in issue.message


def test_age_not_a_number(folder):
    path = manifest(folder, "P1,benign,50,img/m1.png,", "P2,benign,50,img/m2.png,", "P3,benign,50,,img/u1.png",
                    "P004,malignant,abc,img/m3.png,")
    issue = only(problems(path))
    assert str(issue) == "manifest.csv row 5 (patient P004), column 'age': 'abc' is not a number"


@pytest.mark.parametrize("age", ["5", "130", "-3"])
def test_age_outside_range(folder, age):
    issue = only(problems(manifest(folder, f"P1,benign,{age},img/m1.png,")))
    assert (issue.row, issue.column) == (2, "age")
    assert f"age {float(age):g} is outside the plausible range 10-110 years" == issue.message


def test_patient_without_any_input(folder):
    path = manifest(folder, "P1,benign,50,img/m1.png,", "P2,malignant,,,,", header=HEADER + ",clinical_x")
    issue = only(problems(path))
    assert (issue.row, issue.column, issue.patient_id) == (3, None, "P2")
    assert "no input at all" in issue.message


def test_image_file_missing(folder):
    issue = only(problems(manifest(folder, "P1,benign,50,img/m1.png|img/gone.png,")))
    assert (issue.row, issue.column) == (2, "mammography")
    assert issue.message.startswith("image file not found: 'img/gone.png'")
    assert str(folder / "img" / "gone.png") in issue.message


def test_image_that_cannot_be_decoded(folder):
    (folder / "img" / "noise.png").write_bytes(np.random.default_rng(0).bytes(200))
    issue = only(problems(manifest(folder, "P1,benign,50,,img/noise.png")))
    assert (issue.row, issue.column) == (2, "ultrasound")
    assert "cannot read image 'img/noise.png'" in issue.message and "noise.png" in issue.message


def test_truncated_image_caught_only_when_decoding(folder):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(folder / "full.png")
    data = (folder / "full.png").read_bytes()
    (folder / "img" / "cut.png").write_bytes(data[: len(data) // 2])
    path = manifest(folder, "P1,benign,50,img/cut.png,", "P2,malignant,50,img/m1.png,")
    assert "cannot decode" in only(problems(path)).message
    assert len(load_manifest(path, decode_images=False)) == 2  # header-only check passes


def test_mask_count_not_matching_images(folder):
    path = manifest(folder, "P1,benign,50,img/m1.png|img/m2.png,,img/m1_mask.png",
                    header=HEADER + ",mammography_mask")
    issue = only(problems(path))
    assert (issue.row, issue.column) == (2, "mammography_mask")
    assert issue.message.startswith("1 mask item(s) for 2 mammography image(s); expected one per image")


def test_bbox_count_not_matching_images(folder):
    path = manifest(folder, "P1,benign,50,,img/u1.png,1 1 5 5|2 2 6 6", header=HEADER + ",ultrasound_bbox")
    issue = only(problems(path))
    assert (issue.row, issue.column) == (2, "ultrasound_bbox")
    assert issue.message.startswith("2 bbox item(s) for 1 ultrasound image(s)")


def test_bad_bbox_text_and_bbox_outside_image(folder):
    path = manifest(folder, "P1,benign,50,img/m1.png,,1 2 three 4", "P2,benign,50,img/m2.png,,100 100 120 120",
                    header=HEADER + ",mammography_bbox")
    first, second = problems(path)
    assert (first.row, first.column) == (2, "mammography_bbox") and "expected 4 numbers" in first.message
    assert (second.row, second.column) == (3, "mammography_bbox") and "lies outside its 64x64 image" in second.message


def test_mask_file_missing_and_of_other_aspect(folder):
    png(folder / "img" / "wide_mask.png", shape=(32, 64), value=255)
    path = manifest(folder, "P1,benign,50,img/m1.png,,img/no_mask.png", "P2,benign,50,img/m2.png,,img/wide_mask.png",
                    header=HEADER + ",mammography_mask")
    first, second = problems(path)
    assert (first.row, first.column) == (2, "mammography_mask")
    assert "mask file not found: 'img/no_mask.png'" in first.message
    assert (second.row, second.column) == (3, "mammography_mask")
    assert "32x64 pixels but its image is 64x64" in second.message


def test_bad_split_value(folder):
    issue = only(problems(manifest(folder, "P1,benign,50,img/m1.png,,train", header=HEADER + ",split")))
    assert (issue.row, issue.column) == (2, "split")
    assert issue.message == "'train' is not a split; expected 'dev', 'test' or empty"


def test_clinical_value_not_numeric(folder):
    path = manifest(folder, "P1,benign,50,img/m1.png,,3,dense", header=HEADER + ",clinical_size,clinical_density")
    issue = only(problems(path))
    assert (issue.row, issue.column) == (2, "clinical_density") and issue.message == "'dense' is not a number"


def test_too_many_values_in_a_row(folder):
    issue = only(problems(manifest(folder, "P1,benign,50,img/m1.png,,oops")))
    assert issue.row == 2 and "6 values but the header has 5 columns" in issue.message


# ----------------------------------------------------------------------------------------------- collecting


def test_three_bad_rows_give_three_issues(folder):
    path = manifest(folder, "P1,benign,50,img/m1.png,", "P2,malign,50,img/m2.png,", "P3,benign,old,img/m3.png,",
                    "P4,benign,50,img/missing.png,")
    issues = problems(path)
    assert [(i.row, i.column) for i in issues] == [(3, "label"), (4, "age"), (5, "mammography")]
    text = str(ManifestError(path, issues))
    assert text.startswith(f"{path}: 3 problems found")
    assert all(str(i) in text for i in issues)


def test_all_problems_of_one_row_collected(folder):
    path = manifest(folder, "P1,unknown,999,img/x.png,img/y.png,later", header=HEADER + ",split")
    assert sorted(i.column for i in problems(path)) == ["age", "label", "mammography", "split", "ultrasound"]


def test_blank_lines_keep_spreadsheet_row_numbers(folder):
    path = manifest(folder, "P1,benign,50,img/m1.png,", "", "P2,benign,xx,img/m2.png,")
    assert only(problems(path)).row == 4


# ----------------------------------------------------------------------------------------------- warnings


def test_warnings_small_image_missing_age_one_class(folder):
    png(folder / "img" / "tiny.png", shape=(20, 100))
    c = load_manifest(manifest(folder, "P1,benign,,img/tiny.png,", "P2,benign,40,img/m1.png,"))
    by_column = {(w.row, w.column): w.message for w in c.warnings}
    assert by_column[(2, "mammography")] == "image 'img/tiny.png' is only 20x100 pixels (under 64)"
    assert by_column[(2, "age")] == "missing age"
    assert "only one class present: all 2 patients are 'benign'" in by_column[(None, "label")]
    assert len(c.warnings) == 3
    assert not any(w.column == "mammography" for w in load_manifest(c.manifest, small_image_px=16).warnings)


def test_warning_group_spanning_dev_and_test(folder):
    c = load_manifest(manifest(folder, "P1,benign,50,img/m1.png,,dev,G", "P2,malignant,50,img/m2.png,,test,G",
                               "P3,malignant,50,img/m3.png,,test,H", header=HEADER + ",split,group"))
    (w,) = c.warnings
    assert (w.row, w.column) == (None, "group") and "group 'G' has patients in both dev and test (P1, P2)" in w.message


# ----------------------------------------------------------------------------------------------- writing


def test_write_manifest_round_trip(folder):
    img = folder / "img"
    rows = [
        {"patient_id": "A1", "label": 1, "age": 63.0, "mammography": [img / "m1.png", img / "m2.png"],
         "ultrasound": img / "u1.png", "mammography_mask": [img / "m1_mask.png", None],
         "mammography_bbox": [(10, 10, 30, 20), None], "clinical_size": 12.25, "source": "synthetic", "split": "dev"},
        {"patient_id": "A2", "label": "benign", "age": float("nan"), "mammography": [], "ultrasound": [img / "u2.png"],
         "clinical_size": None, "source": "synthetic", "split": "test"},
    ]
    path = write_manifest(rows, folder / "out" / "cohort.csv")
    text = path.read_text().splitlines()
    assert text[0] == ("patient_id,label,age,mammography,ultrasound,split,mammography_mask,mammography_bbox,"
                       "clinical_size,source")
    assert text[1] == ("A1,malignant,63.0,../img/m1.png|../img/m2.png,../img/u1.png,dev,../img/m1_mask.png|,"
                       "10 10 30 20|,12.25,synthetic")
    c = load_manifest(path)
    p = c.patients
    assert list(p["patient_id"]) == ["A1", "A2"] and list(p["label"]) == [1, 0]
    assert p["mammography"].iloc[0] == [img / "m1.png", img / "m2.png"] and p["ultrasound"].iloc[1] == [img / "u2.png"]
    assert p["mammography_mask"].iloc[0] == [img / "m1_mask.png", None]
    assert p["mammography_bbox"].iloc[0] == [(10, 10, 30, 20), None]
    assert p["age"].iloc[0] == 63.0 and math.isnan(p["age"].iloc[1])
    assert p["clinical_size"].iloc[0] == 12.25 and math.isnan(p["clinical_size"].iloc[1])
    assert list(p["split"]) == ["dev", "test"] and list(p["source"]) == ["synthetic", "synthetic"]


def test_write_manifest_refuses_bad_rows(tmp_path):
    with pytest.raises(ValueError, match="rows is empty"):
        write_manifest([], tmp_path / "m.csv")
    with pytest.raises(ValueError, match=r"rows\[1\] has no 'label'"):
        write_manifest([{"patient_id": "a", "label": 0}, {"patient_id": "b"}], tmp_path / "m.csv")
    with pytest.raises(ValueError, match="label 2"):
        write_manifest([{"patient_id": "a", "label": 2}], tmp_path / "m.csv")
    with pytest.raises(ValueError, match="contains '|'"):
        write_manifest([{"patient_id": "a", "label": 0, "mammography": ["x|y.png"]}], tmp_path / "m.csv")


# ----------------------------------------------------------------------------------------------- cohort methods


@pytest.fixture()
def cohort(folder) -> Cohort:
    return load_manifest(manifest(
        folder,
        "P1,malignant,60,img/m1.png|img/m2.png,img/u1.png,dev",
        "P2,benign,40,img/m3.png,,dev",
        "P3,benign,50,,img/u2.png,test",
        "P4,malignant,,img/m1.png,,test",
        header=HEADER + ",split",
    ))


def test_subset_keeps_given_order(cohort):
    sub = cohort.subset(["P3", "P1"])
    assert list(sub.patients["patient_id"]) == ["P3", "P1"]
    np.testing.assert_array_equal(sub.labels, [0, 1])
    assert list(sub.patients.index) == [0, 1]
    assert [w.patient_id for w in cohort.subset(["P4"]).warnings if w.row is not None] == ["P4"]
    assert any("only one class" in w.message for w in cohort.subset(["P4"]).warnings)
    with pytest.raises(ValueError, match=r"patient_ids not in manifest.csv: \['P9'\]"):
        cohort.subset(["P1", "P9"])
    with pytest.raises(ValueError, match="more than once"):
        cohort.subset(["P1", "P1"])


def test_summary_counts(cohort):
    s = cohort.summary()
    assert s["n_patients"] == 4 and s["n_groups"] == 4
    assert s["labels"] == {"benign": 2, "malignant": 2}
    assert s["modalities"] == {"mammography": 3, "ultrasound": 2, "clinical": 3}
    assert s["modalities_by_label"]["malignant"] == {"mammography": 2, "ultrasound": 1, "clinical": 1}
    assert s["scenarios"] == {"all": 1, "mammography+clinical": 1, "ultrasound+clinical": 1, "mammography": 1}
    assert s["age"]["all"]["mean"] == pytest.approx(50.0) and s["age"]["all"]["sd"] == pytest.approx(10.0)
    assert s["age"]["malignant"] == {"n": 1, "mean": 60.0, "sd": None, "missing": 1}
    assert s["views"]["mammography"] == {"images": 4, "per_patient": {0: 1, 1: 2, 2: 1}}
    assert s["splits"] == {"dev": 2, "test": 2, "unassigned": 0}
    assert s["n_warnings"] == 1


def test_format_summary_text(cohort):
    text = format_summary(cohort)
    assert "4 patients (4 groups)" in text
    assert "labels:      benign 2, malignant 2" in text
    assert "mammography 3 (75%), ultrasound 2 (50%), clinical 3 (75%)" in text
    assert "malignant: mean 60.0, sd n/a, missing 1" in text
    assert "splits:      dev 2, test 2, not fixed 0" in text
    assert "warnings:    1" in text and "row 5 (patient P4), column 'age': missing age" in text
