"""The improvement cycle on a scripted backend: stage order, schedule, promote/reject, counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfimprove.errors import SelfImproveError
from selfimprove.registry import PolicyRegistry
from selfimprove.runner import run
from selfimprove.store import PreferenceStore
from tests.scripted_cycle import fake_trainer, load_cfg, make_roles, write_inputs


def run_scripted(tmp_path: Path, **overrides):
    cfg_path = write_inputs(tmp_path)
    cfg = load_cfg(cfg_path).model_copy(update=overrides)
    stages: list[tuple[str, str]] = []
    run_dir = tmp_path / "run"
    state = run(cfg, run_dir, roles=make_roles(), trainer=fake_trainer,
                progress=lambda s, m: stages.append((s, m)))
    return run_dir, state, stages


def test_three_cycles_promote_then_reject(tmp_path):
    run_dir, state, stages = run_scripted(tmp_path)
    records = state["records"]
    assert [r["cycle"] for r in records] == [1, 2, 3]
    # training is due every cycle: v2 and v3 ramble again and fail the gate
    assert [r["decision"] for r in records] == ["promoted", "rejected", "rejected"]
    assert [r["candidate"] for r in records] == ["v1", "v2", "v3"]
    assert [r["current"] for r in records] == ["v1", "v1", "v1"]
    # cycle 1: every long first answer loses to its short revision on the checks
    assert records[0]["pairs_kept"] == 6 and records[0]["prompts"] == 6
    # cycle 2: v1 already answers short; the revision is identical, so nothing is kept
    assert records[1]["pairs_kept"] == 0
    assert records[1]["dropped"] == {"identical": 6}
    reasons = " | ".join(records[1]["reasons"])
    assert "win rate 0.00 < 0.40" in reasons and "violation rate" in reasons, reasons
    reg = PolicyRegistry(run_dir)
    assert reg.current_version() == "v1"
    assert {r.version: r.status for r in reg.versions()} == {
        "v0": "base", "v1": "promoted", "v2": "rejected", "v3": "rejected"
    }
    assert len(PreferenceStore(run_dir).pairs_dataset()) == 6
    order = [s for s, _ in stages if s in {"sample", "critique", "harvest", "train", "evaluate",
                                            "decide", "record"}]
    order = order[order.index("sample") :]  # after the baseline evaluation of v0
    first_cycle = order[: order.index("record") + 1]
    dedup = [s for i, s in enumerate(first_cycle) if i == 0 or first_cycle[i - 1] != s]
    assert dedup == ["sample", "critique", "harvest", "train", "evaluate", "decide", "record"]
    # the gate's line counts the candidate's gains prompt by prompt
    gated = [m for s, m in stages if s == "evaluate" and "win rate" in m]
    assert "passes every check: v1 " in gated[0] and "McNemar p = " in gated[0], gated
    assert (run_dir / "report.md").is_file()
    assert json.loads((run_dir / "cycles" / "cycle-0002.json").read_text())["decision"] == (
        "rejected"
    )


def test_schedule_every_two_cycles(tmp_path):
    cfg = load_cfg(write_inputs(tmp_path))
    schedule = cfg.schedule.model_copy(update={"every_cycles": 2, "min_new_pairs": 100})
    run_dir, state, _ = run_scripted(tmp_path, schedule=schedule, cycles=2)
    records = state["records"]
    assert [r["trained"] for r in records] == [False, True]
    assert records[1]["candidate"] == "v1"
    # v1 was trained on both cycles' shards
    assert [d.name for d in PolicyRegistry(run_dir).record("v1").data] == [
        "cycle-0001.parquet", "cycle-0002.parquet"
    ]


def test_train_from_base_trains_every_candidate_from_v0(tmp_path):
    cfg = load_cfg(write_inputs(tmp_path))
    schedule = cfg.schedule.model_copy(update={"train_from": "base"})
    run_dir, state, _ = run_scripted(tmp_path, schedule=schedule)
    assert [r["current"] for r in state["records"]] == ["v1", "v1", "v1"]
    reg = PolicyRegistry(run_dir)
    # v1 is promoted, yet v2 and v3 start from the base again, on the one shard so far (cycles
    # 2 and 3 kept no pairs); trained from the current version they would name v1
    assert [reg.record(v).parent for v in ("v1", "v2", "v3")] == ["v0", "v0", "v0"]
    assert [d.name for d in reg.record("v3").data] == ["cycle-0001.parquet"]


def test_held_out_prompts_never_reach_the_store(tmp_path):
    run_dir, _, _ = run_scripted(tmp_path)
    store = PreferenceStore(run_dir)
    prompts = {row[0]["content"] for row in store.pairs_dataset()["prompt"]}
    assert prompts and not any(store.is_heldout(p) for p in prompts)


def test_existing_run_dir_needs_resume(tmp_path):
    run_dir, _, _ = run_scripted(tmp_path)
    cfg = load_cfg(tmp_path / "run.yaml")
    with pytest.raises(SelfImproveError, match="--resume"):
        run(cfg, run_dir, roles=make_roles(), trainer=fake_trainer)
    # resuming a finished run does nothing more
    state = run(None, run_dir, resume=True, roles=make_roles(), trainer=fake_trainer)
    assert len(state["records"]) == 3


def test_self_generated_prompts_are_deduplicated(tmp_path):
    import asyncio

    from selfimprove.backends.scripted import ScriptedBackend
    from selfimprove.improvement_cycle.sample import _normalized, self_generated
    from selfimprove.roles import Roles
    from selfimprove.rundir import RunDir
    from selfimprove.runner import build_context, prepare
    from tests.scripted_cycle import PROMPTS

    questions = iter(["How do magnets work?", "how do magnets work", "Not a question.",
                      PROMPTS[0], "Why do cats sleep so much?", "How do magnets WORK?"])

    def respond(conv, params):
        return next(questions)

    cfg = load_cfg(write_inputs(tmp_path))
    cfg = cfg.model_copy(update={"prompts": cfg.prompts.model_copy(update={"self_generated": 6})})
    ctx = build_context(prepare(cfg), RunDir(tmp_path / "run"),
                        roles=Roles(policy=ScriptedBackend(respond)), trainer=fake_trainer)
    known = {_normalized(r.prompt) for r in ctx.train_prompts + ctx.heldout_prompts}
    new = asyncio.run(self_generated(ctx, 0, known))
    texts = [r.prompt for r in new]
    expected = [q for q in ["How do magnets work?", "Why do cats sleep so much?"]
                if not ctx.store.is_heldout(q)]
    assert texts == expected
    assert all(r.id.startswith("self-") for r in new)


def _with_model(cfg, model: str):
    roles = cfg.critique.roles
    backend = roles.policy.backend.model_copy(update={"model": model})
    policy = roles.policy.model_copy(update={"backend": backend})
    critique = cfg.critique.model_copy(
        update={"roles": roles.model_copy(update={"policy": policy})}
    )
    return cfg.model_copy(update={"critique": critique})


def _late_errors(tmp_path: Path):
    """(name, broken config, config path, message) for errors found only after loading."""
    cfg = load_cfg(write_inputs(tmp_path)).model_copy(update={"cycles": 1})
    one_prompt = tmp_path / "one.jsonl"
    one_prompt.write_text(json.dumps({"id": "q0", "prompt": "question number 0?"}) + "\n")

    def with_prompts(path: str):
        return cfg.model_copy(update={"prompts": cfg.prompts.model_copy(update={"path": path})})

    return cfg, [
        ("empty held-out split", with_prompts(str(one_prompt)), None, "held out"),
        ("missing prompt file", with_prompts("missing.jsonl"), tmp_path / "run.yaml",
         "prompt file not found"),
        ("missing local model", _with_model(cfg, "./no-such-model"), None, "no-such-model"),
        ("missing constitution", cfg.model_copy(update={"critique": cfg.critique.model_copy(
            update={"constitution": str(tmp_path / "absent.yaml")})}), None, "absent.yaml"),
    ]


def test_config_errors_found_late_write_nothing_and_the_run_can_start_after_fixing(tmp_path):
    good, cases = _late_errors(tmp_path)
    run_dir = tmp_path / "run"
    for name, broken, config_path, message in cases:
        with pytest.raises(SelfImproveError, match=message):
            run(broken, run_dir, config_path=config_path, roles=make_roles(),
                trainer=fake_trainer)
        leftovers = sorted(p.name for p in run_dir.rglob("*")) if run_dir.exists() else []
        assert leftovers == [], f"{name}: {leftovers}"
    # the same command, fixed, starts the run in the same directory
    state = run(good, run_dir, config_path=tmp_path / "run.yaml", roles=make_roles(),
                trainer=fake_trainer)
    assert [r["cycle"] for r in state["records"]] == [1]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"


def test_control_arm_runs_after_the_loop_in_its_own_directory(tmp_path):
    from selfimprove.config import ControlConfig
    from selfimprove.rundir import RunDir

    control = ControlConfig(enabled=True, kind="trim")
    run_dir, state, stages = run_scripted(tmp_path, control=control)
    loop, ctrl = RunDir(run_dir), RunDir(run_dir / "control")
    # the loop arm is the same run as without the control, and it is what run() returns
    assert [r["decision"] for r in state["records"]] == ["promoted", "rejected", "rejected"]
    assert [c.cycle for c in loop.load_cycles()] == [1, 2, 3]
    # the control arm: a run directory of its own, with its own store, registry and cycles
    assert ctrl.holds_run() and ctrl.summary()["arm"] == "control"
    assert [c.cycle for c in ctrl.load_cycles()] == [1, 2, 3]
    assert ctrl.status().status == "finished" and loop.status().status == "finished"
    assert (run_dir / "control" / "checkpoints.sqlite").is_file()
    assert PolicyRegistry(run_dir / "control").current_version() == "v1"
    # trimmed first answers (within the word limit) were the control's preferred responses
    first = ctrl.load_cycles()[0]
    assert first.pairs_kept == 6 and first.candidate == "v1" and first.decision == "promoted"
    chosen = {row[0]["content"] for row in
              PreferenceStore(run_dir / "control").pairs_dataset()["chosen"]}
    assert chosen and all(len(text.split()) <= 12 for text in chosen)
    assert any(msg == f"control arm in {run_dir / 'control'}" for _, msg in stages)
    report = (run_dir / "report.md").read_text()
    assert "Loop vs control" in report and "control: v1" in report
