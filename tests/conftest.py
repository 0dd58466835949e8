import os

# Keep the suite light on a 2-core machine and never reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

import pytest  # noqa: E402

_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "CROSS_RANK", "CROSS_SIZE", "GROUP_RANK")


@pytest.fixture(autouse=True)
def _isolate_distributed_state(request):
    """Torchrun variables set by one test (in-process DeepSpeed exports LOCAL_RANK) must not leak into
    later tests or the subprocesses they start. (DeepSpeed's gloo group of one stays: DeepSpeed caches
    it across engines.)"""
    saved = {k: os.environ.get(k) for k in _DIST_ENV}
    yield
    leaked = {k: os.environ.get(k) for k in _DIST_ENV if os.environ.get(k) != saved[k]}
    if leaked and os.environ.get("LAVIS_LITE_REPORT_ENV_LEAKS"):
        with open(os.environ["LAVIS_LITE_REPORT_ENV_LEAKS"], "a") as f:
            f.write(f"{request.node.nodeid}: {leaked}\n")
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ---- fixtures shared by several test files --------------------------------------------------------
@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    """An empty LAVIS_LITE_CACHE_ROOT under tmp_path (where data sets' relative storage resolves)."""
    root = tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("LAVIS_LITE_CACHE_ROOT", str(root))
    return root


@pytest.fixture
def result_dir(tmp_path):
    """The registry's ``result_dir`` pointed at tmp_path/result for one test, then restored."""
    from lavis_lite.common.registry import registry

    out = tmp_path / "result"
    out.mkdir()
    old = registry.paths.get("result_dir")
    registry.register_path("result_dir", str(out))
    yield out
    if old is None:
        registry.paths.pop("result_dir", None)
    else:
        registry.register_path("result_dir", old)


# ---- CI: a green run means every required test ran -----------------------------------------------
# With CI=true a skipped test is an error, except tests marked ``gpu`` (need CUDA, which CI lacks) or
# ``may_skip`` (a skip that depends on the data, not on the machine; say why next to the marker).
ALLOWED_SKIP_MARKERS = ("gpu", "may_skip")


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; the only tests CI may skip for a missing machine")
    config.addinivalue_line("markers", "may_skip: a data-dependent skip that CI=true allows (give the reason)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not _ci() or not report.skipped or hasattr(report, "wasxfail"):
        return
    if any(item.get_closest_marker(m) for m in ALLOWED_SKIP_MARKERS):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"CI=true: required test {item.nodeid} was skipped ({reason}). Install what it needs "
                       f"(.ci/run does: Java, Chromium) or mark it gpu / may_skip if the skip is legitimate.")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _ci() and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: test module {report.nodeid} was skipped at collection ({reason})"
