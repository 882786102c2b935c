"""Benchmark of a real-data profile: wall time per stage and pooled cross-validation AUC of every model.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/bench_real.py \
        --profile breast-lesions-usg [--set key=value ...] [--skip-run]

``--set`` overrides profile parameters (values are read as YAML: ``--set roi_margin=0.3 --set ablations=false``);
an overridden run writes to its own folder ``results/<profile>-<hash of the overrides>/`` so that tuning runs
never overwrite the profile's results, and is compared with the profile's own run (``results/<profile>/``, run it
first) on the same out-of-fold development patients: per model, the AUC gain of the profile over the variant by a
paired patient-level bootstrap, with DeLong's p beside it, written to ``results/probes/gains.csv``
(:func:`mmlib.probes.study_gains`), which the real-data chapter reads. Cross-validation covers the development
patients only: a tuning run never reads the internal test's figures. Prints the figures; asserts nothing (the targets are measured, not
tested). Skips with a message where the public collections are not at ``../shared/data``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def results_folder(profile: str, overrides: dict) -> Path:
    """``results/<profile>/`` without overrides, else ``results/<profile>-<8 hex of the overrides>/``."""
    from mmlib.probes import variant_dir

    return Path(variant_dir(profile, overrides))


def cv_aucs(metrics) -> "pd.DataFrame":  # noqa: F821
    """Pooled out-of-fold AUC with its bootstrap CI per model (ablation none, all inputs)."""
    m = metrics[(metrics["split"] == "cv") & (metrics["ablation"] == "none") & (metrics["scenario"] == "all")
                & (metrics["metric"] == "auc")]
    return m[["model", "value", "ci_low", "ci_high"]].set_index("model")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True, help="run profile in params/ (e.g. breast-lesions-usg, cdd-cesm)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a profile parameter (repeatable)")
    ap.add_argument("--skip-run", action="store_true", help="read the existing results instead of running")
    a = ap.parse_args(argv)

    from mmlib import experiment as ex
    from mmlib.paths import SHARED_DATA

    if not SHARED_DATA.is_dir():
        print(f"skipped: the public collections are not at {SHARED_DATA} (see the real-data chapter for downloads)")
        return 0
    from mmlib.params import parse_overrides

    overrides = parse_overrides(a.overrides)
    params = ex.load_params(a.profile, **overrides)
    out = results_folder(params["profile"], overrides)
    print(f"profile {params['profile']}  overrides {overrides or '{}'}  results {out}", flush=True)
    if not a.skip_run:
        t = time.perf_counter()
        ex.run_experiment(params, out_dir=out)
        print(f"run_experiment returned after {time.perf_counter() - t:.1f} s", flush=True)

    from mmlib.experiment import load_results

    res = load_results(out)
    print("== stages (wall seconds, peak RSS MB)")
    for k, v in res.run["timings"].items():
        print(f"  {k:15s} {v['seconds']:8.1f} s   {v['peak_memory_mb']:8.0f} MB")
    print(f"  total           {res.run['wall_time_seconds']:8.1f} s")

    auc = cv_aucs(res.metrics)
    age = auc["value"].get("age_only")
    print("== pooled out-of-fold AUC (ablation none, all inputs), bootstrap 95% CI, gap over age_only")
    for model, r in auc.sort_values("value", ascending=False).iterrows():
        gap = f"{r['value'] - age:+.3f}" if age is not None and model != "age_only" else ""
        print(f"  {model:18s} {r['value']:.3f}  [{r['ci_low']:.3f}, {r['ci_high']:.3f}]  {gap}")

    base_dir = results_folder(params["profile"], {})
    if overrides and (base_dir / "run.json").is_file():
        from mmlib.probes import record, study_gains

        label = " ".join(f"{k}={v}" for k, v in sorted(overrides.items()))
        gains = study_gains(load_results(base_dir), res, label=f"profile vs {label}")
        print(f"== gain of the profile over {label} (paired patient-level bootstrap, same out-of-fold patients)")
        for _, g in gains.iterrows():
            print(f"  {g['model']:18s} {g['gain']:+.3f}  [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]  p {g['p_value']:.3f}")
        rows = [{"profile": params["profile"], **r} for r in gains.to_dict("records")]
        print(f"written to {record('gains', rows, keys=['profile', 'comparison', 'model', 'split'])}")
    elif overrides:
        print(f"no paired gain: the profile's own run is not at {base_dir} (run without --set first)")

    from mmlib.probes import TARGETS

    target = TARGETS.get(a.profile)
    models = [m for m in auc.index if m != "age_only"]
    if target and models:
        best = max(models, key=lambda m: auc.loc[m, "value"])
        print(f"== targets: best {best} {auc.loc[best, 'value']:.3f} (target >= {target['best_auc']})", end="")
        if target["margin_over_age"] is not None and age is not None:
            worst = min(models, key=lambda m: auc.loc[m, "value"])
            print(f"; smallest gap over age {worst} {auc.loc[worst, 'value'] - age:+.3f} "
                  f"(target >= {target['margin_over_age']})", end="")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
