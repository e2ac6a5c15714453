"""Bad inputs and faults from an outside probe: each ends in a clear error with exit code 2,
no traceback, and nothing half-written; a killed harvest continues where it stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfimprove.cli import main
from selfimprove.errors import PolicyError
from selfimprove.registry import PolicyRegistry
from selfimprove.store import PreferenceStore

REPO = Path(__file__).resolve().parent.parent


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


# ---- the command line: exit 2, one line, no traceback -----------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "--cycles", "0", "--run-dir", "{tmp}/r"], "--cycles: Input should be greater"),
        (["run", "--batch-size", "0", "--run-dir", "{tmp}/r"], "--batch-size: Input should be"),
        (["critique", "--prompt", "hi", "--max-rounds", "0"], "--max-rounds: Input should be"),
        (["critique", "--prompt", ""], "--prompt: prompt 1 is empty"),
        (["critique", "--prompt", "hi", "--limit", "0"], "--limit: must be at least 1"),
        (["critique", "--prompt", "hi", "--limit", "-5"], "--limit: must be at least 1"),
        (["critique", "--prompts", "{tmp}"], "is a directory, not a prompt file"),
        (["critique", "--prompts", "{tmp}/latin1.txt"], "latin1.txt:2: not UTF-8 text"),
    ],
)
def test_bad_command_lines_are_located_errors(tmp_path, capsys, argv, expected):
    (tmp_path / "latin1.txt").write_bytes("first prompt\ncaf\xe9 au lait?\n".encode("latin-1"))
    code, err = cli(capsys, *(a.replace("{tmp}", str(tmp_path)) for a in argv))
    assert code == 2
    assert expected in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_a_method_mismatch_names_the_field_and_its_line(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("cycles: 1\nsft: {method: sft}\ndpo:\n  method: sft\n")
    code, err = cli(capsys, "run", "--config", str(config), "--run-dir", str(tmp_path / "r"))
    assert code == 2
    assert f"{config}:3: field 'dpo': dpo.method must be 'dpo'" in err


@pytest.mark.parametrize(
    ("key", "value"), [("max_violation_rate_delta", -5), ("max_retention_increase", -1)]
)
def test_gate_thresholds_that_can_never_pass_are_refused(tmp_path, capsys, key, value):
    config = tmp_path / "run.yaml"
    config.write_text(f"cycles: 1\ngate:\n  {key}: {value}\n")
    code, err = cli(capsys, "run", "--config", str(config), "--run-dir", str(tmp_path / "r"))
    assert code == 2
    assert f"{config}:3: field 'gate.{key}'" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("constitution: no-such-constitution", "no constitution named 'no-such-constitution'"),
        ("prompts: {path: missing.jsonl}", "prompt file not found"),
        ("prompts: {path: empty.jsonl}", "no prompts in file"),
        ("prompts: {path: noprompt.jsonl}", "field 'prompt': each line needs a non-empty"),
        ("prompts: {path: two.jsonl}", "both need at least one"),
        ("model: ./no-such-model", "no-such-model' not found"),
    ],
)
def test_errors_found_before_writing_leave_no_run_behind(tmp_path, capsys, setup, expected):
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "noprompt.jsonl").write_text('{"text": "hi"}\n')
    (tmp_path / "two.jsonl").write_text('{"prompt": "What is tea?"}\n{"prompt": "Why?"}\n')
    key, _, value = setup.partition(": ")
    config = tmp_path / "run.yaml"
    if key == "constitution":
        config.write_text(f"critique: {{constitution: {value}}}\n")
    elif key == "model":
        config.write_text(
            "critique: {roles: {policy: {backend: {model: " + value + "}}}}\n"
        )
    else:
        config.write_text(f"{setup}\n")
    run_dir = tmp_path / "run"
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        for _ in range(2):  # the same command fails the same way: nothing blocks a retry
            code, err = cli(capsys, "run", "--config", str(config), "--run-dir", str(run_dir))
            assert code == 2 and expected in err, err
            assert "already holds a run" not in err
    finally:
        os.chdir(old)
    assert not run_dir.exists()


def test_json_lines_are_read_as_json_whatever_the_extension(tmp_path):
    from selfimprove.sources import load_prompts

    for name in ("p.json", "p.JSONL", "p.ndjson"):
        path = tmp_path / name
        path.write_text('{"prompt": "What is tea?", "id": "t1"}\n')
        assert load_prompts(path) == [("t1", "What is tea?")]


# ---- the registry never serves or trains from what was not promoted ---------------------


def _registry_with(tmp_path: Path, status: str) -> PolicyRegistry:
    registry = PolicyRegistry(tmp_path, base_model="smollm2-135m-instruct")
    folder = registry.dir / "v1"
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "smollm2-135m-instruct"})
    )
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    record = {"version": "v1", "parent": "v0", "base_model": "smollm2-135m-instruct",
              "method": "sft", "artifact": "adapter", "status": status}
    (folder / "policy.json").write_text(json.dumps(record))
    return registry


@pytest.mark.parametrize("status", ["rejected", "candidate"])
def test_current_pointing_at_an_unpromoted_version_is_refused(tmp_path, status):
    registry = _registry_with(tmp_path, status)
    (registry.dir / "current.json").write_text('{"version": "v1"}')
    with pytest.raises(PolicyError, match=f"v1, whose status is {status}"):
        registry.current()


def test_a_deleted_current_pointer_does_not_fall_back_to_v0(tmp_path):
    registry = _registry_with(tmp_path, "promoted")
    with pytest.raises(PolicyError, match="current.json is missing, but v1 was promoted"):
        registry.current_version()


def test_training_from_a_rejected_version_is_refused(tmp_path):
    registry = _registry_with(tmp_path, "rejected")
    with pytest.raises(PolicyError, match="v1 was rejected"):
        registry.parent_for_training("v1")
    assert registry.parent_for_training(None).version == "v0"


# ---- the store ---------------------------------------------------------------------------


def test_two_fresh_stores_hold_out_the_same_prompts(tmp_path):
    prompts = [f"question number {i}?" for i in range(200)]
    a = PreferenceStore(tmp_path / "a")
    b = PreferenceStore(tmp_path / "b")
    assert a.split_prompts(prompts) == b.split_prompts(prompts)
    assert 0 < len(a.split_prompts(prompts)[1]) < 200


# ---- prompts longer than the model can hold (real model) --------------------------------


@pytest.mark.slow
async def test_a_prompt_longer_than_the_model_is_refused_at_once(embedded_backend):
    from selfimprove.errors import PromptTooLongError
    from selfimprove.types import Message, SamplingParams

    huge = "word " * 10_000  # more tokens than the model's 8192 positions
    start = time.perf_counter()
    with pytest.raises(PromptTooLongError, match="exceeds the 8192 positions"):
        await embedded_backend.generate([[Message(role="user", content=huge)]],
                                        SamplingParams(max_new_tokens=4))
    assert time.perf_counter() - start < 30
    # the backend still serves
    (out,), = await embedded_backend.generate([[Message(role="user", content="Hi")]],
                                              SamplingParams(max_new_tokens=2))
    assert out.num_tokens >= 1


# ---- a long harvest killed and continued (real model, real signals) ---------------------


@pytest.mark.slow
def test_critique_store_killed_and_rerun_holds_every_prompt_once(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"prompt": f"Name one use of the number {i}.", "id": f"p{i:02d}"})
             for i in range(40)]
    prompts.write_text("\n".join(lines) + "\n")
    config = tmp_path / "critique.yaml"
    config.write_text(
        "max_rounds: 1\nroles:\n  policy: {sampling: {max_new_tokens: 8}}\n"
        "  critic: {sampling: {max_new_tokens: 8}}\n  reviser: {sampling: {max_new_tokens: 8}}\n"
        "max_concurrency: 16\n"
    )
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "selfimprove", "critique", "--prompts", str(prompts),
            "--config", str(config), "--store", str(run_dir), "--json"]
    errors = tmp_path / "first.stderr"
    with errors.open("wb") as stderr:
        first = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
    log_dir = run_dir / "store" / "log"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and first.poll() is None:
        if log_dir.is_dir() and any(log_dir.glob("*.json")):
            break
        time.sleep(0.5)
    assert first.poll() is None, (
        f"the harvest ended (exit {first.returncode}) before it could be killed:\n"
        + errors.read_text(errors="replace")[-3000:])
    first.send_signal(signal.SIGKILL)
    first.wait()
    store = PreferenceStore(run_dir)
    done_before = store.harvested_prompt_ids()
    heldout = {f"p{i:02d}" for i in range(40) if store.is_heldout(f"Name one use of the "
                                                                  f"number {i}.")}
    assert 0 < len(done_before) < 40 - len(heldout)
    rerun = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done_before)} already harvested" in rerun.stderr
    covered = [pid for e in PreferenceStore(run_dir).harvest_log()
               for pid in e.get("prompt_ids", [])]
    assert sorted(covered) == sorted({f"p{i:02d}" for i in range(40)} - heldout)
    # no prompt covered twice, so none was redone
    assert len(covered) == len(set(covered))


@pytest.mark.parametrize(("graph", "context", "expected"), [
    ("critique", {"max_round": 1}, "context: field 'max_round': unknown key"),
    ("critique", {"max_rounds": "two"}, "context: field 'max_rounds': Input should be a valid"),
    ("cycle", {"run_dir": "r", "config": {"cycles": 0}},
     "context: field 'config.cycles': Input should be greater than or equal to 1"),
    ("cycle", {}, "context: field 'run_dir': Field required"),
])
async def test_langgraph_server_contexts_are_located_errors(graph, context, expected):
    """A LangGraph Server run's JSON context is checked as a config file is, field by field."""
    from selfimprove.errors import ConfigError
    from selfimprove.server_graphs import critique_server_graph, cycle_server_graph

    compiled = critique_server_graph() if graph == "critique" else cycle_server_graph()
    with pytest.raises(ConfigError) as info:
        await compiled.ainvoke({"prompt": "Why?"} if graph == "critique" else {},
                               context=context)
    assert str(info.value).startswith(expected), str(info.value)
