"""Importers of public collections: exact manifests from small fake layouts, counts on the real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from mmlib.cohort import load_manifest
from mmlib.importers import (
    COLLECTIONS,
    IMPORTERS,
    MissingSourceError,
    collection_help,
    import_cohort,
    sidecar_path,
)
from mmlib.importers.breast_lesions_usg import tumour_mask_name
from mmlib.importers.bus_bra import parse_bbox
from mmlib.importers.cdd_cesm import region_box
from mmlib.schema import CLINICAL_PREFIX, REQUIRED_COLUMNS

KINDS = ("breast-lesions-usg", "cdd-cesm", "bus-bra", "cbis-ddsm")


def _png(path: Path, size=(16, 12), value=100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path)
    return path


def _dicom(path: Path, *, rows: int, cols: int, series_uid: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.zeros((rows, cols), np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _manifest(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False).set_index("patient_id", drop=False)


def _resolve(manifest: Path, cell: str) -> list[Path | None]:
    return [(manifest.parent / p).resolve() if p else None for p in cell.split("|")]


# --- registry, help, errors ------------------------------------------------------------------------------


def test_registry_holds_the_four_collections():
    assert tuple(IMPORTERS) == KINDS
    assert set(COLLECTIONS) == set(KINDS)


def test_unknown_kind_lists_the_kinds(tmp_path):
    with pytest.raises(ValueError, match="unknown collection kind 'busi'.*breast-lesions-usg, bus-bra, cbis-ddsm, cdd-cesm"):
        import_cohort("busi", tmp_path, tmp_path / "m.csv")
    with pytest.raises(ValueError, match="unknown collection kind 'busi'"):
        collection_help("busi")


def test_unknown_option_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown option.*'bbox'.*accepted: \\['bbox_format'\\]"):
        import_cohort("bus-bra", tmp_path, tmp_path / "m.csv", bbox="xywh")


@pytest.mark.parametrize("kind", KINDS)
def test_collection_help_gives_doi_address_and_command(kind):
    text = collection_help(kind)
    c = COLLECTIONS[kind]
    assert f"doi:{c.doi}" in text and c.url in text
    assert f"mmlib cohort import {kind} SOURCE_DIR --out MANIFEST" in text
    assert all(item in text for item in c.layout)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("breast-lesions-usg", "BrEaST-Lesions-USG-clinical-data"),
        ("cdd-cesm", "Radiology-manual-annotations.xlsx"),
        ("bus-bra", "bus_data.csv"),
        ("cbis-ddsm", "mass_case_description_train_set.csv"),
    ],
)
def test_empty_source_names_the_missing_file_and_download(tmp_path, kind, expected):
    with pytest.raises(MissingSourceError) as err:
        import_cohort(kind, tmp_path, tmp_path / "out" / "m.csv")
    message = str(err.value)
    assert expected in message and COLLECTIONS[kind].doi in message and COLLECTIONS[kind].url in message
    assert not (tmp_path / "out").exists()


def test_missing_source_folder_is_a_missing_source_error(tmp_path):
    with pytest.raises(MissingSourceError, match="does not exist"):
        import_cohort("cdd-cesm", tmp_path / "absent", tmp_path / "m.csv")


def test_manifest_must_be_csv(tmp_path):
    _write_busbra(tmp_path / "src")
    with pytest.raises(ValueError, match="must be a .csv"):
        import_cohort("bus-bra", tmp_path / "src", tmp_path / "m.txt")


# --- BrEaST-Lesions_USG (fake workbook) ---------------------------------------------------------------------

BREAST_COLUMNS = [
    "CaseID", "Image_filename", "Mask_tumor_filename", "Mask_other_filename", "Pixel_size", "Age",
    "Tissue_composition", "Signs", "Symptoms", "Shape", "Margin", "BIRADS", "Verification", "Diagnosis",
    "Classification",
]  # fmt: skip


def _write_breast(src: Path, cases: list[list]) -> Path:
    images = src / "BrEaST-Lesions_USG-images_and_masks"
    for case in cases:
        _png(images / case[1])
        for cell in case[2:4]:
            for name in (cell or "").split("&"):
                if name:
                    _png(images / name, value=255)
    with pd.ExcelWriter(src / "BrEaST-Lesions-USG-clinical-data-Dec-15-2023.xlsx") as xl:
        pd.DataFrame(cases, columns=BREAST_COLUMNS).to_excel(xl, sheet_name="BrEaST-Lesions-USG clinical dat", index=False)
        pd.DataFrame({"type": ["Age"], "description": ["age of patient"]}).to_excel(xl, sheet_name="Data Dictionary", index=False)
    return src


FAKE_BREAST = [
    [1, "case001.png", "case001_tumor.png", None, 0.0078, 57, "homogeneous: fat", "palpable", "no", "oval",
     "circumscribed", "3", "confirmed by follow-up care", "not applicable", "benign"],
    [2, "case002.png", "case002_tumor.png", None, 0.0065, "not available", "not available", "no",
     "not available", "irregular", "not circumscribed - spiculated", "5", "confirmed by biopsy",
     "Invasive carcinoma of no special type (NST)", "malignant"],
    [3, "case003.png", None, None, 0.0070, 40, "homogeneous: fat", "no", "no", "not applicable",
     "not applicable", "1", "not applicable", "not applicable", "normal"],
    [4, "case004.png", "case004_other1.png&case004_tumor.png", "case004_other1.png&case004_other2.png", 0.0070,
     63, "heterogeneous: predominantly fat", "no", "no", "oval", "circumscribed", "4a", "confirmed by biopsy",
     "Fibroadenoma", "benign"],
]  # fmt: skip


def test_tumour_mask_name_takes_the_tumour_of_joined_cells():
    assert tumour_mask_name("case004_other1.png&case004_tumor.png") == "case004_tumor.png"
    assert tumour_mask_name(" case001_tumor.png ") == "case001_tumor.png"
    assert tumour_mask_name(float("nan")) is None


def test_breast_lesions_fake_workbook(tmp_path):
    src = _write_breast(tmp_path / "src", FAKE_BREAST)
    out = import_cohort("breast-lesions-usg", src, tmp_path / "cohorts" / "brest.csv")
    m = _manifest(out)
    assert list(m["patient_id"]) == ["case001", "case002", "case004"]
    assert list(m["label"]) == ["benign", "malignant", "benign"]
    assert list(m["age"]) == ["57", "", "63"]  # "not available" -> missing, never 0
    assert list(m["label_source"]) == ["follow-up", "biopsy", "biopsy"]
    assert list(m["source_id"]) == ["1", "2", "4"]
    assert (m["mammography"] == "").all()
    images = src / "BrEaST-Lesions_USG-images_and_masks"
    for pid in m.index:
        assert _resolve(out, m.loc[pid, "ultrasound"]) == [(images / f"{pid}.png").resolve()]
        assert _resolve(out, m.loc[pid, "ultrasound_mask"]) == [(images / f"{pid}_tumor.png").resolve()]
    assert m.loc["case002", "ref_birads"] == "5" and m.loc["case004", "ref_margin"] == "circumscribed"
    assert m.loc["case001", "ref_tissue_composition"] == "homogeneous: fat"
    assert not [c for c in m.columns if c.startswith(CLINICAL_PREFIX)]
    assert list(m.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    side = json.loads(sidecar_path(out).read_text())
    assert side["kind"] == "breast-lesions-usg" and side["source_dir"] == str(src.resolve())
    assert (side["rows_read"], side["rows_used"], side["units_written"]) == (4, 3, 3)
    assert side["rows_left_out"] == {"normal (no lesion)": 1}
    assert side["labels"] == {"benign": 2, "malignant": 1}
    assert side["notes"] == {"other_masks_ignored": 2, "age_missing_read": 1}
    assert load_manifest(out).patients["age"].isna().tolist() == [False, True, False]


def test_breast_lesions_bad_age_names_the_row(tmp_path):
    cases = [list(FAKE_BREAST[0])]
    cases[0][5] = "fifty"
    src = _write_breast(tmp_path / "src", cases)
    with pytest.raises(ValueError, match=r"sheet row 2 \(CaseID 1\): age 'fifty'"):
        import_cohort("breast-lesions-usg", src, tmp_path / "m.csv")


def test_breast_lesions_missing_image_names_the_file(tmp_path):
    src = _write_breast(tmp_path / "src", FAKE_BREAST[:1])
    (src / "BrEaST-Lesions_USG-images_and_masks" / "case001_tumor.png").unlink()
    with pytest.raises(MissingSourceError, match="case001_tumor.png.*9WKK-Q141"):
        import_cohort("breast-lesions-usg", src, tmp_path / "m.csv")


# --- BUS-BRA (fake layout) ----------------------------------------------------------------------------------

BUSBRA_ROWS = [
    # ID, Case, Histology, Pathology, BIRADS, Device, Width, Height, Side, BBOX
    ("bus_0001-l", 1, "fibroadenoma", "benign", 3, "GE", 16, 12, "left", "[1, 2, 5, 4]"),
    ("bus_0001-r", 1, "fibroadenoma", "benign", 3, "GE", 16, 12, "left", "[3.5, 0, 10, 12]"),
    ("bus_0002-l", 2, "invasive ductal carcinoma", "malignant", 5, "Toshiba", 16, 12, "right", " 0 0 16 12 "),
    ("bus_0003-l", 3, "cyst", "benign", 2, "GE", 16, 12, "left", "[4, 4, 2, 2]"),
    ("bus_0003-r", 3, "invasive lobular carcinoma", "malignant", 4, "GE", 16, 12, "right", ""),
]


def _write_busbra(src: Path, rows=BUSBRA_ROWS) -> Path:
    cols = ["ID", "Case", "Histology", "Pathology", "BIRADS", "Device", "Width", "Height", "Side", "BBOX"]
    src.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=cols).to_csv(src / "bus_data.csv", index=False)
    for r in rows:
        _png(src / "Images" / f"{r[0]}.png")
    _png(src / "Masks" / "mask_0001-l.png", value=255)  # the release's naming: ID without "bus_"
    _png(src / "Masks" / "mask_bus_0002-l.png", value=255)  # the naming of the brief: mask_<ID>
    _png(src / "Masks" / "mask_0003-r.png", value=255)
    return src


def test_parse_bbox_formats():
    assert parse_bbox("[91, 24, 103, 79]") == (91, 24, 194, 103)
    assert parse_bbox("91;24;103;79") == (91, 24, 194, 103)
    assert parse_bbox("(1.5 2 3e1 4)", bbox_format="xyxy") == (1.5, 2, 30, 4)
    assert parse_bbox("") is None and parse_bbox(float("nan")) is None
    with pytest.raises(ValueError, match="four numbers"):
        parse_bbox("[1, 2, 3]", where="x")
    with pytest.raises(ValueError, match="empty or negative"):
        parse_bbox("[5, 5, 3, 9]", bbox_format="xyxy", where="x")
    with pytest.raises(ValueError, match="bbox_format"):
        parse_bbox("1 2 3 4", bbox_format="cxcywh")


def test_bus_bra_fake_layout(tmp_path):
    src = _write_busbra(tmp_path / "src")
    out = import_cohort("bus-bra", src, tmp_path / "busbra.csv")
    m = _manifest(out)
    # Case 3 has a benign and a malignant breast: one unit per side, grouped by the case.
    assert list(m["patient_id"]) == ["bus_0001", "bus_0002", "bus_0003_left", "bus_0003_right"]
    assert list(m["group"]) == ["bus_0001", "bus_0002", "bus_0003", "bus_0003"]
    assert list(m["label"]) == ["benign", "malignant", "benign", "malignant"]
    assert list(m["source_id"]) == ["bus_0001-l|bus_0001-r", "bus_0002-l", "bus_0003-l", "bus_0003-r"]
    assert list(m["ultrasound_bbox"]) == ["1 2 6 6|3.5 0 13.5 12", "0 0 16 12", "4 4 6 6", ""]
    assert (m["age"] == "").all() and (m["mammography"] == "").all()
    assert (m["label_source"] == "biopsy").all()
    assert _resolve(out, m.loc["bus_0001", "ultrasound"]) == [
        (src / "Images" / "bus_0001-l.png").resolve(),
        (src / "Images" / "bus_0001-r.png").resolve(),
    ]
    assert m.loc["bus_0001", "ultrasound_mask"].endswith("Masks/mask_0001-l.png|")  # second view: no mask
    assert _resolve(out, m.loc["bus_0002", "ultrasound_mask"]) == [(src / "Masks" / "mask_bus_0002-l.png").resolve()]
    assert m.loc["bus_0003_left", "ultrasound_mask"] == ""
    assert m.loc["bus_0003_right", "ref_birads"] == "4" and m.loc["bus_0001", "histology"] == "fibroadenoma|fibroadenoma"
    side = json.loads(sidecar_path(out).read_text())
    assert (side["rows_read"], side["rows_used"], side["units_written"], side["groups_written"]) == (5, 5, 4, 3)
    assert side["rows_left_out"] == {}
    assert side["notes"]["images_without_mask"] == 2 and side["notes"]["cases_split_by_side"] == ["bus_0003"]
    assert load_manifest(out).patients["ultrasound_bbox"].iloc[0] == [(1, 2, 6, 6), (3, 0, 14, 12)]


def test_bus_bra_box_outside_the_image_is_refused(tmp_path):
    rows = [("bus_0001-l", 1, "cyst", "benign", 2, "GE", 16, 12, "left", "[10, 2, 16, 12]")]
    src = _write_busbra(tmp_path / "src", rows)
    with pytest.raises(ValueError, match="line 2 \\(ID bus_0001-l\\).*outside the 16 x 12 image"):
        import_cohort("bus-bra", src, tmp_path / "m.csv")
    # The same numbers read as corners fit the image.
    out = import_cohort("bus-bra", src, tmp_path / "m.csv", bbox_format="xyxy")
    assert _manifest(out)["ultrasound_bbox"].tolist() == ["10 2 16 12"]


def test_bus_bra_conflict_within_one_side_is_refused(tmp_path):
    rows = [
        ("bus_0001-l", 1, "cyst", "benign", 2, "GE", 16, 12, "left", ""),
        ("bus_0001-r", 1, "carcinoma", "malignant", 5, "GE", 16, 12, "left", ""),
    ]
    src = _write_busbra(tmp_path / "src", rows)
    with pytest.raises(ValueError, match="one breast \\(bus_0001_left\\) have both labels"):
        import_cohort("bus-bra", src, tmp_path / "m.csv")


# --- CDD-CESM (fake layout) ------------------------------------------------------------------------------

CDD_COLUMNS = ["Image_name", "Patient_ID", "Side", "Type", "Age", "BIRADS", "View",
               "Pathology Classification/ Follow up"]  # fmt: skip
CDD_ROWS = [
    ("P1_L_CM_CC", 1, "L", "CESM", 50, 4, "CC", "Malignant"),
    ("P1_L_CM_MLO ", 1, "L", "CESM", 50, 4, "MLO", "Malignant"),  # trailing space, as in the release
    ("P1_L_DM_CC", 1, "L", "DM", 50, 4, "CC", "Malignant"),
    ("P1_R_CM_CC", 1, "R", "CESM", 50, 1, "CC", "Normal"),
    ("P2_R_CM_MLO", 2, "R", "CESM", 41, 2, "MLO", "Benign"),
]  # fmt: skip


def _seg_row(name: str, shape: dict | None) -> dict:
    return {"#filename": name, "file_size": 1, "file_attributes": "{}", "region_count": 1, "region_id": 0,
            "region_shape_attributes": json.dumps(shape) if shape is not None else "{}", "region_attributes": "{}"}


CDD_SEGMENTATIONS = [
    _seg_row("P1_L_CM_CC.jpg", {"name": "polygon", "all_points_x": [10, 20, 15], "all_points_y": [5, 8, 12]}),
    _seg_row("P1_L_CM_CC.jpg", {"name": "circle", "cx": 30, "cy": 20, "r": 4}),  # a second finding: one box for both
    _seg_row("P1_L_CM_MLO .jpg", {"name": "point", "cx": 3, "cy": 3}),  # no extent: the view keeps the whole image
    _seg_row("P2_R_CM_MLO.jpg", {"name": "ellipse", "cx": 20, "cy": 15, "rx": 6, "ry": 3, "theta": 0}),
    _seg_row("P9_L_CM_CC.jpg", None),  # an image without regions, not in the cohort
]


def _write_cdd(root: Path, segmentations: list[dict] | None = CDD_SEGMENTATIONS, size=(40, 30)) -> Path:
    for name, *_ in CDD_ROWS:
        if "_CM_" in name:
            _png(root / "Subtracted images of CDD-CESM" / f"{name}.png", size=size)
    pd.DataFrame(CDD_ROWS, columns=CDD_COLUMNS).to_excel(root / "Radiology-manual-annotations.xlsx", sheet_name="all",
                                                         index=False)
    if segmentations is not None:
        pd.DataFrame(segmentations).to_csv(root / "Radiology_hand_drawn_segmentations_v2.csv", index=False)
    return root


def test_cdd_cesm_fake_layout_with_segmentations(tmp_path):
    src = _write_cdd(tmp_path / "src")
    out = import_cohort("cdd-cesm", src, tmp_path / "cdd.csv")
    m = _manifest(out)
    assert list(m["patient_id"]) == ["P1_L", "P2_R"] and list(m["group"]) == ["P1", "P2"]
    assert list(m["label"]) == ["malignant", "benign"] and list(m["age"]) == ["50", "41"]
    assert list(m["views"]) == ["CC|MLO", "MLO"]
    # P1_L_CM_CC: the polygon (10-20, 5-12) and the circle (26-34, 16-24); P1_L_CM_MLO: a point only.
    assert list(m["mammography_bbox"]) == ["10 5 34 24|", "14 12 26 18"]
    side = json.loads(sidecar_path(out).read_text())
    assert side["rows_left_out"] == {"low-energy (DM) view, not a subtracted CESM view": 1, "normal (no finding)": 1}
    assert side["notes"]["segmentation_points_left_out"] == 1
    assert side["notes"]["segmentations"] == "Radiology_hand_drawn_segmentations_v2.csv"
    assert side["notes"]["views_with_lesion_box"] == 2
    patients = load_manifest(out).patients
    assert patients["mammography_bbox"].tolist() == [[(10, 5, 34, 24), None], [(14, 12, 26, 18)]]
    # Skipped on request, and absent without the file: no box column at all.
    with pytest.raises(ValueError, match="segmentations must be true or false, got 'no'"):
        import_cohort("cdd-cesm", src, tmp_path / "plain.csv", segmentations="no")
    skipped = _manifest(import_cohort("cdd-cesm", src, tmp_path / "plain.csv", segmentations=False))
    assert "mammography_bbox" not in skipped.columns and list(skipped["patient_id"]) == ["P1_L", "P2_R"]


def test_cdd_cesm_resized_images_refuse_the_segmentations(tmp_path):
    src = _write_cdd(tmp_path / "src", size=(20, 15))  # half size: the regions reach past the images
    with pytest.raises(ValueError, match="P1_L_CM_CC.png span \(10, 5\)-\(34, 24\), outside the 20 x 15 image.*"
                                         "segmentations=False"):
        import_cohort("cdd-cesm", src, tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()
    out = import_cohort("cdd-cesm", src, tmp_path / "m.csv", segmentations=False)
    assert len(_manifest(out)) == 2


def test_cdd_cesm_bad_segmentation_rows_name_the_line(tmp_path):
    bad_json = CDD_SEGMENTATIONS[:1] + [{**_seg_row("P2_R_CM_MLO.jpg", None), "region_shape_attributes": "{name: 1"}]
    with pytest.raises(ValueError, match="line 3 \(P2_R_CM_MLO.jpg\): region_shape_attributes is not JSON"):
        import_cohort("cdd-cesm", _write_cdd(tmp_path / "a", bad_json), tmp_path / "m.csv")
    unknown = [_seg_row("P2_R_CM_MLO.jpg", {"name": "spline", "x": 1})]
    with pytest.raises(ValueError, match="line 2 \(P2_R_CM_MLO.jpg\): region shape 'spline'; expected polygon"):
        import_cohort("cdd-cesm", _write_cdd(tmp_path / "b", unknown), tmp_path / "m.csv")
    no_points = [_seg_row("P2_R_CM_MLO.jpg", {"name": "polygon", "all_points_x": [1, 2]})]
    with pytest.raises(ValueError, match="line 2 .*lacks usable coordinates"):
        import_cohort("cdd-cesm", _write_cdd(tmp_path / "c", no_points), tmp_path / "m.csv")
    (tmp_path / "d").mkdir()
    pd.DataFrame({"filename": ["x.jpg"]}).to_csv(tmp_path / "d" / "Radiology_hand_drawn_segmentations_v2.csv", index=False)
    with pytest.raises(ValueError, match="lacks columns \['#filename', 'region_shape_attributes'\]"):
        import_cohort("cdd-cesm", _write_cdd(tmp_path / "d", None), tmp_path / "m.csv")


def test_region_box_shapes():
    assert region_box({"name": "rect", "x": 2, "y": 3, "width": 4, "height": 5}) == (2, 3, 6, 8)
    assert region_box({"name": "polyline", "all_points_x": [4, 1], "all_points_y": [2, 9]}) == (1, 2, 4, 9)
    assert region_box({"name": "ellipse", "cx": 10, "cy": 10, "rx": 4, "ry": 1, "theta": 0}) == (6, 9, 14, 11)
    turned = region_box({"name": "ellipse", "cx": 10, "cy": 10, "rx": 4, "ry": 1, "theta": np.pi / 2})
    assert np.allclose(turned, (9, 6, 11, 14))  # a quarter turn swaps the radii
    assert np.allclose(region_box({"name": "ellipse", "cx": 0, "cy": 0, "rx": 2, "ry": 2, "theta": 1}), (-2, -2, 2, 2))
    assert region_box({"name": "point", "cx": 1, "cy": 1}) is None and region_box({}) is None


# --- CBIS-DDSM (fake layout) --------------------------------------------------------------------------------

CBIS_COLUMNS = [
    "patient_id", "breast_density", "left or right breast", "image view", "abnormality id", "abnormality type",
    "pathology", "image file path", "cropped image file path", "ROI mask file path",
]  # fmt: skip
FULL, CROP = (40, 30), (8, 6)


def _cbis_series(root: Path, folder: str, files: dict[str, tuple[int, int]]) -> dict[str, str]:
    """DICOMs in the CSV's own layout ``folder/<study>/<series>/<name>``; returns name -> CSV path."""
    study, series = generate_uid(), generate_uid()
    out = {}
    for name, (rows, cols) in files.items():
        _dicom(root / folder / study / series / name, rows=rows, cols=cols, series_uid=series)
        out[name] = f"{folder}/{study}/{series}/{name}"
    return out


