"""The annotation-free helpers of ``benchmarks/probe_cesm.py``: breast mask, enhancement descriptors, blob crops."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import probe_cesm as pc  # noqa: E402


def view(blob_at=(120, 70), blob_gain=0.5, h=256, w=192, seed=0):
    """A synthetic subtracted view: a half-disc breast against the right edge, faint noise, one enhancing blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(float)
    breast = np.hypot(yy - h / 2, xx - w) < 0.8 * w
    im = np.where(breast, 0.3 + 0.02 * rng.standard_normal((h, w)), 0.0)
    if blob_at is not None:
        im = im + blob_gain * np.exp(-((yy - blob_at[0]) ** 2 + (xx - blob_at[1]) ** 2) / (2 * 8.0 ** 2)) * breast
    return np.clip(im, 0, 1).astype(np.float32), breast


def test_breast_mask_is_the_breast():
    im, breast = view(blob_at=None)
    im[5:9, 5:9] = 0.9  # a bright marker outside the breast is not the largest component
    mask = pc.breast_mask(im)
    assert (mask & breast).sum() / breast.sum() > 0.97
    assert not mask[:12, :12].any()


def test_blob_centres_find_the_enhancing_lesion_first():
    im, _ = view(blob_at=(120, 70))
    centres = pc.blob_centres(im, k=3, radius=30)
    assert len(centres) == 3
    assert np.hypot(centres[0][0] - 120, centres[0][1] - 70) < 6
    # the next candidates lie outside the suppressed square around the first
    y0, x0 = centres[0]
    assert all(max(abs(c[0] - y0), abs(c[1] - x0)) >= 30 for c in centres[1:])


def test_blob_centres_of_an_empty_view_fall_back_to_the_centre():
    assert pc.blob_centres(np.zeros((64, 48), np.float32), k=2, radius=8) == [(32, 24), (32, 24)]


def test_square_crop_stays_inside_the_image():
    im = np.arange(100 * 80, dtype=np.float32).reshape(100, 80)
    for y, x in [(0, 0), (99, 79), (50, 40)]:
        c = pc.square_crop(im, y, x, 20)
        assert c.shape == (40, 40)
    assert pc.square_crop(im, 0, 0, 20)[0, 0] == im[0, 0]
    assert pc.square_crop(im, 99, 79, 20)[-1, -1] == im[-1, -1]


def test_breast_crop_turns_the_chest_wall_left():
    im, breast = view(blob_at=None)
    crop = pc.breast_crop(im)
    ys, xs = np.where(breast)
    assert abs(crop.shape[0] - (ys.max() - ys.min() + 1)) <= 2 and abs(crop.shape[1] - (xs.max() - xs.min() + 1)) <= 2
    half = crop.shape[1] // 2
    assert crop[:, :half].sum() > crop[:, half:].sum()


def test_enhancement_features_rise_with_the_lesion():
    plain = pc.enhancement_features(view(blob_at=None)[0])
    lesion = pc.enhancement_features(view(blob_at=(120, 70), blob_gain=0.6)[0])
    assert plain.shape == lesion.shape == (10 + 3 * len(pc.SCALES),)
    assert np.isfinite(plain).all() and np.isfinite(lesion).all()
    top = 8  # the 99th percentile of the z-scored interior
    assert lesion[top] > plain[top]
    dog_max = [10 + 3 * i for i in range(len(pc.SCALES))]
    assert max(lesion[dog_max]) > 3 * max(plain[dog_max])
