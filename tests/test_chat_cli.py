"""Chat CLI: command parsing, settings, the REPL in-process (streamed pieces), and the real
``python -m lavis_lite.chat`` process driven through stdin."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lavis_lite.chat import ChatSession, parse_command, run_repl, stdin_reader
from lavis_lite.inference_utils import GenerationSettings, load_model_from_cfg
from tiny_helpers import TINY_MODEL_YAML, talkative

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RecordingOut(io.StringIO):
    """Remembers every write, so the test can see an answer arrive in pieces."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY_MODEL_YAML)
    model, image_processor, model_cfg = load_model_from_cfg(str(cfg))
    talkative(model)
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        arr = np.full((40, 40, 3), 240, np.uint8)
        arr[10:30, 10:30] = colour
        paths.append(str(root / f"img{i}.png"))
        Image.fromarray(arr).save(paths[-1])
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return root, model, image_processor, model_cfg, paths


def _settings():
    return GenerationSettings(max_new_tokens=8, min_length=8)


def _reference_answer(model, image_processor, paths, question, settings, history=None):
    """model.chat without streaming; images are placed before the first question."""
    images = torch.stack([image_processor(Image.open(p).convert("RGB")) for p in paths])
    marks = "<ImageHere>" * len(paths) + "\n" if history is None else ""
    return model.chat(images, marks + question, history, **settings.as_kwargs())


def test_parse_command():
    assert parse_command("  :image  /a b.png ") == ("image", "/a b.png")
    assert parse_command(":CLEAR") == ("clear", "")
    assert parse_command(":conf top_p=0.5 num_beams=2") == ("conf", "top_p=0.5 num_beams=2")
    assert parse_command("what is this?") == ("ask", "what is this?")
    assert parse_command("   ") == ("", "")


def test_generation_settings_parse_and_validate():
    s = GenerationSettings()
    s.update_from_strings(["max_new_tokens=12", "top_p=0.5", "do_sample=true", "num_beams=3.0"])
    assert (s.max_new_tokens, s.top_p, s.do_sample, s.num_beams) == (12, 0.5, True, 3)
    for bad, msg in [("top_p=1.5", "out of range"), ("num_beams=0", "out of range"),
                     ("max_new_tokens=2.5", "expected an integer"), ("do_sample=maybe", "true/false"),
                     ("temperature=0", "must be > 0"), ("beams=2", "Unknown generation setting"),
                     ("top_p", "Expected key=value")]:
        with pytest.raises(ValueError, match=msg):
            GenerationSettings().update_from_strings([bad])


def test_repl_streams_answers_and_handles_commands(tiny):
    root, model, image_processor, _, paths = tiny
    session = ChatSession(model, image_processor, _settings())
    question, follow_up = "What colour is the square?", "And its shape?"
    script = [f":image {root / 'missing.png'}", f":image {root / 'broken.jpg'}", ":image", f":image '{paths[0]}'",
              question, follow_up, ":history", ":conf max_new_tokens=4 bogus", ":conf top_p=2",
              ":conf num_beams=2 max_new_tokens=5 min_length=5", ":nonsense", ":clear", ":history", question, ":quit",
              "never read"]
    out = RecordingOut()
    run_repl(session, stdin_reader(io.StringIO("\n".join(script) + "\n"), out), out)
    text = out.getvalue()
    assert "never read" not in text and "you: " in text

    assert "error: Image" in text and "missing.png' does not exist" in text
    assert "broken.jpg' is not a readable image" in text
    assert f"added image 1: {paths[0]}" in text and len(session.images) == 1  # quotes stripped
    assert "usage: :image PATH" in text

    want1, hist1 = _reference_answer(model, image_processor, paths[:1], question, _settings())
    want2, _ = _reference_answer(model, image_processor, paths[:1], follow_up, _settings(), hist1)
    assert want1 and want2 != want1
    # the first answer arrived as several writes between "model: " and its newline
    start = out.writes.index("model: ")
    end = out.writes.index("\n", start)
    pieces = out.writes[start + 1:end]
    assert len(pieces) >= 2 and "".join(pieces).rstrip() == want1
    assert f"model: {want2}" in text
    assert f"[you] <ImageHere>\n{question}\n[model] {want1}\n[you] {follow_up}\n[model] {want2}" in text

    assert "error: Unknown generation setting 'bogus'" not in text  # "bogus" has no '='
    assert "error: Expected key=value, got 'bogus'" in text
    assert "error: top_p=2.0 is out of range" in text
    assert "max_new_tokens=4" not in text  # a bad :conf line changes nothing
    assert "unknown command ':nonsense'" in text
    assert "cleared conversation (1 image(s) kept)" in text
    assert "(no conversation yet)" in text
    # after :clear the kept image is shown again with the next question; beam search: one piece
    assert session.settings.num_beams == 2 and session.settings.max_new_tokens == 5
    beam_settings = GenerationSettings(max_new_tokens=5, num_beams=2, min_length=5)
    want3, _ = _reference_answer(model, image_processor, paths[:1], question, beam_settings)
    assert session.history[0]["value"] == f"<ImageHere>\n{question}"
    assert session.history[-1]["value"] == want3
    assert f"model: {want3}\n" in text