def _write_cbis(src: Path) -> Path:
    root = src / "CBIS-DDSM"
    mass, calc = [], []
    # P_00001 LEFT: two benign-without-callback masses (CC, MLO); masks in the CSV's layout.
    for view in ("CC", "MLO"):
        full = _cbis_series(root, f"Mass-Training_P_00001_LEFT_{view}", {"000000.dcm": FULL})["000000.dcm"]
        roi = _cbis_series(root, f"Mass-Training_P_00001_LEFT_{view}_1", {"000000.dcm": CROP, "000001.dcm": FULL})
        mass.append(["P_00001", 2, "LEFT", view, 1, "mass", "BENIGN_WITHOUT_CALLBACK", full, roi["000000.dcm"], roi["000001.dcm"]])
    # P_00002 LEFT CC: a malignant mass whose CSV swaps the ROI mask and crop columns, and the same view again
    # in the calc release (a second copy of the mammogram) with a benign calcification.
    full = _cbis_series(root, "Mass-Training_P_00002_LEFT_CC", {"000000.dcm": FULL})["000000.dcm"]
    roi = _cbis_series(root, "Mass-Training_P_00002_LEFT_CC_1", {"000000.dcm": FULL, "000001.dcm": CROP})
    mass.append(["P_00002", 3, "LEFT", "CC", 1, "mass", "MALIGNANT", full + "\n", roi["000000.dcm"], roi["000001.dcm"] + "\n"])
    full2 = _cbis_series(root, "Calc-Test_P_00002_LEFT_CC", {"000000.dcm": FULL})["000000.dcm"]
    calc.append(["P_00002", 3, "LEFT", "CC", 1, "calcification", "BENIGN", full2, "", ""])
    # P_00002 RIGHT MLO: NBIA download layout (date folders, 1-1.dcm names) for a benign and a malignant calc.
    study, s_full, s_roi = generate_uid(), generate_uid(), generate_uid()
    base = root / "Calc-Test_P_00002_RIGHT_MLO" / "08-07-2016-DDSM-74994"
    _dicom(base / "1.000000-full mammogram images-24515" / "1-1.dcm", rows=FULL[0], cols=FULL[1], series_uid=s_full)
    for k, uid in ((1, generate_uid()), (2, s_roi)):
        rbase = root / f"Calc-Test_P_00002_RIGHT_MLO_{k}" / "08-07-2016-DDSM-12345" / "1.000000-ROI mask images-1"
        _dicom(rbase / "1-1.dcm", rows=CROP[0], cols=CROP[1], series_uid=uid)
        _dicom(rbase / "1-2.dcm", rows=FULL[0], cols=FULL[1], series_uid=uid)
    csv_full = f"Calc-Test_P_00002_RIGHT_MLO/{study}/{s_full}/000000.dcm"
    for k in (1, 2):
        roi_dir = f"Calc-Test_P_00002_RIGHT_MLO_{k}/{study}/{s_roi if k == 2 else generate_uid()}"
        calc.append(["P_00002", 3, "RIGHT", "MLO", k, "calcification", ["BENIGN", "MALIGNANT"][k - 1], csv_full,
                     f"{roi_dir}/000000.dcm", f"{roi_dir}/000001.dcm"])  # fmt: skip
    pd.DataFrame(mass, columns=CBIS_COLUMNS).to_csv(src / "mass_case_description_train_set.csv", index=False)
    calc_cols = [c.replace("breast_density", "breast density") for c in CBIS_COLUMNS]
    pd.DataFrame(calc, columns=calc_cols).to_csv(src / "calc_case_description_test_set.csv", index=False)
    return src


