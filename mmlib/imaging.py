"""Reading mammography and ultrasound images, and cropping them around the lesion.

Every reader returns the same thing whatever the file: a float32 ``(H, W)`` grayscale array in ``[0, 1]``,
bright = dense tissue / echogenic. PNG, JPEG and TIFF go through Pillow, DICOM through pydicom (modality
LUT, then the VOI LUT or window stored in the file, MONOCHROME1 inverted).

Pixel coordinates follow numpy slicing: a box ``(x0, y0, x1, y1)`` covers columns ``x0 .. x1 - 1`` and rows
``y0 .. y1 - 1``; :func:`roi_box` returns ``(y0, y1, x0, x1)`` so that ``image[y0:y1, x0:x1]`` is the crop.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from PIL import Image

#: File name endings read as DICOM (files without one are sniffed for the ``DICM`` preamble).
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
#: Weights of ITU-R BT.601 luma, the ones Pillow's ``convert("L")`` uses.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)
#: A 16-bit grayscale file whose values never exceed this is taken as 12-bit data stored in 16 bits.
TWELVE_BIT_MAX = 4095
#: Window choices of :func:`read_image` for DICOM files.
DICOM_WINDOWS: tuple[str, ...] = ("voi", "minmax")
#: Largest relative difference of height/width ratios for which a mask is resized onto its image.
MASK_ASPECT_TOLERANCE = 0.02


class ImageReadError(ValueError):
    """An image file that cannot be read; the message names the file and what was wrong."""


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ LUMA_WEIGHTS


# ----------------------------------------------------------------------------------------------- DICOM


def _read_dicom_dataset(path: Path, *, pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not pixels, force=path.suffix.lower() in DICOM_SUFFIXES)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as e:
        raise ImageReadError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from e
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise ImageReadError(
            f"{path}: multi-frame DICOM ({frames} frames) is not supported; export one frame per file"
        )
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReadError(f"{path}: DICOM file has no Rows/Columns, so it holds no image")
    return ds


def _has_voi_lut(ds) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None


def _has_window(ds) -> bool:
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def _apply_voi(values: np.ndarray, ds) -> tuple[np.ndarray, float, float]:
    """VOI LUT (preferred, as pydicom does) or windowing of ``values``, with the transform's output range.

    The range, not the image's own min/max, maps the result onto [0, 1], so a window keeps its meaning.
    """
    from pydicom.pixels import apply_voi_lut

    if _has_voi_lut(ds):
        n_entries, first, _ = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
        # A descriptor of 0 entries means 65536 (PS3.3 C.11.2.1.1); every LUT entry is a possible output.
        domain = np.arange(first, first + (n_entries or 65536), dtype=np.int64)
        bounds = apply_voi_lut(domain, ds)
        # A LUT is indexed by whole stored values; rescaled floats are rounded onto its entries.
        if np.issubdtype(values.dtype, np.floating):
            values = np.rint(values).astype(np.int64)
        out = apply_voi_lut(values, ds)
    else:
        # Windowing saturates at both ends, so values far outside the window give its output bounds.
        with np.errstate(over="ignore"):
            bounds = apply_voi_lut(np.array([-1e15, 1e15]), ds)
            out = apply_voi_lut(values.astype(np.float64), ds)
    return np.asarray(out, dtype=np.float64), float(np.min(bounds)), float(np.max(bounds))


def _read_dicom(path: Path, dicom_window: str) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    ds = _read_dicom_dataset(path, pixels=True)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(f"{path}: DICOM file has no pixel data")
    try:
        raw = ds.pixel_array
    except Exception as e:  # pydicom raises many types for missing decoders and truncated data
        raise ImageReadError(f"{path}: cannot decode the DICOM pixel data ({type(e).__name__}: {e})") from e
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(raw, ds)
        return (_luminance(rgb) / np.iinfo(rgb.dtype).max).astype(np.float32)
    if raw.ndim == 3:
        # pydicom already converted YBR to RGB; scale by the stored bit depth, as for 16-bit PNGs.
        top = 2 ** int(ds.get("BitsStored", 8)) - 1
        return np.clip(_luminance(raw) / top, 0.0, 1.0).astype(np.float32)
    if raw.ndim != 2:
        raise ImageReadError(f"{path}: expected a 2-D DICOM image, got pixel array of shape {raw.shape}")

    try:
        values = apply_modality_lut(raw, ds)
        if dicom_window == "voi" and (_has_voi_lut(ds) or _has_window(ds)):
            values, lo, hi = _apply_voi(values, ds)
        else:
            values = values.astype(np.float64)
            lo, hi = float(values.min()), float(values.max())
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
        raise ImageReadError(f"{path}: invalid DICOM rescale or VOI attributes ({e})") from e
    out = np.zeros(values.shape) if hi <= lo else np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        # MONOCHROME1 stores dense tissue as low values; invert so that bright = dense in every file.
        out = 1.0 - out
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------------------- Pillow


def _open_pil(path: Path) -> Image.Image:
    try:
        im = Image.open(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    if getattr(im, "n_frames", 1) > 1:
        im.close()
        raise ImageReadError(f"{path}: multi-frame images ({im.n_frames} frames) are not supported")
    return im


def _load_pil(path: Path) -> Image.Image:
    im = _open_pil(path)
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: cannot decode the image data ({type(e).__name__}: {e})") from e
    return im


def _scale_16bit(arr: np.ndarray) -> np.ndarray:
    top = TWELVE_BIT_MAX if arr.max(initial=0) <= TWELVE_BIT_MAX else np.iinfo(np.uint16).max
    return arr.astype(np.float64) / top


def _minmax(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    return np.zeros(arr.shape) if hi <= lo else (arr - lo) / (hi - lo)


def _pil_to_gray(im: Image.Image, path: Path) -> np.ndarray:
    mode = im.mode
    if mode in ("1", "L", "LA"):
        out = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    elif mode.startswith("I;16"):
        out = _scale_16bit(np.asarray(im).astype(np.uint16))
    elif mode == "I":
        arr = np.asarray(im)
        out = _scale_16bit(arr) if arr.min() >= 0 and arr.max() <= 65535 else _minmax(arr)
    elif mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageReadError(f"{path}: floating-point image holds NaN or infinite values")
        out = arr if arr.min() >= 0.0 and arr.max() <= 1.0 else _minmax(arr)
    else:
        # RGB, RGBA (alpha dropped), palette, CMYK, YCbCr, ...: luminance of the RGB rendering.
        out = _luminance(np.asarray(im.convert("RGB"))) / 255.0
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------- public


def read_image(path: str | Path, *, dicom_window: str = "voi") -> np.ndarray:
    """Read one image as float32 grayscale in ``[0, 1]``.

    PNG/JPEG/TIFF: 8-bit data is divided by 255; RGB(A) becomes its BT.601 luminance (alpha dropped);
    16-bit grayscale is divided by 65535, except when no value exceeds 4095, which is taken as 12-bit data
    stored in 16 bits and divided by 4095 (so the scale is fixed by the format, never by the image maximum).
    32-bit integer data within 0..65535 follows the 16-bit rule, other integer or float data is min-max
    scaled (float data already in [0, 1] is kept).

    DICOM (``.dcm``/``.dicom`` or a ``DICM`` preamble): the modality LUT (rescale slope/intercept) is
    applied, then with ``dicom_window="voi"`` the file's VOI LUT or window centre/width mapped onto [0, 1]
    by its output range (values outside the window saturate), else (no VOI in the file, or
    ``dicom_window="minmax"``) a min-max scaling. MONOCHROME1 is inverted so that dense tissue is bright.

    Args:
        path: image file.
        dicom_window: ``"voi"`` or ``"minmax"``, see above; ignored for non-DICOM files.

    Returns:
        float32 array ``(H, W)`` with values in ``[0, 1]``.

    Raises:
        ImageReadError: missing, unreadable or undecodable file, multi-frame DICOM/TIFF.
        ValueError: unknown ``dicom_window``.
    """
    if dicom_window not in DICOM_WINDOWS:
        raise ValueError(f"dicom_window must be one of {DICOM_WINDOWS}, got {dicom_window!r}")
    path = Path(path)
    _check_exists(path)
    if _is_dicom(path):
        return _read_dicom(path, dicom_window)
    im = _load_pil(path)
    try:
        return _pil_to_gray(im, path)
    finally:
        im.close()


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image read from its header only (Pillow header or DICOM Rows/Columns).

    Raises:
        ImageReadError: missing or unreadable file, multi-frame image.
    """
    path = Path(path)
    _check_exists(path)
    if _is_dicom(path):
        ds = _read_dicom_dataset(path, pixels=False)
        return int(ds.Rows), int(ds.Columns)
    im = _open_pil(path)
    try:
        width, height = im.size
    finally:
        im.close()
    return int(height), int(width)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a lesion mask: ``True`` where the lesion is.

    Nonzero pixels are lesion. Colour masks use the maximum over the colour channels; with an alpha channel,
    transparent pixels are background (so both opaque black-background masks and transparent overlays
    work). JPEG masks are thresholded at half range instead, because lossy compression leaves faint
    nonzero noise around the lesion outline.

    Returns:
        bool array ``(H, W)``.

    Raises:
        ImageReadError: missing, unreadable or undecodable file.
    """
    path = Path(path)
    _check_exists(path)
    if _is_dicom(path):
        ds = _read_dicom_dataset(path, pixels=True)
        try:
            arr = np.asarray(ds.pixel_array)
        except Exception as e:  # missing decoders, truncated pixel data
            raise ImageReadError(f"{path}: cannot decode the DICOM pixel data ({type(e).__name__}: {e})") from e
        return (arr.max(axis=-1) if arr.ndim == 3 else arr) != 0
    im = _load_pil(path)
    try:
        lossy = im.format == "JPEG"
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
            rgba = np.asarray(im.convert("RGBA"))
            colour, alpha = rgba[..., :3].max(axis=-1), rgba[..., 3]
            return (colour > (127 if lossy else 0)) & (alpha > 0)
        if im.mode in ("1", "L", "I", "F") or im.mode.startswith("I;16"):
            arr = np.asarray(im)
        else:
            arr = np.asarray(im.convert("RGB")).max(axis=-1)
    finally:
        im.close()
    if lossy:
        return arr > 127
    return arr != 0


_BBOX_SPLIT = re.compile(r"[\s,;]+")


def parse_bbox(text: str | tuple | list) -> tuple[int, int, int, int]:
    """Parse a lesion box ``"x0 y0 x1 y1"`` (spaces and/or commas; a 4-sequence is also accepted).

    Fractional coordinates are widened to whole pixels (``x0, y0`` floored, ``x1, y1`` ceiled).

    Returns:
        ``(x0, y0, x1, y1)`` with ``0 <= x0 < x1`` and ``0 <= y0 < y1`` (``x1``/``y1`` exclusive).

    Raises:
        ValueError: not four numbers, non-finite, negative, or an empty box.
    """
    if isinstance(text, (tuple, list, np.ndarray)):
        tokens = [str(t) for t in text]
    elif isinstance(text, str):
        tokens = [t for t in _BBOX_SPLIT.split(text.strip().strip("()[]")) if t]
    else:
        raise ValueError(f"bbox must be a text 'x0 y0 x1 y1', got {type(text).__name__} {text!r}")
    if len(tokens) != 4:
        raise ValueError(f"bbox {text!r}: expected 4 numbers 'x0 y0 x1 y1', got {len(tokens)} item(s)")
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        raise ValueError(f"bbox {text!r}: expected 4 numbers 'x0 y0 x1 y1'") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"bbox {text!r}: coordinates must be finite numbers")
    x0, y0 = (math.floor(v) for v in values[:2])
    x1, y1 = (math.ceil(v) for v in values[2:])
    if x0 < 0 or y0 < 0:
        raise ValueError(f"bbox {text!r}: x0 and y0 must be >= 0")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"bbox {text!r}: expected x0 < x1 and y0 < y1")
    return x0, y0, x1, y1


def aspect_mismatch(shape_a: tuple[int, ...], shape_b: tuple[int, ...]) -> float:
    """Relative difference between the height/width ratios of two ``(H, W)`` shapes (0 = same aspect)."""
    ra, rb = shape_a[0] / shape_a[1], shape_b[0] / shape_b[1]
    return abs(ra - rb) / max(ra, rb)


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a bool ``mask`` onto an image of ``shape`` ``(H, W)`` (nearest neighbour).

    Masks are often stored at another resolution than their image; a different *aspect* means the mask
    belongs to another image (or a cropped one), so it is refused rather than stretched.

    Raises:
        ValueError: the aspect ratios differ by more than :data:`MASK_ASPECT_TOLERANCE`.
    """
    mask = np.asarray(mask, dtype=bool)
    shape = (int(shape[0]), int(shape[1]))
    if mask.shape == shape:
        return mask
    if mask.ndim != 2 or min(mask.shape) == 0:
        raise ValueError(f"mask must be a non-empty 2-D array, got shape {mask.shape}")
    diff = aspect_mismatch(mask.shape, shape)
    if diff > MASK_ASPECT_TOLERANCE:
        raise ValueError(
            f"mask of shape {mask.shape} does not fit image of shape {shape}: height/width ratios differ by "
            f"{diff:.1%} (at most {MASK_ASPECT_TOLERANCE:.0%} expected)"
        )
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return np.asarray(resized) > 0


