import numpy as np
import pytest

from mmlib.data import ClinicalScaler, ImageSettings, SampleSpec, max_views
from mmlib.explain import (attention_maps, example_patients, instance_attention_table, layer_table, model_inputs,
                           modality_weights_table)
from mmlib.models import create_model
from mmlib.splits import make_splits


@pytest.fixture(scope="module")
def setup(tiny_cohort):
    spec = SampleSpec(ClinicalScaler.fit(tiny_cohort.patients, tiny_cohort.clinical_columns), ImageSettings(size=64),
                      max_views(tiny_cohort.patients))
    splits = make_splits(tiny_cohort, n_folds=3, seed=0)
    ids = example_patients(tiny_cohort, splits, n=4)
    x, y = model_inputs(tiny_cohort, ids, spec)
    return tiny_cohort, spec, splits, ids, x, y


def _model(name, **kw):
    return create_model(name, clinical_features=2, encoder_weights="none", dim=32, **kw).eval()


def test_example_patients_are_test_patients_of_both_classes(setup):
    cohort, _, splits, ids, _, y = setup
    assert len(ids) == 4 and set(y) == {0, 1}
    assert set(ids) <= set(splits.loc[splits["split"] == "test", "patient_id"])


def test_modality_weights_sum_to_one_and_zero_for_absent(setup):
    from mmlib.batch import with_presence

    cohort, spec, _, ids, x, y = setup
    model = _model("amw_cnn")
    t = modality_weights_table(model, x, ids, y)
    assert set(t["patient_id"]) == set(ids)  # the sums below are over every example patient
    np.testing.assert_allclose(t.groupby("patient_id")["weight"].sum(), 1.0, atol=1e-5)
    t2 = modality_weights_table(model, with_presence(x, ("ultrasound", "clinical")), ids, y)
    removed = t2.loc[t2["modality"] == "mammography", "weight"]
    assert len(removed) == len(ids) and (removed == 0).all()
    with pytest.raises(ValueError, match="modality weights"):
        modality_weights_table(_model("cnn_lstm"), x, ids, y)


def test_instance_attention_covers_present_instances(setup):
    cohort, spec, _, ids, x, y = setup
    t = instance_attention_table(_model("mm_abmil"), x, ids, y)
    assert set(t["patient_id"]) == set(ids)
    np.testing.assert_allclose(t.groupby("patient_id")["attention"].sum(), 1.0, atol=1e-5)
    assert set(t["modality"]) == {"mammography", "ultrasound", "clinical"}


def test_attention_maps_have_the_token_grid(setup):
    cohort, spec, _, ids, x, y = setup
    maps = attention_maps(_model("cuf_mt"), x)
    per_patient = {}
    for k, v in maps.items():
        i = k[1] if k[0] == "clinical" else k[0]
        per_patient[i] = per_patient.get(i, 0.0) + float(np.sum(v))
        if k[0] != "clinical":
            assert v.ndim == 2
    # CLS attends to itself too, so image + clinical tokens hold at most all of it
    assert set(per_patient) == set(range(len(ids)))
    assert all(0 < s <= 1 + 1e-5 for s in per_patient.values())


def test_layer_table_counts_parameters(setup):
    model = _model("amw_cnn")
    t = layer_table(model)
    assert t["parameters"].sum() == sum(p.numel() for p in model.parameters())
