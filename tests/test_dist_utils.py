"""Distributed helpers in one process; cached-file resolution offline."""
import hashlib
import logging

import pytest

import lavis_lite  # noqa: F401
from lavis_lite.common import dist_utils
from lavis_lite.common.logger import MetricLogger, SmoothedValue, setup_logger


def test_single_process_defaults(tmp_path):
    # In a fresh interpreter: other tests in this process may have created DeepSpeed's group of one.
    import subprocess
    import sys
    code = (
        "import os\n"
        "for v in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'): os.environ.pop(v, None)\n"
        "from lavis_lite.common import dist_utils as d\n"
        "info = d.init_distributed_mode()\n"
        "assert info == {'rank': 0, 'world_size': 1, 'local_rank': 0, 'distributed': False}, info\n"
        "assert d.get_rank() == 0 and d.get_world_size() == 1\n"
        "assert d.is_main_process() and not d.is_dist_avail_and_initialized()\n"
        "f = d.main_process(lambda x: x * 2)\n"
        "assert f(3) == 6\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_download_cached_file_local_and_file_url(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"abc")
    assert dist_utils.download_cached_file(str(p)) == str(p)
    assert dist_utils.download_cached_file(p.as_uri()) == str(p)
    md5 = hashlib.md5(b"abc").hexdigest()
    assert dist_utils.download_cached_file(str(p), md5=md5) == str(p)
    with pytest.raises(ValueError, match="md5 mismatch"):
        dist_utils.download_cached_file(str(p), md5="0" * 32)
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        dist_utils.download_cached_file(str(tmp_path / "nope.bin"))


def test_cached_url_is_used_without_network(tmp_path):
    url = "https://example.invalid/models/eva_vit_g.pth"
    cached = dist_utils.cached_path_for_url(url, cache_dir=str(tmp_path))
    open(cached, "wb").write(b"weights")
    assert dist_utils.download_cached_file(url, cache_dir=str(tmp_path)) == cached


def test_metric_logger_and_smoothed_value(tmp_path):
    v = SmoothedValue(window_size=2)
    for x in (1.0, 2.0, 6.0):
        v.update(x)
    assert v.global_avg == pytest.approx(3.0) and v.avg == pytest.approx(4.0) and v.value == 6.0
    ml = MetricLogger()
    ml.update(loss=2.0)
    ml.update(loss=4.0)
    assert ml.loss.global_avg == pytest.approx(3.0)
    assert "loss" in ml.global_avg()
    log_file = tmp_path / "log.txt"
    logger = setup_logger(str(log_file))
    list(ml.log_every(range(3), print_freq=1, header="Train", logger=logger))
    for h in logger.handlers:
        h.flush()
    assert "Train" in log_file.read_text()
    for h in list(logger.handlers):
        if isinstance(h, logging.FileHandler):
            logger.removeHandler(h)
            h.close()


def test_shutdown_tears_down_only_the_group_it_created(tmp_path):
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import os, torch.distributed as dist\n"
        "from lavis_lite.common import dist_utils as d\n"
        "info = d.init_distributed_mode()\n"
        "assert info['distributed'] and dist.is_initialized()\n"
        "d.shutdown_distributed()\n"
        "assert not dist.is_initialized()\n"
        "dist.init_process_group('gloo', init_method='tcp://127.0.0.1:%d', rank=0, world_size=1)\n"
        "d.shutdown_distributed()\n"
        "assert dist.is_initialized()  # not ours: left alone\n"
        "print('ok')\n" % (port + 1 if port < 65000 else port - 1)
    )
    import os
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_broadcast_object_single_process_returns_the_object():
    obj = {"a": [1, 2]}
    assert dist_utils.broadcast_object(obj) is obj
