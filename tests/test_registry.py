import importlib.util
import sys

import pytest

import lavis_lite  # noqa: F401  (registers built-ins)
from lavis_lite.common.registry import Registry, UnknownNameError, registry
from lavis_lite.models.base_model import BaseModel
from lavis_lite.processors.base_processor import BaseProcessor


@pytest.fixture
def reg():
    return Registry()


def test_register_and_get(reg):
    @reg.register_processor("my_proc")
    class MyProc(BaseProcessor):
        pass

    assert reg.get_processor_class("my_proc") is MyProc
    assert reg.list_processors() == ["my_proc"]


def test_listings_are_sorted(reg):
    for name in ["zeta", "alpha", "mid"]:
        reg.register_model(name)(type(f"M_{name}", (BaseModel,), {}))
    assert reg.list_models() == ["alpha", "mid", "zeta"]


def test_other_class_under_taken_name_raises(reg):
    class A(BaseProcessor):
        pass

    class B(BaseProcessor):
        pass

    reg.register_processor("p")(A)
    with pytest.raises(KeyError, match="already registered"):
        reg.register_processor("p")(B)
    assert reg.get_processor_class("p") is A


def test_same_class_twice_is_harmless(reg):
    class A(BaseProcessor):
        pass

    reg.register_processor("p")(A)
    reg.register_processor("p")(A)
    assert reg.get_processor_class("p") is A


def test_same_module_imported_twice_is_harmless(tmp_path, reg, monkeypatch):
    # A module executed twice (e.g. a notebook importing it from the source tree and the package)
    # defines a new class object with the same name and file: re-registration is accepted.
    src = tmp_path / "plug.py"
    src.write_text(
        "from lavis_lite.processors.base_processor import BaseProcessor\n"
        "def register(reg):\n"
        "    @reg.register_processor('twice')\n"
        "    class Twice(BaseProcessor):\n"
        "        pass\n"
        "    return Twice\n"
    )
    classes = []
    for mod_name in ("plug_a", "plug_b"):
        spec = importlib.util.spec_from_file_location(mod_name, src)
        mod = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, mod_name, mod)
        spec.loader.exec_module(mod)
        classes.append(mod.register(reg))
    assert classes[0] is not classes[1]
    assert reg.get_processor_class("twice") is classes[1]


def test_unknown_name_suggests(reg):
    reg.register_model("minigpt4qwen")(type("M1", (BaseModel,), {}))
    reg.register_model("blip2")(type("M2", (BaseModel,), {}))
    with pytest.raises(UnknownNameError) as info:
        reg.get_model_class("minigpt4_qwen")
    err = info.value
    assert isinstance(err, KeyError)
    assert "Did you mean 'minigpt4qwen'" in str(err)
    assert "blip2, minigpt4qwen" in str(err)  # full sorted listing
    with pytest.raises(KeyError, match="none registered"):
        reg.get_task_class("anything")


def test_kind_check(reg):
    class NotAProcessor:
        pass

    with pytest.raises(TypeError, match="must subclass BaseProcessor"):
        reg.register_processor("bad")(NotAProcessor)
    with pytest.raises(TypeError, match="must subclass BaseModel"):
        reg.register_model("bad")(NotAProcessor)
    with pytest.raises(TypeError, match="step"):
        reg.register_lr_scheduler("bad")(NotAProcessor)
    with pytest.raises(TypeError, match="Only classes"):
        reg.register_task("bad")(lambda: None)


def test_paths(reg):
    reg.register_path("x", "/tmp/x")
    assert reg.get_path("x") == "/tmp/x"
    with pytest.raises(KeyError, match="Unknown path"):
        reg.get_path("y")


def test_global_registry_has_builtins_and_no_heavy_imports():
    assert "linear_warmup_cosine_lr" in registry.list_lr_schedulers()
    assert registry.get_path("library_root")
    # importing lavis_lite must not import the heavy optional dependencies
    code = ("import sys, lavis_lite; bad=[m for m in ('deepspeed','peft','gradio','playwright','selenium') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    import subprocess
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
