"""Benchmark of the lesion segmenter: Dice and IoU in BrEaST cross-validation, and on BUS-BRA trained on BrEaST.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_segmenter.py [--profile breast-lesions-usg]
        [--set epochs=30 --set image_size=160 ...] [--folds 5] [--skip-bus-bra] [--out /tmp/bench-seg]

The segmenter settings are the profile's ``segmenter`` parameter, updated by ``--set`` (values read as YAML).
Cross-validation uses the study's own splits of BrEaST-Lesions_USG (development patients only, patient folds;
the internal test patients are never touched), so settings tuned here are tuned on development data. The
external figure trains one segmenter on every BrEaST image with a mask and segments BUS-BRA (another country
and four scanners); manifests are imported outside the repository (``--out``). Prints Dice and IoU per fold with
patient-bootstrap 95% CIs and wall times; asserts nothing (the targets are measured, not tested). Skips with a
message where the collections are not at ``../shared/data``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

#: Targets on a 2-core CPU: mean Dice over held-out BrEaST patients, and over BUS-BRA patients.
TARGETS = {"breast_cv_dice": 0.80, "bus_bra_dice": 0.75}


def _pairs(cohort, rows, modality="ultrasound"):
    """``[(row, view, image, expert mask)]`` of the views with a mask."""
    from mmlib.lesions import _expert_views

    return [v for v in _expert_views(cohort, rows, modality) if v[3] is not None]


def _score(segmenter, views, split, fold):
    from mmlib.imaging import read_mask
    from mmlib.segmentation import dice_iou

    images = [image for _, _, image, _ in views]
    predicted = segmenter.predict(images, whole_image=True)
    out = []
    for (r, j, _, truth), pm in zip(views, predicted):
        pc = pm.whole_image  # with a refiner, the whole-image network's own outline: a paired comparison
        expert = read_mask(truth)
        dice, iou = dice_iou(pm.mask, expert)
        out.append({"row": r, "view": j, "modality": "ultrasound", "split": split, "fold": fold, "dice": dice,
                    "iou": iou, "found": pm.found, **({} if pc is None else {"dice_coarse": dice_iou(pc.mask, expert)[0]})})
    return out


def _refiner_gain(scores, patient_ids) -> None:
    """Refined against whole-image Dice on the same images (mmlib.lesions.refiner_gain: a patient bootstrap)."""
    import pandas as pd

    from mmlib.lesions import WHOLE_IMAGE_SPLIT, refiner_gain

    d = pd.DataFrame(scores).assign(group=list(patient_ids), split="cv")
    if "dice_coarse" not in d:
        return
    g = refiner_gain(pd.concat([d, d.assign(split=WHOLE_IMAGE_SPLIT, dice=d["dice_coarse"])]))
    print(f"refiner: Dice {g['dice']:.3f} against {g['dice_whole_image']:.3f} from the whole image alone (paired "
          f"difference {g['diff']:+.3f}, patient bootstrap 95% CI {g['ci_low']:+.3f} to {g['ci_high']:+.3f}; "
          f"{g['n_patients']} patients)")


def _target(what: str, value: float, target: float) -> None:
    print(f"target {what} >= {target}: {value:.3f} ({'met' if value >= target else f'missed by {target - value:.3f}'})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="breast-lesions-usg")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a segmenter setting")
    ap.add_argument("--folds", type=int, default=None, help="cross-validation folds to run (default: all)")
    ap.add_argument("--fold-ids", type=int, nargs="+", default=None,
                    help="run only these cross-validation folds (e.g. 0 2 3), for a quick comparison of settings")
    ap.add_argument("--skip-bus-bra", action="store_true")
    ap.add_argument("--skip-cv", action="store_true", help="only the BUS-BRA figure")
    ap.add_argument("--out", default=None, help="where manifests and masks go (default: a temporary folder)")
    args = ap.parse_args(argv)

    import numpy as np
    import pandas as pd

    from mmlib.cohort import load_manifest
    from mmlib.importers import import_cohort
    from mmlib.lesions import found_count, segmentation_summary
    from mmlib.params import load_params, parse_overrides
    from mmlib.paths import SHARED_DATA
    from mmlib.segmentation import SegmenterSettings, StemCache, fit_segmenter
    from mmlib.splits import iter_folds, make_splits

    breast_src, bus_src = SHARED_DATA / "breast-lesions-usg", SHARED_DATA / "bus-bra"
    if not breast_src.is_dir():
        print(f"skipped: BrEaST-Lesions_USG not found at {breast_src}")
        return 0
    p = load_params(args.profile)
    settings = SegmenterSettings.from_dict({**(p.get("segmenter") or {}), **parse_overrides(args.set)})
    print(f"segmenter settings: {settings.to_dict()}", flush=True)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-seg-"))
    t = time.perf_counter()
    breast = load_manifest(import_cohort("breast-lesions-usg", breast_src, out / "breast" / "manifest.csv"),
                           decode_images=False)
    splits = make_splits(breast, n_folds=int(p["n_folds"]), test_fraction=float(p["test_fraction"]),
                         seed=int(p["split_seed"]))
    print(f"imported BrEaST ({len(breast.patients)} patients) in {time.perf_counter() - t:.0f} s", flush=True)
    stem = StemCache(settings, seed=0) if settings.train_mode == "frozen" else None
    folds = [] if args.skip_cv else iter_folds(splits)[: args.folds]
    if args.fold_ids is not None:
        folds = [f for f in folds if f.fold in set(args.fold_ids)]
    scores = []
    t_cv = time.perf_counter()
    for fold in folds:
        t = time.perf_counter()
        train = _pairs(breast, fold.train)
        seg = fit_segmenter([v[2] for v in train], [v[3] for v in train], settings=settings, seed=0,
                            progress=False, stem_cache=stem)
        fit_s = time.perf_counter() - t
        part = _score(seg, _pairs(breast, fold.valid), "cv", fold.fold)
        scores += part
        print(f"fold {fold.fold}: fitted on {len(train)} images in {fit_s:.0f} s, {len(part)} held-out images: "
              f"Dice {np.mean([s['dice'] for s in part]):.3f} ({time.perf_counter() - t:.0f} s with prediction)",
              flush=True)
    if folds:
        per_image = out / "cv_images.csv"  # per held-out image: a paired comparison of two settings reads these
        pd.DataFrame(scores).assign(patient_id=lambda d: breast.patients["patient_id"].astype(str).to_numpy()[d["row"]]
                                    ).to_csv(per_image, index=False)
        print(f"per-image Dice: {per_image}")
        groups = breast.patients["group"].astype(str).to_numpy()
        table = segmentation_summary(pd.DataFrame(scores), groups, n_boot=2000)
        print(f"\nBrEaST cross-validation (development patients, {len(folds)} folds, "
              f"{time.perf_counter() - t_cv:.0f} s):")
        print(table.drop(columns=["modality"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        _target("Dice, BrEaST cross-validation", float(table.loc[table["fold"] == "all", "dice"].iloc[0]),
                TARGETS["breast_cv_dice"])
        _refiner_gain(scores, breast.patients["patient_id"].astype(str).to_numpy()[[s["row"] for s in scores]])
    if args.skip_bus_bra:
        return 0
    if not bus_src.is_dir():
        print(f"BUS-BRA skipped: not found at {bus_src}")
        return 0
    t = time.perf_counter()
    everything = _pairs(breast, np.arange(len(breast.patients)))
    seg = fit_segmenter([v[2] for v in everything], [v[3] for v in everything], settings=settings, seed=0,
                        progress=False, stem_cache=stem)
    fit_s = time.perf_counter() - t
    bus = load_manifest(import_cohort("bus-bra", bus_src, out / "bus-bra" / "manifest.csv"), decode_images=False)
    t = time.perf_counter()
    ext = _score(seg, _pairs(bus, np.arange(len(bus.patients))), "external", "all")
    pred_s = time.perf_counter() - t
    groups = bus.patients["group"].astype(str).to_numpy()
    ext_table = segmentation_summary(pd.DataFrame(ext).assign(split="test"), groups, n_boot=2000)
    r = ext_table.iloc[0]
    print(f"\nBUS-BRA ({r.n_patients} patients, {r.n_images} images), segmenter trained on all {len(everything)} "
          f"BrEaST images in {fit_s:.0f} s; segmenting took {pred_s:.0f} s "
          f"({pred_s / max(1, r.n_images) * 1000:.0f} ms/image):")
    print(f"Dice {r.dice:.3f} ({r.dice_ci_low:.3f}-{r.dice_ci_high:.3f}), IoU {r.iou:.3f} ({r.iou_ci_low:.3f}-"
          f"{r.iou_ci_high:.3f}), a lesion found in {found_count(r.lesion_found, r.n_images)} images")
    _target("Dice, BUS-BRA", float(r.dice), TARGETS["bus_bra_dice"])
    _refiner_gain(ext, bus.patients["patient_id"].astype(str).to_numpy()[[s["row"] for s in ext]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
