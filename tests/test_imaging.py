"""Image reading (PNG/JPEG/TIFF/DICOM), masks, boxes, ROI crops and letterboxing, on tiny files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mmlib.imaging import (
    ImageReadError,
    crop_roi,
    image_size,
    parse_bbox,
    read_image,
    read_mask,
    resize_mask,
    resize_square,
    roi_box,
)


def write_dicom(path, pixels, *, photometric="MONOCHROME2", slope=None, intercept=None, center=None,
                width=None, function=None, lut=None, frames=1):
    """A 16-bit unsigned single-sample DICOM file (explicit VR little endian) with the given VOI attributes."""
    pixels = np.asarray(pixels, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # digital mammography, for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    if function:
        ds.VOILUTFunction = function
    if lut is not None:
        first, table = lut
        item = Dataset()
        item.LUTDescriptor = [len(table), first, 16]
        item.add_new(0x00283006, "US", list(table))  # LUTData
        ds.VOILUTSequence = Sequence([item])
    if frames > 1:
        ds.NumberOfFrames = frames
        pixels = np.stack([pixels] * frames)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# ----------------------------------------------------------------------------------------------- PIL


def test_gray_png_divided_by_255(tmp_path):
    a = np.array([[0, 51], [255, 128]], dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.dtype == np.float32 and out.shape == (2, 2)
    np.testing.assert_allclose(out, a / 255.0, atol=1e-7)


def test_rgb_png_is_bt601_luminance(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    out = read_image(tmp_path / "c.png")
    expected = np.array([[0.299, 0.587], [0.114, (0.299 * 10 + 0.587 * 20 + 0.114 * 30) / 255]])
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # Second implementation: Pillow's own (integer-rounded) luma conversion.
    pil_l = np.asarray(Image.open(tmp_path / "c.png").convert("L")) / 255.0
    np.testing.assert_allclose(out, pil_l, atol=1 / 255)


def test_rgba_png_drops_alpha(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0] = [[255, 0], [100, 0]]
    rgba[..., 3] = [[0, 255], [17, 255]]  # alpha must not change the gray value
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_allclose(read_image(tmp_path / "a.png"), [[0.299, 0.0], [0.299 * 100 / 255, 0.0]], atol=1e-6)


def test_16bit_png_scaled_by_dtype_range_not_image_max(tmp_path):
    a = np.array([[0, 65535], [32768, 5000]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "w.png")
    np.testing.assert_allclose(read_image(tmp_path / "w.png"), a / 65535.0, atol=1e-7)
    b = np.array([[0, 20000], [10000, 5000]], dtype=np.uint16)  # max below 65535: not stretched
    Image.fromarray(b).save(tmp_path / "w2.png")
    np.testing.assert_allclose(read_image(tmp_path / "w2.png"), b / 65535.0, atol=1e-7)


def test_12bit_data_in_16bit_png_scaled_by_4095(tmp_path):
    a = np.array([[0, 4095], [2048, 1000]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "t.png")
    np.testing.assert_allclose(read_image(tmp_path / "t.png"), a / 4095.0, atol=1e-7)


def test_jpeg_flat_gray_value(tmp_path):
    Image.fromarray(np.full((16, 16), 100, dtype=np.uint8)).save(tmp_path / "j.jpg", quality=95)
    np.testing.assert_allclose(read_image(tmp_path / "j.jpg"), 100 / 255, atol=2 / 255)


def test_tiff_8_and_16_bit_and_float(tmp_path):
    Image.fromarray(np.array([[0, 255, 51]], dtype=np.uint8)).save(tmp_path / "a.tif")
    np.testing.assert_allclose(read_image(tmp_path / "a.tif"), [[0, 1, 0.2]], atol=1e-7)
    Image.fromarray(np.array([[0, 65535, 13107]], dtype=np.uint16)).save(tmp_path / "b.tiff")
    np.testing.assert_allclose(read_image(tmp_path / "b.tiff"), [[0, 1, 0.2]], atol=1e-7)
    # Float data already in [0, 1] is kept; other float data is min-max scaled.
    Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32)).save(tmp_path / "c.tif")
    np.testing.assert_allclose(read_image(tmp_path / "c.tif"), [[0, 0.25, 1]], atol=1e-7)
    Image.fromarray(np.array([[10.0, 20.0, 30.0]], dtype=np.float32)).save(tmp_path / "d.tif")
    np.testing.assert_allclose(read_image(tmp_path / "d.tif"), [[0, 0.5, 1]], atol=1e-7)


def test_bilevel_and_palette_png(tmp_path):
    Image.fromarray(np.array([[0, 1]], dtype=bool)).save(tmp_path / "b.png")
    np.testing.assert_allclose(read_image(tmp_path / "b.png"), [[0, 1]])
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png")
    np.testing.assert_allclose(read_image(tmp_path / "p.png"), [[0, 0.299]], atol=1e-6)


def test_image_size_is_height_width(tmp_path):
    Image.fromarray(np.zeros((3, 7), dtype=np.uint8)).save(tmp_path / "r.png")
    assert image_size(tmp_path / "r.png") == (3, 7)
    assert image_size(write_dicom(tmp_path / "r.dcm", np.zeros((5, 2)))) == (5, 2)


def test_corrupt_png_refused_naming_path(tmp_path):
    bad = tmp_path / "noise.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError, match="noise.png") as info:
        read_image(bad)
    assert str(bad) in str(info.value)
    with pytest.raises(ImageReadError, match="noise.png"):
        image_size(bad)


def test_truncated_png_refused_at_decode(tmp_path):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert image_size(tmp_path / "cut.png") == (64, 64)  # the header is intact
    with pytest.raises(ImageReadError, match=r"cut\.png: cannot decode"):
        read_image(tmp_path / "cut.png")


def test_missing_file_and_bad_window_argument(tmp_path):
    with pytest.raises(ImageReadError, match=r"nothere\.png: file not found"):
        read_image(tmp_path / "nothere.png")
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(tmp_path / "z.png")
    with pytest.raises(ValueError, match="dicom_window must be one of"):
        read_image(tmp_path / "z.png", dicom_window="auto")


# ----------------------------------------------------------------------------------------------- DICOM


def test_dicom_rescale_then_window(tmp_path):
    # stored 0, 50, 75, 200 -> rescaled (x2 - 100) -100, 0, 50, 300; LINEAR_EXACT window [-100, 100].
    path = write_dicom(tmp_path / "w.dcm", [[0, 50], [75, 200]], slope=2, intercept=-100, center=0, width=200,
                       function="LINEAR_EXACT")
    np.testing.assert_allclose(read_image(path), [[0.0, 0.5], [0.75, 1.0]], atol=1e-6)
    # Without the rescale the same window sees the stored values: 0 -> 0.5, 50 -> 0.75, 75 -> 0.875.
    plain = write_dicom(tmp_path / "p.dcm", [[0, 50], [75, 200]], center=0, width=200, function="LINEAR_EXACT")
    np.testing.assert_allclose(read_image(plain), [[0.5, 0.75], [0.875, 1.0]], atol=1e-6)


def test_dicom_default_linear_window_matches_standard_formula(tmp_path):
    stored = np.array([[0, 50], [75, 200]])
    path = write_dicom(tmp_path / "l.dcm", stored, slope=2, intercept=-100, center=0, width=201)
    x = stored * 2.0 - 100
    c, w = 0 - 0.5, 201 - 1  # PS3.3 C.11.2.1.2.1
    expected = np.clip((x - c) / w + 0.5, 0, 1)
    expected[x <= c - w / 2] = 0
    expected[x > c + w / 2] = 1
    np.testing.assert_allclose(read_image(path), expected, atol=1e-6)


def test_dicom_without_window_is_minmax_and_minmax_option(tmp_path):
    path = write_dicom(tmp_path / "m.dcm", [[100, 200], [300, 500]], slope=3, intercept=7)
    np.testing.assert_allclose(read_image(path), [[0, 0.25], [0.5, 1]], atol=1e-6)
    windowed = write_dicom(tmp_path / "w.dcm", [[0, 50], [75, 200]], center=0, width=200, function="LINEAR_EXACT")
    np.testing.assert_allclose(read_image(windowed, dicom_window="minmax"), [[0, 0.25], [0.375, 1]], atol=1e-6)


def test_dicom_monochrome1_inverted(tmp_path):
    path = write_dicom(tmp_path / "m1.dcm", [[0, 1000], [2000, 4000]], photometric="MONOCHROME1")
    np.testing.assert_allclose(read_image(path), [[1.0, 0.75], [0.5, 0.0]], atol=1e-6)
    win = write_dicom(tmp_path / "m1w.dcm", [[0, 50], [75, 200]], photometric="MONOCHROME1", center=0, width=200,
                      function="LINEAR_EXACT")
    np.testing.assert_allclose(read_image(win), [[0.5, 0.25], [0.125, 0.0]], atol=1e-6)


def test_dicom_voi_lut_sequence(tmp_path):
    # LUT from stored value 10: 10 -> 0, 11 -> 100, 12 -> 200, 13 -> 400; outside the range saturates.
    path = write_dicom(tmp_path / "lut.dcm", [[5, 11], [12, 20]], lut=(10, [0, 100, 200, 400]))
    np.testing.assert_allclose(read_image(path), [[0, 0.25], [0.5, 1.0]], atol=1e-6)


def test_dicom_rgb_ultrasound_is_luminance(tmp_path):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # ultrasound image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PlanarConfiguration = 1, 2, 3, 0
    ds.PhotometricInterpretation = "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8).tobytes()
    ds.save_as(tmp_path / "us.dcm", enforce_file_format=True)
    np.testing.assert_allclose(read_image(tmp_path / "us.dcm"), [[0.299, 0.114]], atol=1e-6)


def test_dicom_detected_by_preamble_without_extension(tmp_path):
    path = write_dicom(tmp_path / "IM0001", [[0, 10], [20, 40]])
    np.testing.assert_allclose(read_image(path), [[0, 0.25], [0.5, 1.0]], atol=1e-6)


def test_dicom_multiframe_refused(tmp_path):
    path = write_dicom(tmp_path / "mf.dcm", [[0, 1], [2, 3]], frames=3)
    with pytest.raises(ImageReadError, match=r"mf\.dcm: multi-frame DICOM \(3 frames\) is not supported"):
        read_image(path)
    with pytest.raises(ImageReadError, match="multi-frame"):
        image_size(path)


def test_corrupt_dicom_refused(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\x00\x01garbage" * 40)
    with pytest.raises(ImageReadError, match=r"bad\.dcm"):
        read_image(bad)


# ----------------------------------------------------------------------------------------------- masks


def test_read_mask_gray_and_rgba(tmp_path):
    a = np.array([[0, 0, 7], [255, 0, 0]], dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), a != 0)
    # Opaque black background, red lesion: max over colour channels.
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[0, 1, 0] = 200
    rgba[1, 2, 2] = 1
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "o.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "o.png"), [[False, True, False], [False, False, True]])
    # Transparent overlay: white everywhere, lesion = opaque pixels.
    overlay = np.full((2, 3, 4), 255, dtype=np.uint8)
    overlay[..., 3] = [[0, 0, 255], [0, 255, 0]]
    Image.fromarray(overlay, mode="RGBA").save(tmp_path / "t.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "t.png"), [[False, False, True], [False, True, False]])


def test_read_mask_jpeg_ignores_compression_noise(tmp_path):
    a = np.zeros((32, 32), dtype=np.uint8)
    a[8:20, 10:26] = 255
    Image.fromarray(a).save(tmp_path / "m.jpg", quality=50)
    assert (np.asarray(Image.open(tmp_path / "m.jpg")) != 0).sum() > a.astype(bool).sum()  # noise exists
    np.testing.assert_array_equal(read_mask(tmp_path / "m.jpg"), a > 0)


# ----------------------------------------------------------------------------------------------- boxes


@pytest.mark.parametrize("text", ["1 2 30 40", "1,2,30,40", " 1, 2 ,30 , 40 ", "(1, 2, 30, 40)", "1.2 2.9 29.1 40"])
def test_parse_bbox_accepts(text):
    assert parse_bbox(text) == (1, 2, 30, 40)


@pytest.mark.parametrize(
    "text, message",
    [("1 2 3", "expected 4 numbers"), ("1 2 3 4 5", "expected 4 numbers"), ("a b c d", "expected 4 numbers"),
     ("5 5 5 10", "x0 < x1"), ("0 9 4 3", "y0 < y1"), ("-1 0 4 4", ">= 0"), ("0 0 inf 4", "finite"), ("", "4 numbers")],
)
def test_parse_bbox_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        parse_bbox(text)


def test_roi_box_mask_with_margin():
    mask = np.zeros((100, 100), dtype=bool)
    mask[40:60, 30:70] = True  # 20 rows, 40 columns
    assert roi_box(mask, shape=(100, 100), margin=0.15) == (37, 63, 24, 76)
    assert roi_box(mask, shape=(100, 100), margin=0.0) == (40, 60, 30, 70)
    # Square: the 26-row side grows to 52 around the centre row 50.
    assert roi_box(mask, shape=(100, 100), margin=0.15, square=True) == (24, 76, 24, 76)


def test_roi_box_bbox_equals_mask_and_clips_at_border():
    mask = np.zeros((50, 60), dtype=bool)
    mask[0:10, 52:60] = True
    by_mask = roi_box(mask, shape=(50, 60), margin=0.5)
    by_box = roi_box(bbox="52 0 60 10", shape=(50, 60), margin=0.5)
    assert by_mask == by_box == (0, 15, 48, 60)  # 5 rows / 4 columns of margin, clipped at 0 and 60


def test_roi_box_square_shifted_inside_and_clipped_when_too_small():
    mask = np.zeros((100, 100), dtype=bool)
    mask[0:10, 0:40] = True
    assert roi_box(mask, shape=(100, 100), margin=0, square=True) == (0, 40, 0, 40)
    wide = np.zeros((20, 100), dtype=bool)
    wide[5:10, 0:50] = True
    assert roi_box(wide, shape=(20, 100), margin=0, square=True) == (0, 20, 0, 50)


def test_roi_box_without_lesion_is_whole_image():
    assert roi_box(np.zeros((8, 9), dtype=bool), shape=(8, 9)) == (0, 8, 0, 9)
    assert roi_box(shape=(8, 9)) == (0, 8, 0, 9)


def test_roi_box_resizes_mask_of_other_resolution():
    small = np.zeros((50, 50), dtype=bool)
    small[10:20, 5:15] = True
    assert roi_box(small, shape=(100, 100), margin=0) == (20, 40, 10, 30)
    np.testing.assert_array_equal(resize_mask(small, (100, 100))[20:40, 10:30], True)


def test_roi_box_refuses_mask_of_other_aspect_and_bad_arguments():
    with pytest.raises(ValueError, match=r"mask of shape \(50, 100\) does not fit image of shape \(100, 100\)"):
        roi_box(np.ones((50, 100), dtype=bool), shape=(100, 100))
    with pytest.raises(ValueError, match="lies outside the image"):
        roi_box(bbox=(200, 200, 210, 210), shape=(100, 100))
    with pytest.raises(ValueError, match="margin must be"):
        roi_box(bbox=(0, 0, 5, 5), shape=(10, 10), margin=-0.1)


def test_crop_roi_returns_the_box_region():
    image = np.arange(100 * 80, dtype=np.float32).reshape(100, 80)
    mask = np.zeros_like(image, dtype=bool)
    mask[40:60, 30:50] = True
    crop = crop_roi(image, mask=mask, margin=0.1, square=False)
    np.testing.assert_array_equal(crop, image[38:62, 28:52])
    rgb = np.stack([image] * 3, axis=-1)
    assert crop_roi(rgb, bbox=(30, 40, 50, 60), margin=0.1, square=False).shape == (24, 24, 3)
    np.testing.assert_array_equal(crop_roi(image, mask=np.zeros_like(mask)), image)


# ----------------------------------------------------------------------------------------------- resizing


def test_resize_square_letterbox_and_stretch():
    image = np.ones((10, 20), dtype=np.float32)
    boxed = resize_square(image, 8)
    assert boxed.shape == (8, 8) and boxed.dtype == np.float32
    expected = np.zeros((8, 8), dtype=np.float32)
    expected[2:6] = 1
    np.testing.assert_allclose(boxed, expected, atol=1e-6)
    np.testing.assert_allclose(resize_square(image, 8, pad=False), np.ones((8, 8)), atol=1e-6)


def test_resize_square_downscale_averages_and_keeps_range():
    image = np.zeros((16, 16), dtype=np.float32)
    image[:, 8:] = 1.0
    out = resize_square(image, 8)
    np.testing.assert_allclose(out[:, :3], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[:, 5:], 1.0, atol=1e-6)
    assert np.all(np.diff(out[0]) >= 0) and out.min() >= 0 and out.max() <= 1
    assert abs(out.mean() - image.mean()) < 1e-6


def test_resize_square_refuses_bad_arguments():
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        resize_square(np.ones((4, 4)), 0)
    with pytest.raises(ValueError, match=r"image must be a non-empty \(H, W\) array"):
        resize_square(np.ones((4, 4, 3)), 4)
