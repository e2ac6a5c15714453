"""The critique graph on a scripted backend: exact transitions, rounds, judging rules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from selfimprove.backends.scripted import ScriptedBackend
from selfimprove.constitution import load_constitution
from selfimprove.critique_loop import CritiqueContext, Roles, build_critique_graph, critique_many
from selfimprove.critique_loop.graph import to_result
from selfimprove.errors import PromptTooLongError
from selfimprove.types import Completion, SamplingParams, passes

CONSTITUTION = """
name: tiny
version: 1
description: test constitution
principles:
  - id: brief
    critique: Is it brief?
    revision: Make it brief.
  - id: kind
    critique: Is it kind?
    revision: Make it kind.
    weight: 3
checks:
  - id: max_5_words
    kind: max_words
    value: 5
judge:
  pairwise: Pick the better response.
  pointwise:
    - points: 1
      criterion: It is brief.
"""

LONG = "this answer is far too long for the rule"
SHORT = "short answer"


@pytest.fixture
def constitution(tmp_path: Path):
    path = tmp_path / "tiny.yaml"
    path.write_text(CONSTITUTION)
    return load_constitution(path)


def user_text(conv) -> str:
    return conv[-1].content


def responder(revision: str):
    def respond(conv, params: SamplingParams) -> str:
        text = user_text(conv)
        if "Critique request" in text:
            return "It is too long."
        if "Revision request" in text:
            return revision
        return LONG

    return respond


def prefer(which: str):
    """A judge scorer: 'A' always (position bias), or the response containing ``which``."""

    def score(conv, options):
        text = user_text(conv)
        if which == "A":
            return {"A": math.log(0.9), "B": math.log(0.1)}
        a_part = text.split("Response A:")[1].split("Response B:")[0]
        a_wins = which in a_part
        return {"A": math.log(0.8 if a_wins else 0.2), "B": math.log(0.2 if a_wins else 0.8)}

    return score


def make_ctx(constitution, backend, **kw) -> CritiqueContext:
    return CritiqueContext(constitution=constitution, roles=Roles(policy=backend), **kw)


async def run_steps(ctx) -> tuple[list[str], dict]:
    graph = build_critique_graph()
    steps: list[str] = []
    async for update in graph.astream(
        {"prompt_id": "p1", "prompt": "Why?"}, context=ctx, stream_mode="updates"
    ):
        steps += list(update)
    state = await graph.ainvoke({"prompt_id": "p1", "prompt": "Why?"}, context=ctx)
    return steps, state


async def test_exact_transitions_until_clean(constitution):
    backend = ScriptedBackend(responder(SHORT), prefer(SHORT))
    steps, state = await run_steps(make_ctx(constitution, backend))
    assert steps == ["generate", "check", "critique", "refine", "check", "judge"]
    result = to_result(state, make_ctx(constitution, backend))
    assert result.first_response == LONG and result.final_response == SHORT
    assert [r.round for r in result.rounds] == [0]
    assert result.rounds[0].critique.failed_checks == ["max_5_words"]
    assert not result.rounds[0].revision_truncated  # the revision ended on its own
    assert result.final_passes


async def test_max_rounds_honoured(constitution):
    backend = ScriptedBackend(responder(LONG + " still"), prefer(SHORT))
    steps, state = await run_steps(make_ctx(constitution, backend, max_rounds=3))
    assert steps == ["generate", "check"] + ["critique", "refine", "check"] * 3 + ["judge"]
    assert len(state["rounds"]) == 3
    assert not all(c.passed for c in state["checks"])


async def test_clean_first_response_is_still_revised_once(constitution):
    def respond(conv, params):
        return "ok then" if "Revision request" in user_text(conv) else "fine"

    backend = ScriptedBackend(respond, prefer("fine"))
    steps, state = await run_steps(make_ctx(constitution, backend))
    assert steps == ["generate", "check", "critique", "refine", "check", "judge"]
    assert state["verdict"].winner == "a"  # the judge prefers the original in both orders


async def test_position_biased_judge_gives_a_tie(constitution):
    constitution.checks.clear()  # both pass, so the judge (not the checks) decides
    backend = ScriptedBackend(responder("tiny reply"), prefer("A"))
    _, state = await run_steps(make_ctx(constitution, backend))
    v = state["verdict"]
    assert v.winner == "tie" and v.decided_by == "flip"
    assert v.p_b == pytest.approx(0.5)


async def test_checks_dominate_the_judge(constitution):
    # The judge prefers the long original in both orders, but it fails a hard check.
    backend = ScriptedBackend(responder(SHORT), prefer(LONG))
    _, state = await run_steps(make_ctx(constitution, backend))
    v = state["verdict"]
    assert v.winner == "b" and v.decided_by == "checks"
    assert not v.a_passes_checks and v.b_passes_checks
    # the judge is not asked when its answer would be ignored
    assert v.p_b is None and not any(kind == "logprobs" for kind, _ in backend.calls)

    # asked anyway, the soft label records what the judge thought; the checks still win
    backend = ScriptedBackend(responder(SHORT), prefer(LONG))
    _, state = await run_steps(make_ctx(constitution, backend, judge_when_checks_decide=True))
    v = state["verdict"]
    assert v.winner == "b" and v.decided_by == "checks"
    assert v.p_b < 0.5


async def test_judge_abstains_after_unparseable_verdicts(constitution):
    calls = []

    def respond(conv, params):
        text = user_text(conv)
        if "Which response is better" in text:
            calls.append(params.temperature)
            return "Both are fine, really."
        return responder(SHORT)(conv, params)

    backend = ScriptedBackend(respond)  # no log-probabilities: generated verdicts
    # Both responses pass the checks so the judge, not the checks, must decide.
    constitution.checks.clear()
    _, state = await run_steps(make_ctx(constitution, backend))
    v = state["verdict"]
    assert v.winner == "abstain" and v.decided_by == "abstain"
    assert all(o.method == "abstain" for o in v.orders)
    # 3 attempts per order, 2 orders, two graph runs (astream + ainvoke)
    assert len(calls) == 12


async def test_generated_verdicts_are_parsed(constitution):
    def respond(conv, params):
        text = user_text(conv)
        if "Which response is better" in text:
            a_part = text.split("Response A:")[1].split("Response B:")[0]
            return "A" if SHORT in a_part else "Response B is better."
        return responder(SHORT)(conv, params)

    constitution.checks.clear()
    _, state = await run_steps(make_ctx(constitution, ScriptedBackend(respond)))
    v = state["verdict"]
    assert v.winner == "b" and v.decided_by == "judge"
    assert [o.method for o in v.orders] == ["generated", "generated"]
    assert v.p_b == 1.0


async def test_best_of_n_samples_are_scored(constitution):
    def respond(conv, params):
        return SHORT if params.temperature > 0 else responder(SHORT)(conv, params)

    def scorer(conv, options):
        if options == ("Yes", "No"):
            yes = 0.9 if SHORT in user_text(conv) else 0.3
            return {"Yes": math.log(yes), "No": math.log(1 - yes)}
        return prefer(SHORT)(conv, options)

    backend = ScriptedBackend(respond, scorer)
    _, state = await run_steps(make_ctx(constitution, backend, num_samples=3))
    assert state["samples"] == [SHORT] * 3
    assert state["sample_scores"] == [pytest.approx(0.9)] * 3
    assert state["sample_checks_passed"] == [True] * 3


class CutSamples(ScriptedBackend):
    """Every other sampled answer (temperature > 0) runs out of its token budget."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.pointwise_calls = 0

    async def generate(self, conversations, params) -> list[list[Completion]]:
        out = await super().generate(conversations, params)
        if params.temperature > 0:
            out = [[c.model_copy(update={"text": f"{c.text} {i}",
                                         "finish_reason": "length" if i % 2 else "stop"})
                    for i, c in enumerate(row)] for row in out]
        return out

    async def option_logprobs(self, conversations, options):
        self.pointwise_calls += options == ("Yes", "No")
        return await super().option_logprobs(conversations, options)


