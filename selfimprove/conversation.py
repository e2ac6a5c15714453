"""Conversations as prompts: chat messages in, the transcript the critic and judge read out.

An agent hands the critique loop what it was asked (a system prompt, earlier turns, the last
user turn) and, optionally, the answer it gave. Messages may be our :class:`Message`, plain
``{"role", "content"}`` dicts (OpenAI and TRL style) or LangChain message objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from selfimprove.errors import SelfImproveError
from selfimprove.types import Message

__all__ = ["ConversationError", "as_messages", "split_answer", "transcript"]

# LangChain message types (``message.type``) and their chat roles.
_LANGCHAIN_ROLES = {"human": "user", "ai": "assistant", "system": "system"}
_ROLES = ("system", "user", "assistant")
_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


class ConversationError(SelfImproveError, ValueError):
    """A conversation is malformed; the message names the offending message and field."""


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts (OpenAI / LangChain): keep the text parts
        parts = [p.get("text", "") if isinstance(p, dict) else p for p in content]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)
    raise ConversationError(f"{where}.content: must be a string or text parts, "
                            f"got {type(content).__name__}")


def _one(raw: Any, where: str) -> Message:
    if isinstance(raw, Message):
        return raw
    if isinstance(raw, dict):
        role, content = raw.get("role"), raw.get("content")
        if content is None:
            raise ConversationError(f"{where}: needs a 'content'")
    elif hasattr(raw, "type") and hasattr(raw, "content"):  # a LangChain message
        role, content = _LANGCHAIN_ROLES.get(raw.type, raw.type), raw.content
    else:
        raise ConversationError(f"{where}: a message is a dict with 'role' and 'content', "
                                f"got {type(raw).__name__}")
    if role not in _ROLES:
        raise ConversationError(f"{where}.role: must be one of {', '.join(_ROLES)}, got {role!r}")
    return Message(role=role, content=_text(content, where))


def as_messages(raw: Iterable[Any], where: str = "messages") -> list[Message]:
    """Validate a conversation: non-empty, known roles, text content, system turns first,
    at least one user turn."""
    if isinstance(raw, (str, bytes)):
        raise ConversationError(f"{where}: a conversation is a list of messages, not a string")
    messages = [_one(m, f"{where}[{i}]") for i, m in enumerate(raw)]
    if not messages:
        raise ConversationError(f"{where}: the conversation has no messages")
    seen_other = False
    for i, m in enumerate(messages):
        if m.role == "system" and seen_other:
            raise ConversationError(f"{where}[{i}].role: a system message must come before "
                                    "the user and assistant turns")
        seen_other = seen_other or m.role != "system"
    if not any(m.role == "user" for m in messages):
        raise ConversationError(f"{where}: the conversation has no user message")
    return messages


def split_answer(messages: Sequence[Message]) -> tuple[list[Message], str | None]:
    """The conversation up to its last user turn, and the assistant's answer after it (if the
    conversation ends with one): what an agent said is what gets critiqued."""
    if messages and messages[-1].role == "assistant":
        return list(messages[:-1]), messages[-1].content
    return list(messages), None


def transcript(messages: Sequence[Message]) -> str:
    """The text the critic, reviser and judge read as "the question": a lone user turn as it
    is, a longer conversation as labelled turns."""
    if len(messages) == 1 and messages[0].role == "user":
        return messages[0].content
    return "\n\n".join(f"{_LABELS[m.role]}: {m.content}" for m in messages)
