"""Multi-turn chat about one or several images in the terminal, answers streamed token by token.

    python -m lavis_lite.chat --cfg-path <model yaml | run yaml | export folder> \
        [--checkpoint PATH] [--device cpu|cuda] [--options key=value ...]

Commands: ``:image PATH`` (add an image; several allowed), ``:clear`` (forget the
conversation; images stay and are shown again with the next question), ``:clear all``
(also drop the images), ``:history``, ``:conf key=value`` (generation settings; ``:conf``
alone lists them), ``:help``, ``:quit``. Anything else is a question.
"""
from __future__ import annotations

import argparse
import sys
import threading
from typing import Callable, Iterator, TextIO

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from lavis_lite.inference_utils import GenerationSettings, add_model_arguments, ImageLoadError, load_image_tensor
from lavis_lite.processors.chat_processor import place_new_images


HELP_TEXT = """Commands:
  :image PATH      add an image (several allowed; each is shown with the next question)
  :clear           forget the conversation (images stay)   :clear all  also drop the images
  :history         show the conversation so far
  :conf key=value  change a generation setting (:conf alone lists them)
  :help            this text
  :quit            leave (Ctrl-D works too)
Anything else is a question about the images."""


# ---------------------------------------------------------------------------------------
# Streaming one answer
# ---------------------------------------------------------------------------------------
class StreamingReply:
    """Runs ``model.chat`` in a worker thread and yields text pieces as they are generated.

    After iteration ``answer`` and ``history`` hold the model's results (``answer`` equals the
    joined pieces up to trailing whitespace, which the model strips). Beam search cannot
    stream in transformers, so with ``num_beams > 1`` the whole answer comes as one piece.
    """

    def __init__(self, model, images: torch.Tensor | None, question: str, history: list[dict],
                 gen_kwargs: dict, stream_timeout: float = 600.0):
        self.model, self.images, self.question = model, images, question
        self.history_in, self.gen_kwargs = history, dict(gen_kwargs)
        self.stream_timeout = stream_timeout
        self.answer: str | None = None
        self.history: list[dict] | None = None
        self._error: BaseException | None = None
        self.interrupted = False  # the reader stopped before the answer was complete

    def __iter__(self) -> Iterator[str]:
        if int(self.gen_kwargs.get("num_beams", 1)) > 1:
            self.answer, self.history = self.model.chat(self.images, self.question, self.history_in,
                                                        **self.gen_kwargs)
            yield self.answer
            return

        streamer = TextIteratorStreamer(self.model.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                        timeout=self.stream_timeout)
        stop = StopSignal()

        def work():
            try:
                self.answer, self.history = self.model.chat(
                    self.images, self.question, self.history_in, streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([stop]), **self.gen_kwargs)
            except BaseException as err:  # re-raised in the caller's thread below
                self._error = err
                streamer.end()  # unblock the reader

        worker = threading.Thread(target=work, name="lavis-lite-generate", daemon=True)
        worker.start()
        started = finished = False
        try:
            for piece in streamer:
                if not started:  # the model strips its answer; so does the stream, at the start
                    piece = piece.lstrip()
                    started = bool(piece)
                if piece:
                    yield piece
            finished = True
        finally:  # also when the reader gives up early (Ctrl-C, closed browser tab): stop generating
            if not finished:
                stop.event.set()
                self.interrupted = True
            worker.join()
        if self._error is not None:
            raise self._error


class StopSignal(StoppingCriteria):
    """Ends generation at the next token once ``event`` is set (from the reading thread)."""

    def __init__(self):
        self.event = threading.Event()

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


# ---------------------------------------------------------------------------------------
# A conversation: images, history, what the next question must carry
# ---------------------------------------------------------------------------------------
class ChatSession:
    """Images and history of one conversation.

    Each image added is placed (as ``<ImageHere>``) at the start of the next question, so
    the model sees images in the conversation where the user introduced them.
    """

    def __init__(self, model, image_processor, settings: GenerationSettings | None = None):
        self.model, self.image_processor = model, image_processor
        self.settings = settings or GenerationSettings()
        self.image_paths: list[str] = []
        self.images: list[torch.Tensor] = []
        self.history: list[dict] = []
        self.n_unplaced = 0  # images not yet referenced by a human turn

    def add_image(self, path: str) -> None:
        tensor = load_image_tensor(path, self.image_processor)  # raises ImageLoadError
        self.image_paths.append(path)
        self.images.append(tensor)
        self.n_unplaced += 1

    def clear(self, drop_images: bool = False) -> None:
        self.history = []
        if drop_images:
            self.image_paths, self.images = [], []
        self.n_unplaced = len(self.images)  # shown again with the next question

    def _image_batch(self) -> torch.Tensor | None:
        if not self.images:
            return None
        return torch.stack(self.images).to(self.model.device)

    def ask(self, question: str) -> "ChatTurn":
        """Start answering; iterate the turn for text pieces. History updates when it ends."""
        # the chat processor decides where unplaced images go (the same rule as model.chat and training)
        text = place_new_images(self.history, question, len(self.images))
        reply = StreamingReply(self.model, self._image_batch(), text, list(self.history),
                               self.settings.as_kwargs())
        return ChatTurn(self, reply)

    def format_history(self) -> str:
        if not self.history:
            return "(no conversation yet)"
        lines = []
        for turn in self.history:
            who = "you" if turn.get("from") == "human" else "model"
            lines.append(f"[{who}] {turn.get('value', '')}")
        return "\n".join(lines)


