"""The README's code example runs, and its commands exist."""
import os
import re

import lavis_lite  # noqa: F401
from lavis_lite.common.registry import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
    with open(os.path.join(REPO, "README.md")) as f:
        return f.read()


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", _readme(), flags=re.S)
    assert blocks, "README has no python example"
    try:
        for block in blocks:
            exec(compile(block, "README.md", "exec"), {})
    finally:
        registry.unregister("processor", "shout_caption")


def test_readme_commands_exist():
    text = _readme()
    for script in re.findall(r"bash (run_scripts/\S+\.sh)", text):
        assert os.path.isfile(os.path.join(REPO, script)), script
    with open(os.path.join(REPO, ".ci", "run")) as f:
        assert "run_scripts/test.sh" in f.read()
