"""Linear probe of frozen encoder features on a cohort: how good are the image features before any fusion training?

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/probe_features.py --profile breast-lesions-usg \
        [--levels 3,4,5 | --levels last] [--size 224] [--margin 0.0 | --whole-image] [--pooling mean|mean+std|max|grid3max]
        [--outline]

Reads the profile's development patients only (split dev of the study's splitter; the internal test is never
seen by a choice). Logistic regression (scikit-learn, standardised features plus age and its missing flag) on each
unit's pooled features, the views of a unit averaged; pooled out-of-fold AUC of stratified 5-fold CV grouped by patient (the two
breasts of a CDD-CESM patient never straddle a split), averaged over three split seeds, for three regularisation
strengths. With ``--outline`` (cohorts with lesion masks), also the lesion-outline morphometry alone
(:mod:`mmlib.morphometry`, its own logistic regression) and stacked with the image model (the two models'
standardised logits averaged within each fold). Prints the figures and writes them to
``results/probes/probe_features.csv`` (one row per setting, variant and C; :mod:`mmlib.probes`), which the
real-data chapter reads. Asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def cohort_modality(profile: str):
    """(the profile's parameters, its cohort's *development* patients, the cohort's image modality) -- the probes
    choose settings, so they read only the patients the study develops on (split dev of its own splitter), never
    the internal test; they read one image modality per cohort."""
    from mmlib import experiment as ex
    from mmlib.probes import development_cohort
    from mmlib.schema import IMAGE_MODALITIES

    p = ex.load_params(profile, progress=False)
    pats = development_cohort(p)[1]
    return p, pats, next(m for m in IMAGE_MODALITIES if pats[m].map(len).sum() > 0)


def age_columns(age: np.ndarray) -> np.ndarray:
    """(n, 2): age standardised (0 where missing) and its missing flag, the probes' clinical input."""
    z = np.nan_to_num((age - np.nanmean(age)) / (np.nanstd(age) or 1.0)) if np.isfinite(age).any() else np.zeros_like(age)
    return np.c_[z, np.isnan(age)]


def pooled_features(profile: str, *, size: int, margin: float | None, levels, pooling: str, whole_image: bool = False):
    import torch

    from mmlib.data import ImageLoader, ImageSettings, patient_views, view_outlines
    from mmlib.encoders import create_encoder

    p, pats, modality = cohort_modality(profile)
    enc = create_encoder(p["encoder"], weights=p["encoder_weights"], levels=levels).eval()
    loader = ImageLoader(ImageSettings(size=size, roi=bool(p["roi"]) and not whole_image,
                                       roi_margin=p["roi_margin"] if margin is None else margin, mean=enc.mean, std=enc.std))
    rows, outlines = [], []
    for i in range(len(pats)):
        views = patient_views(pats.iloc[i], modality)
        if not views:
            rows.append(None)
            continue
        imgs = torch.stack([loader.normalise(torch.from_numpy(loader(*v))[None]) for v in views])
        with torch.no_grad():
            f = enc(imgs)
        parts = {"mean": [f.mean((-2, -1))], "mean+std": [f.mean((-2, -1)), f.std((-2, -1))], "max": [f.amax((-2, -1))],
                 "grid3max": [torch.nn.functional.adaptive_avg_pool2d(f, 3).amax((-2, -1))]}[pooling]
        rows.append(torch.cat(parts, 1).mean(0).numpy())
        outlines.append(view_outlines(pats.iloc[i], modality).mean(0))
    keep = np.array([r is not None for r in rows])
    X = np.stack([r for r in rows if r is not None])
    age = pats["age"].to_numpy(float)[keep] if "age" in pats else np.full(keep.sum(), np.nan)
    groups = pats["group"].astype(str).to_numpy()[keep]
    return X, age, pats["label"].to_numpy().astype(int)[keep], groups, modality, np.stack(outlines)[:, :-1]


def _model(C):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))


def folds(y, groups, seed):
    """Patient-grouped stratified 5-fold splits (train, test index arrays)."""
    from sklearn.model_selection import StratifiedGroupKFold

    return list(StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(y, y, groups))


