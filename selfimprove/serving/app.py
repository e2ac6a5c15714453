"""The FastAPI application of ``selfimprove serve``: ``/v1/chat/completions``, ``/v1/models``.

Requests are answered by the run's current version; concurrent requests reach the backend
together, which batches them. Every error is answered in OpenAI's shape with a 4xx/5xx code.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from selfimprove.conversation import ConversationError, as_messages
from selfimprove.critique_loop.graph import acritique
from selfimprove.errors import PromptTooLongError
from selfimprove.serving.openai_api import (
    ApiError,
    ChatRequest,
    chat_response,
    chunk,
    error_body,
    from_validation,
    new_stream_id,
)
from selfimprove.serving.service import RunService
from selfimprove.traffic import Exchange
from selfimprove.types import Completion, Message

__all__ = ["build_app"]

log = logging.getLogger(__name__)


def build_app(service: RunService, api_key: str | None = None) -> FastAPI:
    """The server of ``service``; with ``api_key`` every ``/v1`` route asks for it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await service.aclose()

    app = FastAPI(title="selfimprove", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return JSONResponse(error_body(f"the server failed: {exc}", kind="server_error"),
                            status_code=500)

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if api_key is not None and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return JSONResponse(error_body("Incorrect or missing API key (send "
                                               "'Authorization: Bearer <key>')",
                                               code="invalid_api_key"), status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": service.model_name, "version": service.version}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        service.context()  # a promotion shows here too
        return {"object": "list", "data": [
            {"id": service.model_name, "object": "model", "created": 0,
             "owned_by": "selfimprove", "version": service.version},
        ]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = _parse(await _body(request, service.serve.max_body_bytes))
        if not service.accepts(req.model):
            raise ApiError(404, f"The model '{req.model}' does not exist; this server serves "
                           f"'{service.model_name}'", param="model", code="model_not_found")
        conv = _conversation(req)
        if req.critique:
            return await _critiqued(service, req, conv)
        return await _plain(service, req, conv)

    return app


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {declared} bytes; the limit is {limit}",
                       code="request_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, f"the request body is over the limit of {limit} bytes",
                           code="request_too_large")
    return bytes(body)


def _parse(body: bytes) -> ChatRequest:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from None


def _conversation(req: ChatRequest) -> list[Message]:
    try:
        conv = as_messages([m.plain() for m in req.messages])
    except ConversationError as exc:
        param = str(exc).split(":", 1)[0]
        raise ApiError(400, str(exc), param=param, code="invalid_value") from None
    if conv[-1].role != "user":
        raise ApiError(400, "the last message must be the user's (the turn to answer)",
                       param=f"messages[{len(conv) - 1}].role", code="invalid_value")
    return conv


def _ctx_for(service: RunService, req: ChatRequest):
    """The current context with the request's sampling for the policy's answer."""
    ctx = service.context()
    params = ctx.roles.policy_sampling
    update: dict[str, Any] = {"n": 1 if req.critique else req.n, "stop": req.stops()}
    for key, value in (("max_new_tokens", req.new_tokens()), ("temperature", req.temperature),
                       ("top_p", req.top_p), ("seed", req.seed)):
        if value is not None:
            update[key] = value
    params = params.model_copy(update=update)
    return dataclasses.replace(ctx, roles=dataclasses.replace(ctx.roles, policy_sampling=params))


async def _generate(ctx, conv: list[Message]) -> list[Completion]:
    try:
        (outs,) = await ctx.roles.policy.generate([conv], ctx.roles.policy_sampling)
    except PromptTooLongError as exc:
        raise ApiError(400, str(exc), param="messages", code="context_length_exceeded") from None
    return outs


async def _plain(service: RunService, req: ChatRequest, conv: list[Message]):
    ctx = _ctx_for(service, req)
    version = ctx.policy_version
    outs = await _generate(ctx, conv)
    if service.recorder is not None:
        for out in outs:  # durable before the answer leaves
            await service.recorder.arecord(Exchange(
                messages=conv, response=out.text, policy_version=version,
                truncated=out.finish_reason == "length"))
    if req.stream:
        return StreamingResponse(_stream(service.model_name, version, outs),
                                 media_type="text/event-stream")
    return chat_response(service.model_name, version, outs)


async def _critiqued(service: RunService, req: ChatRequest, conv: list[Message]):
    if req.stream:
        raise ApiError(400, "streaming is for plain completions; a critiqued answer comes "
                       "whole", param="stream", code="unsupported_value")
    if req.n != 1:
        raise ApiError(400, "a critiqued answer is one choice (n=1)", param="n",
                       code="unsupported_value")
    ctx = _ctx_for(service, req)
    try:
        result = await acritique([m.model_dump() for m in conv], ctx)
    except PromptTooLongError as exc:
        raise ApiError(400, str(exc), param="messages", code="context_length_exceeded") from None
    if service.recorder is not None:
        await service.recorder.arecord_critique(result)
    last = result.rounds[-1] if result.rounds else None
    cut = last is not None and last.revision_truncated
    answer = Completion(text=result.final_response, finish_reason="length" if cut else "stop")
    extra = {
        "critiqued": True,
        "first_response": result.first_response,
        "rounds": len(result.rounds),
        "passes_checks": result.final_passes,
        "failed_checks": [c.check_id for c in result.final_checks if not c.passed],
        "critiques": [r.critique.text for r in result.rounds if r.critique is not None],
    }
    return chat_response(service.model_name, result.policy_version, [answer], extra)


_PIECES = re.compile(r"\S+\s*|\s+")


async def _stream(model: str, version: str, outs: list[Completion]) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format: the role, the text a word at a time,
    the finish reason, then ``[DONE]``. The backend batches whole completions, so the words
    come once the completion is done."""
    stream_id = new_stream_id()
    for i, out in enumerate(outs):
        yield _event(chunk(stream_id, model, version, i, {"role": "assistant", "content": ""}))
        for piece in _PIECES.findall(out.text):
            yield _event(chunk(stream_id, model, version, i, {"content": piece}))
        yield _event(chunk(stream_id, model, version, i, {}, out.finish_reason))
    yield "data: [DONE]\n\n"


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