def _fit_square(lo: int, hi: int, side: int, limit: int) -> tuple[int, int]:
    """Grow ``[lo, hi)`` to length ``side`` around its centre, shifted (not cut) to stay within ``[0, limit)``."""
    if side >= limit:
        return 0, limit
    start = (lo + hi) // 2 - side // 2
    start = min(max(start, 0), limit - side)
    return start, start + side


def roi_box(
    mask: np.ndarray | None = None,
    bbox: str | tuple | None = None,
    *,
    margin: float = 0.15,
    shape: tuple[int, int],
    square: bool = False,
) -> tuple[int, int, int, int]:
    """The lesion region of an image of ``shape``, widened by a relative margin.

    The lesion is the bounding box of ``mask`` (resized onto ``shape`` if needed, see :func:`resize_mask`)
    or else ``bbox``. Each side is widened by ``margin`` times the lesion's height (rows) or width (columns),
    rounded to whole pixels, then clipped to the image. With ``square``, the shorter side is then grown to
    the longer one around the centre and the box shifted to stay inside the image (clipped only where the
    image itself is too small). No lesion (neither given, or an empty mask) gives the whole image.

    Args:
        mask: bool ``(h, w)`` lesion mask, any resolution with the image's aspect.
        bbox: ``(x0, y0, x1, y1)`` or its text form (see :func:`parse_bbox`); used when ``mask`` is None.
        margin: relative margin, >= 0.
        shape: ``(H, W)`` of the image.
        square: make the box square (as far as the image allows).

    Returns:
        ``(y0, y1, x0, x1)`` such that ``image[y0:y1, x0:x1]`` is the region.

    Raises:
        ValueError: negative margin, bad shape, a mask of another aspect, a bbox entirely outside the image.
    """
    if len(shape) < 2 or int(shape[0]) < 1 or int(shape[1]) < 1:
        raise ValueError(f"shape must be (H, W) with H, W >= 1, got {shape!r}")
    height, width = int(shape[0]), int(shape[1])
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    whole = (0, height, 0, width)
    if mask is not None:
        mask = resize_mask(mask, (height, width))
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            return whole
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    elif bbox is not None:
        bx0, by0, bx1, by1 = parse_bbox(bbox)
        x0, x1, y0, y1 = min(bx0, width), min(bx1, width), min(by0, height), min(by1, height)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"bbox {bbox!r} lies outside the image of shape {(height, width)}")
    else:
        return whole

    pad_y, pad_x = round(margin * (y1 - y0)), round(margin * (x1 - x0))
    y0, y1 = max(0, y0 - pad_y), min(height, y1 + pad_y)
    x0, x1 = max(0, x0 - pad_x), min(width, x1 + pad_x)
    if square:
        side = max(y1 - y0, x1 - x0)
        y0, y1 = _fit_square(y0, y1, side, height)
        x0, x1 = _fit_square(x0, x1, side, width)
    return y0, y1, x0, x1


