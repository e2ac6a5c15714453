"""OpenAIBackend against a scripted fault server (retries, keys, policies) and a real
``transformers serve`` running the embedded model (marked slow)."""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
import urllib.parse
from datetime import datetime, timedelta, timezone

import pytest
from servers import (
    FaultServer,
    Recorded,
    Reply,
    chat_reply,
    free_port,
    start_transformers_serve,
    stop_process,
)

from selfimprove.backends.openai import (
    HTTPBackendError,
    LogprobsUnsupportedError,
    OpenAIBackend,
    logprobs_for_options,
    parse_retry_after,
)
from selfimprove.errors import BackendError
from selfimprove.types import Message, PolicyRef, SamplingParams

CHAT = "/v1/chat/completions"
LOAD = "/v1/load_lora_adapter"
KEY_ENV = "SELFIMPROVE_TEST_API_KEY"
SECRET = "sk-test-5ecret-do-not-leak-0123456789"


def conv(text: str) -> list[Message]:
    return [Message(role="user", content=text)]


def backend_for(server_url: str, **kw) -> OpenAIBackend:
    """A backend with fast retries, so fault tests take well under a second each."""
    opts = dict(
        api_key_env=None, timeout_s=5.0, max_attempts=4, initial_backoff_s=0.01,
        max_backoff_s=0.05,
    )
    opts.update(kw)
    return OpenAIBackend(server_url, "base-model", **opts)


@pytest.fixture
def fault():
    with FaultServer() as server:
        yield server


# ----- pure logic -----


