"""The run parameters: one typed model reads every profile and override; bad input names the key and what was expected."""

import subprocess
import sys

import pytest

from mmlib.params import (NOT_IN_RESULT_KEY, ParamsError, RunParams, load_params, parse_overrides, read_profile,
                          result_keys)
from mmlib.paths import PARAMS, ROOT


def test_defaults_live_in_the_model():
    p = load_params()
    assert p == RunParams().model_dump()
    assert p["epochs"] == 30 and p["models"] == ["cuf_mt", "amw_cnn", "mm_abmil", "cnn_lstm"]
    assert all(f.description for f in RunParams.model_fields.values()), "every parameter has a one-line doc"


@pytest.mark.parametrize("profile", sorted(p.stem for p in PARAMS.glob("*.yaml")))
def test_every_profile_is_valid_and_named_after_its_file(profile):
    p = load_params(profile)
    assert p["profile"] == profile
    raw = read_profile(profile)
    assert {k: p[k] for k in raw} == {k: (v if not isinstance(v, int) or k not in ("lr", "wd") else float(v))
                                      for k, v in raw.items()}


def test_a_typo_is_refused_naming_the_key_and_the_closest_one():
    with pytest.raises(ParamsError, match=r"'epohcs' = 3 \(from --set\): unknown parameter \(did you mean 'epochs'\?\)"):
        load_params("smoke", parse_overrides(["epohcs=3"]), overrides_from="--set")


@pytest.mark.parametrize("override, expected", [
    ("epochs=abc", r"'epochs' = 'abc'.*expected an integer"),
    ("epochs=1.5", r"'epochs' = 1.5.*expected an integer"),
    ("epochs=0", r"'epochs' = 0.*greater than or equal to 1"),
    ("roi=maybe", r"'roi' = 'maybe'.*expected true or false"),
    ("train_mode=fast", r"'train_mode' = 'fast'.*expected 'frozen' or 'finetune'"),
    ("workers=many", r"'workers' = 'many'.*expected 'auto' or an integer"),
    ("workers=0", r"'workers' = 0.*positive integer"),
    ("models=[resnet_magic]", r"'models'.*unknown models \['resnet_magic'\]"),
    ("seeds=[0, a]", r"'seeds'.*expected an integer \(item 1\)"),
    ("lr=fast", r"'lr' = 'fast'.*expected a number"),
    ("modality_dropout=1.0", r"'modality_dropout' = 1.0.*less than 1"),
    ("encoder_levels=[9]", r"'encoder_levels' = \[9\].*block indices"),
])
def test_wrong_values_name_the_key_the_value_and_what_was_expected(override, expected):
    with pytest.raises(ParamsError, match=expected):
        load_params("smoke", parse_overrides([override]), overrides_from="--set")


def test_overrides_are_read_as_yaml_values():
    p = load_params("smoke", parse_overrides(["epochs=3", "lr=3e-3", "roi=true", "models=[amw_cnn, cnn_lstm]",
                                              "seeds=1", "encoder_levels=[3, 4, 5]"]))
    assert (p["epochs"], p["lr"], p["roi"], p["models"], p["seeds"], p["encoder_levels"]) == (
        3, 0.003, True, ["amw_cnn", "cnn_lstm"], [1], [3, 4, 5])
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        parse_overrides(["epochs"])


def test_profile_files_are_checked(tmp_path):
    (tmp_path / "typo.yaml").write_text("n_fold: 3\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "reserved.yaml").write_text("results_dir: /tmp/x\n")
    with pytest.raises(ParamsError, match=rf"'n_fold' = 3 in {tmp_path / 'typo.yaml'}.*did you mean 'n_folds'"):
        load_params("typo", params_dir=tmp_path)
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params("list", params_dir=tmp_path)
    with pytest.raises(ParamsError, match="set by the build"):
        load_params("reserved", params_dir=tmp_path)
    with pytest.raises(ParamsError, match="no run profile 'nope'.*profiles: list, reserved, typo"):
        load_params("nope", params_dir=tmp_path)


def test_result_key_covers_every_field_but_presentation_and_scheduling():
    keys = set(result_keys())
    assert keys | NOT_IN_RESULT_KEY == set(RunParams.model_fields)
    assert {"epochs", "device", "mixed_precision", "encoder_levels", "lr"} <= keys
    assert not keys & {"progress", "workers", "results_dir", "profile"}


def test_cli_refuses_a_typo_before_any_work():
    proc = subprocess.run([sys.executable, "-m", "mmlib", "run", "--profile", "smoke", "--set", "epohcs=3"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "'epohcs'" in proc.stderr and "did you mean 'epochs'" in proc.stderr
    assert "results in" not in proc.stdout


def test_a_dotted_override_changes_one_segmenter_setting_and_keeps_the_profiles_others():
    p = load_params("breast-lesions-usg", parse_overrides(["segmenter.refine_size=0", "segmenter.epochs=4"]),
                    overrides_from="--set")
    profile = load_params("breast-lesions-usg")["segmenter"]
    assert p["segmenter"] == {**profile, "refine_size": 0, "epochs": 4}
    with pytest.raises(ParamsError, match="dotted key names one setting of segmenter"):
        load_params("smoke", parse_overrides(["epochs.x=3"]), overrides_from="--set")
    with pytest.raises(ParamsError, match="unknown segmenter settings"):
        load_params("smoke", parse_overrides(["segmenter.refine=3"]), overrides_from="--set")
