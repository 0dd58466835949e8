"""Bad-input policy: ``on_error: raise`` names the file and record; ``on_error: skip`` skips, counts
and aborts when the skipped fraction passes ``max_skip_fraction``.

Counters live in a shared-memory tensor with one row per DataLoader worker, so the main process
sees what every worker skipped (fork or spawn) without locks.
"""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

_MAX_WORKERS = 64  # rows beyond this wrap around; counts stay right, only attribution blurs


class DataError(ValueError):
    """A bad annotation file, record or image. The message names the file and the record index.

    Takes a single message argument so DataLoader workers can re-raise it in the main process.
    """


def record_error(source: str, index, reason) -> DataError:
    where = f"{source} record {index}" if index is not None else source
    return DataError(f"{where}: {reason}")


class ErrorPolicy:
    def __init__(self, on_error: str = "raise", max_skip_fraction: float = 0.05, min_seen: int = 50):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if not 0.0 <= float(max_skip_fraction) <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {max_skip_fraction!r}")
        self.on_error, self.max_skip_fraction, self.min_seen = on_error, float(max_skip_fraction), int(min_seen)
        # Row 0: main process; row w+1: DataLoader worker w. Columns: seen, skipped.
        self.counts = torch.zeros(_MAX_WORKERS + 1, 2, dtype=torch.int64).share_memory_()
        self.load_skipped = 0  # records dropped while reading the annotation files
        self.load_total = 0

    @property
    def skip(self) -> bool:
        return self.on_error == "skip"

    # ---- while reading annotation files (main process) ---------------------
    def on_bad_record(self, err: DataError) -> None:
        if not self.skip:
            raise err
        self.load_skipped += 1
        logger.warning("skipping bad record: %s", err)

    def check_load(self, what: str) -> None:
        if self.load_skipped:
            frac = self.load_skipped / max(1, self.load_total)
            logger.warning("%s: skipped %d of %d records (%.1f%%)", what, self.load_skipped, self.load_total, 100 * frac)
            if frac > self.max_skip_fraction:
                raise DataError(f"{what}: {self.load_skipped} of {self.load_total} records are bad "
                                f"({100 * frac:.1f}% > max_skip_fraction {100 * self.max_skip_fraction:.1f}%)")

    # ---- while loading samples (any worker) -----------------------------------
    def _row(self) -> int:
        info = torch.utils.data.get_worker_info()
        return 0 if info is None else 1 + info.id % _MAX_WORKERS

    def on_sample_ok(self, dataset_len: int = 0) -> None:
        row = self._row()
        self.counts[row, 0] += 1
        if self.counts[row, 1] > 0:  # only workers that skipped something pay for the check
            self._check_threshold(dataset_len, "see the warnings above")

    def on_bad_sample(self, err: DataError, dataset_len: int) -> None:
        """Raise in raise mode; in skip mode count it and abort past the threshold."""
        row = self._row()
        self.counts[row, 0] += 1
        if not self.skip:
            raise err
        self.counts[row, 1] += 1
        logger.warning("skipping bad sample: %s", err)
        self._check_threshold(dataset_len, f"last: {err}")

    def _check_threshold(self, dataset_len: int, detail: str) -> None:
        seen, skipped = self.counts.sum(0).tolist()
        if seen >= min(self.min_seen, max(1, dataset_len)) and skipped / seen > self.max_skip_fraction:
            raise DataError(f"{skipped} of {seen} samples were bad ({100 * skipped / seen:.1f}% > "
                            f"max_skip_fraction {100 * self.max_skip_fraction:.1f}%); {detail}")

    def report(self, reset: bool = True) -> dict:
        """Counts since the last report (call once per epoch); logs a warning when anything was skipped."""
        seen, skipped = self.counts.sum(0).tolist()
        out = {"seen": seen, "skipped": skipped, "fraction": skipped / seen if seen else 0.0,
               "skipped_at_load": self.load_skipped}
        if skipped:
            logger.warning("skipped %d of %d samples this epoch (%.2f%%)", skipped, seen, 100 * out["fraction"])
        if reset:
            self.counts.zero_()
        return out
