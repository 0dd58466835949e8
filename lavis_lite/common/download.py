"""Resumable, checked downloads: ``download_url`` (one process) and ``fetch_on_main`` (rank 0 fetches,
every rank waits at a barrier and sees rank 0's error, if any).

A download goes to ``<target>.part``: an interrupted one is resumed with an HTTP ``Range`` request
(a server that ignores Range sends the whole file again, which restarts the part). Only a complete
file whose md5 matches is renamed to ``target`` (``os.replace``, atomic on one file system); a
wrong md5 deletes the part and raises naming the URL and the file, so no half-written or wrong file
is ever left at ``target``. ``file://`` URLs and plain local paths are copied the same way.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request

from lavis_lite.common import dist_utils

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


class DownloadError(OSError):
    """A download that could not complete (network, HTTP status). Names the URL and the file.
    ``permanent``: retrying cannot help (an HTTP 4xx answer)."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class ChecksumError(DownloadError, ValueError):
    """The downloaded bytes do not have the md5 the config gives (nothing is left at the target)."""


def md5sum(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _is_http(url: str) -> bool:
    return urllib.parse.urlparse(url).scheme in ("http", "https")


def _local_source(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    return urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else os.path.expanduser(url)


def _fetch_http_once(url: str, part: str, timeout: float) -> None:
    """Append the missing bytes of ``url`` to ``part``; raise when the transfer ends short."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the part may already be whole
            total = _total_from_content_range(err.headers.get("Content-Range"))
            if total is None or total == have:
                return
            os.remove(part)  # the part is longer than the file: it is not this file
            raise DownloadError(f"{url}: partial file {part} ({have} bytes) is longer than the "
                                f"remote file ({total} bytes); removed it") from None
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason} (downloading to {part})",
                            permanent=400 <= err.code < 500) from None
    with resp:
        if have and resp.status == 206:
            start = _start_from_content_range(resp.headers.get("Content-Range"))
            if start != have:
                raise DownloadError(f"{url}: asked for bytes {have}- but the server sent "
                                    f"{resp.headers.get('Content-Range')!r} (downloading to {part})")
            mode, expected = "ab", have + int(resp.headers.get("Content-Length", -1 - have))
        else:  # 200: a full body (the server ignored Range, or nothing was there yet)
            mode, expected = "wb", int(resp.headers.get("Content-Length", -1))
        with open(part, mode) as out:
            shutil.copyfileobj(resp, out, _CHUNK)
    got = os.path.getsize(part)
    if expected >= 0 and got != expected:
        raise DownloadError(f"{url}: transfer ended at {got} of {expected} bytes (kept {part} to resume)")


def _start_from_content_range(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _total_from_content_range(value: str | None) -> int | None:
    m = re.match(r"bytes (?:\*|\d+-\d+)/(\d+)", value or "")
    return int(m.group(1)) if m else None


def download_url(url: str, target: str, md5: str | None = None, retries: int = 3,
                 timeout: float = 60.0, backoff: float = 1.0) -> str:
    """Put ``url`` at ``target`` (resuming ``target.part``); check ``md5`` before the atomic rename.

    An existing ``target`` is kept as is when its md5 matches (or none is given)."""
    target = os.path.abspath(os.path.expanduser(target))
    if os.path.isfile(target) and (md5 is None or md5sum(target) == md5):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    part = target + ".part"
    if _is_http(url):
        for attempt in range(1, max(1, int(retries)) + 1):
            try:
                _fetch_http_once(url, part, timeout)
                break
            except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, short reads
                if attempt >= retries or getattr(err, "permanent", False):
                    if isinstance(err, DownloadError):
                        raise
                    raise DownloadError(f"{url}: {type(err).__name__}: {err} (downloading to {part})") from err
                logger.warning("download of %s failed (%s); retry %d/%d", url, err, attempt, retries - 1)
                time.sleep(backoff * attempt)
    else:
        source = _local_source(url)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"{url}: no such file (to be copied to {target})")
        shutil.copyfile(source, part)
    if md5 is not None:
        got = md5sum(part)
        if got != md5:
            os.remove(part)
            raise ChecksumError(f"md5 mismatch for {url} (file {target}): expected {md5}, got {got}; "
                                f"the download was deleted")
    os.replace(part, target)
    logger.info("downloaded %s -> %s", url, target)
    return target


def fetch_on_main(url: str, target: str, md5: str | None = None, **kwargs) -> str:
    """``download_url`` on rank 0 only; every rank must call it. The others wait at a barrier and
    raise rank 0's error too, instead of hanging at the barrier or reading a missing file."""
    error = None
    if dist_utils.is_main_process():
        try:
            download_url(url, target, md5=md5, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised below on every rank
            error = err
    message = dist_utils.broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
    dist_utils.barrier()
    if error is not None:
        raise error
    if message is not None:
        raise DownloadError(f"rank 0 failed to download {url}: {message}")
    return os.path.abspath(os.path.expanduser(target))