async def test_unscored_samples_are_ranked_by_checks_and_cut_samples_are_dropped(constitution):
    def respond(conv, params):
        return SHORT if params.temperature > 0 else responder(SHORT)(conv, params)

    backend = CutSamples(respond, prefer(SHORT))
    ctx = make_ctx(constitution, backend, num_samples=4, score_samples=False, max_rounds=1)
    _, state = await run_steps(ctx)
    # samples 1 and 3 hit their token budget: no answer to prefer, so they are not kept
    assert state["samples"] == [f"{SHORT} 0", f"{SHORT} 2"]
    assert state["sample_scores"] == [None, None]
    assert state["sample_checks_passed"] == [True, True]
    assert backend.pointwise_calls == 0  # the rubric judge was never asked


async def test_samples_are_drawn_with_the_constitutions_examples_first(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(CONSTITUTION + """examples:
  - {prompt: Say hi., response: Hi there.}
  - {prompt: Name a colour., response: Blue.}
""")
    constitution = load_constitution(path)
    seen: list[tuple[float, list[tuple[str, str]]]] = []

    def respond(conv, params):
        seen.append((params.temperature, [(m.role, m.content) for m in conv]))
        return SHORT

    graph = build_critique_graph()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]
    for with_examples in (True, False):
        seen.clear()
        ctx = make_ctx(constitution, ScriptedBackend(respond, prefer(SHORT)), num_samples=2,
                       score_samples=False, sample_with_examples=with_examples,
                       critic="checks", max_rounds=1)
        state = await graph.ainvoke({"messages": messages}, context=ctx)
        (first,) = [conv for temperature, conv in seen if temperature == 0]
        samples = [conv for temperature, conv in seen if temperature > 0]
        assert len(samples) == 2 and samples[0] == samples[1]
        samples = samples[:1]
        bare = [("system", "Be brief."), ("user", "Why?")]
        assert first == bare  # the first answer is what the policy does on its own
        assert samples == [[("system", "Be brief."), ("user", "Say hi."),
                            ("assistant", "Hi there."), ("user", "Name a colour."),
                            ("assistant", "Blue."), ("user", "Why?")]] if with_examples else [bare]
        # what is kept is stored against the bare conversation, not the demonstrations
        assert state["conversation"] == [{"role": r, "content": c} for r, c in bare]
        assert state["samples"] == [SHORT, SHORT]