def test_cbis_ddsm_fake_layout(tmp_path):
    src = _write_cbis(tmp_path / "src")
    out = import_cohort("cbis-ddsm", src, tmp_path / "cbis.csv")
    m = _manifest(out)
    assert list(m["patient_id"]) == ["P_00001_LEFT", "P_00002_LEFT", "P_00002_RIGHT"]
    assert list(m["group"]) == ["P_00001", "P_00002", "P_00002"]
    assert list(m["label"]) == ["benign", "malignant", "malignant"]
    assert list(m["label_source"]) == ["benign without callback", "pathology", "pathology"]
    assert list(m["source_pathology"]) == ["BENIGN_WITHOUT_CALLBACK", "BENIGN|MALIGNANT", "BENIGN|MALIGNANT"]
    assert list(m["views"]) == ["CC|MLO", "CC", "MLO"]
    assert list(m["source_split"]) == ["train", "test|train", "test"]
    assert list(m["source_id"]) == [
        "Mass-Training_P_00001_LEFT_CC|Mass-Training_P_00001_LEFT_MLO",
        "Mass-Training_P_00002_LEFT_CC",
        "Calc-Test_P_00002_RIGHT_MLO",
    ]
    assert list(m["abnormality_types"]) == ["mass", "calcification|mass", "calcification"]
    assert (m["age"] == "").all() and (m["ultrasound"] == "").all()
    root = src / "CBIS-DDSM"
    for pid in m.index:
        images = _resolve(out, m.loc[pid, "mammography"])
        masks = _resolve(out, m.loc[pid, "mammography_mask"])
        assert len(masks) == len(images)
        for image, mask in zip(images, masks):
            assert image.is_relative_to(root.resolve()) and image.is_file()
            # The mask is the full-size file of the ROI folder, never the crop, whatever the CSV column says.
            assert pydicom.dcmread(mask).Rows == FULL[0] and mask.parent.parent.parent.name.startswith(image.parts[-4])
    nbia = _resolve(out, m.loc["P_00002_RIGHT", "mammography_mask"])[0]
    assert nbia.parts[-4:] == ("Calc-Test_P_00002_RIGHT_MLO_2", "08-07-2016-DDSM-12345", "1.000000-ROI mask images-1", "1-2.dcm")
    assert _resolve(out, m.loc["P_00002_RIGHT", "mammography"])[0].name == "1-1.dcm"
    side = json.loads(sidecar_path(out).read_text())
    assert (side["rows_read"], side["rows_used"], side["units_written"], side["groups_written"]) == (6, 6, 3, 2)
    assert side["notes"]["duplicate_view_files"] == 1 and side["notes"]["views_without_mask"] == 0
    assert side["labels"] == {"benign": 1, "malignant": 2}
    assert load_manifest(out).patients["group"].tolist() == ["P_00001", "P_00002", "P_00002"]


