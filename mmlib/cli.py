"""The ``mmlib`` command line.

    mmlib cohort synth OUT_DIR --patients N --seed S      write a synthetic paired cohort and its manifest
    mmlib cohort validate MANIFEST                        summary, or the list of errors (exit 1)
    mmlib cohort import KIND SOURCE_DIR --out MANIFEST [--option KEY=VALUE]   a public collection -> a manifest
    mmlib run [--profile NAME | --params FILE.yaml] [--set KEY=VALUE ...] [--fresh]
                                                          the whole study, tidy results in results/<profile>/
    mmlib train MANIFEST --model NAME --out MODEL_DIR [--params PROFILE.yaml]
    mmlib predict MODEL_DIR MANIFEST --out PREDICTIONS.csv   images in, probabilities out (masks, labels optional)
    mmlib segment MODEL_DIR MANIFEST --out FOLDER         one predicted lesion mask per image + a manifest copy
    mmlib evaluate MODEL_DIR MANIFEST --out FOLDER        external validation on a labelled cohort
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cohort_synth(a):
    from .synth import generate_cohort, load_cohort_info

    manifest = generate_cohort(a.out_dir, n_patients=a.patients, seed=a.seed,
                               mammography_format=a.mammography_format, mammography_views=a.views)
    info = load_cohort_info(a.out_dir)
    print(f"wrote {manifest} ({a.patients} synthetic patients, seed {a.seed}); oracle AUC {info['oracle_auc']:.3f}")
    return 0


def _cohort_validate(a):
    from .cohort import ManifestError, format_summary, load_manifest

    try:
        cohort = load_manifest(a.manifest, decode_images=not a.no_decode)
    except ManifestError as e:
        print(str(e), file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(format_summary(cohort))
    return 0


def _options(items: list[str] | None) -> dict:
    """``["key=value", ...]`` -> keyword options; ``true``/``false`` become booleans."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {item!r}: expected KEY=VALUE (e.g. --option segmentations=false)")
        low = value.strip().lower()
        out[key.strip()] = {"true": True, "false": False}.get(low, value.strip())
    return out