class ChatTurn:
    """One question being answered: iterate for text pieces; the session's history is
    updated only when the answer is complete (a failed generation leaves it unchanged)."""

    def __init__(self, session: ChatSession, reply: StreamingReply):
        self.session, self.reply = session, reply

    def __iter__(self) -> Iterator[str]:
        yield from self.reply
        self.session.history = list(self.reply.history or [])
        self.session.n_unplaced = 0

    @property
    def answer(self) -> str | None:
        return self.reply.answer


# ---------------------------------------------------------------------------------------
# Commands and the read-eval-print loop
# ---------------------------------------------------------------------------------------
def parse_command(line: str) -> tuple[str, str]:
    """``":image a.png"`` -> ``("image", "a.png")``; a question -> ``("ask", text)``; blank -> ("", "")."""
    line = line.strip()
    if not line:
        return "", ""
    if not line.startswith(":"):
        return "ask", line
    name, _, arg = line[1:].partition(" ")
    return name.strip().lower(), arg.strip()


def run_repl(session: ChatSession, read_line: Callable[[], str | None], out: TextIO) -> None:
    """Read commands and questions until ``:quit`` or end of input."""

    def say(text: str = "", end: str = "\n") -> None:
        out.write(text + end)
        out.flush()

    say(HELP_TEXT)
    while True:
        line = read_line()
        if line is None:
            say()
            break
        cmd, arg = parse_command(line)
        if cmd == "":
            continue
        if cmd in ("quit", "exit", "q"):
            break
        if cmd == "help":
            say(HELP_TEXT)
        elif cmd == "image":
            if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "'\"":
                arg = arg[1:-1]  # a quoted path (drag-and-drop into a terminal quotes spaces)
            if not arg:
                say("usage: :image PATH")
                continue
            try:
                session.add_image(arg)
                say(f"added image {len(session.images)}: {arg}")
            except ImageLoadError as err:
                say(f"error: {err}")
        elif cmd == "clear":
            drop = arg.lower() == "all"
            session.clear(drop_images=drop)
            say("cleared conversation and images" if drop else
                f"cleared conversation ({len(session.images)} image(s) kept)")
        elif cmd == "history":
            say(session.format_history())
        elif cmd == "conf":
            if not arg:
                say(" ".join(f"{k}={v}" for k, v in session.settings.as_kwargs().items()))
                continue
            try:
                session.settings.update_from_strings(arg.split())
                say(" ".join(f"{k}={v}" for k, v in session.settings.as_kwargs().items()))
            except ValueError as err:
                say(f"error: {err}")
        elif cmd == "ask":
            out.write("model: ")
            out.flush()
            try:
                for piece in session.ask(arg):
                    out.write(piece)
                    out.flush()
                say()
            except KeyboardInterrupt:  # Ctrl-C stops this answer (not kept in the history), not the session
                say(" [stopped]")
            except Exception as err:  # a failed generation should not end the session
                say(f"\nerror: generation failed: {type(err).__name__}: {err}")
        else:
            say(f"unknown command ':{cmd}' (:help lists them)")


def stdin_reader(stream: TextIO, out: TextIO, prompt: str = "you: ") -> Callable[[], str | None]:
    """A line reader: ``input()`` with line editing on a terminal, plain readline otherwise."""
    interactive = stream.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (arrow keys and history for input())
        except ImportError:
            pass

    def read() -> str | None:
        if interactive:
            try:
                return input(prompt)
            except EOFError:
                return None
            except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh prompt, as in Python's REPL
                out.write("\n")
                return ""
        out.write(prompt)
        out.flush()
        line = stream.readline()
        return None if line == "" else line

    return read


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lavis_lite.chat", description=__doc__.split("\n")[0])
    parser.add_argument("--image", action="append", default=[], help="image(s) to start with")
    return add_model_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lavis_lite.inference_utils import load_model_from_cfg, settings_from_args

    settings = settings_from_args(args)
    if settings is None:
        return 2
    print("loading model ...", flush=True)
    model, image_processor, _ = load_model_from_cfg(args.cfg_path, args.checkpoint, args.device, args.options)
    session = ChatSession(model, image_processor, settings)
    for path in args.image:
        try:
            session.add_image(path)
            print(f"added image {len(session.images)}: {path}")
        except ImageLoadError as err:
            print(f"error: {err}")
    run_repl(session, stdin_reader(sys.stdin, sys.stdout), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
