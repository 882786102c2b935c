import numpy as np
import pandas as pd
import pytest

from mmlib.splits import LeakageError, check_leakage, iter_folds, make_splits, split_table


def test_splits_are_patient_level_stratified_and_deterministic(tiny_cohort):
    a = make_splits(tiny_cohort, n_folds=5, test_fraction=0.2, seed=1)
    b = make_splits(tiny_cohort, n_folds=5, test_fraction=0.2, seed=1)
    pd.testing.assert_frame_equal(a, b)
    c = make_splits(tiny_cohort, n_folds=5, test_fraction=0.2, seed=2)
    assert not a["fold"].equals(c["fold"])
    # every patient exactly once; test rows have fold -1, dev rows a fold in 0..4
    assert a["patient_id"].is_unique and len(a) == len(tiny_cohort.patients)
    assert set(a.loc[a["split"] == "test", "fold"]) == {-1}
    assert set(a.loc[a["split"] == "dev", "fold"]) == set(range(5))


def test_manifest_split_column_is_kept(tiny_cohort):
    # the synthetic generator writes split=dev/test: the splitter keeps it as given
    s = make_splits(tiny_cohort, n_folds=3, seed=0)
    given = tiny_cohort.patients["split"].to_numpy()
    assert (s["split"].to_numpy() == given).all()


def test_label_stratification(tiny_cohort):
    s = make_splits(tiny_cohort, n_folds=3, seed=0)
    prev = s["label"].mean()
    for k, g in s[s["split"] == "dev"].groupby("fold"):
        assert abs(g["label"].mean() - prev) < 0.2


def test_folds_partition_the_development_patients(tiny_cohort):
    s = make_splits(tiny_cohort, n_folds=4, seed=0)
    folds = iter_folds(s)
    dev = set(np.flatnonzero(s["split"].to_numpy() == "dev"))
    assert set(np.concatenate([f.valid for f in folds])) == dev
    for f in folds:
        assert not set(f.train) & set(f.valid)
        assert set(f.train) | set(f.valid) == dev
    table = split_table(s)
    assert table["total"].sum() == len(s)


def test_leakage_is_detected():
    s = pd.DataFrame({"patient_id": ["a", "b", "c", "d"], "group": ["g1", "g1", "g2", "g3"], "label": [0, 1, 0, 1],
                      "split": ["dev", "test", "dev", "dev"], "fold": [0, -1, 1, 0]})
    with pytest.raises(LeakageError, match="g1"):
        check_leakage(s)
    s2 = s.assign(split=["dev", "dev", "dev", "test"], fold=[0, 1, 1, -1])
    with pytest.raises(LeakageError, match="folds"):
        check_leakage(s2)


def test_bad_arguments(tiny_cohort):
    with pytest.raises(ValueError, match="n_folds"):
        make_splits(tiny_cohort, n_folds=1)
    with pytest.raises(ValueError, match="test_fraction"):
        make_splits(tiny_cohort, test_fraction=1.5)