async def test_demonstrations_that_do_not_fit_the_context_are_left_out(constitution, tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(CONSTITUTION + "examples: [{prompt: Say hi., response: Hi.}]\n")

    class ShortContext(ScriptedBackend):
        async def generate(self, conversations, params):
            if any(len(conv) > 1 for conv in conversations):
                raise PromptTooLongError("the prompt is 3000 tokens; the model takes 2048")
            return await super().generate(conversations, params)

    ctx = make_ctx(load_constitution(path), ShortContext(responder(SHORT), prefer(SHORT)),
                   num_samples=2, score_samples=False, max_rounds=1)
    _, state = await run_steps(ctx)
    assert state["samples"] == [LONG, LONG]


async def test_checks_as_critic_name_the_failed_rules_without_a_critic_call(constitution):
    seen: list[str] = []

    def respond(conv, params):
        seen.append(user_text(conv))
        return responder(SHORT)(conv, params)

    ctx = make_ctx(constitution, ScriptedBackend(respond, prefer(SHORT)), critic="checks",
                   max_rounds=2)
    steps, state = await run_steps(ctx)
    assert not any("Critique request" in text for text in seen)  # the critic was never asked
    first = state["rounds"][0]
    assert first.critique.text.startswith("The response fails these rules:")
    assert first.critique.failed_checks == ["max_5_words"]
    assert "words" in first.critique.text  # the check's own detail, e.g. "9 words > 5"
    # The revision passes, so the loop stops after one round instead of revising again.
    assert len(state["rounds"]) == 1 and state["response"] == SHORT


async def test_checks_as_critic_leave_a_passing_answer_alone(constitution):
    seen: list[str] = []

    def respond(conv, params):
        seen.append(user_text(conv))
        return SHORT

    ctx = make_ctx(constitution, ScriptedBackend(respond, prefer(SHORT)), critic="checks")
    steps, state = await run_steps(ctx)
    assert "critique" not in steps and "refine" not in steps
    assert state["rounds"] == [] and state["response"] == SHORT
    assert not any("Revision request" in text for text in seen)


async def test_principles_are_sampled_per_round_and_seeded(constitution):
    backend = ScriptedBackend(responder(LONG + " again"), prefer(SHORT))
    ctx = make_ctx(constitution, backend, max_rounds=2, seed=7)
    (r1,) = await critique_many(["Why?"], ctx)
    (r2,) = await critique_many(["Why?"], ctx)
    ids = [r.critique.principle_ids for r in r1.rounds]
    assert ids == [r.critique.principle_ids for r in r2.rounds]
    assert all(len(i) == 1 and i[0] in {"brief", "kind"} for i in ids)


async def test_many_prompts_run_concurrently(constitution):
    backend = ScriptedBackend(responder(SHORT), prefer(SHORT))
    prompts = [f"question {i}" for i in range(10)]
    results = await critique_many(prompts, make_ctx(constitution, backend))
    assert [r.prompt for r in results] == prompts
    assert all(r.verdict.winner == "b" for r in results)


class CutRevisions(ScriptedBackend):
    """Records the sampling of every call by kind; revisions end at the token budget."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.params: dict[str, list[SamplingParams]] = {}

    async def generate(self, conversations, params) -> list[list[Completion]]:
        text = user_text(conversations[0])
        kind = next((k for k in ("Revision request", "Critique request",
                                 "Which response is better", "Does the response meet")
                     if k in text), "answer")
        self.params.setdefault(kind, []).append(params)
        out = await super().generate(conversations, params)
        if kind == "Revision request":
            out = [[c.model_copy(update={"finish_reason": "length"}) for c in row] for row in out]
        return out


async def test_the_reviser_gets_its_full_budget_and_a_cut_revision_is_marked(constitution):
    revision = "a revision that runs on well past the five word limit and is cut"
    backend = CutRevisions(responder(revision), prefer(SHORT))
    ctx = make_ctx(constitution, backend, max_rounds=1)
    ctx.roles.reviser_sampling = SamplingParams(max_new_tokens=128)
    _, state = await run_steps(ctx)
    # not capped at the constitution's word limit: the checks judge the revision instead
    assert {p.max_new_tokens for p in backend.params["Revision request"]} == {128}
    (rec,) = state["rounds"]
    assert rec.revision == revision and state["response"] == revision  # not trimmed
    assert rec.revision_truncated
    assert not all(c.passed for c in state["checks"])


async def test_judges_use_every_judge_setting_of_the_context(constitution):
    def respond(conv, params):
        text = user_text(conv)
        if "Which response is better" in text:
            a_part = text.split("Response A:")[1].split("Response B:")[0]
            return "A" if SHORT in a_part else "B"
        if "Does the response meet" in text:
            return "Yes"
        return SHORT if params.temperature > 0 else responder(SHORT)(conv, params)

    constitution.checks.clear()  # the judge decides
    backend = CutRevisions(respond, prefer(SHORT))  # it could score, but logprobs are off
    ctx = make_ctx(constitution, backend, num_samples=2, judge_logprobs=False,
                   judge_when_checks_decide=True)
    ctx.roles.judge_sampling = SamplingParams(max_new_tokens=7)
    assert ctx.pairwise_judge().judge_when_checks_decide
    _, state = await run_steps(ctx)
    assert state["verdict"].decided_by == "judge"
    assert state["sample_scores"] == [1.0, 1.0]
    assert not any(kind == "logprobs" for kind, _ in backend.calls)
    for kind in ("Which response is better", "Does the response meet"):
        assert {p.max_new_tokens for p in backend.params[kind]} == {7}, kind


LOWERCASE = [{"kind": "lowercase", "id": "lowercase"}]


class CutFirst(ScriptedBackend):
    """The first (greedy) answer runs out of its token budget; samples and revisions end."""

    async def generate(self, conversations, params) -> list[list[Completion]]:
        out = await super().generate(conversations, params)
        if params.temperature == 0 and "Revision request" not in user_text(conversations[0]):
            out = [[c.model_copy(update={"finish_reason": "length"}) for c in row] for row in out]
        return out


async def run_repair(constitution, first: str, sample: str, *, checks=LOWERCASE,
                     backend_cls=ScriptedBackend):
    """The loop with checks as critic and as reviser; returns the state and the user turns."""
    seen: list[str] = []

    def respond(conv, params):
        seen.append(user_text(conv))
        if "Revision request" in user_text(conv):
            return "model revision"
        return sample if params.temperature > 0 else first

    ctx = make_ctx(constitution, backend_cls(respond, prefer(SHORT)), critic="checks",
                   reviser="repair", num_samples=2, score_samples=False, max_rounds=1)
    state = await build_critique_graph().ainvoke(
        {"prompt_id": "p1", "prompt": "Why?", "prompt_checks": checks}, context=ctx)
    return state, seen


async def test_repair_fixes_the_failed_check_without_asking_the_reviser(constitution):
    state, seen = await run_repair(constitution, "Short Answer", "Also Capital")
    (rnd,) = state["rounds"]
    assert state["response"] == "short answer" and passes(state["checks"])
    assert (rnd.reviser, rnd.repaired_checks, rnd.from_sample) == ("repair", ["lowercase"], False)
    assert rnd.response == "Short Answer"
    assert not any("Revision request" in text for text in seen)


async def test_a_sample_that_passes_as_it_is_comes_before_a_repair(constitution):
    state, _ = await run_repair(constitution, "Short Answer", "a fine one")
    (rnd,) = state["rounds"]
    assert state["response"] == "a fine one"
    assert (rnd.reviser, rnd.repaired_checks, rnd.from_sample) == ("sample", [], True)


async def test_a_cut_off_answer_is_not_repaired_but_a_sample_is(constitution):
    state, _ = await run_repair(constitution, "Short Answer", "Also Capital",
                                backend_cls=CutFirst)
    (rnd,) = state["rounds"]
    assert state["response"] == "also capital"
    assert (rnd.reviser, rnd.from_sample) == ("repair", True)


async def test_a_failed_check_without_a_fix_goes_to_the_reviser_model(constitution):
    checks = [{"kind": "include_words", "words": ["hive"], "id": "hive"}]
    state, seen = await run_repair(constitution, "Bees buzz", "They fly", checks=checks)
    (rnd,) = state["rounds"]
    assert rnd.reviser == "model" and state["response"] == "model revision"
    assert any("Revision request" in text for text in seen)


async def test_a_candidate_of_only_the_required_words_is_no_revision(constitution):
    closing = [{"kind": "ends_with", "value": "The end.", "id": "end"}]
    # the sample passes as it is but says nothing: the current answer gets the closing words
    state, _ = await run_repair(constitution, "Bees make honey", "The end.", checks=closing)
    (rnd,) = state["rounds"]
    assert state["response"] == "Bees make honey. The end."
    assert (rnd.reviser, rnd.from_sample) == ("repair", False)
    # nothing with content to fix: the reviser model is asked instead
    state, seen = await run_repair(constitution, "The END", "the end", checks=closing)
    assert state["rounds"][0].reviser == "model"
    assert any("Revision request" in text for text in seen)


@pytest.mark.parametrize(("prompt", "kwargs", "error", "message"), [
    (None, {}, TypeError, "a prompt is a string, .* got NoneType"),
    (42, {}, TypeError, "a prompt is a string, .* got int"),
    (("only",), {}, TypeError, r"a prompt tuple is \(id, text\)"),
    ("   \n", {}, ValueError, "needs a non-blank 'prompt'"),
    ("Why?", {"response": 5}, ValueError, "response: the answer given must be a string, got int"),
    ("Why?", {"response": ["a"]}, ValueError, "must be a string, got list"),
])
async def test_bad_plain_call_arguments_are_named(constitution, prompt, kwargs, error, message):
    from selfimprove.critique_loop import acritique

    ctx = make_ctx(constitution, ScriptedBackend(responder(SHORT), prefer(SHORT)))
    with pytest.raises(error, match=message):
        await acritique(prompt, ctx, **kwargs)


async def test_the_graph_without_a_context_says_what_it_needs():
    with pytest.raises(TypeError, match="runs with a CritiqueContext.*context=make_context"):
        await build_critique_graph().ainvoke({"prompt": "Why?"})
