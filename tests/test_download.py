"""Annotation downloads over a local HTTP server on 127.0.0.1 (with Range support): md5, resume,
atomic rename, rank 0 only with a barrier, and the builder fetching a data set's files."""
import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading

import pytest
from omegaconf import OmegaConf

import lavis_lite  # noqa: F401
from lavis_lite.common import dist_utils
from lavis_lite.common.download import (
    ChecksumError,
    DownloadError,
    download_url,
    fetch_on_main,
)
from lavis_lite.common.registry import registry


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (path -> bytes); honours ``Range: bytes=N-`` unless ``server.ignore_range``;
    ``server.cut_after`` (bytes) ends the first N responses early (a dropped connection)."""

    def do_GET(self):  # noqa: N802 - http.server's name
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        if match and not srv.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if srv.cuts_left > 0:
            srv.cuts_left -= 1
            payload = payload[:srv.cut_after]
            self.close_connection = True
        self.wfile.write(payload)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture()
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.ignore_range, srv.cuts_left, srv.cut_after = {}, [], False, 0, 0
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


BODY = bytes(range(256)) * 40  # 10 KiB
MD5 = hashlib.md5(BODY).hexdigest()


def test_download_with_md5_and_atomic_rename(server, tmp_path):
    server.files["/ann/train.json"] = BODY
    target = tmp_path / "sub" / "train.json"
    assert download_url(server.url + "/ann/train.json", str(target), md5=MD5) == str(target)
    assert target.read_bytes() == BODY and not (tmp_path / "sub" / "train.json.part").exists()
    # present with the right md5: nothing is fetched again
    download_url(server.url + "/ann/train.json", str(target), md5=MD5)
    assert len(server.requests) == 1


def test_resume_after_a_partial_file(server, tmp_path):
    server.files["/a.json"] = BODY
    target = tmp_path / "a.json"
    (tmp_path / "a.json.part").write_bytes(BODY[:3000])
    download_url(server.url + "/a.json", str(target), md5=MD5)
    assert server.requests == [("/a.json", "bytes=3000-")]  # only the missing bytes were asked for
    assert target.read_bytes() == BODY and not (tmp_path / "a.json.part").exists()


def test_dropped_connection_is_resumed_on_retry(server, tmp_path):
    server.files["/a.json"] = BODY
    server.cuts_left, server.cut_after = 1, 4000
    target = tmp_path / "a.json"
    download_url(server.url + "/a.json", str(target), md5=MD5, retries=3, backoff=0)
    assert [r for _, r in server.requests] == [None, "bytes=4000-"]
    assert target.read_bytes() == BODY


def test_server_ignoring_range_restarts_the_part(server, tmp_path):
    server.files["/a.json"] = BODY
    server.ignore_range = True
    (tmp_path / "a.json.part").write_bytes(b"stale bytes from another file")
    download_url(server.url + "/a.json", str(tmp_path / "a.json"), md5=MD5)
    assert (tmp_path / "a.json").read_bytes() == BODY


def test_complete_part_is_finished_without_a_body(server, tmp_path):
    server.files["/a.json"] = BODY
    (tmp_path / "a.json.part").write_bytes(BODY)
    download_url(server.url + "/a.json", str(tmp_path / "a.json"), md5=MD5)  # server answers 416
    assert (tmp_path / "a.json").read_bytes() == BODY and server.requests == [("/a.json", f"bytes={len(BODY)}-")]


def test_wrong_md5_names_url_and_file_and_leaves_nothing(server, tmp_path):
    server.files["/a.json"] = BODY
    target = tmp_path / "a.json"
    with pytest.raises(ChecksumError) as info:
        download_url(server.url + "/a.json", str(target), md5="0" * 32)
    message = str(info.value)
    assert server.url + "/a.json" in message and str(target) in message and MD5 in message
    assert isinstance(info.value, ValueError)
    assert os.listdir(tmp_path) == []  # no target, no .part


def test_http_error_names_url(server, tmp_path):
    with pytest.raises(DownloadError, match=r"/missing\.json: HTTP 404"):
        download_url(server.url + "/missing.json", str(tmp_path / "m.json"), retries=3, backoff=0)
    assert len(server.requests) == 1  # a 404 is not retried
    assert os.listdir(tmp_path) == []


def test_fetch_on_main_other_ranks_only_wait(server, tmp_path, monkeypatch):
    server.files["/a.json"] = BODY
    calls = []
    monkeypatch.setattr(dist_utils, "is_main_process", lambda: False)
    monkeypatch.setattr(dist_utils, "barrier", lambda: calls.append("barrier"))
    fetch_on_main(server.url + "/a.json", str(tmp_path / "a.json"), md5=MD5)
    assert server.requests == [] and calls == ["barrier"]
    # rank 0's failure reaches the others (broadcast), instead of a missing file later
    monkeypatch.setattr(dist_utils, "broadcast_object", lambda obj: "ChecksumError: md5 mismatch for ...")
    with pytest.raises(DownloadError, match="rank 0 failed to download .*md5 mismatch"):
        fetch_on_main(server.url + "/a.json", str(tmp_path / "a.json"), md5=MD5)


def test_builder_fetches_a_zoo_dataset_over_http(server, tmp_path, monkeypatch):
    """nocaps with its default storage paths, the URLs pointed at the local server, md5 checked."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LAVIS_LITE_CACHE_ROOT", str(cache))
    from PIL import Image
    (cache / "nocaps/images/val").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(cache / "nocaps/images/val/a.jpg")
    records = json.dumps([{"image": "val/a.jpg", "img_id": 7}]).encode()
    server.files["/nocaps_val.json"] = records
    server.files["/gt.json"] = json.dumps({"images": [{"id": 7, "domain": "out-domain"}], "annotations": []}).encode()
    cfg = OmegaConf.merge(registry.get_builder_class("nocaps").default_config(), {"build_info": {"annotations": {
        "val": {"url": server.url + "/nocaps_val.json", "md5": hashlib.md5(records).hexdigest(),
                "gt_url": server.url + "/gt.json"}, "test": None}}})
    val = registry.get_builder_class("nocaps")(cfg).build_datasets()["val"]
    assert (cache / "nocaps/annotations/nocaps_val.json").read_bytes() == records
    assert val[0]["image_id"] == 7 and val.domains() == {7: "out-domain"}  # the references were fetched too
    (cache / "nocaps/annotations/nocaps_val_4500_captions.json").unlink()
    cfg.build_info.annotations.val.md5 = "f" * 32
    (cache / "nocaps/annotations/nocaps_val.json").unlink()
    with pytest.raises(ValueError, match=r"md5 mismatch for http://127\.0\.0\.1:\d+/nocaps_val\.json "
                                         r"\(file .*nocaps_val\.json\)"):
        registry.get_builder_class("nocaps")(cfg).build_datasets()
    assert sorted(os.listdir(cache / "nocaps/annotations")) == []  # neither file, nor a .part


