"""Benchmark of the default study: each stage's wall time with local processes and with Ray, units of work per
second with one and two workers, whether metrics.csv is identical between them, the quality targets on the
synthetic cohort (best model vs the oracle AUC, models vs age only, modality importance order) and, on request,
the speed-up of the feature cache.

    .venv/bin/python benchmarks/bench_experiment.py [--profile default] [--runs local:2 ray:2 local:1]
        [--skip-run] [--cache-speedup]

Every run starts from an empty results folder (``results/bench-<profile>-<executor>-w<workers>/``: its own
feature cache, nothing reused); the cohort is shared. Prints figures; asserts nothing (speed and quality are
measured, not timed tests). Other work on the machine slows every figure: measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def cache_speedup(profile: str, epochs: int = 1) -> dict:
    """Seconds per training epoch of AMW-CNN from cached features vs from images through the frozen encoder."""
    from mmlib import experiment as ex
    from mmlib.data import FeatureDataset, MultimodalDataset, make_dataloaders
    from mmlib.learner import multimodal_learner

    p = ex.load_params(profile, progress=False)
    study = ex.Study(p, ex.results_dir(p["profile"]))
    study.cohort, study.cohort_info = ex.prepare_cohort(p)
    from mmlib.splits import make_splits

    study.splits = make_splits(study.cohort, n_folds=p["n_folds"], test_fraction=p["test_fraction"], seed=p["split_seed"])
    t = time.perf_counter()
    ex.build_feature_cache(study)
    t_cache = time.perf_counter() - t
    dev = np.flatnonzero(study.splits["split"].to_numpy() == "dev")
    spec = ex._spec(study, dev, True)
    out = {"cache_build_s (incl. reuse)": round(t_cache, 2)}
    for kind in ("features", "images"):
        if kind == "features":
            tr, va = FeatureDataset(study.cohort, dev, spec, study.cache, train=True), FeatureDataset(study.cohort, dev[:8], spec, study.cache)
        else:
            tr, va = MultimodalDataset(study.cohort, dev, spec, train=True), MultimodalDataset(study.cohort, dev[:8], spec)
            tr.loader = study.cache.loader  # decoded images already in memory: time the encoder, not the disk
            va.loader = study.cache.loader
        dls = make_dataloaders(tr, va, bs=p["bs"])
        learn = multimodal_learner(dls, "amw_cnn", encoder_weights="none", csv_log=None, save_best=False)
        ex._load_frozen_encoder(learn.model, study)
        t = time.perf_counter()
        with learn.no_bar(), learn.no_logging():
            learn.fit(epochs, 1e-3)
        out[f"epoch_s_{kind}"] = round((time.perf_counter() - t) / epochs, 2)
    out["speedup"] = round(out["epoch_s_images"] / out["epoch_s_features"], 1)
    return out


def quality(results) -> dict:
    from mmlib.experiment import modality_importance

    m = results.metrics
    base = m[(m["split"] == "cv") & (m["ablation"] == "none") & (m["scenario"] == "all") & (m["metric"] == "auc")]
    aucs = dict(zip(base["model"], base["value"].round(4)))
    models = [x for x in results.run["params"]["models"] if x in aucs]
    best = max(models, key=aucs.get)
    oracle = results.run.get("oracle_auc_dev", results.run.get("oracle_auc"))
    out = {"oof_auc": aucs, "best_model": best, "oracle_auc (development patients)": oracle}
    if oracle is not None:
        out["best_minus_oracle"] = round(aucs[best] - oracle, 4)
        out["within_0.03_of_oracle"] = aucs[best] >= oracle - 0.03
    if "age_only" in aucs:
        out["every_model_beats_age_only"] = all(aucs[x] > aucs["age_only"] for x in models)
    imp = modality_importance(results.missing)
    if not imp.empty:
        out["importance_order (mean AUC drop when removed)"] = (
            imp.groupby("removed")["auc_drop"].mean().sort_values(ascending=False).round(4).to_dict())
    return out


def executor_runs(profile: str, runs: list[str]) -> list[dict]:
    """The study once per ``executor:workers`` from an empty results folder; stage timings, units per second."""
    import shutil

    from mmlib import experiment as ex

    out = []
    for spec in runs:
        executor, _, workers = spec.partition(":")
        folder = ex.results_dir(f"bench-{profile}-{executor}-w{workers}")
        shutil.rmtree(folder, ignore_errors=True)
        params = ex.load_params(profile, executor=executor, workers=int(workers), progress=False,
                                results_dir=str(folder))
        ex.run_experiment(params)
        run = ex.load_results(folder).run
        trained = run["units"]["trained"]
        out.append({"run": spec, "folder": folder, "timings": run["timings"], "wall": run["wall_time_seconds"],
                    "units": trained, "units_per_s": trained / run["timings"]["training"]["seconds"]})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="default")
    ap.add_argument("--runs", nargs="+", default=["local:2", "ray:2", "local:1"],
                    help="executor:workers of each run (executor local or ray)")
    ap.add_argument("--skip-run", action="store_true", help="read the existing results instead of running")
    ap.add_argument("--cache-speedup", action="store_true", help="also time an epoch from cached features vs images")
    a = ap.parse_args()
    from mmlib import experiment as ex

    if a.skip_run:
        folders = [ex.results_dir(ex.load_params(a.profile)["profile"])]
    else:
        runs = executor_runs(a.profile, a.runs)
        stages = list(runs[0]["timings"])
        print(f"== stages of profile {a.profile!r} (wall seconds), cores: {len(__import__('os').sched_getaffinity(0))}")
        print("  " + f"{'stage':15s}" + "".join(f"{r['run']:>12s}" for r in runs))
        for st in stages:
            print("  " + f"{st:15s}" + "".join(f"{r['timings'].get(st, {}).get('seconds', float('nan')):12.1f}" for r in runs))
        print("  " + f"{'total':15s}" + "".join(f"{r['wall']:12.1f}" for r in runs))
        print("  " + f"{'units/s':15s}" + "".join(f"{r['units_per_s']:12.3f}" for r in runs)
              + f"   ({runs[0]['units']} units of work)")
        ref = (runs[0]["folder"] / "metrics.csv").read_bytes()
        for r in runs[1:]:
            same = (r["folder"] / "metrics.csv").read_bytes() == ref
            print(f"  metrics.csv of {r['run']} identical to {runs[0]['run']}: {'yes' if same else 'NO'}")
        folders = [runs[0]["folder"]]
    res = ex.load_results(folders[0])
    print(f"== stages of {folders[0]} (wall seconds, peak RSS MB of the main process / of the largest unit's process)")
    for k, v in res.run["timings"].items():
        print(f"  {k:15s} {v['seconds']:8.1f} s   {v['peak_memory_mb']:8.0f} MB   {v.get('peak_unit_memory_mb', 0):8.0f} MB")
    print(f"  total           {res.run['wall_time_seconds']:8.1f} s")
    print("== quality")
    for k, v in quality(res).items():
        print(f"  {k}: {v}")
    if a.cache_speedup:
        print("== feature cache vs end to end (same fusion model, frozen encoder)")
        for k, v in cache_speedup(a.profile).items():
            print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