def test_parse_retry_after_seconds_and_dates():
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after("-2", now) == 0.0
    later = (now + timedelta(seconds=7)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(later, now) == pytest.approx(7.0)
    earlier = (now - timedelta(seconds=7)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(earlier, now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_logprobs_for_options_adds_variants_and_bounds_absent_options():
    top = [("A", -0.3), (" A", -3.0), ("B", -2.5), ("x", -4.0)]
    got = logprobs_for_options(top, ["A", "B", "C"])
    assert got["A"] == pytest.approx(math.log(math.exp(-0.3) + math.exp(-3.0)))
    assert got["B"] == pytest.approx(-2.5)
    # absent: no more likely than the lowest listed token nor than the unlisted mass
    unlisted = 1 - sum(math.exp(lp) for _, lp in top)
    assert got["C"] == pytest.approx(min(-4.0, math.log(unlisted)))
    assert got["C"] < got["B"]
    with pytest.raises(ValueError):
        logprobs_for_options([], ["A"])


# ----- retries -----


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
async def test_retryable_status_is_retried_then_succeeds(fault, status):
    fault.script(CHAT, Reply(status, {"error": {"message": "busy"}}))
    backend = backend_for(fault.url)
    try:
        (out,) = await backend.generate([conv("hi")], SamplingParams(max_new_tokens=4))
    finally:
        await backend.aclose()
    assert len(fault.calls(CHAT)) == 2
    assert out[0].text == "reply to base-model"


async def test_500_500_200_takes_three_attempts(fault):
    fault.script(CHAT, Reply(500, "boom"), Reply(500, "boom"), Reply(body=chat_reply(["fine"])))
    backend = backend_for(fault.url)
    try:
        (out,) = await backend.generate([conv("hi")], SamplingParams())
    finally:
        await backend.aclose()
    assert [c.text for c in out] == ["fine"]
    assert len(fault.calls(CHAT)) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_are_never_retried(fault, status):
    fault.script(CHAT, Reply(status, {"error": {"message": f"nope-{status}"}}))
    backend = backend_for(fault.url)
    try:
        with pytest.raises(HTTPBackendError) as info:
            await backend.generate([conv("hi")], SamplingParams())
    finally:
        await backend.aclose()
    assert len(fault.calls(CHAT)) == 1
    assert info.value.status == status and info.value.attempts == 1
    assert f"HTTP {status}" in str(info.value) and f"nope-{status}" in str(info.value)


async def test_always_503_stops_after_max_attempts(fault):
    fault.script(CHAT, *[Reply(503, {"detail": "overloaded"})] * 10)
    backend = backend_for(fault.url, max_attempts=3)
    try:
        with pytest.raises(BackendError) as info:
            await backend.generate([conv("hi")], SamplingParams())
    finally:
        await backend.aclose()
    assert len(fault.calls(CHAT)) == 3
    assert "3 attempts" in str(info.value) and "overloaded" in str(info.value)
    assert info.value.attempts == 3 and info.value.status == 503


async def test_retry_after_is_honoured(fault):
    fault.script(CHAT, Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}))
    backend = backend_for(fault.url, max_backoff_s=5.0)
    try:
        await backend.generate([conv("hi")], SamplingParams())
    finally:
        await backend.aclose()
    first, second = fault.calls(CHAT)
    assert second.at - first.at >= 0.95


async def test_retry_after_is_capped_by_max_backoff(fault):
    fault.script(CHAT, Reply(503, "later", {"Retry-After": "30"}))
    backend = backend_for(fault.url, max_backoff_s=0.2)
    start = time.monotonic()
    try:
        await backend.generate([conv("hi")], SamplingParams())
    finally:
        await backend.aclose()
    assert len(fault.calls(CHAT)) == 2
    assert time.monotonic() - start < 3.0


async def test_slow_response_times_out_and_is_retried(fault):
    fault.script(CHAT, Reply(body=chat_reply(["late"]), delay_s=1.5))
    backend = backend_for(fault.url, timeout_s=0.3)
    try:
        (out,) = await backend.generate([conv("hi")], SamplingParams())
    finally:
        await backend.aclose()
    assert len(fault.calls(CHAT)) == 2
    assert out[0].text == "reply to base-model"


async def test_connection_refused_is_retried_up_to_max_attempts():
    backend = backend_for(f"http://127.0.0.1:{free_port()}", max_attempts=3)
    try:
        with pytest.raises(HTTPBackendError) as info:
            await backend.generate([conv("hi")], SamplingParams())
    finally:
        await backend.aclose()
    assert info.value.attempts == 3 and info.value.status is None
    assert "3 attempts" in str(info.value) and "connection failed" in str(info.value)


async def test_concurrency_is_bounded(fault):
    fault.fallback = lambda req: Reply(body=chat_reply(["x"]), delay_s=0.1)
    backend = backend_for(fault.url, max_concurrency=2)
    try:
        outs = await backend.generate([conv(str(i)) for i in range(6)], SamplingParams())
    finally:
        await backend.aclose()
    assert len(outs) == 6 and len(fault.calls(CHAT)) == 6
    assert fault.max_in_flight == 2


# ----- the API key -----


async def test_api_key_is_sent_but_never_shown(fault, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)

    def echo_auth(req: Recorded) -> dict:  # a careless server that echoes the credentials
        return {"error": {"message": f"rejected {req.headers.get('Authorization')}"}}

    fault.script(CHAT, Reply(503, echo_auth), Reply(401, echo_auth))
    caplog.set_level(logging.DEBUG)
    backend = backend_for(fault.url, api_key_env=KEY_ENV)
    try:
        with pytest.raises(HTTPBackendError) as info:
            await backend.generate([conv("hi")], SamplingParams())
    finally:
        await backend.aclose()
    assert [r.headers["Authorization"] for r in fault.calls(CHAT)] == [f"Bearer {SECRET}"] * 2
    assert info.value.status == 401 and KEY_ENV in str(info.value)
    assert "rejected Bearer ***" in str(info.value)
    assert "retrying in" in caplog.text  # the retry was logged ...
    for shown in (str(info.value), repr(info.value), repr(backend), caplog.text):
        assert SECRET not in shown  # ... and the key appears nowhere


async def test_no_key_variable_sends_no_authorization(fault, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    backend = backend_for(fault.url, api_key_env=KEY_ENV)
    try:
        await backend.generate([conv("hi")], SamplingParams())
    finally:
        await backend.aclose()
    assert "Authorization" not in fault.calls(CHAT)[0].headers


# A key whose 4-character runs do not occur in ordinary text or in these tests' messages, so a
# hit below is a leak, not a coincidence; "+", "/" and "=" make its URL-encoded form differ.
LEAK_KEY = "sk-Zq8vX3pL+w9Tn4/RbK7mJd2HfY6cVs=="
ERROR_CUT = 500  # the backend's cut for a server's error message
PREVIEW_CUT = 200  # ... and for a body that is not a JSON object


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def key_fragments(key: str = LEAK_KEY, size: int = 4) -> set[str]:
    """Every run of ``size`` characters of every form the key can travel in: a leak of any
    longer piece contains one of them."""
    forms = {key, urllib.parse.quote(key, safe=""), b64(key), b64(f"Bearer {key}")[12:]}
    return {f[i : i + size] for f in forms for i in range(len(f) - size + 1)}


class KeepAll(logging.Handler):
    """Every record, as a handler would write it (message, exception text, stack)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}:{record.levelname}:{self.format(record)}")


@pytest.fixture
def all_logs():
    """A DEBUG handler on the root logger, with the HTTP loggers set to DEBUG explicitly (as
    someone debugging the transport would), so httpx/httpcore debug lines are all captured."""
    root = logging.getLogger()
    names = ["httpx", "httpcore", "httpcore.http11", "httpcore.connection"]
    saved = [(root, root.level)] + [(logging.getLogger(n), logging.getLogger(n).level)
                                   for n in names]
    handler = KeepAll()
    root.addHandler(handler)
    for logger, _ in saved:
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for logger, level in saved:
            logger.setLevel(level)


def echo(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"error": {"message": message}}, headers or {})


KEY_ECHOES = {
    # the key whole in the error message
    "whole": [echo(401, f"invalid key {LEAK_KEY}")],
    # the key straddling the 500-character cut of an error message (JSON and plain text)
    "split at the error cut": [echo(401, "x" * (ERROR_CUT - 10) + LEAK_KEY + " end")],
    "split at the text cut": [Reply(400, "y" * (ERROR_CUT - 6) + LEAK_KEY)],
    # ... and the 200-character cut of a 200 response that is not JSON
    "split at the preview cut": [Reply(200, "z" * (PREVIEW_CUT - 7) + LEAK_KEY)],
    # OpenAI style: "Incorrect API key provided: sk-Zq8vX...6cVs"
    "prefix and suffix": [echo(401, f"key provided: {LEAK_KEY[:8]}...{LEAK_KEY[-6:]}")],
    "url-encoded": [echo(401, "got " + urllib.parse.quote(LEAK_KEY, safe=""))],
    "base64 of the header": [echo(401, "got " + b64(f"Bearer {LEAK_KEY}"))],
    # a success whose response header echoes the credentials: only httpcore's debug line
    # (which prints response headers) could show it
    "in a response header": [Reply(200, chat_reply(["fine"]), {"X-Echo": f"Bearer {LEAK_KEY}"})],
    # retried first (a warning is logged), then rejected; key in body and header both times
    "retried then rejected": [
        echo(503, f"busy {LEAK_KEY}", {"X-Echo": LEAK_KEY}),
        echo(401, f"bad {LEAK_KEY}", {"X-Echo": LEAK_KEY}),
    ],
}


@pytest.mark.parametrize("replies", KEY_ECHOES.values(), ids=KEY_ECHOES.keys())
async def test_no_fragment_of_the_key_is_ever_shown(fault, monkeypatch, all_logs, replies):
    monkeypatch.setenv(KEY_ENV, LEAK_KEY)
    fault.script(CHAT, *replies)
    backend = backend_for(fault.url, api_key_env=KEY_ENV)
    error: BaseException | None = None
    try:
        await backend.generate([conv("hi")], SamplingParams())
    except HTTPBackendError as exc:
        error = exc
    finally:
        await backend.aclose()
    assert fault.calls(CHAT)[0].headers["Authorization"] == f"Bearer {LEAK_KEY}"  # it was sent
    # the transport's debug lines were captured (and kept, masked: not dropped)
    assert any(line.startswith("httpcore.http11:DEBUG:receive_response_headers")
               for line in all_logs.lines)
    shown = [repr(backend), *all_logs.lines]
    if error is not None:
        shown += [str(error), repr(error)]
        assert "***" in str(error)  # the server's message is kept, key masked
    leaks = {frag for text in shown for frag in key_fragments() if frag in text}
    assert not leaks, [text for text in shown if any(frag in text for frag in leaks)]


async def test_masked_error_text_still_cut_to_length(fault, monkeypatch):
    monkeypatch.setenv(KEY_ENV, LEAK_KEY)
    fault.script(CHAT, echo(400, f"{LEAK_KEY} " + "w" * 2000))
    backend = backend_for(fault.url, api_key_env=KEY_ENV)
    try:
        with pytest.raises(HTTPBackendError) as info:
            await backend.generate([conv("hi")], SamplingParams())
    finally:
        await backend.aclose()
    message = str(info.value)
    assert "HTTP 400: *** www" in message and "w" * (ERROR_CUT - 4) in message
    assert "w" * (ERROR_CUT - 3) not in message  # mask, then cut at ERROR_CUT characters


# ----- request and response mapping -----


async def test_request_body_and_response_mapping(fault):
    fault.script(CHAT, Reply(body=chat_reply(["one two STOP three"], "length", 9)))
    backend = backend_for(fault.url)
    params = SamplingParams(max_new_tokens=9, temperature=0.7, top_p=0.9, seed=5, stop=("STOP",))
    try:
        ((out,),) = await backend.generate([conv("hi")], params)
    finally:
        await backend.aclose()
    body = fault.calls(CHAT)[0].body
    assert body == {
        "model": "base-model", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 9, "temperature": 0.7, "top_p": 0.9, "seed": 5, "stop": ["STOP"],
    }
    # the stop sequence is cut off client-side and the finish reason follows it
    assert (out.text, out.finish_reason, out.num_tokens) == ("one two ", "stop", 9)


async def test_a_response_without_choices_is_an_error(fault):
    fault.script(CHAT, Reply(body=chat_reply([])))
    backend = backend_for(fault.url)
    try:
        with pytest.raises(HTTPBackendError, match="no choices"):
            await backend.generate([conv("hi")], SamplingParams())
    finally:
        await backend.aclose()
    assert len(fault.calls(CHAT)) == 1


async def test_n_is_used_when_the_server_honours_it(fault):
    fault.fallback = lambda req: Reply(
        body=chat_reply([f"s{i}" for i in range(req.body.get("n", 1))], "length", 10)
    )
    backend = backend_for(fault.url)
    try:
        (out,) = await backend.generate([conv("hi")], SamplingParams(n=3, temperature=0.7, seed=1))
    finally:
        await backend.aclose()
    assert len(fault.calls(CHAT)) == 1
    assert [c.text for c in out] == ["s0", "s1", "s2"]
    assert sum(c.num_tokens for c in out) == 10
    assert all(c.finish_reason == "length" for c in out)


async def test_n_falls_back_to_one_request_per_sample_with_seeds(fault):
    fault.fallback = lambda req: Reply(body=chat_reply([f"seed {req.body.get('seed')}"]))
    backend = backend_for(fault.url)
    try:
        sampled = SamplingParams(n=3, temperature=0.7, seed=7)
        (first,) = await backend.generate([conv("hi")], sampled)
        (second,) = await backend.generate([conv("hi")], sampled.model_copy(update={"n": 2}))
    finally:
        await backend.aclose()
    calls = fault.calls(CHAT)
    assert [c.text for c in first] == ["seed 7", "seed 8", "seed 9"]
    assert [c.text for c in second] == ["seed 7", "seed 8"]
    assert calls[0].body["n"] == 3
    # after the server showed it ignores n, n is no longer sent
    assert len(calls) == 5 and all("n" not in c.body for c in calls[1:])


async def test_greedy_n_is_one_request_copied(fault):
    backend = backend_for(fault.url)
    try:
        (out,) = await backend.generate([conv("hi")], SamplingParams(n=3, temperature=0))
    finally:
        await backend.aclose()
    (call,) = fault.calls(CHAT)
    assert "n" not in call.body
    assert [c.text for c in out] == ["reply to base-model"] * 3


# ----- log-probabilities -----


async def test_option_logprobs_reads_top_logprobs(fault):
    top = [("A", -0.2), ("B", -1.9), (" B", -4.0)]
    fault.script(CHAT, Reply(body=chat_reply(["A"], "length", 1, logprobs=top)))
    backend = backend_for(fault.url)
    try:
        (got,) = await backend.option_logprobs([conv("A or B?")], ["A", "B"])
    finally:
        await backend.aclose()
    body = fault.calls(CHAT)[0].body
    assert (body["max_tokens"], body["temperature"], body["logprobs"]) == (1, 0, True)
    assert body["top_logprobs"] == 20
    assert got == pytest.approx(logprobs_for_options(top, ["A", "B"]))
    assert backend.supports_logprobs


async def test_missing_logprobs_turn_support_off(fault):
    backend = backend_for(fault.url)
    try:
        with pytest.raises(LogprobsUnsupportedError):
            await backend.option_logprobs([conv("A or B?")], ["A", "B"])
        assert not backend.supports_logprobs
        with pytest.raises(NotImplementedError):  # what judges catch; no second request
            await backend.option_logprobs([conv("A or B?")], ["A", "B"])
    finally:
        await backend.aclose()
    assert len(fault.calls(CHAT)) == 1


async def test_rejected_logprobs_turn_support_off(fault):
    fault.script(CHAT, Reply(400, {"error": {"message": "logprobs are not supported"}}))
    backend = backend_for(fault.url)
    try:
        with pytest.raises(LogprobsUnsupportedError):
            await backend.option_logprobs([conv("A or B?")], ["A", "B"])
    finally:
        await backend.aclose()
    assert not backend.supports_logprobs


# ----- runtime LoRA policies -----


async def test_load_policy_switches_model_and_keeps_old_one_on_failure(fault):
    v1 = PolicyRef(version="v1", adapter_path="/adapters/v1")
    v2 = PolicyRef(version="v2", adapter_path="/adapters/v2")
    fault.script(
        LOAD, Reply(body="Success: LoRA adapter 'v1' added successfully."),
        Reply(400, {"object": "error", "message": "adapter_config.json not found"}),
    )
    backend = backend_for(fault.url)
    try:
        assert backend.policy is None
        await backend.load_policy(v1)
        (out,) = await backend.generate([conv("hi")], SamplingParams())
        assert out[0].text == "reply to v1"
        assert backend.policy == v1 and backend.model == "v1"

        with pytest.raises(BackendError) as info:
            await backend.load_policy(v2)
        assert "adapter_config.json not found" in str(info.value)
        assert "still serving 'v1'" in str(info.value)
        assert backend.policy == v1
        (out,) = await backend.generate([conv("hi")], SamplingParams())
        assert out[0].text == "reply to v1"

        await backend.load_policy(PolicyRef(version="v0"))  # no adapter: back to the base
        await backend.load_policy(v1)  # already loaded on the server: no second load
        await backend.load_policy(PolicyRef(version="v0"))
        (out,) = await backend.generate([conv("hi")], SamplingParams())
        assert out[0].text == "reply to base-model"
    finally:
        await backend.aclose()
    loads = fault.calls(LOAD)
    assert [c.body for c in loads] == [
        {"lora_name": "v1", "lora_path": "/adapters/v1"},
        {"lora_name": "v2", "lora_path": "/adapters/v2"},
    ]


async def test_adapter_already_on_the_server_is_used(fault):
    message = "The lora adapter 'v1' has already been loaded."
    fault.script(LOAD, Reply(400, {"object": "error", "message": message}))
    v1 = PolicyRef(version="v1", adapter_path="/adapters/v1")
    backend = backend_for(fault.url)
    try:
        await backend.load_policy(v1)
        assert backend.model == "v1"
        with pytest.raises(BackendError, match="already loaded from /adapters/v1"):
            await backend.load_policy(PolicyRef(version="v1", adapter_path="/elsewhere"))
        assert backend.policy == v1
    finally:
        await backend.aclose()
    assert len(fault.calls(LOAD)) == 1


async def test_load_policy_on_a_server_without_lora_endpoints(fault):
    fault.script(LOAD, Reply(404, {"detail": "Not Found"}))
    backend = backend_for(fault.url)
    try:
        with pytest.raises(BackendError, match="--enable-lora"):
            await backend.load_policy(PolicyRef(version="v1", adapter_path="/adapters/v1"))
    finally:
        await backend.aclose()
    assert backend.model == "base-model" and backend.policy is None


async def test_unload_previous_adapter(fault):
    backend = backend_for(fault.url, unload_previous=True)
    try:
        await backend.load_policy(PolicyRef(version="v1", adapter_path="/a/v1"))
        await backend.load_policy(PolicyRef(version="v2", adapter_path="/a/v2"))
    finally:
        await backend.aclose()
    assert [c.body for c in fault.calls("/v1/unload_lora_adapter")] == [{"lora_name": "v1"}]


async def test_bound_versions_called_together_each_reach_their_model(fault):
    from selfimprove.backends.served import serve

    v0 = PolicyRef(version="v0", base_model="base-model")
    v1 = PolicyRef(version="v1", adapter_path="/adapters/v1")
    backend = backend_for(fault.url)
    try:
        jobs = [serve(backend, v).generate([conv(f"q{i}")], SamplingParams())
                for i in range(4) for v in (v1, v0)]
        outs = await asyncio.gather(*jobs)
    finally:
        await backend.aclose()
    assert [out[0][0].text for out in outs] == ["reply to v1", "reply to base-model"] * 4
    # the adapter was loaded on the server once, however often the versions alternated
    assert [c.body for c in fault.calls(LOAD)] == [
        {"lora_name": "v1", "lora_path": "/adapters/v1"}
    ]
    assert sorted(c.body["model"] for c in fault.calls(CHAT)) == ["base-model"] * 4 + ["v1"] * 4


# ----- a real server: transformers serve on the embedded model -----


@pytest.fixture(scope="session")
def hf_server(tmp_path_factory):
    from selfimprove.models import resolve_model

    serve = start_transformers_serve(resolve_model(None), tmp_path_factory.mktemp("serve"))
    yield serve
    stop_process(serve.process)


@pytest.mark.slow
async def test_real_server_generate_is_deterministic_when_greedy(hf_server):
    backend = OpenAIBackend(hf_server.url, hf_server.model, api_key_env=None, timeout_s=120)
    convs = [conv("Say hello."), conv("Name a colour.")]
    params = SamplingParams(max_new_tokens=5)
    try:
        first = await backend.generate(convs, params)
        second = await backend.generate(convs, params)
    finally:
        await backend.aclose()
    assert [len(c) for c in first] == [1, 1]
    assert all(c[0].text.strip() and 0 < c[0].num_tokens <= 5 for c in first)
    assert [c[0].text for c in first] == [c[0].text for c in second]


@pytest.mark.slow
async def test_real_server_n_and_stop(hf_server):
    backend = OpenAIBackend(hf_server.url, hf_server.model, api_key_env=None, timeout_s=120)
    prompt = [conv("Count from 1 to 10, separated by commas.")]
    try:
        ((plain,),) = await backend.generate(prompt, SamplingParams(max_new_tokens=10))
        words = plain.text.split()
        assert len(words) >= 3, plain.text
        stop = words[len(words) // 2]
        ((cut,),) = await backend.generate(
            prompt, SamplingParams(max_new_tokens=10, stop=(stop,))
        )
        (samples,) = await backend.generate(
            prompt, SamplingParams(max_new_tokens=4, n=2, temperature=1.0, seed=3)
        )
    finally:
        await backend.aclose()
    assert cut.text == plain.text[: plain.text.find(stop)]
    assert cut.finish_reason == "stop"
    assert len(samples) == 2 and all(s.text for s in samples)


@pytest.mark.slow
async def test_real_server_without_logprobs_falls_back_to_written_verdicts(hf_server):
    """`transformers serve` (5.x) ignores `logprobs`: the backend says so with a typed error,
    stops claiming support, and the judge falls back to a written verdict, never a default."""
    from selfimprove.judges import PairwiseJudge

    backend = OpenAIBackend(hf_server.url, hf_server.model, api_key_env=None, timeout_s=120)
    question = [conv("Is the sky blue? Answer with Yes or No.")]
    try:
        with pytest.raises(LogprobsUnsupportedError):
            await backend.option_logprobs(question, ["Yes", "No"])
        assert not backend.supports_logprobs
        judge = PairwiseJudge(backend, "Pick the more accurate answer.",
                              sampling=SamplingParams(max_new_tokens=8))
        verdict = await judge.compare("What is the capital of France?", "Paris.", "Lyon.")
        assert {o.method for o in verdict.orders} <= {"generated", "abstain"}
        assert len(verdict.orders) == 2
    finally:
        await backend.aclose()


@pytest.mark.slow
async def test_real_server_rejects_unknown_model_without_retry(hf_server):
    backend = OpenAIBackend(
        hf_server.url, "no-such-model", api_key_env=None, timeout_s=60, initial_backoff_s=5
    )
    start = time.monotonic()
    try:
        with pytest.raises(HTTPBackendError) as info:
            await backend.generate([conv("hi")], SamplingParams(max_new_tokens=2))
    finally:
        await backend.aclose()
    assert info.value.status == 400 and info.value.attempts == 1
    assert "no-such-model" in str(info.value)
    assert time.monotonic() - start < 5  # no backoff happened


def test_backend_builds_outside_a_loop_and_normalises_base_url():
    # config factories build backends before any event loop runs
    backend = OpenAIBackend("http://127.0.0.1:9/v1", "m", api_key_env=None)
    assert backend.base_url == "http://127.0.0.1:9"
    asyncio.run(backend.aclose())