def stacked(parts, y, groups, seeds=(0, 1, 2)) -> float:
    """Pooled out-of-fold AUC of one logistic regression per ``(X, C)`` in ``parts``, their logits (each divided by
    its spread on the training folds) averaged; patient-grouped folds; mean over split seeds."""
    from sklearn.metrics import roc_auc_score

    aucs = []
    for s in seeds:
        oof = np.zeros(len(y))
        for tr, te in folds(y, groups, s):
            for X, C in parts:
                m = _model(C).fit(X[tr], y[tr])
                oof[te] += m.decision_function(X[te]) / m.decision_function(X[tr]).std()
        aucs.append(roc_auc_score(y, oof))
    return float(np.mean(aucs))


def probe(X, age, y, groups, Cs=(0.003, 0.01, 0.03), seeds=(0, 1, 2), outline=None) -> dict:
    A = age_columns(age)
    out = {}
    for name, XX in (("image", X), ("image+age", np.c_[X, A])):
        for C in Cs:
            out[(name, C)] = stacked([(XX, C)], y, groups, seeds)
    if outline is not None:
        out[("outline+age", 1.0)] = stacked([(np.c_[outline, A], 1.0)], y, groups, seeds)
        for C in Cs:
            out[("stacked", C)] = stacked([(np.c_[X, A], C), (np.c_[outline, A], 1.0)], y, groups, seeds)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--margin", type=float, default=None, help="ROI margin (default: the profile's)")
    ap.add_argument("--levels", default="3,4,5", help="encoder blocks, comma-separated, or 'last'")
    ap.add_argument("--whole-image", action="store_true", help="whole images even where the profile crops lesions")
    ap.add_argument("--pooling", default="mean", choices=["mean", "mean+std", "max", "grid3max"])
    ap.add_argument("--outline", action="store_true", help="also the lesion-outline morphometry, alone and stacked")
    a = ap.parse_args()
    levels = None if a.levels == "last" else [int(v) for v in a.levels.split(",")]
    t = time.perf_counter()
    X, age, y, groups, modality, outline = pooled_features(a.profile, size=a.size, margin=a.margin, levels=levels,
                                                           pooling=a.pooling, whole_image=a.whole_image)
    whole = ", whole image" if a.whole_image else ""
    print(f"{a.profile}: {len(y)} units, {modality}, features {X.shape[1]} ({a.levels}, {a.pooling}, {a.size} px{whole}), "
          f"extracted in {time.perf_counter() - t:.0f} s")
    if a.outline and not outline.any():
        raise SystemExit(f"--outline: cohort {a.profile!r} has no lesion masks")
    from mmlib import experiment as ex

    setting = setting_name(a, ex.load_params(a.profile, progress=False))
    rows = []
    for (name, C), v in probe(X, age, y, groups, outline=outline if a.outline else None).items():
        print(f"  {name:12s} C={C:<6} pooled out-of-fold AUC {v:.3f}")
        rows.append({"profile": a.profile, "setting": setting, "variant": name, "C": C, "auc": v, "units": len(y),
                     "patients": len(set(groups)), "command": "python benchmarks/probe_features.py " + " ".join(
                         sys.argv[1:])})
    from mmlib.probes import record

    print(f"written to {record('probe_features', rows, keys=['profile', 'setting', 'variant', 'C'])}")


def setting_name(a, params: dict) -> str:
    """The probe's options as one key, e.g. ``levels=3,4,5 size=224 margin=0 pooling=mean`` (``margin`` is the
    crop's, resolved from the profile: ``none`` where the profile does not crop, ``whole-image`` for the option)."""
    if a.whole_image:
        margin = "whole-image"
    elif not params["roi"]:
        margin = "none"
    else:
        margin = f"{params['roi_margin'] if a.margin is None else a.margin:g}"
    return f"levels={a.levels} size={a.size} margin={margin} pooling={a.pooling}"


if __name__ == "__main__":
    main()
