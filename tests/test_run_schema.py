"""Declared keys of run: and datasets.<name>: (lavis_lite/common/run_schema.py): a misspelt key is an
error with "did you mean", a value of the wrong type names the key, the value and where it came from."""
import os
import sys
from dataclasses import dataclass

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import toy_components as toy  # noqa: E402

from lavis_lite.common.config import Config, ConfigError  # noqa: E402
from lavis_lite.common.registry import registry  # noqa: E402
from lavis_lite.tasks.base_task import BaseTask  # noqa: E402


def toy_yaml(tmp_path, **run):
    return toy.write_run_yaml(str(tmp_path / "run.yaml"), **run)


@pytest.mark.parametrize("typo,meant", [("init_lrr", "init_lr"), ("max_epochs", "max_epoch"),
                                        ("log_frq", "log_freq")])
def test_misspelt_run_key_in_the_yaml_is_an_error_with_did_you_mean(tmp_path, typo, meant):
    path = toy_yaml(tmp_path, **{typo: 1})
    with pytest.raises(ConfigError) as err:
        Config.from_file(path)
    msg = str(err.value)
    assert f"Unknown key run.{typo}" in msg and f"did you mean '{meant}'" in msg and path in msg


def test_misspelt_run_key_in_options_names_the_options_entry(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.log_frq.*--options entry run\.log_frq=1.*did you mean 'log_freq'"):
        Config.from_file(toy_yaml(tmp_path), ["run.log_frq=1"])


def test_wrong_type_names_key_value_and_origin(tmp_path):
    with pytest.raises(ConfigError) as err:
        Config.from_file(toy_yaml(tmp_path), ["run.batch_size_train=abc"])
    msg = str(err.value)
    assert "run.batch_size_train='abc'" in msg and "--options entry run.batch_size_train=abc" in msg
    assert "expected int (or null)" in msg
    path = toy_yaml(tmp_path, init_lr="fast")
    with pytest.raises(ConfigError, match=r"run\.init_lr='fast' in .*run\.yaml has the wrong type"):
        Config.from_file(path)


def test_valid_values_still_load_and_keep_their_values(tmp_path):
    cfg = Config.from_file(toy_yaml(tmp_path, init_lr="1e-3", amp="bf16", train_splits=["train"]),
                           ["run.max_epoch=3"])
    assert cfg.run_cfg.max_epoch == 3 and float(cfg.run_cfg.init_lr) == 1e-3 and cfg.run_cfg.amp == "bf16"
    assert "log_freq" not in cfg.run_cfg  # the check adds no keys to the job's config


@dataclass
class _BeamKeys:
    beam_width: int = 4


class _DeclaringTask(BaseTask):
    run_schema = _BeamKeys


def test_a_task_declares_its_own_run_keys(tmp_path):
    registry.register_task("schema_test_declaring_task")(_DeclaringTask)
    try:
        cfg = Config.from_file(toy_yaml(tmp_path, task="schema_test_declaring_task", beam_width=8))
        assert cfg.run_cfg.beam_width == 8
        with pytest.raises(ConfigError, match="did you mean 'beam_width'"):
            Config.from_file(toy_yaml(tmp_path, task="schema_test_declaring_task", beam_widht=8))
        with pytest.raises(ConfigError, match=r"run\.beam_width='wide'"):
            Config.from_file(toy_yaml(tmp_path, task="schema_test_declaring_task", beam_width="wide"))
        # another task does not know the key
        with pytest.raises(ConfigError, match=r"Unknown key run\.beam_width"):
            Config.from_file(toy_yaml(tmp_path, beam_width=8))
    finally:
        registry.unregister("task", "schema_test_declaring_task")


def test_dataset_section_keys_are_checked(tmp_path):
    from omegaconf import OmegaConf
    path = toy_yaml(tmp_path)
    cfg = OmegaConf.load(path)
    cfg.datasets.toy_data.n_trian = 10  # the builder's default YAML declares n_train
    OmegaConf.save(cfg, path)
    with pytest.raises(ConfigError, match=r"Unknown key datasets\.toy_data\.n_trian.*did you mean 'n_train'"):
        Config.from_file(path)
    with pytest.raises(ConfigError, match=r"datasets\.toy_data\.max_skip_fraction='lots'.*--options entry"):
        Config.from_file(toy_yaml(tmp_path), ["datasets.toy_data.max_skip_fraction=lots"])


def test_train_cli_reports_a_schema_error_before_building(tmp_path):
    import train as train_script
    with pytest.raises(SystemExit, match=r"Configuration error: Unknown key run\.init_lrr"):
        train_script.main(["--cfg-path", toy_yaml(tmp_path), "--options", "run.init_lrr=1e-9"])
