"""Plugins: components registered from user code, never by editing lavis_lite.

Covers the run-YAML ``imports:`` list (files, package directories, dotted modules), the
``--import`` flag helpers, the ``lavis_lite.plugins`` entry-point group (a monkeypatched
entry-point table and a real test-installed distribution), plugin-relative default YAML
paths and import errors that name the plugin.
"""
import importlib.metadata
import os
import subprocess
import sys
import textwrap

import pytest

import lavis_lite  # noqa: F401  (registers built-ins)
from lavis_lite.common import plugins
from lavis_lite.common.config import Config
from lavis_lite.common.plugins import PluginImportError, import_plugin, import_plugins
from lavis_lite.common.registry import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def plugin_model_source(name: str, default_width: int = 7) -> str:
    """A plugin module registering model ``name`` whose default YAML lives next to it."""
    return f"""
        from lavis_lite.common.registry import registry
        from lavis_lite.models.base_model import BaseModel

        @registry.register_model("{name}")
        class PluginModel(BaseModel):
            PRETRAINED_MODEL_CONFIG_DICT = {{"small": "my_configs/{name}.yaml"}}
            DEFAULT_MODEL_TYPE = "small"

            def __init__(self, width):
                super().__init__()
                self.width = width

            @classmethod
            def from_config(cls, cfg):
                return cls(cfg.width)
        """


@pytest.fixture
def cleanup_names():
    names = []
    yield names
    for kind, name in names:
        registry.unregister(kind, name)


def test_yaml_imports_a_file_relative_to_the_yaml_and_its_defaults_resolve_beside_it(tmp_path, cleanup_names):
    name = "plugin_test_file_model"
    cleanup_names.append(("model", name))
    write(tmp_path / "proj" / "my_plugin.py", plugin_model_source(name))
    write(tmp_path / "proj" / "my_configs" / f"{name}.yaml", "model:\n  width: 7\n  depth: 3\n")
    cfg_path = write(tmp_path / "proj" / "run.yaml", f"""
        imports: [./my_plugin.py]
        model: {{arch: {name}, depth: 5}}
        run: {{task: instruction_tuning}}
        """)
    cfg = Config.from_file(str(cfg_path))
    assert registry.get_model_class(name).__name__ == "PluginModel"
    # default YAML of the plugin (width 7) < run YAML (depth 5)
    assert cfg.model_cfg.width == 7 and cfg.model_cfg.depth == 5
    assert registry.get_model_class(name).default_config_path() == \
        str(tmp_path / "proj" / "my_configs" / f"{name}.yaml")
    assert registry.get_model_class(name).from_config(cfg.model_cfg).width == 7


