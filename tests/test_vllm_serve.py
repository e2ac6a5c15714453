"""OpenAIBackend against a real ``vllm serve`` (the CPU build here) on the embedded model:
chat completions, ``n`` and seeds, log-probabilities for the judge, and LoRA adapters loaded
and unloaded at run time."""

from __future__ import annotations

import httpx
import pytest
from servers import start_vllm_serve, stop_process_group
from test_vllm_backend import agreeing, require_vllm, same_start

from selfimprove.backends.openai import HTTPBackendError, OpenAIBackend
from selfimprove.types import Message, PolicyRef, SamplingParams

pytestmark = pytest.mark.slow

PROMPTS = ["Name a colour.", "Say hello to Ada."]


def conv(text: str) -> list[Message]:
    return [Message(role="user", content=text)]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    require_vllm()
    from selfimprove.models import resolve_model

    serve = start_vllm_serve(resolve_model(None), tmp_path_factory.mktemp("vllm"),
                             "--enable-lora", "--max-lora-rank", "8")
    yield serve
    stop_process_group(serve.process)


@pytest.fixture
async def client(vllm_server):
    backend = OpenAIBackend(vllm_server.url, vllm_server.model, api_key_env=None,
                            timeout_s=120, unload_previous=True)
    yield backend
    await backend.aclose()


def served_models(server) -> set[str]:
    listing = httpx.get(f"{server.url}/v1/models", timeout=10).json()
    return {m["id"] for m in listing["data"]}


async def test_chat_completions_greedy_n_and_seeds(client):
    greedy = SamplingParams(max_new_tokens=12)
    first = await client.generate([conv(p) for p in PROMPTS], greedy)
    second = await client.generate([conv(p) for p in PROMPTS], greedy)
    texts = [c[0].text for c in first]
    assert all(t.strip() for t in texts)
    again = [c[0].text for c in second]
    assert all(same_start(x, y) for x, y in zip(texts, again, strict=True)), (texts, again)
    assert all(0 < c[0].num_tokens <= 12 for c in first)

    sampled = SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=5)
    (a,) = await client.generate([conv(PROMPTS[0])], sampled)
    (b,) = await client.generate([conv(PROMPTS[0])], sampled)
    assert len(a) == 3 and agreeing([c.text for c in a], [c.text for c in b]) >= 2
    assert len({c.text for c in a}) > 1  # n samples, not one answer copied


async def test_log_probabilities_for_the_judge(client):
    question = conv("Is the sky blue? Answer Yes or No.")
    ((token,),) = await client.generate([question], SamplingParams(max_new_tokens=1))
    (lps,) = await client.option_logprobs([question], [token.text, "zqxj"])
    assert client.supports_logprobs
    assert lps["zqxj"] < lps[token.text] <= 0.0


async def test_runtime_lora_load_switch_and_unload(client, vllm_server, adapter_dir):
    greedy = SamplingParams(max_new_tokens=12)
    prompts = [conv(p) for p in PROMPTS]
    base = [c[0].text for c in await client.generate(prompts, greedy)]

    v1 = PolicyRef(version="v1", adapter_path=adapter_dir)
    await client.load_policy(v1)
    assert "v1" in served_models(vllm_server) and client.model == "v1"
    tuned = [c[0].text for c in await client.generate(prompts, greedy)]
    assert tuned != base

    with pytest.raises(HTTPBackendError, match="still serving 'v1'"):
        await client.load_policy(PolicyRef(version="v2", adapter_path=adapter_dir + "-missing"))
    assert client.policy == v1 and "v2" not in served_models(vllm_server)

    await client.load_policy(PolicyRef(version="v0"))  # unload_previous: v1 leaves the server
    assert "v1" not in served_models(vllm_server)
    restored = [c[0].text for c in await client.generate(prompts, greedy)]
    assert all(same_start(r, b) for r, b in zip(restored, base, strict=True)), (restored, base)
