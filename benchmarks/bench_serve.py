"""Load test of the OpenAI-compatible server: N chat requests from C client threads (official openai client).

    python benchmarks/bench_serve.py                         # starts a tiny random model's server itself
    python benchmarks/bench_serve.py --url http://127.0.0.1:8000/v1 --model NAME [--api-key KEY]
    python benchmarks/bench_serve.py --cfg-path JOB_OR_EXPORT --requests 64 --concurrency 8

Prints one JSON line: requests/s, p50/p95/max latency, failures, and how many requests the server
answered per generate call (its /v1/stats)."""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_YAML = "model:\n  arch: minigpt4qwen\n  model_type: tiny\n"


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def image_data_url(colour=(200, 30, 30), size=48) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def run_load(base_url: str, model: str, api_key: str | None, n_requests: int = 32, concurrency: int = 8,
             max_tokens: int = 8, with_image: bool = True) -> dict:
    """Send ``n_requests`` chat completions from ``concurrency`` threads; every thread has its own client."""
    import openai

    image = image_data_url()
    latencies, failures, lock = [], [], threading.Lock()
    counter = iter(range(n_requests))

    def worker():
        client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=0, timeout=300)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            content = [{"type": "text", "text": f"Question {i}: what is in the picture?"}]
            if with_image:
                content.insert(0, {"type": "image_url", "image_url": {"url": image}})
            start = time.perf_counter()
            try:
                reply = client.chat.completions.create(model=model, max_tokens=max_tokens,
                                                       messages=[{"role": "user", "content": content}])
                assert reply.choices[0].message.content is not None
                with lock:
                    latencies.append(time.perf_counter() - start)
            except Exception as err:  # noqa: BLE001 — counted and reported
                with lock:
                    failures.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"requests": n_requests, "concurrency": concurrency, "ok": len(latencies), "failures": len(failures),
            "failure_messages": failures[:5], "wall_s": round(wall, 3),
            "requests_per_s": round(len(latencies) / wall, 3),
            "p50_ms": round(1000 * percentile(latencies, 0.5), 1), "p95_ms": round(1000 * percentile(latencies, 0.95), 1),
            "max_ms": round(1000 * max(latencies, default=float("nan")), 1)}


def server_stats(base_url: str, api_key: str | None) -> dict:
    request = urllib.request.Request(base_url.rstrip("/") + "/stats",
                                     headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cfg_path: str, port: int, extra=(), env=None, timeout: float = 120.0) -> subprocess.Popen:
    """``python -m lavis_lite.serve`` on 127.0.0.1:port; returns once /v1/models answers."""
    cmd = [sys.executable, "-m", "lavis_lite.serve", "--cfg-path", cfg_path, "--port", str(port), *extra]
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks on it
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the server exited with {proc.returncode}: {log.read()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return proc
        except urllib.error.HTTPError:
            return proc  # it answers (401 without a key): it is up
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise TimeoutError(f"the server did not answer within {timeout}s")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running server's base URL (…/v1); default: start one")
    parser.add_argument("--model", default=None, help="model id (default: the server's first /v1/models entry)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--cfg-path", default=None, help="model to serve when starting a server (default: tiny)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--no-image", action="store_true")
    args = parser.parse_args(argv)
    proc, url = None, args.url
    with tempfile.TemporaryDirectory() as tmp:
        if url is None:
            cfg = args.cfg_path
            if cfg is None:
                cfg = os.path.join(tmp, "tiny.yaml")
                with open(cfg, "w") as f:
                    f.write(TINY_YAML)
            port = free_port()
            extra = ["--api-key", args.api_key] if args.api_key else []
            proc = start_server(cfg, port, extra)
            url = f"http://127.0.0.1:{port}/v1"
        try:
            import openai
            model = args.model or openai.OpenAI(base_url=url, api_key=args.api_key or "none").models.list().data[0].id
            figures = run_load(url, model, args.api_key, args.requests, args.concurrency, args.max_tokens,
                               not args.no_image)
            stats = server_stats(url, args.api_key)
            figures["generate_calls"] = stats["generate_calls"]
            figures["mean_requests_per_generate"] = round(stats["requests"] / max(stats["generate_calls"], 1), 2)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    return emit("bench_serve", {k: v for k, v in vars(args).items() if k != "api_key"}, figures)


if __name__ == "__main__":
    main()
