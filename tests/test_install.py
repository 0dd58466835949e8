"""lavis_lite imports from outside the repository and finds its configs through library_root."""
import json
import os
import subprocess
import sys


def test_import_from_other_directory_finds_configs(tmp_path):
    code = (
        "import json, os, lavis_lite\n"
        "from lavis_lite.common.registry import registry\n"
        "root = registry.get_path('library_root')\n"
        "print(json.dumps({'root': root, 'cwd': os.getcwd(),\n"
        "  'default': os.path.isfile(os.path.join(root, 'configs', 'default.yaml')),\n"
        "  'models': registry.list_models()}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["default"] is True
    assert not info["root"].startswith(str(tmp_path))
    assert info["models"] == sorted(info["models"])


def test_cache_root_env_override(tmp_path):
    code = "import lavis_lite; from lavis_lite.common.registry import registry; print(registry.get_path('cache_root'))"
    env = dict(os.environ, LAVIS_LITE_CACHE_ROOT=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(tmp_path / "cache")


def test_non_editable_wheel_ships_configs(tmp_path):
    """A wheel (what a non-editable `pip install .` builds) carries configs/ and works from any cwd."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
                            repo, "-w", str(wheel_dir)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    wheel = next(wheel_dir.glob("lavis_lite-*.whl"))
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                           "--target", str(target), str(wheel)], capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr
    code = ("import lavis_lite, os; from lavis_lite.common.registry import registry; "
            "root = registry.get_path('library_root'); print(root); "
            "assert os.path.isfile(os.path.join(root, 'configs', 'default.yaml'))")
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(target / "lavis_lite")
