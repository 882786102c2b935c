"""The reuse key: finished work is reused only for the same parameters, package source, cohort, device and precision."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from mmlib import experiment as ex
from mmlib.provenance import PACKAGE, source_files, source_fingerprint

TINY = dict(profile="reuse", cohort="synthetic", synthetic_patients=40, synthetic_seed=5, n_folds=2, image_size=32,
            n_augment=0, epochs=1, early_stopping=0, bs=16, dim=16, models=["amw_cnn"], baselines=[],
            ablations=False, scenarios=False, save_models=False, n_boot=20, progress=False, workers=1)


def _copy_package(tmp_path):
    root = tmp_path / "checkout"
    shutil.copytree(PACKAGE, root / "mmlib", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _run(root, tmp_path, **kw):
    """The tiny study in a fresh interpreter that imports the package copy under ``root``."""
    params = dict(TINY, results_dir=str(tmp_path / "results"), **kw)
    code = f"from mmlib.experiment import run_experiment; run_experiment({params!r})"
    env = dict(os.environ, PYTHONPATH=str(root), MMLIB_COHORTS=str(tmp_path / "cohorts"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "results" / "run.json").read_text())


@pytest.mark.slow
def test_editing_a_model_source_retrains_and_unchanged_code_reuses(tmp_path):
    root = _copy_package(tmp_path)
    first = _run(root, tmp_path)
    assert first["units"] == {"total": 1, "reused": 0, "trained": 1}
    assert set(first["reuse_key"]) == {"key", "params", "source", "cohort", "device", "precision"}
    assert first["reuse_key"]["device"] == "cpu" and first["reuse_key"]["precision"] == "fp32"
    caches = sorted((tmp_path / "results" / "cache").glob("*.safetensors"))

    again = _run(root, tmp_path)
    assert again["units"] == {"total": 1, "reused": 1, "trained": 0}
    assert again["reuse_key"] == first["reuse_key"]

    model = root / "mmlib" / "models" / "amw_cnn.py"
    model.write_text(model.read_text() + "\n# an edit: the next run must not reuse work of the old code\n")
    edited = _run(root, tmp_path)
    assert edited["units"] == {"total": 1, "reused": 0, "trained": 1}
    assert edited["reuse_key"]["source"] != first["reuse_key"]["source"]
    # the model's source does not produce features: the feature cache is still reused
    assert sorted((tmp_path / "results" / "cache").glob("*.safetensors")) == caches


def test_feature_cache_key_covers_the_modules_that_compute_features(tmp_path):
    root = _copy_package(tmp_path)
    pkg = root / "mmlib"
    names = {f.relative_to(pkg).as_posix() for f in source_files(ex.FEATURE_SOURCES, pkg)}
    assert {"data.py", "imaging.py", "encoders.py", "cohort.py"} <= names
    assert not any(n.startswith("models/") for n in names)
    before = source_fingerprint(ex.FEATURE_SOURCES, pkg), source_fingerprint(None, pkg)
    (pkg / "imaging.py").write_text((pkg / "imaging.py").read_text() + "\n# edited\n")
    source_fingerprint.cache_clear()
    after = source_fingerprint(ex.FEATURE_SOURCES, pkg), source_fingerprint(None, pkg)
    assert after[0] != before[0] and after[1] != before[1]


@pytest.mark.slow
def test_parameters_and_fresh_decide_what_is_retrained(tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "COHORTS", tmp_path / "cohorts")

    def run(fresh=False, **kw):
        ex.run_experiment(dict(TINY, results_dir=str(tmp_path / "results"), **kw), fresh=fresh)
        return json.loads((tmp_path / "results" / "run.json").read_text())["units"]

    assert run() == {"total": 1, "reused": 0, "trained": 1}
    assert run(n_boot=30, progress=True)["reused"] == 1  # statistics and presentation only: reused
    assert run(epochs=2)["trained"] == 1  # a parameter the fit depends on: retrained
    assert run(epochs=2, models=["amw_cnn", "cnn_lstm"]) == {"total": 2, "reused": 1, "trained": 1}
    assert run(epochs=2, fresh=True) == {"total": 1, "reused": 0, "trained": 1}
