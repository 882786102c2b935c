"""A stand-in for :mod:`mmlib.segmentation` (tests only): the same API, no network, instant.

It "segments" the central ellipse of every image, finds nothing in images whose file stem is listed in
``Segmenter.not_found``, marks as not refined (``refined`` False: a refiner found nothing in its crop) those listed
in ``Segmenter.not_refined``, scores 0.3 (an uncertain outline under ``uncertain_below`` above it) those listed in
``Segmenter.uncertain``, and saves itself as the real one does (``segmenter.safetensors`` + ``segmenter.json``, with
its :class:`~mmlib.segmentation.SegmenterSettings`), so the model-folder, prediction and evaluation code can be
tested quickly and deterministically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmlib.segmentation import POST_PROCESSING, SegmenterSettings, set_post_processing  # noqa: F401 (the real ones)

SEGMENTER_WEIGHTS = "segmenter.safetensors"
SEGMENTER_CONFIG = "segmenter.json"


@dataclass
class PredictedMask:
    mask: np.ndarray
    found: bool
    score: float
    refined: bool | None = None
    whole_image: "PredictedMask | None" = None


class Segmenter:
    not_found: set = set()
    not_refined: set = set()
    uncertain: set = set()
    fits: list = []

    def __init__(self, info: dict | None = None, settings: SegmenterSettings | None = None):
        self.info = dict(info or {})
        self.settings = settings or SegmenterSettings()

    def predict(self, images, *, progress=False, whole_image=False):
        from mmlib.imaging import image_size

        out = []
        for path in images:
            h, w = image_size(path)
            if Path(path).stem in self.not_found:
                out.append(PredictedMask(np.zeros((h, w), bool), False, 0.1))
                continue
            yy, xx = np.mgrid[:h, :w]
            mask = ((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 <= 1
            out.append(PredictedMask(mask, True, 0.3 if Path(path).stem in self.uncertain else 0.9,
                                     refined=False if Path(path).stem in self.not_refined else None))
        return out

    def save(self, folder):
        from safetensors.torch import save_file
        import torch

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"w": torch.zeros(1)}, str(folder / SEGMENTER_WEIGHTS))
        (folder / SEGMENTER_CONFIG).write_text(json.dumps({"format": "standin", "info": self.info,
                                                           "settings": self.settings.to_dict()}))
        return folder

    @classmethod
    def load(cls, folder):
        folder = Path(folder)
        if not (folder / SEGMENTER_CONFIG).is_file():
            raise FileNotFoundError(f"{folder} is not a segmenter folder")
        meta = json.loads((folder / SEGMENTER_CONFIG).read_text())
        return cls(meta["info"], SegmenterSettings.from_dict(meta.get("settings")))


def fit_segmenter(images, masks, *, settings=None, seed=0, progress=True):
    from mmlib.imaging import read_mask

    images, masks = list(images), list(masks)
    assert len(images) == len(masks) >= 2
    assert all(read_mask(m).any() for m in masks)
    Segmenter.fits.append(len(images))
    settings = settings if isinstance(settings, SegmenterSettings) else SegmenterSettings.from_dict(settings)
    return Segmenter({"trained_on_images": len(images), "seed": seed}, settings)


def dice_iou(pred, truth):
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    inter, total = (pred & truth).sum(), pred.sum() + truth.sum()
    union = (pred | truth).sum()
    return (1.0 if total == 0 else 2 * inter / total), (1.0 if union == 0 else inter / union)
