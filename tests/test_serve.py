"""``selfimprove serve`` on a scripted context: the OpenAI wire format, errors, auth, hot-swap,
recording. The same server on the embedded model, under uvicorn with the official ``openai``
client, is in tests/test_serve_real.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from selfimprove.backends.scripted import ScriptedBackend
from selfimprove.config import RunConfig, ServeConfig
from selfimprove.constitution import load_constitution
from selfimprove.errors import PolicyError
from selfimprove.registry import PolicyRegistry
from selfimprove.serving import RunService, build_app
from selfimprove.serving.service import check_exposure
from selfimprove.traffic import TrafficLog
from tests.test_critique_graph import CONSTITUTION, LONG, SHORT, make_ctx, prefer, responder
from tests.test_registry import commit

URL = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Say hello."}]


class Server:
    """The app in-process (lifespan run), with an httpx client bound to it."""

    def __init__(self, tmp_path: Path, *, api_key: str | None = None, **serve: object) -> None:
        path = tmp_path / "tiny.yaml"
        path.write_text(CONSTITUTION)
        self.backend = ScriptedBackend(responder(SHORT), prefer(SHORT))
        ctx = make_ctx(load_constitution(path), self.backend)
        self.run = tmp_path / "run"
        self.registry = PolicyRegistry(self.run, base_model="smollm2-135m-instruct")
        cfg = ServeConfig(model_name="tiny", flush_seconds=3600, **serve)
        self.service = RunService(self.run, RunConfig(), cfg, context=ctx)
        self.app = build_app(self.service, api_key)

    async def __aenter__(self) -> httpx.AsyncClient:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        transport = httpx.ASGITransport(app=self.app)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://test")
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self._lifespan.__aexit__(None, None, None)


async def test_chat_completion_in_openai_shape(tmp_path):
    async with Server(tmp_path) as client:
        r = await client.post(URL, json={"model": "tiny", "messages": HELLO, "n": 2,
                                         "max_tokens": 20, "temperature": 0.5, "seed": 3,
                                         "user": "ignored-field"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "chat.completion" and body["model"] == "tiny"
        assert body["system_fingerprint"] == "v0"
        assert [c["message"] for c in body["choices"]] == [
            {"role": "assistant", "content": LONG}] * 2
        assert {c["finish_reason"] for c in body["choices"]} == {"stop"}
        models = (await client.get("/v1/models")).json()
        assert models["data"][0]["id"] == "tiny"


async def test_the_critiqued_answer_is_the_revision(tmp_path):
    async with Server(tmp_path) as client:
        r = await client.post(URL, json={"model": "tiny", "messages": HELLO, "critique": True})
        body = r.json()
        assert body["choices"][0]["message"]["content"] == SHORT
        info = body["selfimprove"]
        assert info["first_response"] == LONG and info["passes_checks"] is True
        assert info["rounds"] == 1 and info["critiques"] == ["It is too long."]


async def test_streaming_sends_the_text_in_chunks_then_done(tmp_path):
    async with Server(tmp_path) as client:
        r = await client.post(URL, json={"model": "tiny", "messages": HELLO, "stream": True})
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text == LONG and len(chunks) > 3
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        (b"{not json", 400, None, "not valid JSON"),
        (b"[1, 2]", 400, None, "must be a JSON object"),
        (json.dumps({"model": "tiny"}).encode(), 400, "messages", "'messages' is required"),
        (json.dumps({"model": "tiny", "messages": []}).encode(), 400, "messages",
         "at least one message"),
        (json.dumps({"model": "gpt-9", "messages": HELLO}).encode(), 404, "model",
         "does not exist"),
        (json.dumps({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}).encode(),
         400, "messages[0].role", "messages[0].role"),
        (json.dumps({"model": "tiny", "messages": HELLO, "n": 0}).encode(), 400, "n", "n:"),
        (json.dumps({"model": "tiny", "messages": HELLO, "max_tokens": -1}).encode(), 400,
         "max_tokens", "max_tokens"),
        (json.dumps({"model": "tiny", "messages": [{"role": "system", "content": "x"}]}
                    ).encode(), 400, "messages", "no user message"),
        (json.dumps({"model": "tiny", "messages": HELLO + [{"role": "assistant",
                                                             "content": "x"}]}).encode(),
         400, "messages[1].role", "last message must be the user's"),
        (json.dumps({"model": "tiny", "messages": HELLO, "critique": True, "stream": True}
                    ).encode(), 400, "stream", "streaming is for plain completions"),
        (json.dumps({"model": "tiny", "messages": HELLO, "critique": True, "n": 2}).encode(),
         400, "n", "one choice"),
    ],
)
async def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
        tmp_path, body, status, param, message):
    async with Server(tmp_path) as client:
        r = await client.post(URL, content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert message in error["message"] and error["param"] == param
        assert error["type"] == "invalid_request_error"
        ok = await client.post(URL, json={"model": "tiny", "messages": HELLO})
        assert ok.status_code == 200


async def test_a_body_over_the_limit_is_refused(tmp_path):
    async with Server(tmp_path, max_body_bytes=2048) as client:
        big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 5000}]}
        r = await client.post(URL, json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        async def chunks():  # no Content-Length: the limit holds while reading
            yield json.dumps(big).encode()

        r = await client.post(URL, content=chunks())
        assert r.status_code == 413


async def test_unknown_routes_and_methods_answer_in_openai_shape(tmp_path):
    async with Server(tmp_path) as client:
        assert (await client.get("/v1/nothing")).json()["error"]["message"] == "Not Found"
        r = await client.get(URL)
        assert r.status_code == 405 and "error" in r.json()


async def test_api_key_is_required_when_set(tmp_path):
    async with Server(tmp_path, api_key="s3cret") as client:
        r = await client.post(URL, json={"model": "tiny", "messages": HELLO})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = await client.post(URL, json={"model": "tiny", "messages": HELLO},
                              headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = await client.post(URL, json={"model": "tiny", "messages": HELLO},
                              headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
        assert (await client.get("/health")).status_code == 200  # readiness needs no key


def test_without_a_key_the_server_only_binds_to_localhost():
    check_exposure(ServeConfig(host="127.0.0.1"), None)
    check_exposure(ServeConfig(host="0.0.0.0"), "key")
    with pytest.raises(PolicyError, match=r"set an API key in \$SELFIMPROVE_API_KEY"):
        check_exposure(ServeConfig(host="0.0.0.0"), None)


async def test_a_promotion_is_served_without_a_restart_and_in_flight_requests_finish(tmp_path):
    server = Server(tmp_path)
    gate = asyncio.Event()
    served: list[str] = []

    def respond(conv, params):
        served.append(server.backend.policy.version)
        return LONG

    server.backend.responder = respond
    slow_generate = server.backend.generate

    async def generate(conversations, params):
        await gate.wait()  # hold the first request in flight across the promotion
        return await slow_generate(conversations, params)

    server.backend.generate = generate
    async with server as client:
        first = asyncio.create_task(client.post(URL, json={"model": "tiny", "messages": HELLO}))
        await asyncio.sleep(0.05)
        v1 = commit(server.registry)
        server.registry.promote(v1)
        second = asyncio.create_task(client.post(URL, json={"model": "tiny", "messages": HELLO}))
        await asyncio.sleep(0.05)
        gate.set()
        a, b = await first, await second
        assert a.status_code == b.status_code == 200
        assert a.json()["system_fingerprint"] == "v0"
        assert b.json()["system_fingerprint"] == "v1"
        assert served == ["v0", "v1"]  # the switch waited for the request in flight
        assert (await client.get("/v1/models")).json()["data"][0]["version"] == "v1"


async def test_recorded_traffic_reaches_the_store(tmp_path):
    server = Server(tmp_path, record=True)
    async with server as client:
        for _ in range(2):
            await client.post(URL, json={"model": "tiny", "messages": HELLO})
        await client.post(URL, json={"model": "tiny", "messages": HELLO, "critique": True})
        bad = await client.post(URL, json={"model": "tiny", "messages": []})
        assert bad.status_code == 400
    rows = TrafficLog(server.run).table().to_pylist()  # closing moved the journal
    assert len(rows) == 3 and sum(r["critiqued"] for r in rows) == 1
    answers = sorted((r["critiqued"], r["messages"][-1]["content"]) for r in rows)
    assert answers == [(False, LONG), (False, LONG), (True, SHORT)]
    assert all(r["messages"][:-1] == HELLO and r["policy_version"] == "v0" for r in rows)
