"""What post-processing and ensembling would do to a study's cross-fitted lesion masks (read-only, no training).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/probe_masks.py --results results/breast-lesions-usg-pairs-run

Reads the segmenters a study with ``lesion_source: predicted`` fitted (``cache/lesions/*/segmenter``) and its
``splits.csv``, and scores against the expert masks, per development patient:

- **thresholds**: each segmenter's masks at probability thresholds 0.3-0.6 (the largest component, as
  :class:`mmlib.segmentation.Segmenter` keeps), for the held-out segmenters (``cv``: fitted without one fold, on
  that fold) and the inner ones (``inner``: fitted without several folds, on those folds);
- **ensembles** (where the study fitted ``pairs``): fold k's held-out Dice of the segmenter fitted without k alone,
  against the mean probability of it and every inner segmenter also fitted without k (none of them saw fold k), and
  of the inner ones alone; with a paired patient bootstrap of the first difference.

Development folds only: the internal test is never read. Prints the figures; asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", required=True, help="a study's results folder (lesion_source: predicted)")
    ap.add_argument("--modality", default="ultrasound")
    a = ap.parse_args(argv)

    from mmlib.experiment import load_params, prepare_cohort
    from mmlib.imaging import read_mask
    from mmlib.segmentation import Segmenter, dice_iou, largest_component

    folder = Path(a.results)
    run = __import__("json").loads((folder / "run.json").read_text())
    cohort = prepare_cohort(load_params(run["params"]))[0]
    splits = pd.read_csv(folder / "splits.csv").set_index("patient_id")
    pats = cohort.patients
    fold = splits.loc[pats["patient_id"], "fold"].to_numpy()
    dev = splits.loc[pats["patient_id"], "split"].to_numpy() == "dev"
    segs = {}
    for d in sorted((folder / "cache" / "lesions").glob(f"{a.modality}-without-*")):
        left_out = frozenset(int(x) for x in d.name.split("-")[2:-1])
        segs[left_out] = Segmenter.load(d / "segmenter")
    thresholds = (0.3, 0.4, 0.5, 0.6)
    rows, probs = [], {}
    for left_out, seg in segs.items():
        idx = np.flatnonzero(dev & np.isin(fold, sorted(left_out)))
        images = [pats[a.modality].iloc[r][0] for r in idx]
        ps, shapes = seg.probabilities(images)
        for r, p, shape in zip(idx, ps, shapes):
            truth = read_mask(pats[f"{a.modality}_mask"].iloc[r][0])
            full = seg.full_probability(p, shape)
            probs[(left_out, r)] = full
            if truth.shape != full.shape:
                continue
            rows.append({"kind": "cv" if len(left_out) == 1 else "inner", "row": r,
                         **{f"t{t}": dice_iou(largest_component(full > t), truth)[0] for t in thresholds}})
        print(f"scored {a.modality}-without-{'-'.join(map(str, sorted(left_out)))} on {len(idx)} images", flush=True)
    df = pd.DataFrame(rows)
    print("== Dice by threshold (largest component; mean over development images)")
    print(df.groupby("kind")[[f"t{t}" for t in thresholds]].mean().round(3).to_string())

    ens = []
    for k in sorted({next(iter(s)) for s in segs if len(s) == 1}):
        inner = [s for s in segs if len(s) == 2 and k in s]
        if not inner:
            continue
        for r in np.flatnonzero(dev & (fold == k)):
            truth = read_mask(pats[f"{a.modality}_mask"].iloc[r][0])
            single = probs[(frozenset({k}), r)]
            if truth.shape != single.shape:
                continue
            d = lambda p: dice_iou(largest_component(p > 0.5), truth)[0]  # noqa: E731
            ens.append({"fold": k, "single": d(single),
                        "with_inner": d(np.mean([single, *(probs[(s, r)] for s in inner)], axis=0)),
                        "inner_only": d(np.mean([probs[(s, r)] for s in inner], axis=0))})
    if ens:
        e = pd.DataFrame(ens)
        diff = (e["with_inner"] - e["single"]).to_numpy()
        rng = np.random.default_rng(0)
        boot = diff[rng.integers(0, len(diff), (2000, len(diff)))].mean(1)
        print("== held-out Dice: the segmenter without fold k alone, with the inner segmenters without k, inner only")
        print(e[["single", "with_inner", "inner_only"]].mean().round(3).to_string())
        print(f"ensemble minus single: {diff.mean():+.3f} (paired patient bootstrap 95% CI "
              f"{np.quantile(boot, 0.025):+.3f} to {np.quantile(boot, 0.975):+.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