def test_two_images_and_failed_generation_keep_the_session(tiny, monkeypatch):
    _, model, image_processor, _, paths = tiny
    session = ChatSession(model, image_processor, _settings())
    for p in paths:
        session.add_image(p)
    answer = "".join(session.ask("Compare the two images.")).rstrip()
    want, _ = _reference_answer(model, image_processor, paths, "Compare the two images.", _settings())
    assert answer == want
    assert session.history[0]["value"].startswith("<ImageHere><ImageHere>\n")

    def broken_chat(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(model, "chat", broken_chat)
    lines = iter(["Again?", ":history", ":quit"])
    out = io.StringIO()
    run_repl(session, lambda: next(lines), out)
    assert "error: generation failed: RuntimeError: out of memory (simulated)" in out.getvalue()
    assert len(session.history) == 2  # the failed turn left no trace
    session.clear(drop_images=True)
    assert session.images == [] and session.n_unplaced == 0


def test_stopping_early_ends_generation_and_leaves_history(tiny):
    """Ctrl-C in the CLI (or a closed browser tab) stops the worker thread's generation."""
    _, model, image_processor, _, paths = tiny
    long = GenerationSettings(max_new_tokens=300, min_length=300)
    session = ChatSession(model, image_processor, long)
    session.add_image(paths[0])
    turn = session.ask("Describe it at length.")
    pieces = iter(turn)
    assert next(pieces)
    pieces.close()  # the reader gives up after the first piece
    assert turn.reply.interrupted
    generated = len(model.tokenizer(turn.answer).input_ids)
    assert 0 < generated < 100, f"generation ran on after the reader stopped ({generated} tokens)"
    assert session.history == [] and session.n_unplaced == 1

    class CtrlCOnFirstPiece(io.StringIO):
        armed = False

        def write(self, text):
            if self.armed:
                self.armed = False
                raise KeyboardInterrupt
            self.armed = text == "model: "
            return super().write(text)

    out = CtrlCOnFirstPiece()
    lines = iter(["Describe it at length.", ":history", ":quit"])
    run_repl(session, lambda: next(lines), out)
    assert "model:  [stopped]\n" in out.getvalue()
    assert "(no conversation yet)" in out.getvalue()  # the REPL went on; nothing kept


class PtySession:
    """A child process on a pseudo-terminal, as a user's shell would run it."""

    def __init__(self, argv, env, cwd):
        import pty

        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
                                     close_fds=True)
        os.close(slave)
        self.buf = b""

    def read_until(self, marker: bytes, count: int, timeout: float) -> None:
        """Read until ``marker`` occurs ``count`` times in everything read so far."""
        import select
        import time

        deadline = time.monotonic() + timeout
        while self.buf.count(marker) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {marker!r} x{count}; got:\n{self.text()[-3000:]}")
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"process ended early:\n{self.text()[-3000:]}")
                self.buf += chunk

    def send(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def text(self) -> str:
        return self.buf.decode("utf-8", "replace").replace("\r\n", "\n")

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=60)
        finally:
            os.close(self.master)


@pytest.mark.slow
def test_chat_process_on_a_terminal(tiny, tmp_path):
    """``python -m lavis_lite.chat`` on a pseudo-terminal (input() with line editing), typing each
    line after its prompt: image, bad path, question with streamed answer, :clear, :history."""
    from lavis_lite.tools.export import export_model

    _, model, image_processor, model_cfg, paths = tiny
    folder = tmp_path / "tiny_export"
    export_model(model, model_cfg, str(folder))  # so the child process has the same weights
    question = "What is in the picture?"
    want, _ = _reference_answer(model, image_processor, paths[:1], question, _settings())
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TERM="dumb")
    session = PtySession([sys.executable, "-m", "lavis_lite.chat", "--cfg-path", str(folder),
                          "--conf", "max_new_tokens=8", "min_length=8"], env, REPO)
    try:
        lines = [":image /nonexistent/x.png", f":image {paths[0]}", question, ":clear", ":history", ":help"]
        for n, line in enumerate(lines, 1):
            session.read_until(b"you: ", n, timeout=240)
            session.send(line)
        session.read_until(b"you: ", len(lines) + 1, timeout=120)
        session.send(":quit")
        assert session.close() == 0
    finally:
        if session.proc.poll() is None:
            session.proc.kill()
    out = session.text()
    assert "error: Image '/nonexistent/x.png' does not exist" in out
    assert f"added image 1: {paths[0]}" in out
    assert f"model: {want}\n" in out
    assert "cleared conversation (1 image(s) kept)" in out and "(no conversation yet)" in out
    assert out.count(":image PATH") == 2  # banner + :help
    assert "no image loaded: chatting with text only" in out  # started without --image: said so
