"""Our graphs under LangGraph Server (``langgraph dev``, in-memory runtime) on the embedded
model: the shipped ``langgraph.json`` and ``graphs/``, contexts sent as JSON."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import HOST, free_port, stop_process

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def langgraph_dev(tmp_path_factory):
    """``langgraph dev`` as shipped: it fails any run that blocks its event loop."""
    yield from _serve(tmp_path_factory)


@pytest.fixture(scope="module")
def langgraph_dev_blocking(tmp_path_factory):
    """``langgraph dev --allow-blocking``: the improvement cycle writes files and trains."""
    yield from _serve(tmp_path_factory, "--allow-blocking")


def _serve(tmp_path_factory, *flags: str):
    # langgraph dev resolves graph paths and writes its state under the working directory:
    # run it in a copy of the shipped files, so the tree stays clean.
    work = tmp_path_factory.mktemp("langgraph")
    shutil.copy(ROOT / "langgraph.json", work)
    shutil.copytree(ROOT / "graphs", work / "graphs",
                    ignore=shutil.ignore_patterns("__pycache__"))
    port = free_port()
    cli = Path(sys.executable).with_name("langgraph")
    log = (work / "server.log").open("wb")
    proc = subprocess.Popen([str(cli), "dev", "--port", str(port), "--host", HOST,
                             "--no-browser", "--no-reload", *flags], cwd=work, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, (work / "server.log").read_text()[-3000:]
        try:
            if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
    else:
        stop_process(proc)
        pytest.fail("langgraph dev did not start:\n" + (work / "server.log").read_text()[-3000:])
    yield url, work
    stop_process(proc)
    log.close()


def run_wait(url: str, body: dict, timeout: float = 600) -> dict:
    r = httpx.post(f"{url}/runs/wait", json=body, timeout=timeout)
    assert r.status_code == 200, r.text
    return r.json()


def test_both_graphs_are_served(langgraph_dev):
    url, _ = langgraph_dev
    r = httpx.post(f"{url}/assistants/search", json={}, timeout=30)
    assert {a["graph_id"] for a in r.json()} == {"critique_loop", "improvement_cycle"}


def test_the_critique_loop_critiques_an_agents_answer(langgraph_dev):
    url, _ = langgraph_dev
    given = ("Well, there are many reasons, and honestly it depends on a lot of things, but "
             "basically the sky looks blue because of the way sunlight is scattered. ") * 3
    out = run_wait(url, {
        "assistant_id": "critique_loop",
        "input": {"messages": [{"role": "system", "content": "Answer briefly."},
                               {"role": "user", "content": "Why is the sky blue?"}],
                  "response": given},
        "context": {"constitution": "concise", "max_rounds": 1, "critic": "checks"},
    })
    assert out["first_response"] == given and out["response_given"] is True
    assert out["prompt"].startswith("System: Answer briefly.")
    (record,) = out["rounds"]
    assert record["critique"]["failed_checks"] == ["max_80_words"]  # the rule it broke
    assert out["response"] and out["response"] != given


def test_the_improvement_cycle_runs_a_cycle_from_json_config(langgraph_dev_blocking):
    url, work = langgraph_dev_blocking
    config = {
        "cycles": 1, "batch_size": 2,
        "prompts": {"path": "general"},
        "critique": {"constitution": "concise", "critic": "checks", "max_rounds": 1,
                     "roles": {"policy": {"sampling": {"max_new_tokens": 32}},
                               "reviser": {"sampling": {"max_new_tokens": 32}}}},
        "schedule": {"every_cycles": 5, "min_new_pairs": 100},  # critique and harvest only
        "gate": {"num_prompts": 2, "sampling": {"max_new_tokens": 32}},
    }
    run_dir = str(work / "run")
    out = run_wait(url, {"assistant_id": "improvement_cycle",
                         "input": {}, "context": {"run_dir": run_dir, "config": config}})
    assert out.get("current") == "v0" and out["run_dir"] == run_dir, out
    (cycle,) = out["cycles"]
    assert cycle["prompts"] == 2 and cycle["decision"] == "skipped"
    assert (work / "run" / "store").is_dir()
