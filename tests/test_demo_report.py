"""run_scripts/demo_report.py: the demo's exit status follows its 90% target on colour and shape."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(REPO, "run_scripts", "demo_report.py")


def _write(tmp_path, colour, shape):
    result, data = tmp_path / "result", tmp_path / "data" / "instruction"
    result.mkdir()
    data.mkdir(parents=True)
    per_type = {"colour": {"n": 10, "exact_acc": colour, "contains_acc": colour},
                "shape": {"n": 10, "exact_acc": shape, "contains_acc": shape},
                "count": {"n": 10, "exact_acc": 10.0, "contains_acc": 10.0}}  # not part of the target
    (result / "test_metrics.json").write_text(json.dumps(
        {"n": 30, "exact_acc": 50.0, "contains_acc": 50.0, "per_question_type": per_type}))
    (result / "test_instruction_result.json").write_text(json.dumps(
        [{"instance_id": "a", "prediction": "red", "reference": "red", "exact": True}]))
    (data / "test.json").write_text(json.dumps([{"id": "a", "instruction": "<ImageHere> What colour?",
                                                 "image": "a.png"}]))
    return ["--result-dir", str(result), "--data", str(tmp_path / "data"), "--times", "stage1=3", "eval=1"]


@pytest.mark.parametrize("colour,shape,rc", [(95.0, 92.0, 0), (90.0, 90.0, 0), (95.0, 89.9, 1), (60.0, 100.0, 1)])
def test_demo_exit_status_follows_the_target(tmp_path, colour, shape, rc):
    proc = subprocess.run([sys.executable, REPORT, *_write(tmp_path, colour, shape)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == rc, proc.stdout + proc.stderr
    assert ("FAIL" in proc.stdout) == (rc == 1) and "total        4 s" in proc.stdout
