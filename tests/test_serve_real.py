"""``selfimprove serve`` for real: uvicorn on 127.0.0.1, the embedded model, the official
``openai`` client; a promotion while requests are in flight; recording through ``kill -9``."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import openai
import pytest

from selfimprove.config import RunConfig
from selfimprove.registry import PolicyRegistry
from selfimprove.rundir import RunDir
from selfimprove.traffic import TrafficLog
from tests.servers import start_selfimprove_serve, stop_process

pytestmark = pytest.mark.slow

KEY = "test-key-123"
QUESTION = [{"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"}]


def make_run(path: Path) -> Path:
    """A run directory holding v0 of the embedded model, as ``selfimprove run`` leaves it."""
    cfg = RunConfig().model_dump()
    cfg["critique"].update({"constitution": "concise", "critic": "checks", "max_rounds": 1})
    cfg["critique"]["roles"]["policy"]["sampling"]["max_new_tokens"] = 40
    cfg["critique"]["roles"]["reviser"]["sampling"]["max_new_tokens"] = 40
    RunDir(path).create(RunConfig.model_validate(cfg), {})
    PolicyRegistry(path, base_model="smollm2-135m-instruct")
    return path


def promote_random_adapter(run: Path) -> str:
    """Commit and promote a LoRA adapter with random (non-zero) weights: a stand-in for a
    trained version that changes what the model says."""
    from peft import LoraConfig, get_peft_model

    from selfimprove.models import load_causal_lm
    from selfimprove.training.common import _name_base_model

    registry = PolicyRegistry(run)
    staging = registry.staging_dir()
    model = get_peft_model(load_causal_lm(None, dtype="float32"),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False))
    model.save_pretrained(staging / "adapter")
    _name_base_model(staging / "adapter", "smollm2-135m-instruct")  # as training does
    version = registry.commit(staging, parent="v0", method="sft").version
    registry.promote(version)
    return version


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    run = make_run(root / "run")
    serve = start_selfimprove_serve(run, root, "--record", "--flush-seconds", "0.5",
                                    env={"SELFIMPROVE_API_KEY": KEY})
    yield serve, run, root
    stop_process(serve.process)


def client(serve, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{serve.url}/v1", api_key=key, max_retries=0,
                              timeout=300)


async def test_completions_streaming_and_critique_with_the_openai_client(server):
    serve, run, _ = server
    api = client(serve)
    models = await api.models.list()
    assert [m.id for m in models.data] == ["run"]
    plain = await api.chat.completions.create(model="run", messages=QUESTION, max_tokens=24)
    text = plain.choices[0].message.content
    assert text.strip() and plain.system_fingerprint == "v0"
    stream = await api.chat.completions.create(model="run", messages=QUESTION, max_tokens=24,
                                               stream=True)
    pieces = [c.choices[0].delta.content or "" async for c in stream]
    assert "".join(pieces) == text and len(pieces) > 3  # greedy: the same answer, in chunks
    critiqued = await api.chat.completions.create(
        model="run", messages=[{"role": "user", "content": "Explain how rain forms."}],
        extra_body={"critique": True})
    info = critiqued.model_extra["selfimprove"]
    assert info["critiqued"] and info["first_response"].strip()
    assert critiqued.choices[0].message.content.strip()
    sampled = await api.chat.completions.create(model="run", messages=QUESTION, max_tokens=16,
                                                n=3, temperature=1.0, seed=7)
    assert len(sampled.choices) == 3


async def test_auth_and_bad_requests_through_the_client(server):
    serve, _, _ = server
    with pytest.raises(openai.AuthenticationError):
        await client(serve, "wrong").chat.completions.create(model="run", messages=QUESTION)
    api = client(serve)
    with pytest.raises(openai.NotFoundError) as missing:
        await api.chat.completions.create(model="gpt-9", messages=QUESTION)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="at least one message"):
        await api.chat.completions.create(model="run", messages=[])
    # What the client library would never send, straight over HTTP:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = f"{serve.url}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=60) as http:
        bad = await http.post(url, content=b'{"model": "run", "messages": [', headers=headers)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
        big = b'{"model": "run", "messages": [{"role": "user", "content": "' + b"x" * 2_000_000
        over = await http.post(url, content=big + b'"}]}', headers=headers)
        assert over.status_code == 413 and over.json()["error"]["code"] == "request_too_large"
    # and it still answers
    ok = await api.chat.completions.create(model="run", messages=QUESTION, max_tokens=8)
    assert ok.choices[0].message.content is not None


async def test_hot_swap_on_promotion_with_requests_in_flight(server):
    serve, run, _ = server
    api = client(serve)
    questions = [[{"role": "user", "content": f"Name a colour, number {i}."}] for i in range(8)]
    in_flight = [asyncio.create_task(api.chat.completions.create(model="run", messages=q,
                                                                 max_tokens=32))
                 for q in questions]
    version = await asyncio.to_thread(promote_random_adapter, run)
    before = await asyncio.gather(*in_flight)  # none fails
    assert all(r.choices[0].message.content is not None for r in before)
    after = await api.chat.completions.create(model="run", messages=QUESTION, max_tokens=24)
    assert after.system_fingerprint == version
    assert (await api.models.list()).data[0].model_extra["version"] == version


async def test_every_answered_request_is_recorded_once_through_kill_9(server, tmp_path):
    serve, run, root = server
    api = client(serve)
    asked = [f"Give me one word that rhymes with cat, request {i}." for i in range(6)]

    async def ask(q: str):
        return await api.chat.completions.create(
            model="run", messages=[{"role": "user", "content": q}], max_tokens=16)

    answered = {q for q, r in zip(asked, await asyncio.gather(*map(ask, asked)), strict=True)
                if r.choices[0].message.content is not None}
    late_asked = [f"One more word, request {i}." for i in range(4)]
    late = [asyncio.create_task(ask(q)) for q in late_asked]
    await asyncio.sleep(0.5)
    os.kill(serve.process.pid, signal.SIGKILL)  # requests still in flight, journal not moved
    serve.process.wait()
    for q, outcome in zip(late_asked, await asyncio.gather(*late, return_exceptions=True),
                          strict=True):
        if not isinstance(outcome, BaseException):
            answered.add(q)  # answered before the kill: it must be recorded too
        else:
            assert isinstance(outcome, openai.APIConnectionError), outcome
    again = start_selfimprove_serve(run, root, env={"SELFIMPROVE_API_KEY": KEY})
    stop_process(again.process)  # the restart, even unrecorded, moved what was journaled
    rows = TrafficLog(run).table().to_pylist()
    users = [r["messages"][-2]["content"] for r in rows]
    assert answered >= set(asked)
    for q in answered:
        assert users.count(q) == 1, q
    assert all(users.count(q) <= 1 for q in late_asked)  # unanswered: at most once
    ids = [r["exchange_id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert list(TrafficLog(run).journal_dir.glob("*.jsonl")) == []


def test_serve_agent_example_traffic_is_critiqued_and_trained_on(tmp_path):
    """The documented flow: serve --config (recording) → the example agent → run --resume:
    the served answers are the cycle's first responses, and the candidate trains on them."""
    import subprocess
    import sys

    import yaml

    from selfimprove.rundir import RunDir as Run
    from selfimprove.store import PreferenceStore

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "examples/configs/traffic-cpu.yaml").read_text())
    cfg.update(batch_size=1, prompts={"path": "general", "traffic": 8})
    # hhh's checks are soft: a served answer that ended on its own passes and is an SFT row;
    # one cut at the token cap fails the "ended" check and is revised.
    cfg["critique"]["constitution"] = "hhh"
    cfg["critique"]["roles"]["policy"]["sampling"]["max_new_tokens"] = 48
    cfg["critique"]["roles"]["reviser"]["sampling"]["max_new_tokens"] = 48
    cfg["schedule"] = {"min_new_pairs": 1, "methods": ["sft"]}
    cfg["sft"].update(max_steps=1, max_length=128)
    cfg["gate"] = {"num_prompts": 2, "sampling": {"max_new_tokens": 32}}
    config = tmp_path / "traffic.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    serve = start_selfimprove_serve(run, tmp_path, "--config", str(config),
                                    "--flush-seconds", "0.5")
    # asked for one sentence with room to finish: an answer cut at its cap is no SFT example,
    # and a CI run once had every usable served answer cut at 64 tokens
    short = [f"{q} Answer in one sentence." for q in (
        "What is the capital of Italy?", "What colour is a ripe banana?",
        "How many legs does a spider have?", "What is the opposite of hot?")]
    try:
        agent = subprocess.run(
            [sys.executable, str(root / "examples/serve_agent.py"), "--base-url",
             f"{serve.url}/v1", "--destinations", "1", "--max-tokens", "64"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert agent.returncode == 0, agent.stderr
        assert agent.stdout.count("[assistant]") == 2
        api = openai.OpenAI(base_url=f"{serve.url}/v1", api_key="x", max_retries=0)
        served = {q: api.chat.completions.create(
            model="run", messages=[{"role": "user", "content": q}], max_tokens=128,
        ).choices[0].message.content for q in short}
    finally:
        stop_process(serve.process)
    assert TrafficLog(run).table().num_rows == 6
    done = subprocess.run([sys.executable, "-m", "selfimprove", "run", "--resume", str(run)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (cycle,) = Run(run).load_cycles()
    store = PreferenceStore(run)
    usable = [e for e in TrafficLog(run).pending(set())
              if not store.is_heldout(e.prompt_record().prompt)]  # held out: never trained on
    assert usable and cycle.prompts == 1 + len(usable)
    assert cycle.trained and cycle.train_method == "sft"
    rows = [r for r in store.sft_dataset() if r["source"] == "traffic"]
    assert rows, f"no served answer was harvested: {cycle}"
    recorded = {r["messages"][-2]["content"]: (r["messages"][-1]["content"], r["truncated"])
                for r in TrafficLog(run).table().to_pylist()}
    assert set(short) <= set(recorded) and set(served.values()) <= {
        a for a, _ in recorded.values()}
    for row in rows:  # a served conversation, answered as served or by a revision of it
        answer, cut = recorded[row["messages"][-2]["content"]]
        if cut:  # an answer cut at the token cap is revised, never imitated
            assert row["messages"][-1]["content"] != answer
        else:  # hhh's checks are soft: an answer that ended stands as it was served
            assert row["messages"][-1]["content"] == answer
    left = TrafficLog(run).pending(store.harvested_prompt_ids())
    assert all(store.is_heldout(e.prompt_record().prompt) for e in left)  # the rest is done
