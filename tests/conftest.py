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
