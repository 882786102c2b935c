"""When should `mmlib predict` call a lesion outline uncertain? The segmenter's score against its held-out Dice.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_uncertain_outline.py [--results results/breast-lesions-usg]
        [--poor 0.5] [--min-flagged 3]

Reads a finished BrEaST study with ``lesion_source: predicted`` (``mmlib run --profile breast-lesions-usg``): its
cross-validation segmenters (each fitted without one development fold, in ``cache/lesions/``) segment the images
of the fold they did not see, and each outline's score (mean lesion probability inside the mask) is set against its
Dice with the expert's mask. Development patients only: the internal test is not touched. For each cut-off it
prints how many outlines fall below it and how many of those (and of the rest) are poor (Dice below ``--poor``),
then the rule's choice for the profile's ``segmenter.uncertain_below``: the highest cut-off under which at least
``--min-flagged`` outlines fall and at least half of them are poor (a flagged outline is more likely wrong than
right). Where ``bench_external.py`` has run, the same figures on BUS-BRA follow, at the chosen cut-off (reported,
not used to choose). Writes ``results/probes/uncertain_outline.csv``. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def held_out_scores(results: Path, poor: float):
    """One row per development image: ``fold``, ``found``, ``score``, ``dice`` (0 where nothing was found)."""
    import pandas as pd

    from mmlib.cohort import load_manifest
    from mmlib.imaging import read_mask
    from mmlib.lesions import held_out_images
    from mmlib.segmentation import dice_iou

    run = json.loads((results / "run.json").read_text())
    cohort = load_manifest(run["cohort"]["manifest"], decode_images=False)
    rows = []
    for k in range(int(run["params"]["n_folds"])):
        seg, _, images, truths = held_out_images(results, k, cohort)
        print(f"fold {k}: {len(images)} held-out images", flush=True)
        for pm, truth in zip(seg.predict(images), truths):
            dice = dice_iou(pm.mask, read_mask(truth))[0] if pm.found and truth is not None else 0.0
            rows.append({"fold": k, "found": bool(pm.found), "score": float(pm.score), "dice": float(dice)})
    out = pd.DataFrame(rows)
    out["poor"] = out["dice"] < poor
    return out


def cutoff_table(found, cutoffs):
    import pandas as pd

    rows = []
    for t in cutoffs:
        below = found["score"] < t
        rows.append({"cutoff": round(float(t), 2), "flagged": int(below.sum()), "share_flagged": float(below.mean()),
                     "poor_if_flagged": float(found.loc[below, "poor"].mean()) if below.any() else float("nan"),
                     "poor_otherwise": float(found.loc[~below, "poor"].mean()) if (~below).any() else float("nan"),
                     "poor_caught": int(found.loc[below, "poor"].sum()), "poor_total": int(found["poor"].sum())})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from mmlib.paths import results_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(results_dir("breast-lesions-usg")))
    ap.add_argument("--poor", type=float, default=0.5, help="Dice below which an outline is poor")
    ap.add_argument("--min-flagged", type=int, default=3)
    a = ap.parse_args(argv)
    results = Path(a.results)
    if not (results / "run.json").is_file():
        print(f"skipped: no finished study at {results} (mmlib run --profile breast-lesions-usg)")
        return 0
    scores = held_out_scores(results, a.poor)
    found = scores[scores["found"]]
    print(f"\nBrEaST development images: {len(scores)}, lesion found in {len(found)}, poor outlines (Dice < {a.poor}) "
          f"{int(found['poor'].sum())}; AUC of the score for a poor outline "
          f"{roc_auc_score(found['poor'], -found['score']):.3f}")
    table = cutoff_table(found, np.arange(0.70, 0.951, 0.01))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    ok = table[(table["flagged"] >= a.min_flagged) & (table["poor_if_flagged"] >= 0.5)]
    chosen = float(ok["cutoff"].max()) if len(ok) else 0.0
    print(f"\nchosen on development images: uncertain_below = {chosen:.2f} (0: no cut-off meets the rule)")
    table.insert(0, "cohort", "breast-lesions-usg (development, held out)")
    tables = [table]
    external = results_dir("external-bus-bra") / "predicted" / "segmentation.csv"
    if external.is_file() and chosen:
        ext = pd.read_csv(external)
        ext = ext[ext["lesion_found"] & ext["dice"].notna()].assign(poor=lambda d: d["dice"] < a.poor)
        row = cutoff_table(ext, [chosen]).iloc[0]
        print(f"BUS-BRA at {chosen:.2f} (not used to choose): {int(row.flagged)} of {len(ext)} outlines flagged "
              f"({row.share_flagged:.1%}), poor among them {row.poor_if_flagged:.1%} against {row.poor_otherwise:.1%} "
              f"among the rest; {int(row.poor_caught)} of {int(row.poor_total)} poor outlines flagged; AUC of the score "
              f"{roc_auc_score(ext['poor'], -ext['score']):.3f}")
        tables.append(cutoff_table(ext, [chosen]).assign(cohort="bus-bra (external, at the chosen cut-off)"))
    out = results_dir("probes") / "uncertain_outline.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(tables, ignore_index=True).assign(chosen=chosen).to_csv(out, index=False)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
