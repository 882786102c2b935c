"""Where the BUS-BRA gap lies: the segmenter's masks, or a classifier trained on predicted masks?

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/probe_external_masks.py [--external results/external-bus-bra]

A diagnostic of ``benchmarks/bench_external.py``'s models (run that first); nothing is trained or chosen here. On
the BUS-BRA patients whose every view the segmenter found a lesion in, three cells on the same patients:

- the expert-lesion model (trained on BrEaST's expert masks) reading BUS-BRA's expert masks;
- the same model reading the masks the images-only model's segmenter drew on BUS-BRA (``mmlib segment``'s way:
  the predicted masks written as a manifest's ``ultrasound_mask``);
- the images-only model (trained on cross-fitted predicted masks), segmenting for itself.

The first two differ only in the masks; the last two only in the masks the classifier learned from. Each
difference gets a paired patient bootstrap (:func:`mmlib.stats.paired_bootstrap_diff`), overall and by the
segmenter's Dice (a patient's worst view). Writes ``results/probes/external_masks.csv``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: Dice strata of the breakdown (a patient's worst view).
STRATA = ((0.0, 0.5), (0.5, 0.8), (0.8, 0.9), (0.9, 1.01))


def manifests(external: Path, out: Path) -> tuple[Path, Path, int]:
    """``(manifest with the segmenter's masks, the same patients with the expert's, patients left out)``: patients
    with a view where the segmenter found nothing are left out (an expert-lesion model needs a mask per view)."""
    from mmlib.cohort import load_manifest, write_manifest
    from mmlib.imaging import read_mask

    run = json.loads((external / "external.json").read_text())
    cohort = load_manifest(run["test_manifest"], decode_images=False)
    masks = external / "predicted" / "masks"
    rows_pred, rows_expert, left = [], [], 0
    for _, row in cohort.patients.iterrows():
        drawn = [(masks / f"{Path(image).stem}_mask.png").resolve() for image in row["ultrasound"]]
        if not all(m.is_file() and read_mask(m).any() for m in drawn):
            left += 1
            continue
        base = {"patient_id": row["patient_id"], "group": row.get("group", row["patient_id"]),
                "label": row.get("label_name", row["label"]), "age": None,
                "ultrasound": [Path(p).resolve() for p in row["ultrasound"]]}
        rows_pred.append({**base, "ultrasound_mask": drawn})
        rows_expert.append({**base, "ultrasound_mask": [Path(m).resolve() for m in row["ultrasound_mask"]]})
    return (write_manifest(rows_pred, out / "bus-bra-segmenter-masks.csv"),
            write_manifest(rows_expert, out / "bus-bra-expert-masks-same-patients.csv"), left)


def main(argv=None) -> int:
    import pandas as pd

    from mmlib.external import external_validation
    from mmlib.paths import COHORTS, results_dir
    from mmlib.stats import paired_bootstrap_diff

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--external", default=str(results_dir("external-bus-bra")))
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out", default=str(results_dir("probes") / "external_masks.csv"))
    args = ap.parse_args(argv)
    external = Path(args.external)
    needed = [external / "external.json", external / "models" / "expert", external / "predicted" / "masks",
              external / "predicted" / "predictions.csv", external / "predicted" / "segmentation.csv"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print(f"probe_external_masks: {missing} not found; run benchmarks/bench_external.py first")
        return 1
    pred_manifest, expert_manifest, left = manifests(external, COHORTS / "external")
    work = results_dir("probes") / "external-masks"
    cells = {}
    for name, manifest in (("expert_model_expert_masks", expert_manifest),
                           ("expert_model_segmenter_masks", pred_manifest)):
        print(f"{name}: evaluating {external / 'models' / 'expert'} on {manifest}", flush=True)
        folder = external_validation(external / "models" / "expert", manifest, work / name, n_boot=200)
        cells[name] = pd.read_csv(folder / "predictions.csv").set_index("patient_id")["prob_malignant"]
    own = pd.read_csv(external / "predicted" / "predictions.csv").set_index("patient_id")
    kept = cells["expert_model_expert_masks"].index
    frame = pd.DataFrame({"y": (own.loc[kept, "label"] == "malignant").astype(int), **cells,
                          "images_only_model": own.loc[kept, "prob_malignant"]})
    seg = pd.read_csv(external / "predicted" / "segmentation.csv")
    frame["dice"] = seg.groupby("patient_id")["dice"].min().reindex(kept).to_numpy()
    comparisons = (("masks: expert against the segmenter's (expert-lesion model)", "expert_model_expert_masks",
                    "expert_model_segmenter_masks"),
                   ("training masks: expert against cross-fitted predicted (both read the segmenter's masks)",
                    "expert_model_segmenter_masks", "images_only_model"))
    rows = []
    for lo, hi in ((0.0, 1.01), *STRATA):
        part = frame[(frame["dice"] >= lo) & (frame["dice"] < hi)]
        if part["y"].nunique() < 2:
            continue
        for what, a, b in comparisons:
            r = paired_bootstrap_diff(part["y"].to_numpy(), part[a].to_numpy(), part[b].to_numpy(), metric="auc",
                                      groups=part.index.to_numpy(), n_boot=args.n_boot, seed=0)
            rows.append({"comparison": what, "a": a, "b": b, "dice_from": lo, "dice_to": min(hi, 1.0),
                         "n_patients": len(part), "n_malignant": int(part["y"].sum()), "auc_a": r["value_a"],
                         "auc_b": r["value_b"], "diff": r["diff"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                         "p_value": r["p_value"], "left_out_no_lesion": left})
    table = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.drop(columns=["comparison", "left_out_no_lesion"]).round(3).to_string(index=False))
    print(f"{len(frame)} BUS-BRA patients ({left} left out: a view without a lesion found); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
