"""One worker thread owns the model: it answers queued requests, several at once when they arrive together.

Non-streaming requests with the same generation settings that are waiting when the worker is free (or
arrive within ``batch_wait_s``) share one ``model.generate`` call, up to ``max_batch_size``. A streaming
request is generated alone (transformers streams one sequence), text pieces handed to the caller as
they are decoded; a client that goes away, or a stop sequence, ends its generation at the next token.
All tokenizer and model use happens on this thread (fast tokenizers are not safe to share across threads).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time

import torch

from lavis_lite.chat import StreamingReply
from lavis_lite.models.chatml import ConversationError
from lavis_lite.serve.errors import bad_request
from lavis_lite.serve.protocol import ChatRequest, cut_at_stop

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Answer:
    text: str
    finish_reason: str    # "stop" | "length"
    usage: dict


class Job:
    def __init__(self, request: ChatRequest, images: torch.Tensor | None, on_piece=None):
        self.request, self.images, self.on_piece = request, images, on_piece
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.cancelled = threading.Event()  # the streaming client went away
        self.accepted: concurrent.futures.Future = concurrent.futures.Future()  # the conversation is valid
        self.prompt_tokens = 0

    @property
    def n_images(self) -> int:
        return 0 if self.images is None else int(self.images.shape[0])


class Engine:
    def __init__(self, model, image_processor, max_batch_size: int = 8, batch_wait_s: float = 0.01):
        self.model, self.image_processor = model, image_processor
        self.max_batch_size, self.batch_wait_s = max(int(max_batch_size), 1), float(batch_wait_s)
        self._queue: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self.batch_sizes: list[int] = []  # requests answered by each generate call (reported by /v1/stats)
        self._thread = threading.Thread(target=self._run, name="lavis-lite-serve", daemon=True)
        self._thread.start()

    def tensors(self, images: list) -> torch.Tensor | None:
        if not images:
            return None
        return torch.stack([self.image_processor(img) for img in images])

    def submit(self, job: Job) -> concurrent.futures.Future:
        with self._cv:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._queue.append(job)
            self._cv.notify()
        return job.future

    def close(self):
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=30)

    # ---- worker --------------------------------------------------------------------------
    def _next(self, wait_until=None, like: Job | None = None) -> Job | None:
        """The next job (``like``: a non-streaming one with the same settings), waiting until ``wait_until``."""
        with self._cv:
            while True:
                for job in self._queue:
                    if like is None or (not job.request.stream and job.request.batch_key == like.request.batch_key):
                        self._queue.remove(job)
                        return job
                if self._closed:
                    return None
                left = None if wait_until is None else wait_until - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cv.wait(left)

    def _run(self):
        while True:
            first = self._next()
            if first is None:
                return
            if not self._prepare(first):
                continue
            if first.request.stream:
                self._answer_stream(first)
                continue
            batch, deadline = [first], time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch_size:
                mate = self._next(deadline, like=first)
                if mate is None:
                    break
                if self._prepare(mate):
                    batch.append(mate)
            self._answer_batch(batch)

    def _prepare(self, job: Job) -> bool:
        """Lay the conversation out with the chat template (checks roles; counts prompt tokens)."""
        try:
            laid = self.model.preprocess([job.request.conversation], [job.n_images], add_generation_prompt=True,
                                         padding_side="left")
            job.prompt_tokens = int(laid.attention_mask.sum())
            job.accepted.set_result(True)
            return True
        except ConversationError as err:
            error = bad_request(str(err), "messages")
        except Exception as err:  # noqa: BLE001
            error = err
        job.accepted.set_exception(error)
        job.future.set_exception(error)
        return False

    def _finish(self, job: Job, text: str, stopped: bool) -> Answer:
        """Completion tokens by encoding the returned text again (the model returns text, not token ids)."""
        done = len(self.model.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
        usage = {"prompt_tokens": job.prompt_tokens, "completion_tokens": done,
                 "total_tokens": job.prompt_tokens + done}
        limit = job.request.gen_kwargs["max_new_tokens"]
        return Answer(text, "stop" if stopped or done < limit else "length", usage)

    def _answer_batch(self, batch: list[Job]):
        try:
            images = [j.images for j in batch if j.images is not None]
            samples = {"image": torch.cat(images).to(self.model.device) if images else None,
                       "n_images": [j.n_images for j in batch],
                       "conversations": [j.request.conversation for j in batch]}
            answers = self.model.generate(samples, **batch[0].request.gen_kwargs)
            self.batch_sizes.append(len(batch))
            results = [self._finish(j, *cut_at_stop(a, j.request.stop)) for j, a in zip(batch, answers)]
        except Exception as err:  # noqa: BLE001 — every waiting request learns why
            logger.exception("generation failed for a batch of %d", len(batch))
            for job in batch:
                job.future.set_exception(err)
            return
        for job, result in zip(batch, results):
            job.future.set_result(result)

    def _answer_stream(self, job: Job):
        request = job.request
        conversation = request.conversation
        images = None if job.images is None else job.images.to(self.model.device)
        # model.chat takes the earlier turns as history and the last question separately
        reply = StreamingReply(self.model, images, conversation[-1]["value"], conversation[:-1], request.gen_kwargs)
        hold = max((len(s) for s in request.stop), default=1) - 1  # text that may begin a stop sequence
        sent, pending, stopped = "", "", False
        try:
            pieces = iter(reply)
            for piece in pieces:
                pending += piece
                text, stopped = cut_at_stop(pending, request.stop)
                cut = len(text) if stopped else max(len(pending) - hold, 0)
                out, pending = pending[:cut], pending[cut:]
                if out:
                    sent += out
                    job.on_piece(out)
                if stopped or job.cancelled.is_set():
                    pieces.close()  # sets the stop signal and waits for the generation thread
                    break
            if pending and not stopped and not job.cancelled.is_set():
                sent += pending
                job.on_piece(pending)
            self.batch_sizes.append(1)
            job.future.set_result(self._finish(job, sent, stopped))
        except Exception as err:  # noqa: BLE001
            logger.exception("streaming generation failed")
            job.future.set_exception(err)
