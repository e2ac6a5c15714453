"""The improvement cycle on a scripted backend: stage order, schedule, promote/reject, counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfimprove.cycle import run
from selfimprove.errors import SelfImproveError
from selfimprove.registry import PolicyRegistry
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
    from selfimprove.cycle import build_context
    from selfimprove.graph.state import Roles
    from selfimprove.nodes.cycle.sample import _normalized, self_generated
    from tests.scripted_cycle import PROMPTS

    questions = iter(["How do magnets work?", "how do magnets work", "Not a question.",
                      PROMPTS[0], "Why do cats sleep so much?", "How do magnets WORK?"])

    def respond(conv, params):
        return next(questions)

    cfg = load_cfg(write_inputs(tmp_path))
    cfg = cfg.model_copy(update={"prompts": cfg.prompts.model_copy(update={"self_generated": 6})})
    ctx = build_context(cfg, tmp_path / "run", roles=Roles(policy=ScriptedBackend(respond)),
                        trainer=fake_trainer)
    known = {_normalized(p) for _, p in ctx.train_prompts + ctx.heldout_prompts}
    new = asyncio.run(self_generated(ctx, 0, known))
    texts = [t for _, t in new]
    expected = [q for q in ["How do magnets work?", "Why do cats sleep so much?"]
                if not ctx.store.is_heldout(q)]
    assert texts == expected
    assert all(pid.startswith("self-") for pid, _ in new)
