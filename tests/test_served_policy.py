"""ServedPolicy: a backend bound to one version; versions never mix inside the backend."""

from __future__ import annotations

import asyncio

import pytest

from selfimprove.backends.scripted import ScriptedBackend
from selfimprove.backends.served import ServedPolicy, serve, unwrap
from selfimprove.roles import Roles
from selfimprove.types import Message, PolicyRef, SamplingParams

V1 = PolicyRef(version="v1", adapter_path="/adapters/v1")
V2 = PolicyRef(version="v2", adapter_path="/adapters/v2")
PARAMS = SamplingParams(max_new_tokens=8)


class Recording(ScriptedBackend):
    """A scripted backend that answers as the version it serves and records, per call, the
    version served when the call started and when it answered, and how many calls overlap."""

    def __init__(self, steps: int = 3) -> None:
        super().__init__(lambda conv, params: f"{self.policy.version}: {conv[-1].content}")
        self.steps = steps  # event-loop turns each call spends inside the backend
        self.in_flight = 0
        self.max_in_flight = 0
        self.served: list[tuple[str, str]] = []  # (version at start, version at answer)
        self.loads: list[str] = []
        self.loads_during_calls = 0

    async def generate(self, conversations, params):
        start = self.policy.version
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for _ in range(self.steps):
                await asyncio.sleep(0)  # let every other task run: a switch would show here
            out = await super().generate(conversations, params)
        finally:
            self.in_flight -= 1
        self.served.append((start, self.policy.version))
        return out

    async def load_policy(self, policy: PolicyRef) -> None:
        self.loads_during_calls += self.in_flight > 0
        self.loads.append(policy.version)
        await asyncio.sleep(0)
        await super().load_policy(policy)


def ask(text: str) -> list[Message]:
    return [Message(role="user", content=text)]


async def answer(backend, text: str) -> str:
    ((out,),) = await backend.generate([ask(text)], PARAMS)
    return out.text


async def test_two_versions_called_concurrently_never_interleave():
    backend = Recording()
    v1, v2 = serve(backend, V1), serve(backend, V2)
    jobs = []
    for i in range(12):  # submitted alternately, all at once
        jobs.append((("v1", i), answer(v1, f"q{i}")))
        jobs.append((("v2", i), answer(v2, f"q{i}")))
    texts = await asyncio.gather(*(job for _, job in jobs))
    for ((version, i), _), text in zip(jobs, texts, strict=True):
        assert text == f"{version}: q{i}"  # each call got its own version's answer
    assert len(backend.served) == 24
    assert all(start == end for start, end in backend.served), backend.served
    assert backend.loads_during_calls == 0  # no switch while a call was inside the backend
    assert backend.loads and set(backend.loads) == {"v1", "v2"}


async def test_calls_of_one_version_run_concurrently_after_one_load():
    backend = Recording()
    v1 = serve(backend, V1)
    texts = await asyncio.gather(*(answer(v1, f"q{i}") for i in range(10)))
    assert texts == [f"v1: q{i}" for i in range(10)]
    assert backend.loads == ["v1"]
    assert backend.max_in_flight > 1  # they reached the backend together (it can batch them)
    # the version being served is not loaded again
    assert await answer(v1, "again") == "v1: again"
    assert backend.loads == ["v1"]


async def test_the_served_version_is_not_loaded():
    backend = Recording()
    assert await answer(serve(backend, backend.policy), "hi") == "v0: hi"
    assert backend.loads == []


async def test_a_waiting_switch_is_not_starved_by_a_stream_of_the_current_version():
    backend = Recording(steps=4)
    v1, v2 = serve(backend, V1), serve(backend, V2)
    finished: list[str] = []

    async def call(served, name):
        await answer(served, name)
        finished.append(name)

    # A new v1 call every loop turn, each spending several turns in the backend: v1 calls
    # always overlap, so without holding them back the v2 call would wait for the whole stream.
    stream: list[asyncio.Task] = []
    switch = None
    for i in range(40):
        stream.append(asyncio.ensure_future(call(v1, f"v1-{i}")))
        if i == 5:
            switch = asyncio.ensure_future(call(v2, "v2"))
        await asyncio.sleep(0)
    await asyncio.gather(*stream, switch)
    assert len(finished) == 41
    # served once the v1 calls already admitted finish, not after the whole stream
    assert finished.index("v2") < len(stream) // 2, finished
    assert finished.index("v1-39") > finished.index("v2")
    assert backend.loads[:2] == ["v1", "v2"] and backend.loads[2] == "v1"
    assert all(start == end for start, end in backend.served)


async def test_a_served_policy_cannot_be_switched():
    backend = Recording()
    served = serve(backend, V1)
    with pytest.raises(TypeError, match="bound to one version"):
        await served.load_policy(V2)
    assert served.policy == V1
    # rebinding makes a new binding on the same backend, never a binding of a binding
    again = serve(served, V2)
    assert isinstance(again, ServedPolicy) and again.backend is backend
    assert unwrap(again) is backend and again.policy == V2


async def test_roles_following_binds_only_roles_sharing_the_policy_backend():
    policy_backend = Recording()
    judge_backend = Recording()
    roles = Roles(policy=policy_backend, critic=policy_backend, judge=judge_backend)
    moved = roles.following(V1)
    assert moved.policy_version == "v1" and roles.policy_version == "v0"
    for role in (moved.policy, moved.critic, moved.reviser):
        assert isinstance(role, ServedPolicy)
        assert role.policy == V1 and unwrap(role) is policy_backend
    assert moved.judge is judge_backend  # a separately given judge stays bare
    assert moved.backends() == [policy_backend, judge_backend]
    # following again moves the bound roles to the new version
    again = moved.following(V2)
    assert {again.policy.policy, again.critic.policy, again.reviser.policy} == {V2}
    assert again.judge is judge_backend

    assert await answer(moved.critic, "critique") == "v1: critique"
    assert await answer(moved.judge, "judge") == "v0: judge"
    assert judge_backend.loads == []  # the judge's own model was never switched
    assert policy_backend.loads == ["v1"]


async def test_roles_aclose_closes_each_backend_once():
    closed: list[int] = []

    class Closing(Recording):
        async def aclose(self) -> None:
            closed.append(id(self))

    shared, judge = Closing(), Closing()
    roles = Roles(policy=shared, judge=judge).following(V1)
    await roles.policy.aclose()  # a binding closes nothing
    assert closed == []
    await roles.aclose()
    assert sorted(closed) == sorted([id(shared), id(judge)])
