"""How should a fitted segmenter read an image? Prediction settings compared on held-out development images.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_segmenter_tta.py [--results results/breast-lesions-usg]
        [--variant NAME:SCALES:MARGINS ...] [--choose-folds 0 2 3]

Reads a finished BrEaST study with ``lesion_source: predicted`` (``mmlib run --profile breast-lesions-usg``). Each
of its cross-validation segmenters (fitted without one development fold, in ``cache/lesions/``) segments the images
of the fold it did not see under each variant of the prediction settings that change masks but not the network
(:data:`mmlib.segmentation.INFERENCE`): the sides the whole-image network reads the image at (``tta_scales``) and the
margins of the refiner's crops (``refine_margins``). No network is fitted. A variant is ``name:scales:margins``, each
list comma-separated, empty for the setting's default (e.g. ``two-scales:192:0.3,0.45``). Every variant's Dice per
image is set against the first's by a paired bootstrap of patients (:func:`mmlib.lesions.paired_dice_gain`), on
all folds, on the folds that choose (``--choose-folds``) and on the rest (which confirm). Development patients
only: the internal test and BUS-BRA are not touched. Writes ``results/probes/segmenter_tta.csv``. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = ("profile-before::", "second-scale:192:", "two-margins::0.3,0.45", "both:192:0.3,0.45")


def parse_variant(text: str) -> tuple[str, dict]:
    """``name:scales:margins`` -> (name, segmenter settings to set)."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0]:
        raise SystemExit(f"--variant {text!r}: expected name:scales:margins (lists comma-separated, may be empty)")
    name, scales, margins = parts
    try:
        return name, {"tta_scales": [int(v) for v in scales.split(",") if v],
                      "refine_margins": [float(v) for v in margins.split(",") if v]}
    except ValueError as e:
        raise SystemExit(f"--variant {text!r}: {e}") from e


def held_out_dice(results: Path, variants: dict) -> "pd.DataFrame":
    """One row per development image and variant: ``fold, row, patient_id, variant, found, dice``."""
    import pandas as pd

    from mmlib.cohort import load_manifest
    from mmlib.imaging import read_mask
    from mmlib.lesions import held_out_images
    from mmlib.segmentation import dice_iou

    run = json.loads((results / "run.json").read_text())
    cohort = load_manifest(run["cohort"]["manifest"], decode_images=False)
    rows = []
    for k in range(int(run["params"]["n_folds"])):
        fitted, view_rows, images, masks = held_out_images(results, k, cohort)
        truths = [read_mask(m) for m in masks]
        for name, values in variants.items():
            t = time.perf_counter()
            seg = replace(fitted, settings=replace(fitted.settings, **values))
            for r, pm, truth in zip(view_rows, seg.predict(images), truths):
                rows.append({"fold": k, "row": r, "patient_id": cohort.patients["patient_id"].iloc[r], "variant": name,
                             "found": bool(pm.found), "dice": dice_iou(pm.mask, truth)[0] if pm.found else 0.0})
            print(f"fold {k}: {len(images)} held-out images, {name}: {time.perf_counter() - t:.1f} s", flush=True)
    return pd.DataFrame(rows)


def compare(images, variants, choose_folds) -> "pd.DataFrame":
    import pandas as pd

    from mmlib.lesions import paired_dice_gain

    first = next(iter(variants))
    wide = images.pivot_table(index=["fold", "row", "patient_id"], columns="variant", values="dice").reset_index()
    subsets = {"all folds": wide, "choosing folds": wide[wide["fold"].isin(choose_folds)],
               "confirming folds": wide[~wide["fold"].isin(choose_folds)]}
    out = []
    for subset, d in subsets.items():
        if d.empty:
            continue
        for name in variants:
            g = paired_dice_gain(d[name], d[first], d["patient_id"])
            out.append({"folds": subset, "variant": name, **variants[name], "n_images": len(d),
                        "dice": float(d[name].mean()), "gain": g["diff"], "gain_ci_low": g["ci_low"],
                        "gain_ci_high": g["ci_high"], "against": first})
    return pd.DataFrame(out)


def main(argv=None) -> int:
    from mmlib.paths import results_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(results_dir("breast-lesions-usg")))
    ap.add_argument("--variant", action="append", help="name:scales:margins (repeatable; the first is the reference)")
    ap.add_argument("--choose-folds", type=int, nargs="+", default=[0, 2, 3],
                    help="folds whose images choose (the profile's other settings were chosen on 0, 2 and 3)")
    a = ap.parse_args(argv)
    results = Path(a.results)
    if not (results / "run.json").is_file():
        print(f"skipped: no finished study at {results} (mmlib run --profile breast-lesions-usg)")
        return 0
    variants = dict(parse_variant(v) for v in (a.variant or VARIANTS))
    table = compare(held_out_dice(results, variants), variants, a.choose_folds)
    print(table.to_string(index=False, float_format=lambda v: f"{v:+.4f}" if abs(v) < 0.2 else f"{v:.4f}"))
    out = results_dir("probes") / "segmenter_tta.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
