"""benchmarks/gpu_check.sh without a GPU (``--cpu-smoke``): the same steps at tiny size on the CPU write
one JSON file with the gpu tests' outcome (collected, skipped) and every benchmark figure; a failing
test, a skip on a GPU machine or a benchmark error makes the check fail."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("published", "best_uncached", "best_cached", "lora_best_uncached", "lora_best_cached")


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(REPO, "benchmarks", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_and_writes_one_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHON=sys.executable, CI="")
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu-smoke", "--out", str(out)], check=False,
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"wrote {out}"
    r = json.loads(out.read_text())
    assert r["mode"] == "cpu_smoke" and r["ok"] is True and r["errors"] == []
    assert r["budget_s"] == 600 and r["within_budget"] is None and r["seconds"] > 0

    tests = r["tests"]  # every gpu-marked test collected; without CUDA each one skips, none fails
    names = {c["test"].split("[")[0] for c in tests["cases"]}
    assert {"tests/test_gpu.py::test_bf16_autocast_training_step_matches_fp32_and_learns",
            "tests/test_gpu.py::test_fused_sdpa_kernels_are_usable_and_match_math",
            "tests/test_gpu.py::test_packing_with_flash_attention_varlen_equals_padding",
            "tests/test_gpu.py::test_deepspeed_zero_on_nccl_one_process",
            "tests/test_eva_vit.py::test_fp16_vit_on_cuda_matches_fp32_and_keeps_an_fp32_stream"} <= names
    assert tests["outcome"] == "passed" and tests["counts"]["failed"] == 0
    assert tests["counts"]["skipped"] == len(tests["cases"]) >= 11
    assert all(c["outcome"] == "skipped" and "CUDA" in c["message"] for c in tests["cases"])

    figures = r["bench"]["figures"]
    assert set(figures) == set(MODES)
    for name in MODES:
        f = figures[name]
        for key in ("samples_per_s", "supervised_tokens_per_s", "peak_mem_mb", "mfu", "flops_per_sample",
                    "mean_text_tokens"):
            assert isinstance(f[key], (int, float)) and f[key] > 0, (name, key, f)
        assert f["max_batch"] is None  # --find-max-batch is CUDA only
    lora = r["bench"]["runs"]["lora"]
    assert "--lora" in lora["command"] and lora["returncode"] == 0
    assert lora["record"]["config"]["lora"] is True and r["bench"]["runs"]["main"]["record"]["config"]["lora"] is False
    assert r["targets"]["best_uncached"]["min_samples_per_s"] == 60
    assert r["targets"]["best_cached"]["min_samples_per_s"] == 120
    assert r["targets"]["best_cached"]["measured"] == figures["best_cached"]["samples_per_s"]
    assert all(t["met"] is None for t in r["targets"].values())  # CPU figures are not judged against GPU targets
    env = r["environment"]
    assert re.fullmatch(r"[0-9a-f]{40}", env["git_commit"]) and env["torch"] and env["cuda_available"] is False
    assert "cuda_runtime" in env and env["gpu"] is None


GOOD = "def test_fine():\n    assert 1 + 1 == 2\n"


@pytest.mark.parametrize("body,smoke,outcome", [
    ("def test_broken():\n    assert 1 + 1 == 3\n", True, "failed"),
    ("import pytest\ndef test_needs_gpu():\n    pytest.skip('needs a CUDA device')\n", False, "failed"),
    ("import pytest\ndef test_optional():\n    pytest.skip('flash-attn is not installed')\n", False, "passed"),
    ("import pytest\ndef test_needs_gpu():\n    pytest.skip('needs a CUDA device')\n", True, "passed"),
])
def test_test_outcomes_decide_the_exit_status(tmp_path, body, smoke, outcome, monkeypatch):
    """A failing test fails the check; on a GPU a skip fails it too unless an optional package is missing."""
    gpu_check = load_gpu_check()
    path = tmp_path / "test_case.py"
    path.write_text("import pytest\npytestmark = pytest.mark.gpu\n" + GOOD + body)
    args = gpu_check.parse_args(["--tests", str(path), "--no-bench", "--out", str(tmp_path / "r.json")]
                                + (["--cpu-smoke"] if smoke else []))
    result = gpu_check.run_tests(args, str(tmp_path))
    assert result["outcome"] == outcome, result
    assert result["counts"]["passed"] == 1 and len(result["cases"]) == 2
    assert bool(result["problems"]) == (outcome == "failed")
    if smoke:  # the whole command: exit status and the JSON's record
        code = gpu_check.main(["--cpu-smoke", "--tests", str(path), "--no-bench", "--out", str(tmp_path / "r.json")])
        saved = json.loads((tmp_path / "r.json").read_text())
        assert code == (1 if outcome == "failed" else 0) and saved["ok"] is (outcome == "passed")
        assert saved["tests"]["outcome"] == outcome


def test_a_bench_error_is_reported_and_fails(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()
    monkeypatch.setattr(gpu_check, "BENCH_RUNS", (("main", "no_such_mode", False),))
    bench = gpu_check.run_bench(gpu_check.parse_args(["--cpu-smoke"]))
    assert bench["runs"]["main"]["returncode"] != 0 and bench["runs"]["main"]["record"] is None
    assert "no_such_mode" in bench["runs"]["main"]["stderr_tail"]
    assert bench["problems"] and "bench run 'main' failed" in bench["problems"][0]
