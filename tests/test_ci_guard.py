"""tests/conftest.py under CI=true: a skipped required test (or module) fails the run; tests marked gpu
or may_skip may skip. Without CI=true skips stay skips. .ci/run installs Java and Chromium hard."""
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

PROBE = '''
import pytest

def test_needs_java():
    pytest.skip("java not installed")

@pytest.mark.gpu
def test_needs_cuda():
    pytest.skip("no CUDA device")

@pytest.mark.may_skip
def test_data_dependent():
    pytest.skip("nothing to check here")

def test_runs():
    assert True
'''


def _pytest(tmp_path, ci: bool, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    shutil.copy(os.path.join(HERE, "conftest.py"), tmp_path / "conftest.py")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)


def test_ci_turns_a_required_skip_into_a_failure(tmp_path):
    proc = _pytest(tmp_path, True, {"test_probe.py": PROBE})
    assert proc.returncode == 1, proc.stdout
    assert "1 failed, 1 passed, 2 skipped" in proc.stdout
    assert "required test test_probe.py::test_needs_java was skipped (Skipped: java not installed)" in proc.stdout


def test_without_ci_skips_stay_skips(tmp_path):
    proc = _pytest(tmp_path, False, {"test_probe.py": PROBE})
    assert proc.returncode == 0 and "1 passed, 3 skipped" in proc.stdout, proc.stdout


def test_ci_fails_a_module_skipped_at_collection(tmp_path):
    proc = _pytest(tmp_path, True, {"test_mod.py": "import pytest\npytest.importorskip('no_such_module_q')\n"
                                                   "def test_x():\n    pass\n"})
    assert proc.returncode != 0 and "skipped at collection" in proc.stdout, proc.stdout


def test_ci_script_installs_java_and_chromium_and_sets_ci():
    text = open(os.path.join(REPO, ".ci", "run")).read()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert "set -euo pipefail" in lines
    # no "|| echo ..." fallbacks: a failed install fails CI
    assert "bash run_scripts/install_java.sh" in lines and "bash run_scripts/install_browser.sh" in lines
    assert "export CI=true" in lines and lines[-1] == "bash run_scripts/test.sh"
    java = open(os.path.join(REPO, "run_scripts", "install_java.sh")).read()
    assert "default-jre-headless" in java and "set -euo pipefail" in java
