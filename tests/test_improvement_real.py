"""Does training make the embedded model better, and does the gate stop it getting worse?

Real model, real trainer, real adapters: a cycle trained on data that passes the checks lowers
the held-out violation rate without degenerating; an adapter trained to say almost nothing
passes every check of ``concise`` and is still rejected by the gate's degeneration guards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfimprove.config import GateConfig, RunConfig
from selfimprove.constitution import load_constitution
from selfimprove.gate import gate
from selfimprove.registry import PolicyRegistry
from selfimprove.rundir import RunDir
from selfimprove.training.config import TrainConfig
from selfimprove.types import SamplingParams

pytestmark = pytest.mark.slow

TRAIN = ["How do I keep houseplants alive?", "What makes a good breakfast?",
         "How can I sleep better?", "How do I start running?", "What is a budget?",
         "How do I learn to cook?", "What should I pack for a hike?", "How do I save money?"]
HELDOUT = ["How do I water a garden?", "What is a good habit?",
           "How do I make friends in a new city?", "What is a healthy lunch?",
           "How do I focus while studying?", "How do I care for a dog?",
           "What should I know before buying a bike?", "How do I stay calm before a test?"]


def test_a_cycle_on_clean_data_lowers_violations_without_degenerating(tmp_path, embedded_backend):
    """One real cycle whose training rows all pass the checks (each the policy's own answer cut
    at a sentence end within the word limit), a real trainer, a real gate."""
    import asyncio

    from selfimprove.roles import Roles
    from selfimprove.runner import build_context, prepare, run_cycles

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in TRAIN + HELDOUT))
    cfg = RunConfig.model_validate({
        "seed": 0, "cycles": 1, "batch_size": 8, "heldout_fraction": 0.5,
        "prompts": {"path": str(prompts)},
        "critique": {"constitution": "concise"},
        # the main job's recipe: SFT on the rows, then a few DPO steps on the pairs
        "schedule": {"methods": ["sft", "dpo"], "min_new_pairs": 1},
        "sft": {"method": "sft", "learning_rate": 5e-4, "max_steps": 6,
                "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                "max_length": 192, "report_to": []},
        "dpo": {"method": "dpo", "learning_rate": 5e-4, "max_steps": 2,
                "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
                "max_length": 192, "report_to": []},
        "gate": {"num_prompts": 8, "min_win_rate": None},
        "control": {"enabled": True, "kind": "trim"},
    })
    roles = Roles(policy=embedded_backend, policy_sampling=SamplingParams(max_new_tokens=128))
    rundir = RunDir(tmp_path / "run")
    rundir.create(cfg, {})
    ctx = build_context(prepare(cfg), rundir, roles=roles, arm="control")
    asyncio.run(run_cycles(ctx))
    (record,) = rundir.load_cycles()
    assert record.sft_rows > 0, record.dropped
    assert record.eval is not None and record.eval.incumbent.n_prompts >= 4
    used = PolicyRegistry(rundir.path).record(record.candidate or "v1").data
    assert used  # the rows it was trained on, every one passing the checks
    inc, cand = record.eval.incumbent, record.eval.candidate
    assert cand.violation_rate < inc.violation_rate, (inc.violation_rate, cand.violation_rate)
    d_inc, d_cand = inc.degeneration, cand.degeneration
    assert d_inc is not None and d_cand is not None
    assert d_cand.near_empty_rate <= d_inc.near_empty_rate
    assert d_cand.repetition_rate <= d_inc.repetition_rate + 0.15
    assert d_cand.truncation_rate is not None and d_inc.truncation_rate is not None
    assert d_cand.truncation_rate <= d_inc.truncation_rate
    assert record.eval.retention_increase is not None and record.eval.retention_increase < 0.05


async def test_gate_rejects_an_adapter_that_learned_to_say_almost_nothing(
    tmp_path: Path, embedded_backend
):
    """Answering "OK." passes every hard check of ``concise``; only the guards catch it."""
    import datasets

    from selfimprove.training import train_policy

    registry = PolicyRegistry(tmp_path, base_model="smollm2-135m-instruct")
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "OK."}]}
            for p in TRAIN + ["What is rain?", "Name a colour.", "Why is the sky blue?"]]
    cfg = TrainConfig(method="sft", learning_rate=2e-3, max_steps=12,
                      per_device_train_batch_size=4, gradient_accumulation_steps=1,
                      max_length=64, report_to=[])
    ref, _ = train_policy(registry, datasets.Dataset.from_list(rows), cfg, progress=False)
    constitution = load_constitution("concise")
    result = await gate(
        embedded_backend, ref, registry.get("v0"), HELDOUT, constitution,
        GateConfig(min_win_rate=None, sampling=SamplingParams(max_new_tokens=96)),
    )
    cand = result.candidate
    assert cand.degeneration is not None and cand.degeneration.near_empty_rate >= 0.5
    # the loop's own metric would call this an improvement
    assert cand.violation_rate <= result.incumbent.violation_rate
    assert not result.passed
    assert any("near-empty rate" in r for r in result.reasons), result.reasons
    assert any("mean length" in r for r in result.reasons), result.reasons
