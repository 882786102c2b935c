"""A fifth model is one new file: a toy model module, written here and imported from a temporary folder,
goes through training, the study engine and the book's tables without an edit anywhere else."""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import numpy as np
import pytest

TOY_MODULE = '''
"""Toy fusion: the mean of the present inputs' vectors, then the head."""

from mmlib.models import register_model
from mmlib.models.parts import MultimodalModel, create_head, masked_mean


@register_model("toy_mean")
class ToyMean(MultimodalModel):
    """Mean of the present inputs' vectors, then the head."""

    display_name = "Toy mean fusion"
    ablations = {"no_dropout": {"dropout": 0.0}}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.spatial_grid = 1
        self.head = create_head(self.dim, hidden=self.dim, dropout=self._config["dropout"])

    def _forward(self, x):
        vectors, present = self.modality_vectors(x), self.presence(x)
        return self.head(masked_mean(vectors, present)).squeeze(-1), {}
'''


@pytest.fixture
def toy_model(tmp_path):
    """Register the toy model for one test, and forget it afterwards."""
    from mmlib.models import _REGISTRY

    before = dict(_REGISTRY)
    path = tmp_path / "toy_mean.py"
    path.write_text(textwrap.dedent(TOY_MODULE))
    spec = importlib.util.spec_from_file_location("toy_mean", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_mean"] = module
    spec.loader.exec_module(module)
    yield "toy_mean"
    sys.modules.pop("toy_mean", None)
    _REGISTRY.clear()
    _REGISTRY.update(before)


@pytest.mark.slow
def test_a_new_model_file_is_all_a_new_model_needs(toy_model, tmp_path, study_results):
    import mmlib.experiment as ex
    from mmlib import report
    from mmlib.models import create_model, list_models, model_class

    assert toy_model in list_models("multimodal")
    assert model_class(toy_model).display_name == "Toy mean fusion"
    model = create_model(toy_model, encoder="test_efficientnet", encoder_weights="none", clinical_features=2, dim=16)
    assert model.config()["dim"] == 16

    params = ex.load_params(dict(
        profile="toy", cohort="synthetic", synthetic_patients=60, synthetic_seed=3, n_folds=2, image_size=64,
        n_augment=1, epochs=2, early_stopping=0, bs=16, dim=16, models=[toy_model], baselines=["age_only"],
        ablations=True, scenarios=False, n_boot=20, progress=False, workers=1,
        results_dir=study_results(tmp_path / "results")))
    res = ex.load_results(ex.run_experiment(params))

    assert set(res.predictions["model"]) == {toy_model, "age_only"}
    assert {"none", "no_dropout", "no_clinical", "modality_dropout"} == set(
        res.predictions.loc[res.predictions["model"] == toy_model, "ablation"])
    assert np.isfinite(res.metric(toy_model, "auc"))
    assert (res.folder / "models" / toy_model / "model.safetensors").is_file()

    assert list(report.metrics_table(res)["model"]) == ["Toy mean fusion", "Age only (logistic regression)"]
    ablations = report.ablation_table(res)
    assert set(ablations["ablation"]) == {"none", "no_dropout", "no_clinical", "modality_dropout"}
    assert set(ablations["model"]) == {"Toy mean fusion"}
    best, numbers = report.abstract_numbers(res)
    assert best == toy_model and numbers["age_cv_auc"] == pytest.approx(res.metric("age_only", "auc"))


def test_default_run_is_read_from_the_registry(toy_model):
    import mmlib.experiment as ex

    p = ex.load_params({})
    assert p["models"] == ["cuf_mt", "amw_cnn", "mm_abmil", "cnn_lstm", toy_model]
    assert p["baselines"] == ["age_only", "ultrasound_only", "mammography_only", "late_fusion"]
