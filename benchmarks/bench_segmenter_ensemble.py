"""Which segmenter should a model folder carry: one refitted on all development patients, or the mean of the
cross-validation folds' segmenters (the run parameter ``deployed_segmenter``)? Measured on development patients.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_segmenter_ensemble.py [--results results/breast-lesions-usg]
        [--fits results/probes/segmenter_pairs] [--n-boot 2000]

The choice cannot be measured on the development patients directly: every one of them trained the refit, and four
of the five fold segmenters. So it is mimicked one level down, inside each outer fold ``k`` of a finished BrEaST
study with ``lesion_source: predicted`` (its segmenters are in ``cache/lesions/``):

- ``refit``: the study's segmenter fitted on the four training folds (``without-k``), as a refit is fitted on all
  development patients;
- ``folds``: the mean of the four segmenters each fitted on three of those four folds (``without-j-k``), as the
  fold ensemble's members are each fitted on four of five folds;
- ``one fold model``: each of those four alone (what the ensemble's averaging adds at equal training data).

Each is scored on fold ``k``'s held-out images (Dice against the expert's mask, 0 where nothing is found): the
outer test of the comparison is patients none of the compared segmenters saw, and the internal test is never
touched. The ten ``without-j-k`` segmenters are fitted with the study's own settings and seed (about 100 s each on
2 cores) and kept under ``--fits``, so a rerun reuses them. Prints mean Dice, the share of poor outlines (Dice below
0.5) and paired differences with patient-bootstrap 95% CIs; writes ``results/probes/segmenter_ensemble.csv``, which
the real-data chapter reads. Asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def study_segmenter(results: Path, left_out: frozenset[int]) -> Path:
    """The newest segmenter folder of the study that left out exactly ``left_out``."""
    from mmlib.lesions import study_segmenter_home

    return study_segmenter_home(results, left_out) / "segmenter"


def pair_segmenters(fits: Path, cohort, row_folds, params: dict) -> dict:
    """``{(j, k): Segmenter}`` fitted without folds j and k (stored under ``fits``, reused when their record
    matches the study's settings, seed and training patients)."""
    import numpy as np

    from mmlib.lesions import _expert_views
    from mmlib.segmentation import Segmenter, SegmenterSettings, StemCache, fit_segmenter

    settings = SegmenterSettings.from_dict(params.get("segmenter") or {})
    seed = int(params["seeds"][0])
    n_folds = int(params["n_folds"])
    stem, out = None, {}
    for j, k in itertools.combinations(range(n_folds), 2):
        rows = np.flatnonzero((row_folds >= 0) & ~np.isin(row_folds, [j, k]))
        views = [(i, m) for _, _, i, m in _expert_views(cohort, rows, "ultrasound") if m is not None]
        record = {"settings": settings.key_dict(), "seed": seed,
                  "patients": sorted(cohort.patients["patient_id"].iloc[rows].astype(str))}
        home = fits / f"without-{j}-{k}"
        done = home / "record.json"
        if done.is_file() and json.loads(done.read_text()) == record:
            out[j, k] = Segmenter.load(home / "segmenter")
            print(f"segmenter without folds {j} and {k}: reused", flush=True)
            continue
        if stem is None and settings.train_mode == "frozen":
            stem = StemCache(settings, seed=seed)
        t = time.perf_counter()
        seg = fit_segmenter([a for a, _ in views], [b for _, b in views], settings=settings, seed=seed,
                            progress=False, stem_cache=stem)
        seg.save(home / "segmenter")
        done.write_text(json.dumps(record))
        out[j, k] = seg
        print(f"segmenter without folds {j} and {k}: fitted on {len(views)} images in {time.perf_counter() - t:.0f} s",
              flush=True)
    return out


def main(argv=None) -> int:
    import numpy as np
    import pandas as pd

    from mmlib.cohort import load_manifest
    from mmlib.imaging import read_mask
    from mmlib.paths import results_dir
    from mmlib.segmentation import Segmenter, dice_iou, ensemble_segmenters

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(results_dir("breast-lesions-usg")))
    ap.add_argument("--fits", default=str(results_dir("probes") / "segmenter_pairs"))
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--poor", type=float, default=0.5, help="Dice below which an outline is poor")
    a = ap.parse_args(argv)
    results = Path(a.results)
    if not (results / "run.json").is_file():
        print(f"skipped: no finished study at {results} (mmlib run --profile breast-lesions-usg)")
        return 0
    run = json.loads((results / "run.json").read_text())
    params = run["params"]
    if params.get("lesion_source") != "predicted":
        print(f"skipped: {results} is not a study with lesion_source predicted")
        return 0
    cohort = load_manifest(run["cohort"]["manifest"], decode_images=False)
    splits = pd.read_csv(results / "splits.csv")
    if list(splits["patient_id"].astype(str)) != list(cohort.patients["patient_id"].astype(str)):
        raise ValueError(f"{results / 'splits.csv'} does not list the patients of {cohort.manifest} in order")
    row_folds = np.where(splits["split"] == "dev", splits["fold"].fillna(-1).astype(int), -1)
    n_folds = int(params["n_folds"])
    pairs = pair_segmenters(Path(a.fits), cohort, row_folds, params)
    rows = []
    for k in range(n_folds):
        refit = Segmenter.load(study_segmenter(results, frozenset({k})))
        members = [pairs[tuple(sorted((j, k)))] for j in range(n_folds) if j != k]
        compared = {"refit": refit, "folds": ensemble_segmenters(members),
                    **{f"fold model {i}": m for i, m in enumerate(members)}}
        held = np.flatnonzero(row_folds == k)
        views = [(r, v, img, m) for r in held
                 for v, (img, m) in enumerate(zip(cohort.patients["ultrasound"].iloc[r],
                                                  cohort.patients["ultrasound_mask"].iloc[r])) if m is not None]
        truths = [read_mask(m) for *_, m in views]
        for name, seg in compared.items():
            t = time.perf_counter()
            for (r, v, _, _), pm, truth in zip(views, seg.predict([img for _, _, img, _ in views]), truths):
                rows.append({"fold": k, "row": int(r), "view": v, "patient_id": str(cohort.patients["patient_id"].iloc[r]),
                             "group": str(cohort.patients["group"].iloc[r]), "segmenter": name,
                             "dice": dice_iou(pm.mask, truth)[0] if pm.found else 0.0, "found": bool(pm.found)})
            print(f"fold {k}: {name}, {len(views)} held-out images, {time.perf_counter() - t:.1f} s", flush=True)
    per = pd.DataFrame(rows)
    per["kind"] = per["segmenter"].where(~per["segmenter"].str.startswith("fold model"), "one fold model")
    wide = per.pivot_table(index=["fold", "row", "view", "group"], columns="kind", values="dice",
                           aggfunc="mean").reset_index()  # "one fold model": the mean of the four members alone
    rng = np.random.default_rng(0)
    groups = wide["group"].to_numpy()
    uniq, inv = np.unique(groups, return_inverse=True)
    draws = rng.integers(0, len(uniq), (int(a.n_boot), len(uniq)))
    counts = np.stack([np.bincount(d, minlength=len(uniq)) for d in draws])[:, inv]  # patient bootstrap weights

    def boot(values):
        values = np.asarray(values, dtype=float)
        stats = (counts * values).sum(1) / counts.sum(1)
        return float(values.mean()), float(np.quantile(stats, 0.025)), float(np.quantile(stats, 0.975))

    out = []
    for kind in ("refit", "folds", "one fold model"):
        mean, lo, hi = boot(wide[kind])
        poor = per.loc[per["kind"] == kind, "dice"].lt(a.poor).mean()
        out.append({"comparison": kind, "dice": mean, "ci_low": lo, "ci_high": hi, "poor_share": float(poor),
                    "n_images": len(wide), "n_patients": len(uniq)})
        print(f"{kind:>15}: Dice {mean:.3f} ({lo:.3f}-{hi:.3f}), poor outlines (Dice < {a.poor}) {poor:.1%}")
    for x, y in (("folds", "refit"), ("folds", "one fold model")):
        mean, lo, hi = boot(wide[x] - wide[y])
        out.append({"comparison": f"{x} - {y}", "dice": mean, "ci_low": lo, "ci_high": hi, "poor_share": float("nan"),
                    "n_images": len(wide), "n_patients": len(uniq)})
        print(f"{x} - {y}: {mean:+.3f} (patient bootstrap 95% CI {lo:+.3f} to {hi:+.3f})")
    dest = results_dir("probes") / "segmenter_ensemble.csv"
    dest.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(out).assign(n_folds=n_folds, study=str(results.name)).to_csv(dest, index=False)
    per.to_csv(dest.with_name("segmenter_ensemble_images.csv"), index=False)
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
