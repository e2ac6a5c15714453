"""A backend bound to one policy version: which version answers is part of every call.

A backend serves one policy at a time (a LoRA adapter merged in, a model name on a server).
Instead of callers switching it and hoping nobody else switches it back, each role holds a
:class:`ServedPolicy`: the backend plus the version that must answer. Calls for the version
being served run concurrently (so the backend still batches them); a call for another version
waits until those finish, then switches. A waiting switch holds back new calls for the
version being served, so neither side starves.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from selfimprove.backends.base import Backend
from selfimprove.types import Completion, Conversation, PolicyRef, SamplingParams

__all__ = ["ServedPolicy", "serve", "unwrap"]

_Key = tuple[str, str | None]


def _key(policy: PolicyRef) -> _Key:
    return (policy.base_model, policy.adapter_path)


class _Switch:
    """Who may use one backend now (per event loop: asyncio primitives belong to a loop)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.cond = asyncio.Condition()
        self.active = 0
        self.waiting: Counter[_Key] = Counter()
        served = backend.policy
        self.serving: _Key | None = _key(served) if served is not None else None

    def _may_enter(self, key: _Key) -> bool:
        if self.active == 0:
            return True
        others_waiting = any(n for k, n in self.waiting.items() if k != key)
        return self.serving == key and not others_waiting

    @asynccontextmanager
    async def using(self, policy: PolicyRef) -> AsyncIterator[None]:
        key = _key(policy)
        async with self.cond:
            self.waiting[key] += 1
            try:
                await self.cond.wait_for(lambda: self._may_enter(key))
            finally:
                self.waiting[key] -= 1
            if self.serving != key:
                # Holding the condition: nobody else enters while the weights change.
                self.serving = None
                await self.backend.load_policy(policy)
                self.serving = key
            self.active += 1
        try:
            yield
        finally:
            async with self.cond:
                self.active -= 1
                self.cond.notify_all()


_SWITCHES: weakref.WeakKeyDictionary[Backend, dict[asyncio.AbstractEventLoop, _Switch]] = (
    weakref.WeakKeyDictionary()
)


def _switch_for(backend: Backend) -> _Switch:
    loop = asyncio.get_running_loop()
    per_loop = _SWITCHES.setdefault(backend, {})
    switch = per_loop.get(loop)
    if switch is None:
        per_loop.clear()  # an older loop is finished: its waiters are gone
        switch = per_loop[loop] = _Switch(backend)
    return switch


class ServedPolicy(Backend):
    """``backend`` answering as ``policy``; usable wherever a :class:`Backend` is."""

    def __init__(self, backend: Backend, policy: PolicyRef) -> None:
        self.backend = unwrap(backend)
        self._policy = policy
        self.supports_logprobs = self.backend.supports_logprobs

    def __repr__(self) -> str:
        return f"ServedPolicy({self.backend!r}, {self._policy.version})"

    @property
    def policy(self) -> PolicyRef:
        return self._policy

    async def generate(
        self, conversations: Sequence[Conversation], params: SamplingParams
    ) -> list[list[Completion]]:
        async with _switch_for(self.backend).using(self._policy):
            return await self.backend.generate(conversations, params)

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[dict[str, float]]:
        async with _switch_for(self.backend).using(self._policy):
            return await self.backend.option_logprobs(conversations, options)

    async def sequence_nll(self, texts: Sequence[str]) -> list[float]:
        """Per-text NLL under this policy; AttributeError when the backend cannot measure it."""
        measure = self.backend.sequence_nll  # type: ignore[attr-defined]
        async with _switch_for(self.backend).using(self._policy):
            return await measure(list(texts))

    @property
    def can_measure_nll(self) -> bool:
        return callable(getattr(self.backend, "sequence_nll", None))

    async def load_policy(self, policy: PolicyRef) -> None:
        raise TypeError("a ServedPolicy is bound to one version; use serve(backend, version)")

    async def aclose(self) -> None:
        """The backend belongs to whoever made it; a binding closes nothing."""


def unwrap(backend: Backend) -> Backend:
    """The backend under any :class:`ServedPolicy` binding."""
    while isinstance(backend, ServedPolicy):
        backend = backend.backend
    return backend


def serve(backend: Backend, policy: PolicyRef) -> ServedPolicy:
    """``backend`` bound to ``policy``."""
    return ServedPolicy(backend, policy)
