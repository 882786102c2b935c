"""The record of where a result came from (run.json and the colophon read the same helper)."""

from __future__ import annotations

import platform
import subprocess

import pytest

from mmlib import provenance
from mmlib.paths import ROOT


def test_git_state_names_the_checkout_commit():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    state = provenance.git_state()
    assert state["commit"] == head.stdout.strip() and len(state["commit"]) == 40
    assert isinstance(state["dirty"], bool)


def test_git_state_outside_a_checkout(monkeypatch, tmp_path):
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    assert provenance.git_state() == {"commit": None, "dirty": None}


def test_package_versions_and_device():
    import torch

    v = provenance.package_versions(("torch", "numpy", "no-such-distribution-xyz"))
    assert v["python"] == platform.python_version() and v["torch"] == torch.__version__
    assert v["numpy"] and v["no-such-distribution-xyz"] is None
    d = provenance.device_info()
    assert d["cpu"] and d["cpu_count"] >= 1 and d["platform"]
    assert (d["cuda_device"] is None) == (not torch.cuda.is_available())
