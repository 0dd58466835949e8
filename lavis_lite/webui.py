"""Gradio web demo: upload images, chat about them, answers streamed as they are generated.

    python -m lavis_lite.webui --cfg-path <model yaml | run yaml | export folder> \
        [--checkpoint PATH] [--device cpu] [--host 127.0.0.1 --port 7860]

Binds 127.0.0.1 unless ``--host`` says otherwise; Gradio analytics and share links are off,
so the page works on a closed network.
"""
from __future__ import annotations

import argparse
import os
import sys

from lavis_lite.chat import ChatSession

NO_IMAGE_NOTE = "No image loaded: this answer uses your text only. Upload an image to ask about it."
from lavis_lite.inference_utils import GenerationSettings, add_model_arguments, ImageLoadError

# Gradio must not phone home (closed networks, tests); set before gradio is imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SLIDERS = {  # setting -> (min, max, step, label)
    "temperature": (0.1, 2.0, 0.05, "temperature (sampling)"),
    "top_p": (0.05, 1.0, 0.05, "top_p (sampling)"),
    "num_beams": (1, 5, 1, "num_beams"),
    "max_new_tokens": (1, 512, 1, "max_new_tokens"),
}


def _paths(files) -> list[str]:
    """Gradio's File component gives str paths or objects with ``.name``, one or a list."""
    if files is None:
        return []
    files = files if isinstance(files, (list, tuple)) else [files]
    return [f if isinstance(f, str) else getattr(f, "path", None) or f.name for f in files]


class WebSession(ChatSession):
    """A browser session's conversation, plus the uploads already reported as unreadable."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rejected_paths: set[str] = set()

    def clear(self, drop_images: bool = False) -> None:
        super().clear(drop_images)
        if drop_images:
            self.rejected_paths = set()


class WebChat:
    """The callbacks behind the page; one ChatSession per browser session (kept in gr.State)."""

    def __init__(self, model, image_processor, defaults: GenerationSettings | None = None):
        self.model, self.image_processor = model, image_processor
        self.defaults = defaults or GenerationSettings()

    def new_session(self) -> WebSession:
        return WebSession(self.model, self.image_processor, GenerationSettings(**self.defaults.as_kwargs()))

    def sync_images(self, session: WebSession, files) -> list[str]:
        """Add uploaded files the session has not seen; returns messages for unreadable ones."""
        problems = []
        for path in _paths(files):
            if path in session.image_paths or path in session.rejected_paths:
                continue
            try:
                session.add_image(path)
            except ImageLoadError as err:
                session.rejected_paths.add(path)
                problems.append(str(err))
        return problems

    def respond(self, question, files, chat_log, session, temperature, top_p, num_beams,
                max_new_tokens, do_sample):
        """Generator for the submit event: yields (textbox, chat log, session) as tokens arrive."""
        session = session or self.new_session()
        chat_log = list(chat_log or [])
        question = (question or "").strip()
        for problem in self.sync_images(session, files):
            chat_log.append({"role": "assistant", "content": f"error: {problem}"})
        if not question:
            yield "", chat_log, session
            return
        try:
            for key, value in (("temperature", temperature), ("top_p", top_p), ("num_beams", num_beams),
                               ("max_new_tokens", max_new_tokens), ("do_sample", do_sample)):
                session.settings.set(key, value)
        except ValueError as err:
            chat_log.append({"role": "assistant", "content": f"error: {err}"})
            yield question, chat_log, session
            return
        if not session.images and not getattr(session, "told_no_image", False):
            # text-only chat stays allowed; say so once, so nobody believes the model saw a picture
            chat_log.append({"role": "assistant", "content": NO_IMAGE_NOTE})
            session.told_no_image = True
        chat_log.append({"role": "user", "content": question})
        chat_log.append({"role": "assistant", "content": ""})
        yield "", chat_log, session
        try:
            turn = session.ask(question)
            for piece in turn:
                chat_log[-1] = {"role": "assistant", "content": chat_log[-1]["content"] + piece}
                yield "", chat_log, session
            if turn.answer != chat_log[-1]["content"]:  # the model's final text (stripped) wins
                chat_log[-1] = {"role": "assistant", "content": turn.answer}
                yield "", chat_log, session
        except Exception as err:  # show the failure on the page, keep the session usable
            chat_log[-1] = {"role": "assistant", "content": f"error: generation failed: {err}"}
            yield "", chat_log, session

    def clear(self, session):
        """Clear button: forget the conversation and the images."""
        if session is not None:
            session.clear(drop_images=True)
        return [], None, session, ""


def build_demo(model, image_processor, defaults: GenerationSettings | None = None, title: str = "lavis_lite chat"):
    import gradio as gr

    web = WebChat(model, image_processor, defaults)
    d = web.defaults
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"## {title}\nUpload one or more images, then ask about them.")
        session = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Images", file_count="multiple", file_types=["image"], elem_id="images")
                sliders = [gr.Slider(lo, hi, value=getattr(d, key), step=step, label=label, elem_id=key)
                           for key, (lo, hi, step, label) in SLIDERS.items()]
                do_sample = gr.Checkbox(value=d.do_sample, label="sample (else greedy)", elem_id="do_sample")
                clear = gr.Button("Clear", elem_id="clear")
            with gr.Column(scale=2):
                chat_log = gr.Chatbot(label="Chat", elem_id="chatbot", render_markdown=False, height=420)
                question = gr.Textbox(label="Question", placeholder="Ask about the images and press Enter",
                                      elem_id="question")
                send = gr.Button("Send", variant="primary", elem_id="send")
        inputs = [question, files, chat_log, session, *sliders, do_sample]
        outputs = [question, chat_log, session]
        question.submit(web.respond, inputs, outputs)
        send.click(web.respond, inputs, outputs)
        clear.click(web.clear, [session], [chat_log, files, session, question])
    return demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lavis_lite.webui", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: local only)")
    parser.add_argument("--port", type=int, default=7860)
    return add_model_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lavis_lite.inference_utils import load_model_from_cfg, settings_from_args

    defaults = settings_from_args(args)
    if defaults is None:
        return 2
    model, image_processor, _ = load_model_from_cfg(args.cfg_path, args.checkpoint, args.device, args.options)
    demo = build_demo(model, image_processor, defaults)
    print(f"serving on http://{args.host}:{args.port}", flush=True)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=False, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
