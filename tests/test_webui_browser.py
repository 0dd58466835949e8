"""The Gradio web demo driven in headless Chromium (Selenium + Debian's chromedriver).

Skipped only where Chromium / chromedriver are not installed (run_scripts/install_browser.sh
installs them; CI runs it first). Also unit-tests the streaming callback without a browser.
"""
import os
import shutil
import socket

import numpy as np
import pytest
from PIL import Image
from tiny_helpers import TINY_MODEL_YAML, talkative

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

QUESTION = "what colour is the square"

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "",
                             shutil.which("chromium-browser") or "") if p and os.path.exists(p)), None)
CHROMEDRIVER = next((p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver") or "")
                     if p and os.path.exists(p)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _norm(text: str) -> str:
    """What a browser shows of a text: control characters dropped, whitespace collapsed."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lavis_lite.inference_utils import load_model_from_cfg

    root = tmp_path_factory.mktemp("webui")
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY_MODEL_YAML)
    model, image_processor, model_cfg = load_model_from_cfg(str(cfg))
    talkative(model)
    image = root / "red.png"
    arr = np.zeros((48, 48, 3), np.uint8)
    arr[8:40, 8:40] = (220, 30, 30)
    Image.fromarray(arr).save(image)
    return model, image_processor, str(image), model_cfg


def _snapshots(updates):
    """The callback yields the same list object each time; copy what the page saw at each step."""
    return [(text, [dict(m) for m in log], session) for text, log, session in updates]


def _expected_answer(model, image_processor, image, settings):
    from lavis_lite.chat import ChatSession

    session = ChatSession(model, image_processor, settings)
    session.add_image(image)
    turn = session.ask(QUESTION)
    pieces = list(turn)
    assert len(pieces) >= 2, "the answer was not streamed in pieces"
    assert "".join(pieces).rstrip() == turn.answer
    return turn.answer


def test_respond_streams_growing_answer_and_keeps_history(tiny):
    from lavis_lite.inference_utils import GenerationSettings
    from lavis_lite.webui import WebChat

    model, image_processor, image, model_cfg = tiny
    settings = GenerationSettings(max_new_tokens=8, min_length=8)
    expected = _expected_answer(model, image_processor, image, settings)
    web = WebChat(model, image_processor, settings)
    updates = _snapshots(web.respond(QUESTION, [image], [], None, 1.0, 0.9, 1, 8, False))
    # first update shows the question with an empty answer, later ones grow the answer
    assert updates[0][1][-2] == {"role": "user", "content": QUESTION}
    assert updates[0][1][-1]["content"] == ""
    contents = [u[1][-1]["content"] for u in updates]
    assert len(contents) >= 3, "answer did not arrive in several streamed pieces"
    assert all(b.startswith(a.rstrip()) for a, b in zip(contents, contents[1:]))  # final one is stripped
    assert contents[-1] == expected
    session = updates[-1][2]
    assert [t["from"] for t in session.history] == ["human", "gpt"]
    assert session.image_paths == [image]

    # an unreadable upload is reported on the page, the question is still answered
    bad = os.path.join(os.path.dirname(image), "broken.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG not really")
    updates = _snapshots(web.respond("and now?", [image, bad], updates[-1][1], session, 1.0, 0.9, 1, 8, False))
    log = updates[-1][1]
    assert any("broken.png" in m["content"] and m["content"].startswith("error:") for m in log)
    assert len(updates[-1][2].history) == 4
    updates = _snapshots(web.respond("once more", [image, bad], log, session, 1.0, 0.9, 1, 8, False))
    assert sum("broken.png" in m["content"] for m in updates[-1][1]) == 1  # reported once only
    assert session.image_paths == [image]

    # bad slider value (num_beams 0) -> message, no generation
    updates = _snapshots(web.respond("x", [image], [], None, 1.0, 0.9, 0, 8, False))
    assert updates[-1][1][-1]["content"].startswith("error: num_beams=0")


def test_webui_binds_localhost_by_default():
    from lavis_lite.webui import build_parser

    args = build_parser().parse_args(["--cfg-path", "x.yaml"])
    assert args.host == "127.0.0.1" and args.port == 7860


def _start_webui(folder, port, settings):
    """``python -m lavis_lite.webui`` as a user starts it; returns the process once /config answers."""
    import json
    import subprocess
    import sys
    import time
    import urllib.request

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               PYTHONUNBUFFERED="1")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    conf = [f"{k}={v}" for k, v in settings.as_kwargs().items()]
    proc = subprocess.Popen([sys.executable, "-m", "lavis_lite.webui", "--cfg-path", str(folder),
                             "--port", str(port), "--conf", *conf],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as resp:
                return proc, json.loads(resp.read())
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"web demo did not come up: {proc.stdout.read()[-3000:]}")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="Chromium / chromedriver not installed (run run_scripts/install_browser.sh)")
def test_webui_process_in_headless_chromium(tiny, tmp_path):
    """Upload an image, ask, wait for the streamed answer in a real browser, clear."""
    pytest.importorskip("gradio")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from lavis_lite.inference_utils import GenerationSettings
    from lavis_lite.tools.export import export_model

    model, image_processor, image, model_cfg = tiny
    settings = GenerationSettings(max_new_tokens=6, min_length=6)
    expected = _norm(_expected_answer(model, image_processor, image, settings))
    assert expected, "tiny model produced an empty answer; the browser check would be vacuous"
    folder = tmp_path / "export"
    export_model(model, model_cfg, str(folder))  # the server process gets these weights

    port = _free_port()
    proc, config = _start_webui(folder, port, settings)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    driver = None
    try:
        assert config.get("title") == "lavis_lite chat"
        ids = {c.get("props", {}).get("elem_id") for c in config.get("components", [])}
        assert {"images", "chatbot", "question", "send", "temperature", "top_p", "num_beams",
                "max_new_tokens", "clear"} <= ids
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 90)
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#images input[type=file]"))
        upload.send_keys(image)
        # the file list shows the name once the upload finished (split over elements: "red" ".png")
        wait.until(lambda d: "red.png" in "".join(d.find_element(By.ID, "images").text.split()))
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#question textarea"))
        box.send_keys(QUESTION)
        box.send_keys(Keys.ENTER)
        chat = lambda d: _norm(d.find_element(By.ID, "chatbot").text)  # noqa: E731
        wait.until(lambda d: QUESTION in chat(d) and expected in chat(d))
        assert chat(driver).index(QUESTION) < chat(driver).index(expected)
        # the textbox is emptied for the next question
        assert driver.find_element(By.CSS_SELECTOR, "#question textarea").get_attribute("value") == ""
        driver.find_element(By.CSS_SELECTOR, "#clear").click()
        wait.until(lambda d: QUESTION not in chat(d))
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(timeout=30)
