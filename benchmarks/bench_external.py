"""External validation benchmark: trained on BrEaST-Lesions_USG, evaluated on BUS-BRA (Brazil, four scanners).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/bench_external.py \
        [--model amw_cnn] [--sources expert predicted none] [--n-boot 2000] [--set KEY=VALUE ...] [--model-from DIR]

An AMW-CNN (the profile ``params/breast-lesions-usg.yaml``) is trained on the BrEaST **development** patients (the
study's split: 80% of the 252 patients, seed 0; the internal test patients are not used; one member per seed of
the profile's ``seeds``, averaged, as the study averages its seeds) once per lesion source:
the expert's masks, the lesion segmenter's (cross-fitted in training, the saved segmenter on BUS-BRA) and none
(whole images). Each is evaluated on all 664 BUS-BRA patients (no age: recorded as missing) with
:func:`mmlib.external.external_study`; nothing is tuned on BUS-BRA. Then ``mmlib predict`` is timed on 100 BUS-BRA
patients from a manifest without masks or labels. Prints AUC with patient-bootstrap CIs, the segmenter's Dice on
BUS-BRA and the wall times (one source can be rerun alone, ``--sources none``: the others' rows are kept); writes
the tidy results the real-data chapter reads to ``results/external-bus-bra/``. ``--model-from`` evaluates a model
saved elsewhere for ``predicted`` instead (the BrEaST study's own, as the paper's build does; give another ``--out``
for another model, as one folder holds one model's rows).
Manifests go to ``cohorts/external/`` (git-ignored). Skips with a message where the data is absent.

``--study-models DIR`` instead evaluates each of the paper's four models a finished BrEaST study saved (e.g.
``results/breast-lesions-usg``, lesion predicted) on BUS-BRA, side by side (:func:`mmlib.external.external_models`):
the headline model is the one the study's development cross-validation ranks first, fixed before BUS-BRA is read;
every model's AUC is compared with it, paired by patient. Writes ``results/external-bus-bra/study_models.csv`` and
one folder per model under ``study-models/``; the issue's AUC target is read from the CV-chosen model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: Targets of issue 13 (AUC on BUS-BRA from images alone; Dice of the BrEaST-trained segmenter on BUS-BRA;
#: seconds of `mmlib predict` for 100 patients).
TARGETS = {"auc_predicted": 0.85, "dice_bus_bra": 0.75, "predict_100_seconds": 60.0}


def main(argv=None) -> int:
    from mmlib.external import external_study, external_table, load_external, record_predict_time, time_predict
    from mmlib.importers import import_cohort
    from mmlib.paths import COHORTS, SHARED_DATA, results_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="amw_cnn")
    ap.add_argument("--sources", nargs="+", default=["expert", "predicted", "none"])
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out", default=str(results_dir("external-bus-bra")))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a profile parameter for training (value read as YAML), e.g. --set n_folds=3")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="evaluate the models already in OUT/models again, without training")
    ap.add_argument("--model-from", default=None, metavar="DIR",
                    help="evaluate this saved model folder for the lesion source 'predicted' instead of training one, "
                         "e.g. results/breast-lesions-usg/models/mm_abmil (the BrEaST study's own, as the paper's "
                         "build does); --model must name its model")
    ap.add_argument("--study-models", default=None, metavar="DIR",
                    help="evaluate the paper's four models saved by this finished study instead (no training)")
    a = ap.parse_args(argv)
    import yaml

    overrides = {k.strip(): yaml.safe_load(v) for k, _, v in (item.partition("=") for item in a.set)}
    sources = {k: SHARED_DATA / k for k in ("breast-lesions-usg", "bus-bra")}
    absent = [str(p) for p in sources.values() if not p.is_dir()]
    if absent:
        print(f"skipped: public data not found at {absent} (see ../shared/data/README.md)")
        return 0
    t0 = time.perf_counter()
    manifests = {k: import_cohort(k, p, COHORTS / "external" / f"{k}.csv") for k, p in sources.items()}
    if a.study_models:
        return _study_models(Path(a.study_models), manifests["bus-bra"], Path(a.out), a.n_boot, t0)
    out = external_study(manifests["breast-lesions-usg"], manifests["bus-bra"], a.out, model=a.model,
                         sources=tuple(a.sources), n_boot=a.n_boot, overrides=overrides,
                         retrain=not a.evaluate_only,
                         models={"predicted": Path(a.model_from)} if a.model_from else None)
    table, record = load_external(out)
    predict_source = next((s for s in ("predicted", "none") if (out / "models" / s).is_dir()), None)
    predict_seconds = None
    if predict_source is not None:  # an images-only model
        predict_seconds = time_predict(out / "models" / predict_source, manifests["bus-bra"], out, n=100)
        record_predict_time(out, predict_seconds, predict_source)

    print(f"\ntrained on {Path(record['train_manifest']).name} (development patients), "
          f"evaluated on {Path(record['test_manifest']).name}")
    print(external_table(table).to_string(index=False))
    for source, r in record["sources"].items():
        train = "   (elsewhere)" if r.get("train_seconds") is None else f"{r['train_seconds']:7.1f} s"
        print(f"  {source:10s} train {train}, evaluate {r['evaluate_seconds']:7.1f} s "
              f"({r['n_patients']} patients; no lesion found for {r['lesion_not_found']})")
    auc = table[(table.lesion_source == "predicted") & (table.metric == "auc")]["value"]
    dice = table[(table.lesion_source == "predicted") & (table.metric == "dice")]["value"]
    if len(auc):
        print(f"target: AUC from images alone >= {TARGETS['auc_predicted']}: {auc.iloc[0]:.3f}")
    if len(dice):
        print(f"target: segmenter Dice on BUS-BRA >= {TARGETS['dice_bus_bra']}: {dice.iloc[0]:.3f}")
    if predict_seconds is not None:
        print(f"target: mmlib predict on 100 patients <= {TARGETS['predict_100_seconds']:.0f} s: "
              f"{predict_seconds:.1f} s (lesion_source {predict_source} model)")
    print(f"total {time.perf_counter() - t0:.0f} s; results in {out}")
    return 0


def _study_models(study: Path, manifest: Path, out: Path, n_boot: int, t0: float) -> int:
    from mmlib.external import external_models, study_models_table, study_models_text

    table = external_models(study, manifest, out, n_boot=n_boot)
    print(f"\nthe models of {study}, evaluated on {manifest.name} (lesion from the study's segmenter)")
    print(study_models_table(table).to_string(index=False))
    print(study_models_text(out))
    chosen = table[table["chosen"]].iloc[0]
    print(f"target: AUC from images alone >= {TARGETS['auc_predicted']}: {chosen.auc:.3f} ({chosen.model}, the model "
          f"the development cross-validation ranks first)")
    print(f"total {time.perf_counter() - t0:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