def crop_roi(
    image: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    bbox: str | tuple | None = None,
    margin: float = 0.15,
    square: bool = True,
) -> np.ndarray:
    """Crop ``image`` ``(H, W[, C])`` around the lesion; see :func:`roi_box` for the rules.

    Without a lesion (no mask/bbox, or an empty mask) the whole image is returned unchanged, so an image
    without annotation still yields a sample.

    Returns:
        ``image[y0:y1, x0:x1]`` (a view).
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    y0, y1, x0, x1 = roi_box(mask, bbox, margin=margin, shape=image.shape[:2], square=square)
    return image[y0:y1, x0:x1]


def resize_square(image: np.ndarray, size: int, *, pad: bool = True) -> np.ndarray:
    """Resize a grayscale image to ``size x size``.

    With ``pad`` the aspect is kept: the longer side becomes ``size`` and the image is centred on a zero
    background (letterbox); otherwise it is stretched. Pillow's bilinear filter widens its support when
    shrinking, so downscaling averages over the covered area instead of aliasing.

    Args:
        image: ``(H, W)`` array (any real dtype; computed in float32).
        size: output side in pixels, >= 1.
        pad: letterbox (True) or plain resize (False).

    Returns:
        float32 ``(size, size)``.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be an integer >= 1, got {size!r}")
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2 or min(image.shape) == 0:
        raise ValueError(f"image must be a non-empty (H, W) array, got shape {image.shape}")
    height, width = image.shape
    pil = Image.fromarray(np.ascontiguousarray(image))  # float32 -> mode "F"
    if not pad:
        return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32).copy()
    scale = size / max(height, width)
    new_h, new_w = max(1, min(size, round(height * scale))), max(1, min(size, round(width * scale)))
    resized = np.asarray(pil.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.float32)
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out
