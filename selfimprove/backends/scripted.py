"""A scripted backend for unit tests of graph logic: deterministic, instant, records calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from selfimprove.backends.base import Backend
from selfimprove.types import Completion, Conversation, PolicyRef, SamplingParams

Responder = Callable[[Conversation, SamplingParams], str]
Scorer = Callable[[Conversation, Sequence[str]], dict[str, float]]


class ScriptedBackend(Backend):
    """Answers with ``responder(conversation, params)``; log-probabilities from ``scorer``.

    Every call is recorded in ``calls`` as ``(kind, number of conversations)`` so tests can
    assert how work was batched.
    """

    def __init__(self, responder: Responder, scorer: Scorer | None = None) -> None:
        self.responder = responder
        self.scorer = scorer
        self.supports_logprobs = scorer is not None
        self.calls: list[tuple[str, int]] = []
        self._policy = PolicyRef()

    async def generate(
        self, conversations: Sequence[Conversation], params: SamplingParams
    ) -> list[list[Completion]]:
        self.calls.append(("generate", len(conversations)))
        await asyncio.sleep(0)
        return [
            [
                Completion(text=(t := self.responder(conv, params)), num_tokens=len(t.split()))
                for _ in range(params.n)
            ]
            for conv in conversations
        ]

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[dict[str, float]]:
        if self.scorer is None:
            raise NotImplementedError("this scripted backend has no scorer")
        self.calls.append(("logprobs", len(conversations)))
        await asyncio.sleep(0)
        return [self.scorer(conv, options) for conv in conversations]

    async def load_policy(self, policy: PolicyRef) -> None:
        self.calls.append(("load_policy", 0))
        self._policy = policy

    @property
    def policy(self) -> PolicyRef:
        return self._policy
