"""Config layering: each layer wins where it should, --options parsing, clear errors."""
import os
import textwrap

import pytest

import lavis_lite  # noqa: F401
from lavis_lite.common.config import Config, ConfigError
from lavis_lite.common.registry import registry
from lavis_lite.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from lavis_lite.models.base_model import BaseModel


def _write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def components(tmp_path):
    model_yaml = _write(tmp_path / "model_default.yaml", """
        model:
          arch: cfgtest_model
          hidden: 8
          layers: 2
          dropout: 0.1
          lr_only_in_default: 3
    """)
    model_yaml_big = _write(tmp_path / "model_big.yaml", """
        model:
          hidden: 64
          layers: 12
          dropout: 0.1
    """)
    data_yaml = _write(tmp_path / "data_default.yaml", """
        datasets:
          cfgtest_data:
            data_type: images
            build_info:
              annotations: {train: {storage: default_train.json}}
            batch_hint: 4
    """)

    class CfgModel(BaseModel):
        PRETRAINED_MODEL_CONFIG_DICT = {"small": model_yaml, "big": model_yaml_big}
        DEFAULT_MODEL_TYPE = "small"

    class CfgBuilder(BaseDatasetBuilder):
        DATASET_CONFIG_DICT = {"default": data_yaml}

    registry.register_model("cfgtest_model")(CfgModel)
    registry.register_builder("cfgtest_data")(CfgBuilder)
    yield tmp_path
    registry.unregister("model", "cfgtest_model")
    registry.unregister("builder", "cfgtest_data")


RUN = """
model:
  arch: cfgtest_model
  model_type: small
  layers: 4
datasets:
  cfgtest_data:
    build_info:
      annotations: {train: {storage: run_train.json}}
run:
  task: some_task
  lr: 0.001
  max_epoch: 2
"""


def test_default_layers_under_run_yaml(components):
    cfg = Config.from_file(_write(components / "run.yaml", RUN))
    m = cfg.model_cfg
    assert m.hidden == 8                 # model default YAML
    assert m.layers == 4                 # run YAML wins over the default
    assert m.lr_only_in_default == 3
    assert m.model_type == "small"
    d = cfg.datasets_cfg.cfgtest_data
    assert d.batch_hint == 4             # dataset default YAML
    assert d.build_info.annotations.train.storage == "run_train.json"  # run YAML wins
    assert cfg.run_cfg.lr == 0.001


def test_model_type_selects_default_yaml(components):
    cfg = Config.from_file(_write(components / "run.yaml", RUN.replace("model_type: small", "model_type: big")))
    assert cfg.model_cfg.hidden == 64 and cfg.model_cfg.layers == 4


def test_options_model_type_selects_the_default_yaml_too(components):
    # --options model.model_type=big layers big's default YAML, not the run YAML's type's (small)
    cfg = Config.from_file(_write(components / "run.yaml", RUN), options=["model.model_type=big"])
    assert cfg.model_cfg.model_type == "big"
    assert cfg.model_cfg.hidden == 64 and "lr_only_in_default" not in cfg.model_cfg
    assert cfg.model_cfg.layers == 4  # the run YAML still wins over the default


def test_options_win_over_everything_with_types(components):
    cfg = Config.from_file(_write(components / "run.yaml", RUN), options=[
        "model.layers=7", "model.hidden=16", "run.lr=5e-4", "run.max_epoch=3",
        "run.flag=true", "run.name=abc", "run.sizes=[1,2]", "datasets.cfgtest_data.batch_hint=9",
    ])
    assert cfg.model_cfg.layers == 7 and cfg.model_cfg.hidden == 16
    assert cfg.run_cfg.lr == pytest.approx(5e-4) and isinstance(cfg.run_cfg.lr, float)
    assert cfg.run_cfg.max_epoch == 3 and isinstance(cfg.run_cfg.max_epoch, int)
    assert cfg.run_cfg.flag is True
    assert cfg.run_cfg.name == "abc"
    assert list(cfg.run_cfg.sizes) == [1, 2]
    assert cfg.datasets_cfg.cfgtest_data.batch_hint == 9


def test_missing_arch_names_key_and_file(components):
    path = _write(components / "run.yaml", RUN.replace("  arch: cfgtest_model\n", ""))
    with pytest.raises(ConfigError, match=r"model\.arch.*run\.yaml"):
        Config.from_file(path)


def test_missing_task(components):
    path = _write(components / "run.yaml", RUN.replace("  task: some_task\n", ""))
    with pytest.raises(ConfigError, match=r"run\.task.*run\.yaml"):
        Config.from_file(path)


def test_dataset_without_builder(components):
    text = RUN.replace("datasets:\n  cfgtest_data:", "datasets:\n  nobuilder_data:")
    with pytest.raises(ConfigError, match=r"datasets\.nobuilder_data.*builder"):
        Config.from_file(_write(components / "run2.yaml", text))


def test_dataset_section_with_explicit_builder(components):
    text = RUN.replace("datasets:\n  cfgtest_data:", "datasets:\n  my_copy:\n    builder: cfgtest_data")
    cfg = Config.from_file(_write(components / "run.yaml", text))
    assert cfg.datasets_cfg.my_copy.batch_hint == 4
    assert cfg.datasets_cfg.my_copy.builder == "cfgtest_data"


def test_unknown_options_root(components):
    with pytest.raises(ConfigError, match=r"unknown root"):
        Config.from_file(_write(components / "run.yaml", RUN), options=["modle.layers=3"])
    with pytest.raises(ConfigError, match="key=value"):
        Config.from_file(_write(components / "run.yaml", RUN), options=["model.layers"])


def test_unknown_model_type_lists_types(components):
    with pytest.raises(KeyError, match=r"big.*small"):
        Config.from_file(_write(components / "run.yaml", RUN.replace("model_type: small", "model_type: huge")))


def test_unknown_arch_suggests(components):
    with pytest.raises(KeyError, match="Did you mean 'cfgtest_model'"):
        Config.from_file(_write(components / "run.yaml", RUN.replace("arch: cfgtest_model", "arch: cfgtest_modl")))


def test_dump_roundtrip(components):
    cfg = Config.from_file(_write(components / "run.yaml", RUN))
    out = components / "out" / "config.yaml"
    cfg.dump(str(out))
    from omegaconf import OmegaConf
    assert OmegaConf.to_container(OmegaConf.load(out)) == cfg.to_dict()


def test_plugin_yaml_beside_module_wins_over_builtin(tmp_path, monkeypatch):
    """A plugin's relative default-YAML path resolves next to the plugin before library_root."""
    import importlib.util
    import sys

    from lavis_lite.common.config import resolve_config_path

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default.yaml").write_text("plugin: true\n")  # same name as a built-in
    (tmp_path / "myplug.py").write_text("class Thing:\n    pass\n")
    spec = importlib.util.spec_from_file_location("myplug", tmp_path / "myplug.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "myplug", mod)
    spec.loader.exec_module(mod)
    assert resolve_config_path(mod.Thing, "configs/default.yaml") == str(tmp_path / "configs" / "default.yaml")
    # built-ins keep resolving under library_root
    from lavis_lite.models.base_model import BaseModel
    assert resolve_config_path(BaseModel, "configs/default.yaml") == os.path.join(
        registry.get_path("library_root"), "configs", "default.yaml")
