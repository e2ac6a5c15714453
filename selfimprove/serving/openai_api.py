"""The OpenAI chat-completions wire format: requests validated, responses and errors built.

Only what ``selfimprove serve`` implements is modelled; fields clients send that it does not
use (``user``, ``stream_options``, penalties, ...) are accepted and ignored, as OpenAI-compatible
servers do. One extension: ``"critique": true`` asks for the critiqued answer.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from selfimprove.types import Completion

__all__ = ["ApiError", "ChatRequest", "chat_response", "chunk", "error_body", "from_validation"]

_MAX_TOKENS_CAP = 4096


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status, message, param, code, kind)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, kind=self.kind, param=self.param, code=self.code)


def error_body(message: str, *, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]
    name: str | None = None

    def plain(self) -> dict[str, Any]:
        # OpenAI's newer "developer" role is the system prompt under another name.
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.content}


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=_MAX_TOKENS_CAP)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=_MAX_TOKENS_CAP)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    critique: bool = Field(default=False, description="answer with the critiqued revision")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def from_validation(exc: ValidationError) -> ApiError:
    """The first validation error, with its location as OpenAI's ``param`` (messages[1].role)."""
    err = exc.errors(include_url=False)[0]
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    msg = err["msg"]
    if err["type"] == "too_short" and param == "messages":
        msg = "'messages' must hold at least one message"
    elif err["type"] == "missing":
        msg = f"'{param}' is required"
    return ApiError(400, f"{param}: {msg}" if param else msg, param=param or None,
                    code="invalid_value" if err["type"] != "missing" else "missing_required")


def _id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def chat_response(model: str, version: str, completions: list[Completion],
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": _id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": version,  # which policy version answered
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": c.text},
             "finish_reason": c.finish_reason, "logprobs": None}
            for i, c in enumerate(completions)
        ],
    }
    if extra is not None:
        body["selfimprove"] = extra
    return body


def chunk(stream_id: str, model: str, version: str, index: int, delta: dict[str, Any],
          finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": stream_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": version,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason,
                     "logprobs": None}],
    }


def new_stream_id() -> str:
    return _id()
