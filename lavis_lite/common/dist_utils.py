"""Distributed helpers: torchrun env:// initialisation, rank queries, cached downloads."""
from __future__ import annotations

import datetime
import functools
import hashlib
import logging
import os
import urllib.parse
import urllib.request

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist_avail_and_initialized():
        dist.barrier()


_owned_group = False  # True when init_distributed_mode created the process group


def shutdown_distributed() -> None:
    """Wait for every rank, then tear down the group ``init_distributed_mode`` created: a torchrun
    worker that exits with gloo's threads still running can abort ("terminate called without an
    active exception"). Groups made by others (e.g. DeepSpeed's group of one) are left alone."""
    global _owned_group
    if _owned_group and is_dist_avail_and_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _owned_group = False


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (every rank must call; ``obj`` itself when not distributed)."""
    if not is_dist_avail_and_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_process(func):
    """Run ``func`` on rank 0 only (returns None elsewhere)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if is_main_process():
            return func(*args, **kwargs)
        return None
    return wrapper


def init_distributed_mode(run_cfg=None) -> dict:
    """Initialise torch.distributed from torchrun's env:// variables.

    gloo on CPU, nccl on GPU; without torchrun variables this is a plain single
    process and nothing is initialised. Returns {rank, world_size, local_rank, distributed}.
    """
    info = {"rank": 0, "world_size": 1, "local_rank": 0, "distributed": False}
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return info
    info.update(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                local_rank=int(os.environ.get("LOCAL_RANK", 0)), distributed=True)
    if is_dist_avail_and_initialized():
        return info
    want_cuda = torch.cuda.is_available() and str(_get(run_cfg, "device", "cuda")).startswith("cuda")
    backend = _get(run_cfg, "dist_backend", None) or ("nccl" if want_cuda else "gloo")
    if want_cuda:
        torch.cuda.set_device(info["local_rank"])
    timeout = datetime.timedelta(minutes=int(_get(run_cfg, "dist_timeout_min", 30)))
    dist.init_process_group(backend=backend, init_method=_get(run_cfg, "dist_url", "env://"),
                            world_size=info["world_size"], rank=info["rank"], timeout=timeout)
    global _owned_group
    _owned_group = True
    logger.info("distributed init rank %d/%d backend %s", info["rank"], info["world_size"], backend)
    dist.barrier()
    return info


def _get(cfg, key, default):
    if cfg is None:
        return default
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def _cache_root() -> str:
    from lavis_lite.common.registry import registry
    try:
        return registry.get_path("cache_root")
    except KeyError:
        return os.path.expanduser("~/.cache/lavis_lite")


def get_cache_path(rel_path: str) -> str:
    return os.path.expanduser(os.path.join(_cache_root(), rel_path))


def is_url(url_or_filename: str) -> bool:
    return urllib.parse.urlparse(str(url_or_filename)).scheme in ("http", "https", "file")


def cached_path_for_url(url: str, cache_dir: str | None = None) -> str:
    name = os.path.basename(urllib.parse.urlparse(url).path) or hashlib.md5(url.encode()).hexdigest()
    return os.path.join(cache_dir or get_cache_path("downloads"), name)


def md5sum(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download_cached_file(url_or_path: str, cache_dir: str | None = None, md5: str | None = None,
                         check_hash: bool = True) -> str:
    """Return a local path for ``url_or_path``.

    A local path is returned as is; ``file://`` is resolved; an http(s) URL is looked
    up in the cache and downloaded there by rank 0 only while the others wait.
    With ``md5`` the file's checksum is verified.
    """
    parsed = urllib.parse.urlparse(str(url_or_path))
    if parsed.scheme == "file":
        local = urllib.request.url2pathname(parsed.path)
    elif parsed.scheme in ("http", "https"):
        local = cached_path_for_url(url_or_path, cache_dir)
        # Rank 0 decides, so every rank takes the same collective calls.
        if broadcast_object(not os.path.isfile(local)):
            # resumable and atomic; rank 0 only
            from lavis_lite.common.download import fetch_on_main
            fetch_on_main(url_or_path, local, md5=md5 if check_hash else None)
    else:
        local = os.path.expanduser(str(url_or_path))
    if not os.path.isfile(local):
        raise FileNotFoundError(f"{url_or_path!r}: no such file (looked at {local})")
    if md5 and check_hash:
        got = md5sum(local)
        if got != md5:
            raise ValueError(f"md5 mismatch for {local}: expected {md5}, got {got}")
    return local
