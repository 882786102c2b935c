"""Path constants, so code and notebooks run from any directory."""

from __future__ import annotations

import os
from pathlib import Path

#: Repository root (the folder holding ``_config.yml``).
ROOT = Path(__file__).resolve().parent.parent
#: Notebook sources of the book.
BOOK = ROOT / "book"
#: Papermill run profiles, one YAML each.
PARAMS = ROOT / "params"
#: Outputs of runs (never committed): ``results/<profile>/``.
RESULTS = Path(os.environ.get("MMLIB_RESULTS", ROOT / "results"))
#: Generated cohorts (never committed).
COHORTS = Path(os.environ.get("MMLIB_COHORTS", ROOT / "cohorts"))
#: Real public data, beside the checkout (never copied into the repository).
SHARED_DATA = Path(os.environ.get("MMLIB_SHARED_DATA", ROOT.parent / "shared" / "data"))


def results_dir(profile: str) -> Path:
    """Output folder of one run profile."""
    return RESULTS / profile
