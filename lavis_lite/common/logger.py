"""Logging helpers in LAVIS's style: SmoothedValue, MetricLogger, setup_logger."""
from __future__ import annotations

import datetime
import logging
import time
from collections import defaultdict, deque

import torch
import torch.distributed as dist

from lavis_lite.common import dist_utils


class SmoothedValue:
    """Tracks a series of values; windowed median/avg and the global average."""

    def __init__(self, window_size: int = 20, fmt: str | None = None):
        self.deque: deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt or "{median:.4f} ({global_avg:.4f})"

    def update(self, value: float, n: int = 1) -> None:
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self) -> None:
        if not dist_utils.is_dist_avail_and_initialized():
            return
        t = torch.tensor([self.count, self.total], dtype=torch.float64)
        dist.barrier()
        dist.all_reduce(t)
        self.count, self.total = int(t[0].item()), float(t[1].item())

    @property
    def median(self) -> float:
        return float(torch.tensor(list(self.deque)).median().item()) if self.deque else 0.0

    @property
    def avg(self) -> float:
        return float(sum(self.deque) / len(self.deque)) if self.deque else 0.0

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def max(self) -> float:
        return max(self.deque) if self.deque else 0.0

    @property
    def value(self) -> float:
        return self.deque[-1] if self.deque else 0.0

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg,
                               max=self.max, value=self.value)


class MetricLogger:
    def __init__(self, delimiter: str = "  "):
        self.meters: dict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.delimiter = delimiter

    def update(self, n: int = 1, **kwargs) -> None:
        for k, v in kwargs.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.meters[k].update(float(v), n=n)

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def __getattr__(self, attr):
        meters = self.__dict__.get("meters", {})
        if attr in meters:
            return meters[attr]
        raise AttributeError(f"{type(self).__name__} has no attribute {attr!r}")

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def global_avg(self) -> str:
        return self.delimiter.join(f"{name}: {meter.global_avg:.4f}" for name, meter in self.meters.items())

    def synchronize_between_processes(self) -> None:
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def log_every(self, iterable, print_freq: int, header: str = "", logger: logging.Logger | None = None):
        log = logger or logging.getLogger("lavis_lite")
        start = time.time()
        total = len(iterable) if hasattr(iterable, "__len__") else None
        for i, obj in enumerate(iterable):
            yield obj
            if i % print_freq == 0 or (total is not None and i == total - 1):
                elapsed = str(datetime.timedelta(seconds=int(time.time() - start)))
                where = f"[{i}/{total}]" if total is not None else f"[{i}]"
                log.info("%s %s %s time: %s", header, where, str(self), elapsed)


def setup_logger(log_file: str | None = None, level: int = logging.INFO) -> logging.Logger:
    """Configure the ``lavis_lite`` logger: INFO on rank 0, WARNING elsewhere, optional file."""
    root = logging.getLogger("lavis_lite")
    root.setLevel(level if dist_utils.is_main_process() else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in root.handlers):
        sh = logging.StreamHandler()
        sh.setFormatter(fmt)
        root.addHandler(sh)
    if log_file and dist_utils.is_main_process():
        if not any(isinstance(h, logging.FileHandler) and h.baseFilename == log_file for h in root.handlers):
            fh = logging.FileHandler(log_file)
            fh.setFormatter(fmt)
            root.addHandler(fh)
    root.propagate = False
    return root
