"""Lesion-outline morphometry: the shape of a lesion mask as a short vector of scale-free descriptors.

Shape, orientation and margin are the core of the BI-RADS ultrasound lexicon (irregular, not parallel to the
skin, angular or spiculated margins point to malignancy). Measured on the lesion's outline they are classic
computer-aided-diagnosis features (Chang et al., Ultrasound Med Biol 2005; Huang et al., Radiology 2008).
They describe the *outline*, not a radiologist's category: the BI-RADS descriptors and assessment of the
same image are never model inputs, while an outline may come from an expert, as in the public collections,
or from a segmentation model in deployment. The book says which results use them.

Every descriptor is invariant to the image's scale (pixel size differs between scanners) and to horizontal
flips; the orientation descriptors are not rotation-invariant on purpose (ultrasound has a skin side).

====================  ==========================================================================================
``log_depth_width``   log of the outline's height over its width ("taller than wide" > 0)
``extent``            area over the bounding box's area
``solidity``          area over the convex hull's area (lobulated, angular or spiculated outlines are lower)
``log_compactness``   log of perimeter^2 / (4 pi area) (0 for a disc; rough margins are higher)
``axis_ratio``        minor over major axis of the equal-moment ellipse
``non_parallel``      |sin| of the major axis' angle to the skin line (0 parallel, 1 perpendicular)
``radial_std``        standard deviation of the normalised radial length of the border
``log_ellipse_fit``   log of the area over the equal-moment ellipse's area
``roughness``         area removed by an opening at 5% of the lesion's size, over the area (protrusions)
``concavity``         area added by a closing at the same size, over the area (indentations)
``has_outline``       1 where the view has a non-empty outline; every other descriptor is 0 where it has none
====================  ==========================================================================================
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

OUTLINE_FEATURES = ("log_depth_width", "extent", "solidity", "log_compactness", "axis_ratio", "non_parallel",
                    "radial_std", "log_ellipse_fit", "roughness", "concavity", "has_outline")

#: Outlines are measured on masks whose longer side is at most this (bigger ones are downsampled first): the
#: descriptors are scale-free, and morphology on a 1024 px mask would cost seconds.
MAX_SIDE = 256


def _downsample(mask: np.ndarray) -> np.ndarray:
    from .imaging import resize_mask

    h, w = mask.shape
    scale = MAX_SIDE / max(h, w)
    if scale >= 1:
        return mask
    return resize_mask(mask, (max(1, round(h * scale)), max(1, round(w * scale))))


def outline_features(mask) -> np.ndarray:
    """Morphometric descriptors of a lesion mask, in the order of :data:`OUTLINE_FEATURES`.

    Args:
        mask: ``(H, W)`` array, non-zero inside the lesion (several components are measured as one outline).

    Returns:
        float32 ``(len(OUTLINE_FEATURES),)``; all zeros (``has_outline`` 0) for an empty mask.

    Raises:
        ValueError: not a 2-d array.
    """
    from scipy import ndimage
    from scipy.spatial import ConvexHull, QhullError

    mask = np.asarray(mask)
    if mask.ndim != 2 or min(mask.shape) == 0:
        raise ValueError(f"a lesion mask must be a non-empty (H, W) array, got shape {mask.shape}")
    mask = _downsample(mask != 0)
    out = np.zeros(len(OUTLINE_FEATURES), dtype=np.float32)
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return out
    area = float(ys.size)
    height, width = float(np.ptp(ys) + 1), float(np.ptp(xs) + 1)
    padded = np.pad(mask, 1)
    border = padded & ~ndimage.binary_erosion(padded)
    perimeter = float(border.sum())
    try:
        # Pixel corners, not centres: a one-pixel-wide outline still has a hull of positive area.
        corners = np.concatenate([np.c_[ys + dy, xs + dx] for dy in (0, 1) for dx in (0, 1)])
        hull = float(ConvexHull(corners).volume)
    except QhullError:
        hull = height * width
    if ys.size > 1:
        cov = np.cov(np.c_[ys, xs].T.astype(float)) + np.eye(2) / 12.0  # + the variance of a unit pixel
    else:
        cov = np.eye(2) / 12.0
    minor, major = np.sort(np.linalg.eigvalsh(cov))
    angle = 0.5 * np.arctan2(2 * cov[0, 1], cov[1, 1] - cov[0, 0])  # of the major axis, from the x axis
    by, bx = np.nonzero(border)
    radial = np.hypot(by - 1 - ys.mean(), bx - 1 - xs.mean())
    radial = radial / radial.max() if radial.max() > 0 else radial
    ellipse = 4.0 * np.pi * np.sqrt(minor * major)
    k = max(1, int(round(0.05 * np.sqrt(area))))
    opened = ndimage.binary_opening(padded, iterations=k)
    closed = ndimage.binary_closing(np.pad(mask, k + 1), iterations=k)[k:-k, k:-k]
    out[:] = [
        np.log(height / width),
        area / (height * width),
        min(1.0, area / hull),
        np.log(max(perimeter, 1.0) ** 2 / (4 * np.pi * area)),
        np.sqrt(minor / major),
        abs(np.sin(angle)),
        radial.std(),
        np.log(area / ellipse),
        float((padded & ~opened).sum()) / area,
        float((closed & ~padded).sum()) / area,
        1.0,
    ]
    return out


@lru_cache(maxsize=4096)
def _outline_of_file(path: str) -> np.ndarray:
    from .imaging import read_mask

    try:
        return outline_features(read_mask(path))
    except ValueError as err:
        raise ValueError(f"lesion mask {path}: {err}") from None


def outline_of(mask_path) -> np.ndarray:
    """:func:`outline_features` of the mask file ``mask_path`` (cached per path); zeros where it is None."""
    if mask_path is None:
        return np.zeros(len(OUTLINE_FEATURES), dtype=np.float32)
    return _outline_of_file(str(Path(mask_path))).copy()
