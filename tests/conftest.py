"""Shared test fixtures. Tests write their own small data; real data is optional."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from mmlib.paths import SHARED_DATA  # noqa: E402


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real public data not found at {SHARED_DATA} (see ../shared/data/README.md)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_cohort_dir(tmp_path_factory) -> Path:
    """A small synthetic paired cohort on disk (60 patients, small images), generated once per session."""
    from mmlib.synth import generate_cohort

    out = tmp_path_factory.mktemp("tiny-cohort")
    generate_cohort(out, n_patients=60, seed=3, ultrasound_size=64, mammography_size=64)
    return out


@pytest.fixture(scope="session")
def tiny_cohort(tiny_cohort_dir):
    from mmlib.cohort import load_manifest

    return load_manifest(tiny_cohort_dir / "manifest.csv")


@pytest.fixture(scope="session")
def study_workspace(tmp_path_factory) -> Path:
    """One cohorts folder and one feature cache for every test that runs the study: the synthetic cohort is
    generated, and its images encoded, once per test run (the engine reuses both when the key matches)."""
    import mmlib.experiment as ex

    root = tmp_path_factory.mktemp("study")
    (root / "cache").mkdir()
    old = ex.COHORTS
    ex.COHORTS = root / "cohorts"
    yield root
    ex.COHORTS = old


@pytest.fixture(scope="session")
def study_results(study_workspace):
    """``study_results(folder)`` -> a results folder (str) whose feature cache is the session's shared one."""

    def make(folder) -> str:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "cache").exists():
            (folder / "cache").symlink_to(study_workspace / "cache", target_is_directory=True)
        return str(folder)

    return make


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests use small tensors: one thread is as fast and immune to other processes sharing the cores."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
