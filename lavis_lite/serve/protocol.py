"""The ``/v1/chat/completions`` request -> what the model needs, and the response objects.

Supported: ``model``, ``messages`` (``user`` / ``assistant`` turns; ``user`` content is a string or a
list of ``text`` and ``image_url`` parts), ``max_tokens`` / ``max_completion_tokens``, ``temperature``
(0: greedy; > 0: sampling), ``top_p`` (sampling), ``stop`` (a string or up to 4), ``stream``,
``stream_options.include_usage``, ``n`` (1 only), ``user``. Anything else is a 400 naming it, so a
client never believes a parameter took effect when it did not."""
from __future__ import annotations

import dataclasses
import time
import uuid

from lavis_lite.models.chatml import IMAGE_MARK
from lavis_lite.serve.errors import ApiError, bad_request
from lavis_lite.serve.images import decode_image_url

KNOWN_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
                "stream", "stream_options", "n", "user"}


@dataclasses.dataclass
class ServeLimits:
    max_images: int = 4
    max_tokens: int = 512
    max_pixels: int = 4096 * 4096
    allowed_image_dir: str | None = None


@dataclasses.dataclass
class ChatRequest:
    conversation: list[dict]          # [{"from": "human"|"gpt", "value": str}], last one human
    images: list                      # PIL images in the order of their <ImageHere> marks
    gen_kwargs: dict                  # for model.generate
    stop: list[str]
    stream: bool = False
    include_usage: bool = False

    @property
    def batch_key(self) -> tuple:
        """Requests with equal keys can share one ``generate`` call."""
        return tuple(sorted(self.gen_kwargs.items()))


def parse_chat_request(body, model_name: str, defaults: dict, limits: ServeLimits) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise bad_request(f"unsupported parameter(s) {unknown}; supported: {sorted(KNOWN_FIELDS)}", unknown[0],
                          "unsupported_parameter")
    if body.get("model") != model_name:
        raise ApiError(404, f"The model {body.get('model')!r} does not exist; this server serves {model_name!r}",
                       "model", "model_not_found")
    if body.get("n", 1) != 1:
        raise bad_request("only n=1 is supported", "n", "unsupported_value")
    conversation, images = _conversation(body.get("messages"), limits)
    gen = dict(defaults)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise bad_request(f"{param} must be a positive integer", param)
        gen["max_new_tokens"] = max_tokens
    if gen["max_new_tokens"] > limits.max_tokens:
        raise bad_request(f"max_tokens={gen['max_new_tokens']} is more than this server allows "
                          f"({limits.max_tokens})", "max_tokens")
    temperature, top_p = body.get("temperature"), body.get("top_p")
    if temperature is not None:
        _number(temperature, "temperature", 0.0, 2.0)
        gen["do_sample"] = temperature > 0
        if temperature > 0:
            gen["temperature"] = float(temperature)
    if top_p is not None:
        _number(top_p, "top_p", 0.0, 1.0)
        if top_p <= 0:
            raise bad_request("top_p must be > 0", "top_p")
        gen["top_p"] = float(top_p)
        if temperature is None:
            gen["do_sample"] = True
    if not gen.get("do_sample"):
        gen.pop("temperature", None)
        gen.pop("top_p", None)  # greedy decoding ignores them: keep batch keys equal
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise bad_request("stop must be a non-empty string or a list of up to 4 of them", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise bad_request("stream_options supports only include_usage", "stream_options")
    return ChatRequest(conversation, images, gen, stop, stream, bool(options.get("include_usage", False)))


def _number(value, param, low, high):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise bad_request(f"{param} must be a number in [{low}, {high}]", param)


def _conversation(messages, limits: ServeLimits) -> tuple[list[dict], list]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    conversation, images = [], []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object", where)
        role = message.get("role")
        if role == "system":
            raise bad_request("system messages are not supported: the model's system prompt is fixed by its "
                              "chat template", f"{where}.role", "unsupported_value")
        if role not in ("user", "assistant"):
            raise bad_request(f"{where}.role must be 'user' or 'assistant', got {role!r}", f"{where}.role")
        text = _content(message.get("content"), role, where, images, limits)
        conversation.append({"from": "human" if role == "user" else "gpt", "value": text})
    if conversation[-1]["from"] != "human":
        raise bad_request("the last message must be a user message", f"messages[{len(messages) - 1}].role")
    return conversation, images


def _content(content, role, where, images, limits) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or a list of parts", f"{where}.content")
    pieces = []
    for j, part in enumerate(content):
        param = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        elif kind == "image_url":
            if role != "user":
                raise bad_request("images can only be sent in user messages", param)
            if len(images) >= limits.max_images:
                raise bad_request(f"too many images: this server accepts at most {limits.max_images} per request",
                                  param, "too_many_images")
            url = part.get("image_url", {})
            url = url.get("url") if isinstance(url, dict) else url
            images.append(decode_image_url(url, f"{param}.image_url", limits.allowed_image_dir, limits.max_pixels))
            pieces.append(IMAGE_MARK)
        else:
            raise bad_request(f"{param} must be a text or image_url part", param)
    text = ""
    for piece in pieces:  # an image mark on its own line before the text it goes with, as in model.chat
        if not text:
            text = piece
        elif piece == IMAGE_MARK or text.endswith(IMAGE_MARK):
            text += piece if (piece == IMAGE_MARK and text.endswith(IMAGE_MARK)) else "\n" + piece
        else:
            text += " " + piece
    return text


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """``text`` up to the first stop sequence, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def completion(cid: str, model: str, text: str, finish: str, usage: dict) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                         "logprobs": None}], "usage": usage}


def chunk(cid: str, model: str, delta: dict, finish: str | None = None, usage: dict | None = None) -> dict:
    out = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if delta is not None
           else []}
    if usage is not None:
        out["usage"] = usage
    return out