def _cohort_import(a):
    from .importers import import_cohort

    try:
        out = import_cohort(a.kind, a.source_dir, a.out, **_options(a.option))
    except (FileNotFoundError, ValueError) as e:
        print(str(e), file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def _run(a):
    from .params import ParamsError, load_params, parse_overrides

    try:
        params = load_params(a.params or a.profile, parse_overrides(a.set), overrides_from="--set")
    except ParamsError as e:
        print(f"mmlib run: {e}", file=sys.stderr)
        return 2
    from .experiment import run_experiment

    out = run_experiment(params, out_dir=a.out, fresh=a.fresh)
    print(f"results in {out}")
    return 0


def _user_errors():
    """Errors a user can fix (bad manifest, missing file, bad argument): printed, exit status 1."""
    from .cohort import ManifestError

    return (ManifestError, FileNotFoundError, FileExistsError, ValueError)


def _reports_user_errors(command):
    """A command whose fixable errors (:func:`_user_errors`) are printed with exit status 1, not a traceback."""
    import functools

    @functools.wraps(command)
    def run(a):
        try:
            return command(a)
        except _user_errors() as e:
            print(str(e), file=sys.stderr)
            return 1

    return run


@_reports_user_errors
def _train(a):
    from .experiment import train_model

    out = train_model(a.manifest, a.model, a.out, a.params)
    print(f"saved model {a.model} to {out}")
    return 0


@_reports_user_errors
def _predict(a):
    from .deploy import NOT_REFINED_NOTE, UNCERTAIN_NOTE, predict_manifest, write_csv_atomic

    df = predict_manifest(a.model_dir, a.manifest, progress=True)
    write_csv_atomic(df, a.out)
    print(f"wrote {len(df)} predictions to {a.out}")
    if "lesion_found" in df and not df["lesion_found"].all():
        n = int((~df["lesion_found"]).sum())
        print(f"  {n} patient(s) without a lesion found: whole image used (see the 'note' column)")
    for note, what in ((NOT_REFINED_NOTE, "where the refiner found nothing: the whole-image outline used"),
                       (UNCERTAIN_NOTE, "with an uncertain lesion outline: check their masks")):
        n = int(df["note"].str.contains(note.split("{view}")[0], regex=False).sum()) if "note" in df else 0
        if n:
            print(f"  {n} patient(s) {what} (see 'note')")
    return 0


@_reports_user_errors
def _segment(a):
    from .deploy import segment_manifest

    out = segment_manifest(a.model_dir, a.manifest, a.out, progress=True)
    print(f"wrote the masks and the manifest {out}")
    return 0


@_reports_user_errors
def _evaluate(a):
    from .external import external_validation, format_external

    out = external_validation(a.model_dir, a.manifest, a.out, n_boot=a.n_boot, seed=a.seed, progress=True)
    print(format_external(out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mmlib", description="Multimodal breast-lesion classification compendium")
    sub = ap.add_subparsers(dest="command", required=True)

    cohort = sub.add_parser("cohort", help="create, validate or import cohorts").add_subparsers(dest="action", required=True)
    s = cohort.add_parser("synth", help="write a synthetic paired cohort")
    s.add_argument("out_dir")
    s.add_argument("--patients", type=int, default=300)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--views", type=int, default=1, help="mammography views per patient (1 or 2)")
    s.add_argument("--mammography-format", default="dicom", choices=["dicom", "png"])
    s.set_defaults(func=_cohort_synth)
    v = cohort.add_parser("validate", help="check a manifest and print its summary")
    v.add_argument("manifest")
    v.add_argument("--no-decode", action="store_true", help="check that images exist without decoding them")
    v.set_defaults(func=_cohort_validate)
    i = cohort.add_parser("import", help="import a public collection as a manifest")
    i.add_argument("kind")
    i.add_argument("source_dir")
    i.add_argument("--out", required=True)
    i.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="an importer option (repeatable), e.g. bbox_format=xyxy (bus-bra), segmentations=false (cdd-cesm)")
    i.set_defaults(func=_cohort_import)

    r = sub.add_parser("run", help="run the whole study of a profile")
    r.add_argument("--profile", default="default")
    r.add_argument("--params", help="a profile YAML file (overrides --profile)")
    r.add_argument("--out", help="results folder (default results/<profile>)")
    r.add_argument("--fresh", action="store_true", help="ignore finished work and cached features: redo everything")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one parameter of the profile (repeatable), e.g. --set epochs=3 --set models=[amw_cnn]")
    r.set_defaults(func=_run)

    t = sub.add_parser("train", help="train one model on a manifest's development patients")
    t.add_argument("manifest")
    t.add_argument("--model", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--params", help="a profile name or YAML file")
    t.set_defaults(func=_train)

    pr = sub.add_parser("predict", help="apply a saved model to a manifest")
    pr.add_argument("model_dir")
    pr.add_argument("manifest")
    pr.add_argument("--out", required=True)
    pr.set_defaults(func=_predict)

    sg = sub.add_parser("segment", help="predicted lesion masks of a manifest's images, and a manifest copy listing them")
    sg.add_argument("model_dir", help="a model folder with a segmenter (lesion_source predicted), or a segmenter folder")
    sg.add_argument("manifest")
    sg.add_argument("--out", required=True, help="a new folder for the masks and the manifest copy")
    sg.set_defaults(func=_segment)

    ev = sub.add_parser("evaluate", help="external validation of a saved model on a labelled manifest")
    ev.add_argument("model_dir")
    ev.add_argument("manifest")
    ev.add_argument("--out", required=True, help="a new folder for the tidy results and figures")
    ev.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates of the CIs (patients resampled)")
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=_evaluate)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
