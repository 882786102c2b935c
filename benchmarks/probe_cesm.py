"""Probes of contrast-enhanced mammography without lesion annotations: can the image itself say where to look?

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/probe_cesm.py --profile cdd-cesm \
        --lever breast-crop|enhancement|auto-roi [--window 0.3] [--candidates 3]

The CDD-CESM views read here are whole recombined (subtracted) images without the release's lesion outlines. Three
levers that need no annotation, each measured like ``benchmarks/probe_features.py`` (logistic regression on a
unit's features averaged over its views, standardised, plus age and its missing flag; pooled out-of-fold AUC of
patient-grouped stratified 5-fold CV, mean over three split seeds, for three regularisation strengths):

- ``breast-crop``: each view cropped to the breast (the largest bright component of the smoothed image) and flipped
  so that the chest wall lies on the left, then frozen ImageNet features of the profile's encoder blocks.
- ``enhancement``: hand-made descriptors of the enhancement inside the breast (the intensity distribution against
  the breast's median, the share of pixels 1-3 spreads above it, and the strongest difference-of-Gaussians blobs
  at four scales with the size of the largest), alone, with age, and stacked on the whole-image probe (the two
  models' standardised logits averaged within each fold).
- ``auto-roi``: crops (``--window`` of the view's longer side) around the ``--candidates`` strongest enhancing blobs,
  frozen features of each, averaged over candidates; alone and with the whole-image features.

Reads the profile's development patients only (split dev of the study's splitter). Prints the figures and writes
them to ``results/probes/probe_cesm.csv`` (:mod:`mmlib.probes`), which the real-data chapter's CDD-CESM table
reads. Asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from probe_features import age_columns, cohort_modality, pooled_features, stacked
from scipy import ndimage as ndi

SCALES = (2, 4, 8, 16)


def breast_mask(im: np.ndarray, threshold: float = 0.08) -> np.ndarray:
    """The largest bright component of the smoothed view, holes filled (the breast in a subtracted view)."""
    mask = ndi.gaussian_filter(im, 2) > threshold
    lab, n = ndi.label(mask)
    if n:
        mask = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
    return ndi.binary_fill_holes(mask)


def enhancement_z(im: np.ndarray, mask: np.ndarray, erode: int) -> tuple[np.ndarray, np.ndarray]:
    """(view in spreads above the breast interior's median, the interior). The interior is the mask eroded by
    ``erode`` pixels, which keeps the skin line's bright rim out of the statistics; outside the breast the view is set
    to that median (z = 0), so that the breast's edge is no blob for the band-pass filters."""
    inner = ndi.binary_erosion(mask, iterations=erode)
    if inner.sum() < 100:
        inner = mask if mask.any() else np.ones_like(mask)
    v = im[inner]
    z = (im - np.median(v)) / (v.std() + 1e-6)
    return np.where(mask, z, 0.0) if mask.any() else z, inner


def enhancement_features(im: np.ndarray) -> np.ndarray:
    """Descriptors of one view's enhancement (float image in [0, 1], any size; measured at half resolution)."""
    im = ndi.zoom(im, 0.5, order=1)
    z, inner = enhancement_z(im, breast_mask(im), erode=10)
    v = z[inner]
    sd = v.std() + 1e-6
    out = [v.mean(), sd, ((v - v.mean()) ** 3).mean() / sd ** 3, ((v - v.mean()) ** 4).mean() / sd ** 4]
    out += [np.mean(v > t) for t in (1, 2, 3)]
    out += list(np.percentile(v, [90, 99, 99.9]))
    for s in SCALES:
        dog = ndi.gaussian_filter(z, s) - ndi.gaussian_filter(z, 3 * s)
        r = dog[inner]
        out += [r.max(), np.percentile(r, 99.5)]
        lab, n = ndi.label((dog > 0.5) & inner)
        out.append(np.bincount(lab.ravel())[1:].max() / inner.sum() if n else 0.0)
    return np.asarray(out, dtype=float)


def blob_centres(im: np.ndarray, k: int, radius: int) -> list[tuple[int, int]]:
    """The ``k`` strongest difference-of-Gaussians maxima inside the breast, at least ``radius`` apart (the last one
    repeated where fewer are found; the view's centre when no breast is found)."""
    mask = breast_mask(im)
    if not mask.any():
        return [(im.shape[0] // 2, im.shape[1] // 2)] * k
    z, inner = enhancement_z(im, mask, erode=12)
    score = np.max([ndi.gaussian_filter(z, s) - ndi.gaussian_filter(z, 3 * s) for s in (6, 12, 24)], axis=0)
    score[~inner] = -np.inf
    out = []
    for _ in range(k):
        y, x = np.unravel_index(np.argmax(score), score.shape)
        if not np.isfinite(score[y, x]):
            break
        out.append((int(y), int(x)))
        score[max(0, y - radius): y + radius, max(0, x - radius): x + radius] = -np.inf
    out = out or [(im.shape[0] // 2, im.shape[1] // 2)]
    return out + [out[-1]] * (k - len(out))


def square_crop(im: np.ndarray, y: int, x: int, radius: int) -> np.ndarray:
    """A ``2 radius`` square around (y, x), shifted to stay inside the image."""
    h, w = im.shape
    y0 = min(max(0, y - radius), max(0, h - 2 * radius))
    x0 = min(max(0, x - radius), max(0, w - 2 * radius))
    return im[y0: y0 + 2 * radius, x0: x0 + 2 * radius]


def breast_crop(im: np.ndarray) -> np.ndarray:
    """The breast's bounding box, flipped so that the brighter (chest-wall) half lies on the left."""
    mask = breast_mask(im)
    if mask.any():
        ys, xs = np.where(mask)
        im = im[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    w = im.shape[1]
    return np.ascontiguousarray(im[:, ::-1] if im[:, : w // 2].sum() < im[:, w // 2:].sum() else im)


def cohort_views(profile: str):
    """(cohort patients, list of each unit's view images as float arrays in [0, 1], the profile's parameters)."""
    from mmlib.data import patient_views
    from mmlib.imaging import read_image

    p, pats, modality = cohort_modality(profile)
    return pats, [[read_image(v[0]) for v in patient_views(pats.iloc[i], modality)] for i in range(len(pats))], p


def encoder_features(p: dict, size: int):
    """A function from a list of 2-D float images to their frozen, mean-pooled features (n, C)."""
    import torch

    from mmlib.data import ImageLoader, ImageSettings
    from mmlib.encoders import create_encoder
    from mmlib.imaging import resize_square

    enc = create_encoder(p["encoder"], weights=p["encoder_weights"], levels=p.get("encoder_levels")).eval()
    loader = ImageLoader(ImageSettings(size=size, mean=enc.mean, std=enc.std))

    def features(images):
        x = torch.stack([loader.normalise(torch.from_numpy(resize_square(np.ascontiguousarray(im), size)).float()[None])
                         for im in images])
        with torch.no_grad():
            return enc(x).mean((-2, -1)).numpy()

    return features


def main():
    from fastprogress.fastprogress import progress_bar

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cdd-cesm")
    ap.add_argument("--lever", required=True, choices=["breast-crop", "enhancement", "auto-roi"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--window", type=float, default=0.3, help="auto-roi crop side, as a share of the view's longer side")
    ap.add_argument("--candidates", type=int, default=3, help="auto-roi: blobs cropped per view")
    a = ap.parse_args()
    if not 0 < a.window <= 1:
        ap.error(f"--window must lie in (0, 1], got {a.window}")
    if a.candidates < 1:
        ap.error(f"--candidates must be at least 1, got {a.candidates}")
    t = time.perf_counter()
    pats, views, p = cohort_views(a.profile)
    keep = np.array([bool(v) for v in views])
    views = [v for v in views if v]
    y = pats["label"].to_numpy().astype(int)[keep]
    groups = pats["group"].astype(str).to_numpy()[keep]
    age = pats["age"].to_numpy(float)[keep] if "age" in pats else np.full(len(y), np.nan)
    A = age_columns(age)
    Cs = (0.003, 0.01, 0.03)
    rows = {}
    if a.lever != "breast-crop":  # the reference the other two levers are set against: the profile's whole-image probe
        W, *_ = pooled_features(a.profile, size=a.size, margin=None, levels=p.get("encoder_levels"), pooling="mean")
    if a.lever == "enhancement":
        E = np.stack([np.mean([enhancement_features(im) for im in unit], 0) for unit in progress_bar(views)])
        rows["enhancement"] = {C: stacked([(E, C)], y, groups) for C in (0.1, 1.0)}
        rows["enhancement+age"] = {C: stacked([(np.c_[E, A], C)], y, groups) for C in (0.1, 1.0)}
        rows["whole image+age"] = {C: stacked([(np.c_[W, A], C)], y, groups) for C in Cs}
        rows["stacked"] = {C: stacked([(np.c_[W, A], C), (np.c_[E, A], 0.1)], y, groups) for C in Cs}
    else:
        features = encoder_features(p, a.size)
        if a.lever == "breast-crop":
            X = np.stack([features([breast_crop(im) for im in unit]).mean(0) for unit in progress_bar(views)])
            rows["breast crop+age"] = {C: stacked([(np.c_[X, A], C)], y, groups) for C in Cs}
        else:
            R = []
            for unit in progress_bar(views):
                per_view = []
                for im in unit:
                    r = max(8, int(a.window * max(im.shape) / 2))
                    crops = [square_crop(im, cy, cx, r) for cy, cx in blob_centres(im, a.candidates, r)]
                    per_view.append(features(crops).mean(0))
                R.append(np.mean(per_view, 0))
            R = np.stack(R)
            rows["blob crops+age"] = {C: stacked([(np.c_[R, A], C)], y, groups) for C in Cs}
            rows["whole image+age"] = {C: stacked([(np.c_[W, A], C)], y, groups) for C in Cs}
            rows["whole+blob crops+age"] = {C: stacked([(np.c_[W, R, A], C)], y, groups) for C in Cs}
    print(f"{a.profile}: {len(y)} units, lever {a.lever}, {time.perf_counter() - t:.0f} s")
    out = []
    for name, by_c in rows.items():
        for C, v in by_c.items():
            print(f"  {name:22s} C={C:<6} pooled out-of-fold AUC {v:.3f}")
            out.append({"profile": a.profile, "setting": f"lever={a.lever} size={a.size} window={a.window:g} "
                        f"candidates={a.candidates}", "variant": name, "C": C, "auc": v, "units": len(y),
                        "patients": len(set(groups)), "command": "python benchmarks/probe_cesm.py " + " ".join(sys.argv[1:])})
    from mmlib.probes import record

    print(f"written to {record('probe_cesm', out, keys=['profile', 'setting', 'variant', 'C'])}")


if __name__ == "__main__":
    main()
