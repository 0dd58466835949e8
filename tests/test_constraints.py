"""requirements/constraints.txt pins what the tests ran with; setup_env.sh installs through it."""
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSTRAINTS = os.path.join(REPO, "requirements", "constraints.txt")


def pins() -> dict:
    out = {}
    for line in open(CONSTRAINTS):
        if line.strip() and not line.startswith("#"):
            name, version = line.strip().split("==")
            out[name] = version
    return out


def test_lock_is_current_for_pyproject_and_this_environment():
    """Every package pyproject pulls in (all extras, transitively) is pinned at the installed version."""
    check = subprocess.run([sys.executable, os.path.join(REPO, "requirements", "make_constraints.py"), "--check"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    pinned = pins()
    for name in ("torch", "torchvision", "transformers", "deepspeed", "peft", "numpy", "tensorboard", "wandb",
                 "mlflow-skinny", "fastapi", "uvicorn", "openai", "gradio", "pytest"):
        assert name in pinned, name
    assert all("+" not in v for v in pinned.values())  # no local labels: the CPU and CUDA builds both match


def test_setup_env_installs_through_the_lock_and_agrees_on_torch():
    script = open(os.path.join(REPO, "run_scripts", "setup_env.sh")).read()
    assert script.count('"${PIN[@]}"') == 2 and 'PIN=(-c "$CONSTRAINTS")' in script
    assert "requirements/constraints.txt" in script
    spec = re.search(r"LAVIS_LITE_TORCH_SPEC:-([^}]*)}", script).group(1).split()
    pinned = pins()
    for item in spec:
        name, version = item.split("==")
        assert pinned[name] == version, (name, version, pinned[name])
    assert subprocess.run(["bash", "-n", os.path.join(REPO, "run_scripts", "setup_env.sh")]).returncode == 0


def _dry_run(constraints):
    return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
                           "-c", str(constraints), f"{REPO}[dev]"], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_pip_resolves_the_project_with_the_lock_and_rejects_a_conflicting_pin(tmp_path):
    """Offline (--no-index): the locked versions, all installed here, satisfy every requirement of .[dev];
    a pin that contradicts them makes pip fail, so the lock is really applied."""
    ok = _dry_run(CONSTRAINTS)
    assert ok.returncode == 0, ok.stderr[-3000:]
    would = [line for line in ok.stdout.splitlines() if line.startswith("Would install")]
    assert would and would[0].split()[2:] == ["lavis-lite-0.1.0"]  # nothing else changes
    bad = tmp_path / "bad.txt"
    bad.write_text(open(CONSTRAINTS).read().replace(f"numpy=={pins()['numpy']}", "numpy==1.0.0"))
    failed = _dry_run(bad)
    assert failed.returncode != 0 and "numpy" in failed.stderr + failed.stdout