_TWO_RANKS = """
import os, sys
import torch.distributed as dist
from lavis_lite.common.download import fetch_on_main, DownloadError
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[1], rank=int(sys.argv[2]), world_size=2)
url, target, md5 = sys.argv[3], sys.argv[4], sys.argv[5]
path = fetch_on_main(url, target, md5=md5)
print("ok", open(path, "rb").read() == open(sys.argv[6], "rb").read())
try:
    fetch_on_main(url, target + ".bad", md5="0" * 32)
except DownloadError as err:
    print("raised", type(err).__name__, os.path.exists(target + ".bad"), os.path.exists(target + ".bad.part"))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_ranks_download_once(server, tmp_path):
    server.files["/a.json"] = BODY
    (tmp_path / "expected").write_bytes(BODY)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    args = [server.url + "/a.json", str(tmp_path / "a.json"), MD5, str(tmp_path / "expected")]
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_RANKS, port, str(rank), *args], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.splitlines()[0] == "ok True"
    # rank 0 raised its ChecksumError, rank 1 the broadcast one; nothing half-written anywhere
    assert outs[0][0].splitlines()[1] == "raised ChecksumError False False"
    assert outs[1][0].splitlines()[1] == "raised DownloadError False False"
    assert [path for path, _ in server.requests] == ["/a.json", "/a.json"]  # once per file, by rank 0 only


def test_part_longer_than_the_remote_file_is_replaced(server, tmp_path):
    server.files["/a.json"] = BODY[:100]
    (tmp_path / "a.json.part").write_bytes(BODY)  # left over from another file
    download_url(server.url + "/a.json", str(tmp_path / "a.json"), retries=2, backoff=0)
    assert (tmp_path / "a.json").read_bytes() == BODY[:100]
    assert [r for _, r in server.requests] == [f"bytes={len(BODY)}-", None]


def test_fetch_cli_prefetches_annotations(server, tmp_path, monkeypatch, capsys):
    """`python -m lavis_lite.datasets.fetch NAME --cfg-path RUN.yaml`: the files only, no images needed."""
    from lavis_lite.datasets import fetch
    cache = tmp_path / "cache"
    monkeypatch.setenv("LAVIS_LITE_CACHE_ROOT", str(cache))
    server.files["/train.json"] = b"[]"
    run = tmp_path / "run.yaml"
    run.write_text("datasets:\n  vg_vqa:\n    build_info:\n      annotations:\n"
                   f"        train: {{url: {server.url}/train.json, md5: {hashlib.md5(b'[]').hexdigest()}}}\n")
    assert fetch.main(["vg_vqa", "--cfg-path", str(run)]) == 0
    assert (cache / "vg/annotations/vg_qa.json").read_bytes() == b"[]"
    assert f"vg_vqa train: {cache / 'vg/annotations/vg_qa.json'}" in capsys.readouterr().out
    # no public URL (SNLI-VE): a failure naming the file and the card, exit 1
    assert fetch.main(["snli_ve"]) == 1
    assert "ve_train.json does not exist" in capsys.readouterr().err
