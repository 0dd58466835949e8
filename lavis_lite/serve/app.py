"""The FastAPI application: ``GET /v1/models``, ``POST /v1/chat/completions`` (JSON or server-sent events).

Every request passes the API key check (when a key is set) and the body size limit; every failure is an
OpenAI-style error JSON (400 bad request / image, 401 key, 404 model, 413 body too large, 500 model
error), never a dropped connection."""

import asyncio
import json
import logging
import secrets
import time

from lavis_lite.serve.engine import Engine, Job
from lavis_lite.serve.errors import ApiError, bad_request
from lavis_lite.serve.protocol import ServeLimits, chunk, completion, completion_id, parse_chat_request

logger = logging.getLogger(__name__)


def create_app(engine: "Engine", model_name: str, defaults: dict, limits: "ServeLimits | None" = None,
               api_key: str | None = None, max_body_bytes: int = 20 * 2 ** 20):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or ServeLimits()
    app = FastAPI(title="lavis_lite", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    def error_response(err: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, err: ApiError):
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, err):  # unknown route, wrong method
        return error_response(ApiError(err.status_code, str(err.detail), code="not_found"
                                       if err.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def _unexpected(request, err):
        logger.exception("unexpected error")
        return error_response(ApiError(500, f"internal error: {type(err).__name__}: {err}"))

    @app.middleware("http")
    async def _check_key(request: Request, call_next):
        if api_key is not None:
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(given.encode(), api_key.encode()):
                return error_response(ApiError(401, "Incorrect API key provided" if given else
                                               "Missing API key (Authorization: Bearer <key>)",
                                               code="invalid_api_key"))
        return await call_next(request)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "lavis_lite"}]}

    @app.get("/v1/models/{name}")
    async def model(name: str):
        if name != model_name:
            raise ApiError(404, f"The model {name!r} does not exist", "model", "model_not_found")
        return {"id": model_name, "object": "model", "created": created, "owned_by": "lavis_lite"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _read_body(request, max_body_bytes)
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise bad_request(f"the request body is not valid JSON: {err}") from None
        # Images are decoded off the event loop (they may be large).
        req = await asyncio.to_thread(parse_chat_request, payload, model_name, defaults, limits)
        images = await asyncio.to_thread(engine.tensors, req.images)
        cid = completion_id()
        if req.stream:
            loop = asyncio.get_running_loop()
            pieces: asyncio.Queue = asyncio.Queue()
            job = Job(req, images, on_piece=lambda p: loop.call_soon_threadsafe(pieces.put_nowait, p))
            engine.submit(job).add_done_callback(lambda _: loop.call_soon_threadsafe(pieces.put_nowait, None))
            await asyncio.wrap_future(job.accepted)  # a bad conversation is a 400, before the stream starts
            return StreamingResponse(_stream(job, pieces, cid, model_name), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        answer = await asyncio.wrap_future(engine.submit(Job(req, images)))
        return completion(cid, model_name, answer.text, answer.finish_reason, answer.usage)

    @app.get("/v1/stats")
    async def stats():
        sizes = list(engine.batch_sizes)
        return {"generate_calls": len(sizes), "requests": sum(sizes), "max_batch": max(sizes, default=0)}

    app.state.engine = engine
    return app


async def _read_body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes is larger than the server's limit of {limit}",
                       code="request_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, f"request body is larger than the server's limit of {limit} bytes",
                           code="request_too_large")
    return bytes(body)


async def _stream(job: "Job", pieces, cid: str, model_name: str):
    """Server-sent events: a role chunk, content chunks, a finish chunk, optional usage, ``[DONE]``.
    An error after the stream has started is sent as an error event (the status line is already out)."""
    future, req = job.future, job.request

    def event(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    try:
        yield event(chunk(cid, model_name, {"role": "assistant", "content": ""}))
        while (piece := await pieces.get()) is not None:
            yield event(chunk(cid, model_name, {"content": piece}))
        error = future.exception()
        if error is not None:
            err = error if isinstance(error, ApiError) else ApiError(500, f"generation failed: {error}")
            yield event(err.body())
            return
        answer = future.result()
        yield event(chunk(cid, model_name, {}, answer.finish_reason))
        if req.include_usage:
            yield event(chunk(cid, model_name, None, usage=answer.usage))
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # the client went away (or we are done): stop generating
