"""The OpenAI-compatible server, as a real process on 127.0.0.1, driven by the official openai client."""
import base64
import io
import json
import os
import sys
import urllib.request

import openai  # the official client ([dev] installs it)
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from bench_serve import free_port, run_load, server_stats, start_server  # noqa: E402
from tiny_helpers import TINY_MODEL_YAML, talkative  # noqa: E402

KEY = "test-key-123"
MODEL = "lavis_lite/tiny"


def data_url(colour, size=40, fmt="PNG"):
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server for the tiny model with varied (talkative) weights, an API key, a folder of allowed images,
    at most 2 images per request and 1 MB bodies."""
    from safetensors.torch import save_file
    from lavis_lite.inference_utils import load_model_from_cfg

    tmp = tmp_path_factory.mktemp("serve")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(TINY_MODEL_YAML)
    model, _, _ = load_model_from_cfg(str(cfg))
    talkative(model)
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items() if k != "llm_model.lm_head.weight"}
    save_file(state, str(tmp / "weights.safetensors"))  # lm_head is tied to embed_tokens
    allowed = tmp / "images"
    allowed.mkdir()
    from PIL import Image
    Image.new("RGB", (40, 40), (20, 200, 20)).save(allowed / "green.png")
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", LAVIS_LITE_API_KEY=KEY)  # the key through the env var
    proc = start_server(str(cfg), port, ["--checkpoint", str(tmp / "weights.safetensors"), "--model-name", MODEL,
                                         "--allow-local-images", str(allowed), "--max-images", "2",
                                         "--max-body-mb", "1", "--conf", "max_new_tokens=12"], env=env)
    url = f"http://127.0.0.1:{port}/v1"
    yield {"url": url, "allowed": allowed, "tmp": tmp, "client": openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)}
    proc.terminate()
    proc.wait(timeout=30)
    proc.log.seek(0)
    assert "Traceback" not in proc.log.read()  # no request crashed anything


def ask(client, content, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kw)


def test_models_plain_and_deterministic(server):
    client = server["client"]
    assert [m.id for m in client.models.list().data] == [MODEL]
    first = ask(client, "Describe the picture.", max_tokens=8)
    again = ask(client, "Describe the picture.", max_tokens=8)
    text = first.choices[0].message.content
    assert isinstance(text, str) and text.strip()
    assert again.choices[0].message.content == text  # greedy unless a temperature is given
    assert first.choices[0].finish_reason in ("stop", "length")
    assert first.usage.prompt_tokens > 5 and 0 < first.usage.completion_tokens <= 8
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    short = ask(client, "Describe the picture.", max_tokens=2)
    assert short.usage.completion_tokens <= 2 and short.choices[0].finish_reason == "length"
    sampled = ask(client, "Describe the picture.", max_tokens=8, temperature=1.5, top_p=0.95)
    assert isinstance(sampled.choices[0].message.content, str)


def test_streaming_gives_the_same_text_as_one_response(server):
    client = server["client"]
    whole = ask(client, "What colour is it?", max_tokens=10).choices[0].message.content
    chunks = list(ask(client, "What colour is it?", max_tokens=10, stream=True,
                      stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (["stop"],
                                                                                                       ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_a_client_leaving_mid_stream_leaves_the_server_serving(server):
    client = server["client"]
    before = server_stats(server["url"], KEY)
    stream = ask(client, "Tell me a long story.", max_tokens=400, stream=True)
    pieces = []
    for chunk in stream:
        pieces.append(chunk)
        if len(pieces) == 3:
            break
    stream.close()  # the client goes away
    reply = ask(client, "Are you still there?", max_tokens=3)  # answered once the abandoned stream stopped
    assert reply.choices[0].message.content is not None
    after = server_stats(server["url"], KEY)
    assert after["requests"] - before["requests"] == 2


def test_stop_sequences_cut_the_answer(server):
    client = server["client"]
    whole = ask(client, "Tell me more.", max_tokens=12).choices[0].message.content
    assert len(whole) >= 6
    stop = whole[3:5]
    expected = whole[:whole.find(stop)]
    reply = ask(client, "Tell me more.", max_tokens=12, stop=[stop, "never-appears"])
    assert reply.choices[0].message.content == expected and reply.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       ask(client, "Tell me more.", max_tokens=12, stop=stop, stream=True) if c.choices)
    assert streamed == expected


def test_images_data_url_and_allowed_local_file(server):
    client = server["client"]
    question = {"type": "text", "text": "What is in the picture?"}
    red = ask(client, [{"type": "image_url", "image_url": {"url": data_url((220, 20, 20))}}, question], max_tokens=10)
    blue = ask(client, [{"type": "image_url", "image_url": {"url": data_url((20, 20, 220), fmt="JPEG")}}, question],
               max_tokens=10)
    none = ask(client, "What is in the picture?", max_tokens=10)
    assert red.usage.prompt_tokens > none.usage.prompt_tokens  # the image's query tokens are in the prompt
    assert red.choices[0].message.content != blue.choices[0].message.content  # the answer depends on the image
    local = ask(client, [{"type": "image_url", "image_url": {"url": str(server["allowed"] / "green.png")}}, question],
                max_tokens=10)
    assert local.usage.prompt_tokens == red.usage.prompt_tokens
    two = ask(client, [{"type": "image_url", "image_url": {"url": data_url((1, 2, 3))}},
                       {"type": "image_url", "image_url": {"url": "file://" + str(server["allowed"] / "green.png")}},
                       question], max_tokens=4)
    assert two.usage.prompt_tokens > red.usage.prompt_tokens


def _error(call):
    with pytest.raises(openai.APIStatusError) as info:
        call()
    err = info.value
    body = err.response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    return err.status_code, body["error"]


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server):
    client, tmp = server["client"], server["tmp"]
    image = {"type": "image_url", "image_url": {"url": data_url((0, 0, 0))}}
    status, err = _error(lambda: ask(client, [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nbroken").decode()}}]))
    assert status == 400 and err["code"] == "invalid_image" and err["param"] == "messages[0].content[0].image_url"
    status, err = _error(lambda: ask(client, [image, image, image, {"type": "text", "text": "hi"}]))
    assert status == 400 and err["code"] == "too_many_images"
    (tmp / "secret.png").write_bytes((server["allowed"] / "green.png").read_bytes())
    status, err = _error(lambda: ask(client, [{"type": "image_url", "image_url": {"url": str(tmp / "secret.png")}}]))
    assert status == 400 and "outside the allowed folder" in err["message"]
    status, err = _error(lambda: ask(client, [{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]))
    assert status == 400 and "remote image URLs" in err["message"]
    status, err = _error(lambda: ask(client, "x" * (1024 * 1024 + 10)))
    assert status == 413 and err["code"] == "request_too_large"
    status, err = _error(lambda: client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]))
    assert status == 400 and "system messages" in err["message"]
    status, err = _error(lambda: ask(client, "hi", logprobs=True))
    assert status == 400 and err["code"] == "unsupported_parameter" and err["param"] == "logprobs"
    status, err = _error(lambda: client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}]))
    assert status == 404 and err["code"] == "model_not_found"
    status, err = _error(lambda: client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], stream=True))
    assert status == 400 and "alternate" in err["message"]  # a streaming request fails before the stream starts
    status, err = _error(lambda: ask(client, "hi", max_tokens=100000))
    assert status == 400 and err["param"] == "max_tokens"
    request = urllib.request.Request(server["url"] + "/chat/completions", data=b"{not json", method="POST",
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code == 400 and "not valid JSON" in json.loads(info.value.read())["error"]["message"]
    assert ask(client, "still there?", max_tokens=3).choices[0].message.content is not None


def test_wrong_or_missing_api_key_is_401_on_every_route(server):
    for key in ("wrong-key", ""):
        bad = openai.OpenAI(base_url=server["url"], api_key=key or "x", max_retries=0)
        if not key:
            bad = openai.OpenAI(base_url=server["url"], api_key="unused", max_retries=0,
                                default_headers={"Authorization": ""})
        with pytest.raises(openai.AuthenticationError) as info:
            bad.models.list()
        assert info.value.response.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            ask(bad, "hi", max_tokens=2)


@pytest.mark.slow
def test_concurrent_load_is_batched_and_never_fails(server):
    """32 requests with an image from 8 client threads: none fails; the server answers several per generate."""
    before = server_stats(server["url"], KEY)
    figures = run_load(server["url"], MODEL, KEY, n_requests=32, concurrency=8, max_tokens=8)
    after = server_stats(server["url"], KEY)
    print("\nload test:", json.dumps(figures))
    assert figures["failures"] == 0, figures["failure_messages"]
    assert figures["ok"] == 32 and figures["requests_per_s"] > 0 and figures["p95_ms"] >= figures["p50_ms"] > 0
    calls = after["generate_calls"] - before["generate_calls"]
    assert after["requests"] - before["requests"] == 32
    assert calls < 32 and after["max_batch"] > 1  # requests that arrived together shared generate calls


@pytest.mark.slow
def test_bench_serve_prints_one_json_line(capsys):
    from test_benchmarks_smoke import run_bench
    record = run_bench("bench_serve", ["--requests", "4", "--concurrency", "2", "--max-tokens", "3"], capsys)
    f = record["figures"]
    assert f["ok"] == 4 and f["failures"] == 0 and f["requests_per_s"] > 0 and f["generate_calls"] >= 1