def test_package_directory_imports_under_its_name_with_relative_imports(tmp_path, cleanup_names, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    cleanup_names.append(("processor", "plugin_test_pkg_proc"))
    write(tmp_path / "plugpkg_abc" / "__init__.py", "from . import procs  # noqa\n")
    write(tmp_path / "plugpkg_abc" / "procs.py", """
        from lavis_lite.common.registry import registry
        from lavis_lite.processors.base_processor import BaseProcessor
        from .helpers import double

        @registry.register_processor("plugin_test_pkg_proc")
        class Doubler(BaseProcessor):
            def __call__(self, item):
                return double(item)
        """)
    write(tmp_path / "plugpkg_abc" / "helpers.py", "def double(x):\n    return 2 * x\n")
    try:
        module = import_plugin("./plugpkg_abc", base_dir=str(tmp_path))
        assert module.__name__ == "plugpkg_abc"
        assert registry.get_processor_class("plugin_test_pkg_proc")()(21) == 42
        # importing again (e.g. from YAML and --import) is a no-op
        assert import_plugin(str(tmp_path / "plugpkg_abc")) is module
    finally:
        for mod in [m for m in sys.modules if m == "plugpkg_abc" or m.startswith("plugpkg_abc.")]:
            del sys.modules[mod]


def test_dotted_module_name(tmp_path, cleanup_names, monkeypatch):
    cleanup_names.append(("task", "plugin_test_dotted_task"))
    write(tmp_path / "dotted_plugin_xyz.py", """
        from lavis_lite.common.registry import registry
        from lavis_lite.tasks.base_task import BaseTask

        @registry.register_task("plugin_test_dotted_task")
        class MyTask(BaseTask):
            pass
        """)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import_plugins(["dotted_plugin_xyz"])
        assert registry.get_task_class("plugin_test_dotted_task").__name__ == "MyTask"
    finally:
        sys.modules.pop("dotted_plugin_xyz", None)


def test_import_errors_name_the_plugin(tmp_path):
    with pytest.raises(PluginImportError, match="no_such_plugin.py"):
        import_plugin("./no_such_plugin.py", base_dir=str(tmp_path))
    with pytest.raises(PluginImportError, match="no_such_module_qq"):
        import_plugin("no_such_module_qq")
    write(tmp_path / "broken_plugin.py", "import this_dependency_is_missing_zz\n")
    with pytest.raises(PluginImportError, match=r"broken_plugin\.py.*this_dependency_is_missing_zz"):
        import_plugin("./broken_plugin.py", base_dir=str(tmp_path))
    write(tmp_path / "bad_syntax.py", "def oops(:\n")
    with pytest.raises(PluginImportError, match=r"bad_syntax\.py.*SyntaxError"):
        import_plugin(str(tmp_path / "bad_syntax.py"))
    (tmp_path / "not_a_pkg").mkdir()
    with pytest.raises(PluginImportError, match="not a Python package"):
        import_plugin(str(tmp_path / "not_a_pkg"))


def test_yaml_import_error_surfaces_from_config(tmp_path):
    cfg_path = write(tmp_path / "run.yaml", """
        imports: [./missing_plugin_dir/thing.py]
        model: {arch: whatever}
        run: {task: instruction_tuning}
        """)
    with pytest.raises(PluginImportError, match="missing_plugin_dir/thing.py"):
        Config.from_file(str(cfg_path))


def test_import_flag_of_train_and_evaluate(tmp_path, cleanup_names, monkeypatch):
    """``--import`` (repeatable, relative to the working directory) loads plugins before the config
    is read, so a run YAML without ``imports:`` can name the plugin's model."""
    from lavis_lite.runners.launch import load_config, parse_args

    name = "plugin_test_flag_model"
    cleanup_names.append(("model", name))
    write(tmp_path / "flag_plugin.py", plugin_model_source(name))
    write(tmp_path / "my_configs" / f"{name}.yaml", "model:\n  width: 3\n")
    cfg_path = write(tmp_path / "run.yaml", f"""
        model: {{arch: {name}}}
        run: {{task: instruction_tuning, init_lr: 1.0e-3, batch_size_train: 2, train_splits: [train],
              max_epoch: 1}}
        """)
    args = parse_args(["--cfg-path", str(cfg_path), "--import", "flag_plugin.py", "--import", "json"])
    assert args.imports == ["flag_plugin.py", "json"]
    monkeypatch.chdir(tmp_path)
    cfg = load_config(args)
    assert cfg.model_cfg.width == 3 and registry.get_model_class(name).__name__ == "PluginModel"
    bad = parse_args(["--cfg-path", str(cfg_path), "--import", "./not_there.py"])
    with pytest.raises(PluginImportError, match="not_there.py"):
        load_config(bad)


class _FakeEntryPoint:
    def __init__(self, name, value, target):
        self.name, self.value, self._target = name, value, target

    def load(self):
        return self._target()


def test_entry_points_table_is_loaded_and_failures_name_the_entry_point(monkeypatch):
    loaded = []
    table = [_FakeEntryPoint("good_plugin", "good.mod", lambda: loaded.append("good"))]

    def fake_entry_points(group=None):
        assert group == plugins.ENTRY_POINT_GROUP
        return table

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    assert plugins.load_entry_point_plugins(force=True) == ["good_plugin"]
    assert loaded == ["good"]

    def boom():
        raise ModuleNotFoundError("No module named 'gone'")

    table.append(_FakeEntryPoint("bad_plugin", "gone.mod", boom))
    with pytest.raises(PluginImportError, match=r"'bad_plugin'.*gone\.mod.*No module named 'gone'"):
        plugins.load_entry_point_plugins(force=True)


def _install_dummy_distribution(site: str, module_source: str, ep_value: str) -> None:
    """A minimal installed distribution: a module plus a dist-info with an entry point."""
    write(__import__("pathlib").Path(site) / "lavis_dummy_plugin.py", module_source)
    info = __import__("pathlib").Path(site) / "lavis_dummy_plugin-0.1.dist-info"
    write(info / "METADATA", "Metadata-Version: 2.1\nName: lavis-dummy-plugin\nVersion: 0.1\n")
    write(info / "entry_points.txt", f"[lavis_lite.plugins]\ndummy = {ep_value}\n")


def _python(code: str, site: str):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([site, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], cwd=site, env=env, capture_output=True, text=True,
                          timeout=120)


def test_installed_distribution_registers_at_import_of_lavis_lite(tmp_path):
    site = str(tmp_path / "site")
    _install_dummy_distribution(site, plugin_model_source("entry_point_dummy_model"), "lavis_dummy_plugin")
    write(tmp_path / "site" / "my_configs" / "entry_point_dummy_model.yaml", "model:\n  width: 11\n")
    proc = _python(
        "import lavis_lite\n"
        "from lavis_lite.common.registry import registry\n"
        "cls = registry.get_model_class('entry_point_dummy_model')\n"
        "print('WIDTH', cls.from_pretrained().width)\n", site)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WIDTH 11" in proc.stdout


def test_broken_installed_distribution_names_itself(tmp_path):
    site = str(tmp_path / "site")
    _install_dummy_distribution(site, "raise RuntimeError('plugin exploded')\n", "lavis_dummy_plugin")
    proc = _python("import lavis_lite\n", site)
    assert proc.returncode != 0
    assert "PluginImportError" in proc.stderr
    assert "'dummy'" in proc.stderr and "lavis-dummy-plugin" in proc.stderr and "plugin exploded" in proc.stderr


@pytest.mark.slow
def test_avsd_project_installs_as_a_distribution_with_an_entry_point(tmp_path):
    """projects/avsd_dialogue builds as a wheel; unpacked on sys.path (= installed), its components
    register at `import lavis_lite` through the entry point and its default YAMLs resolve inside it."""
    import zipfile

    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           os.path.join(REPO, "projects", "avsd_dialogue"), "-w", str(tmp_path / "wheel")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    proc = _python(
        "import lavis_lite\n"
        "from lavis_lite.common.registry import registry\n"
        "cls = registry.get_model_class('gpt_dialogue')\n"
        "print('MODULE', cls.__module__, cls.default_config_path())\n"
        "print('BUILDER', registry.get_builder_class('avsd_dialogue').default_config_path())\n",
        str(site))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"MODULE avsd_plugin.model {site}/avsd_plugin/configs/models/gpt_dialogue_tiny.yaml" in proc.stdout
    assert f"BUILDER {site}/avsd_plugin/configs/datasets/avsd_dialogue.yaml" in proc.stdout