def test_cbis_ddsm_unknown_pathology_names_the_line(tmp_path):
    src = _write_cbis(tmp_path / "src")
    table = pd.read_csv(src / "mass_case_description_train_set.csv")
    table.loc[1, "pathology"] = "UNKNOWN"
    table.to_csv(src / "mass_case_description_train_set.csv", index=False)
    with pytest.raises(ValueError, match="mass_case_description_train_set.csv, line 3: pathology 'UNKNOWN'"):
        import_cohort("cbis-ddsm", src, tmp_path / "m.csv")


# --- paths relative to the manifest, from any working directory ----------------------------------------------

FAKE_LAYOUTS = {
    "breast-lesions-usg": lambda src: _write_breast(src, FAKE_BREAST),
    "bus-bra": _write_busbra,
    "cdd-cesm": _write_cdd,
    "cbis-ddsm": _write_cbis,
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("absolute_source", [False, True], ids=["relative-source", "absolute-source"])
def test_manifest_is_valid_from_any_working_directory(tmp_path, monkeypatch, kind, absolute_source):
    """A source given relative to one working directory, a manifest elsewhere, validated from a third one."""
    from mmlib.cli import main

    for d in ("data/src", "work", "elsewhere/out", "third"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    FAKE_LAYOUTS[kind](tmp_path / "data" / "src")
    monkeypatch.chdir(tmp_path / "work")
    source = (tmp_path / "data" / "src") if absolute_source else Path("../data/src")
    assert main(["cohort", "import", kind, str(source), "--out", "../elsewhere/out/m.csv"]) == 0
    manifest = tmp_path / "elsewhere" / "out" / "m.csv"
    cells = _manifest(manifest)
    listed = [p for col in cells.columns if col in ("mammography", "ultrasound") or col.endswith("_mask")
              for cell in cells[col] for p in cell.split("|") if p]
    assert listed and not [p for p in listed if Path(p).is_absolute()]  # relative, to the manifest's folder
    assert all((manifest.parent / p).is_file() for p in listed)
    monkeypatch.chdir(tmp_path / "third")
    assert main(["cohort", "validate", "../elsewhere/out/m.csv"]) == 0
    assert len(load_manifest(manifest).patients) == len(cells)


# --- real data (../shared/data) -----------------------------------------------------------------------------


@pytest.mark.realdata
def test_breast_lesions_real_data(shared_data, tmp_path):
    out = import_cohort("breast-lesions-usg", shared_data / "breast-lesions-usg", tmp_path / "brest.csv")
    m = _manifest(out)
    side = json.loads(sidecar_path(out).read_text())
    assert len(m) == 252 and side["rows_left_out"] == {"normal (no lesion)": 4} and side["rows_read"] == 256
    assert m["label"].value_counts().to_dict() == {"benign": 154, "malignant": 98}
    assert side["notes"]["age_missing_read"] == 42  # one of the 42 is a normal case, left out
    assert (m["age"] == "").sum() == 41 and not (m["age"] == "0").any()
    assert m["label_source"].value_counts().to_dict() == {"biopsy": 197, "follow-up": 55}
    assert m.loc[m["label"] == "malignant", "label_source"].eq("biopsy").all()
    assert not [c for c in m.columns if c.startswith(CLINICAL_PREFIX)] and "ref_birads" in m.columns
    for col in ("ultrasound", "ultrasound_mask"):
        assert all(p.is_file() for cell in m[col] for p in _resolve(out, cell))
    assert (m["mammography"] == "").all()
    _validate_with_cohort(out, len(m), "ultrasound")


@pytest.mark.realdata
def test_cdd_cesm_real_data(shared_data, tmp_path):
    out = import_cohort("cdd-cesm", shared_data / "cdd-cesm", tmp_path / "cdd.csv")
    m = _manifest(out)
    side = json.loads(sidecar_path(out).read_text())
    views = m["mammography"].str.split("|").explode()
    assert len(views) == 587 and views.is_unique  # the README: 587 views (256 benign, 331 malignant)
    per_view_labels = m["label"].repeat(m["mammography"].str.count("\\|") + 1).value_counts().to_dict()
    assert per_view_labels == {"malignant": 331, "benign": 256}
    assert side["rows_read"] == 2006 and side["rows_used"] == 587
    assert side["rows_left_out"] == {"low-energy (DM) view, not a subtracted CESM view": 1003, "normal (no finding)": 416}
    assert all(p.is_file() for p in _resolve(out, "|".join(m["mammography"])))
    # One unit per breast, grouped by patient; a patient may have one benign and one malignant breast.
    assert (m["patient_id"].str.rsplit("_", n=1).str[0] == m["group"]).all()
    assert m["patient_id"].str.fullmatch(r"P\d+_[LR]").all()
    labels_per_group = m.groupby("group")["label"].nunique()
    assert m["group"].nunique() == side["groups_written"] == 272
    assert (labels_per_group == 2).sum() == side["notes"]["patients_with_both_labels"] == 31
    assert m.groupby("group").size().max() == 2
    assert m.loc["P3_L", "source_id"].startswith("P3_L_CM_CC")  # its file name carries a trailing space
    assert (m["ultrasound"] == "").all() and (m["age"] != "").all()
    assert not [c for c in m.columns if c.startswith(CLINICAL_PREFIX)]
    _validate_with_cohort(out, len(m), "mammography")


def _validate_with_cohort(manifest: Path, n_rows: int, modality: str) -> None:
    """``load_manifest`` accepts the manifest (headers only, for speed); a few images and masks decode."""
    from mmlib.imaging import read_image, read_mask

    patients = load_manifest(manifest, decode_images=False).patients
    assert len(patients) == n_rows
    for _, row in patients.iloc[:: max(1, n_rows // 3)].iterrows():
        for image, mask in zip(row[modality], row[f"{modality}_mask"]):
            pixels = read_image(image)
            assert pixels.ndim == 2 and 0.0 <= pixels.min() < pixels.max() <= 1.0
            if mask is not None:
                lesion = read_mask(mask)
                assert lesion.shape == pixels.shape and 0 < lesion.mean() < 1


def test_real_cohort_is_imported_again_when_its_tables_change(tmp_path, monkeypatch):
    """The profiles' cached manifest (cohorts/<kind>/) follows its source: adding the segmentation table re-imports."""
    import os

    from mmlib import experiment as ex

    monkeypatch.setattr(ex, "COHORTS", tmp_path / "cohorts")
    src = _write_cdd(tmp_path / "src", segmentations=None)
    manifest = ex.import_real_cohort("cdd-cesm", src)
    assert "mammography_bbox" not in _manifest(manifest).columns
    stamp = manifest.stat().st_mtime
    os.utime(src / "Radiology-manual-annotations.xlsx", (stamp - 10, stamp - 10))
    assert ex.import_real_cohort("cdd-cesm", src) == manifest and manifest.stat().st_mtime == stamp  # reused
    pd.DataFrame(CDD_SEGMENTATIONS).to_csv(src / "Radiology_hand_drawn_segmentations_v2.csv", index=False)
    os.utime(src / "Radiology_hand_drawn_segmentations_v2.csv", (stamp + 10, stamp + 10))
    assert list(_manifest(ex.import_real_cohort("cdd-cesm", src))["mammography_bbox"]) == ["10 5 34 24|", "14 12 26 18"]
