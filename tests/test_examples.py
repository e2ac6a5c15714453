"""Every shipped example config loads; the embedding example runs (scripted and real)."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfimprove.config import RunConfig, load_config
from selfimprove.sources import load_prompts

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PACKAGED_PROMPTS = Path(__file__).resolve().parent.parent / "selfimprove" / "data" / "prompts"


@pytest.mark.parametrize("path", sorted((EXAMPLES / "configs").glob("*.yaml")), ids=str)
def test_run_configs_are_valid(path):
    cfg = load_config(path, RunConfig)
    assert cfg.cycles >= 1


def test_accelerate_train_config_is_valid():
    from selfimprove.training.config import load_train_config

    cfg = load_train_config(EXAMPLES / "accelerate" / "train.yaml", "dpo")
    assert cfg.method == "dpo"


@pytest.mark.parametrize("path", sorted(PACKAGED_PROMPTS.glob("*.jsonl")), ids=str)
def test_prompt_files_load(path):
    prompts = load_prompts(path)
    assert len(prompts) >= 32 and len({p for _, p in prompts}) == len(prompts)


def _load_example(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_embed_subgraph_example_with_scripted_backend():
    import math

    from selfimprove.backends.scripted import ScriptedBackend
    from selfimprove.constitution import load_constitution
    from selfimprove.critique_loop import CritiqueContext, Roles

    def respond(conv, params):
        return "Sleep at fixed times." if "Revision request" in conv[-1].content else (
            "Great question! " + "Sleep is important. " * 30
        )

    def score(conv, options):
        return {o: math.log(0.5) for o in options}

    ctx = CritiqueContext(constitution=load_constitution("concise"),
                          roles=Roles(policy=ScriptedBackend(respond, score)), max_rounds=1)
    state = await _load_example("embed_subgraph").answer("How do I sleep better?", ctx)
    assert state["first_response"].startswith("Great question!")
    assert state["response"] == "Sleep at fixed times."


@pytest.mark.slow
async def test_embed_subgraph_example_on_embedded_model(embedded_backend):
    from selfimprove.constitution import load_constitution
    from selfimprove.critique_loop import CritiqueContext, Roles
    from selfimprove.types import SamplingParams

    roles = Roles(policy=embedded_backend, policy_sampling=SamplingParams(max_new_tokens=24),
                  critic_sampling=SamplingParams(max_new_tokens=16),
                  reviser_sampling=SamplingParams(max_new_tokens=24))
    ctx = CritiqueContext(constitution=load_constitution("concise"), roles=roles, max_rounds=1)
    state = await _load_example("embed_subgraph").answer("What is rain?", ctx)
    assert state["first_response"] and state["response"]
    # the embedded subgraph really critiqued and revised: one round, against concise's
    # principles, with the checks recorded, and the revision is what the agent returns
    (rnd,) = state["rounds"]
    concise = {p.id for p in ctx.constitution.principles}
    assert rnd.critique is not None and set(rnd.critique.principle_ids) <= concise
    assert rnd.critique.text.strip()
    # every rule was checked; "ended" joins them when the first answer hit its token cap
    rules = {c.id for c in ctx.constitution.checks}
    assert rules <= {c.check_id for c in rnd.checks} <= rules | {"ended"}
    assert rnd.response == state["first_response"] and rnd.revision == state["response"]
    assert state["verdict"] is not None
